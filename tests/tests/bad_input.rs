//! Malformed input on raw sockets: the broker answers as the AMQP 0-9-1 spec and RabbitMQ do
//! (protocol header, connection.close with the right code), and nobody else notices: a normal
//! client connected the whole time keeps working and stored messages stay intact.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

/// A well-behaved client that watches one misbehaving connection: it holds a durable queue
/// with three persistent messages and checks afterwards that both it and they are fine.
struct Bystander {
    conn: Connection,
    ch: Channel,
}

impl Bystander {
    async fn new(broker: &TestBroker) -> Bystander {
        let (conn, ch) = open(&broker.url()).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        declare(&ch, "keep", durable(), FieldTable::default()).await;
        for i in 0..3 {
            publish_confirmed(
                &ch,
                "",
                "keep",
                format!("kept-{i}").as_bytes(),
                persistent(),
            )
            .await;
        }
        Bystander { conn, ch }
    }

    async fn still_fine(&self, broker: &mut TestBroker) {
        assert!(
            self.conn.status().connected(),
            "the bystander connection was closed"
        );
        // The broker process is alive and still serves this connection...
        if let Some(child) = broker.node.child.as_mut() {
            assert!(
                child.try_wait().expect("try_wait").is_none(),
                "warren-server exited\n{}",
                broker.node.log()
            );
        }
        declare(
            &self.ch,
            "scratch",
            Default::default(),
            FieldTable::default(),
        )
        .await;
        publish_confirmed(&self.ch, "", "scratch", b"still here", Default::default()).await;
        let m = get_wait(&self.ch, "scratch", true).await;
        assert_eq!(m.delivery.data, b"still here");
        // ...and the stored messages are all there, in order.
        assert_eq!(ready_count(&self.ch, "keep").await, 3);
        // A new connection works too.
        let (_c2, ch2) = open(&broker.url()).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = get_wait(&ch2, "keep", false).await;
            got.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
        }
        assert_eq!(got, ["kept-0", "kept-1", "kept-2"]);
        // Not acked: closing ch2's connection puts them back.
    }
}

fn block<T>(f: impl FnOnce() -> T + Send + 'static) -> tokio::task::JoinHandle<T>
where
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
}

#[tokio::test]
async fn wrong_protocol_header_gets_the_supported_header_and_a_close() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    block(move || {
        for header in [
            &b"AMQP\x00\x00\x08\x00"[..],
            b"AMQP\x01\x01\x00\x0a",
            b"AMQP\x00\x00\x09\x00",
        ] {
            let mut raw = Raw::tcp(port);
            raw.send(header);
            assert_eq!(
                raw.read_bytes(8),
                b"AMQP\x00\x00\x09\x01",
                "reply to {header:?}"
            );
            raw.expect_eof();
        }
    })
    .await
    .unwrap();
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn garbage_instead_of_a_header_gets_the_supported_header_and_a_close() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    block(move || {
        let mut raw = Raw::tcp(port);
        raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
        assert_eq!(raw.read_bytes(8), b"AMQP\x00\x00\x09\x01");
        raw.expect_eof();
    })
    .await
    .unwrap();
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn garbage_after_the_handshake_is_a_frame_error() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.send(&[0x41u8; 64]);
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 501, "{closed:?}");
    assert!(closed.text.starts_with("FRAME_ERROR"), "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_frame_larger_than_frame_max_is_a_frame_error() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        // A publish with a 10000-byte body in one frame, where frame_max is 4096.
        raw.send(&publish_frame(1, "", "keep"));
        raw.send(&header_frame(1, 10_000));
        raw.send(&frame(FRAME_BODY, 1, &[7u8; 10_000]));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 501, "{closed:?}");
    assert!(closed.text.starts_with("FRAME_ERROR"), "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_frame_without_its_end_marker_is_a_frame_error() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        let mut f = method_frame(1, 20, 10, Args::new().short(""));
        *f.last_mut().unwrap() = 0x00;
        raw.send(&f);
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 501, "{closed:?}");
    assert!(closed.text.starts_with("FRAME_ERROR"), "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn an_unknown_class_is_not_implemented() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&method_frame(1, 99, 10, Args::new()));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 540, "{closed:?}");
    assert!(closed.text.starts_with("NOT_IMPLEMENTED"), "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn an_unknown_method_is_command_invalid() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        // Class basic (60) has no method 99.
        raw.send(&method_frame(1, 60, 99, Args::new()));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 503, "{closed:?}");
    assert!(closed.text.starts_with("COMMAND_INVALID"), "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_method_on_a_channel_never_opened_is_a_channel_error() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        // queue.declare "keep" passive on channel 7, which was never opened.
        raw.send(&method_frame(
            7,
            50,
            10,
            Args::new().u16(0).short("keep").u8(1).empty_table(),
        ));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 504, "{closed:?}");
    assert!(closed.text.starts_with("CHANNEL_ERROR"), "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_body_longer_than_announced_is_an_unexpected_frame() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&publish_frame(1, "", "keep"));
        raw.send(&header_frame(1, 5));
        raw.send(&frame(FRAME_BODY, 1, b"0123456789"));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 505, "{closed:?}");
    assert!(closed.text.starts_with("UNEXPECTED_FRAME"), "{closed:?}");
    // The oversized message was not enqueued.
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_body_without_a_header_is_an_unexpected_frame() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&publish_frame(1, "", "keep"));
        raw.send(&frame(FRAME_BODY, 1, b"no header"));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 505, "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_client_vanishing_mid_message_changes_nothing() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&publish_frame(1, "", "keep"));
        raw.send(&header_frame(1, 100));
        raw.send(&frame(FRAME_BODY, 1, b"only part of it"));
        // Half a frame, then the socket goes away.
        raw.send(&[FRAME_BODY, 0, 1, 0, 0]);
    })
    .await
    .unwrap();
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_method_in_the_middle_of_a_message_is_an_unexpected_frame() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&publish_frame(1, "", "keep"));
        raw.send(&header_frame(1, 10));
        // Another publish where the body should be.
        raw.send(&publish_frame(1, "", "keep"));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 505, "{closed:?}");
    assert!(closed.text.starts_with("UNEXPECTED_FRAME"), "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

/// Runs the handshake up to tune-ok with `frame_max` and returns how the broker reacted.
fn tune_ok_with(port: u16, frame_max: u32) -> Closed {
    let mut raw = Raw::tcp(port);
    raw.send(b"AMQP\x00\x00\x09\x01");
    raw.read_frame().expect("connection.start");
    raw.send(&method_frame(
        0,
        10,
        11,
        Args::new()
            .empty_table()
            .short("PLAIN")
            .long(b"\0guest\0guest")
            .short("en_US"),
    ));
    raw.read_frame().expect("connection.tune");
    raw.send(&method_frame(
        0,
        10,
        31,
        Args::new().u16(0).u32(frame_max).u16(0),
    ));
    raw.send(&method_frame(
        0,
        10,
        40,
        Args::new().short("/").short("").u8(0),
    ));
    raw.expect_connection_close()
}

#[tokio::test]
async fn a_frame_max_outside_the_allowed_range_is_refused_at_tune_ok() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let (small, large) = block(move || (tune_ok_with(port, 1024), tune_ok_with(port, 1 << 20)))
        .await
        .unwrap();
    assert_eq!(small.code, 530, "{small:?}");
    assert_eq!(small.text, "NOT_ALLOWED - frame_max=1024 < 4096 min size");
    assert_eq!((small.class_id, small.method_id), (10, 31));
    assert_eq!(large.code, 530, "{large:?}");
    assert_eq!(
        large.text,
        "NOT_ALLOWED - frame_max=1048576 > 131072 max size"
    );
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn a_heartbeat_on_a_channel_other_than_zero_is_a_frame_error() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&frame(FRAME_HEARTBEAT, 1, &[]));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 501, "{closed:?}");
    watcher.still_fine(&mut broker).await;
}

/// As RabbitMQ: opening more channels than the negotiated channel_max closes the connection
/// with 530, naming both numbers.
#[test]
fn opening_more_channels_than_channel_max_is_not_allowed() {
    let broker = TestBroker::start_with_config("channel_max = 2\n");
    let mut raw = Raw::handshake(broker.port);
    raw.open_channel(1);
    raw.open_channel(2);
    raw.send(&method_frame(3, 20, 10, Args::new().short("")));
    let closed = raw.expect_connection_close();
    assert_eq!(closed.code, 530);
    assert_eq!(
        closed.text,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
    );
}

/// A field table holding a table holding ... `depth` tables in all, as wire bytes.
fn nested_table(depth: usize) -> Vec<u8> {
    let mut inner: Vec<u8> = 0u32.to_be_bytes().to_vec();
    for _ in 1..depth {
        let mut t = vec![1, b'k', b'F'];
        t.extend_from_slice(&inner);
        let mut outer = (t.len() as u32).to_be_bytes().to_vec();
        outer.extend_from_slice(&t);
        inner = outer;
    }
    inner
}

#[tokio::test]
async fn deeply_nested_client_properties_before_login_are_a_syntax_error() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let closed = block(move || {
        let mut raw = Raw::tcp(port);
        raw.send(b"AMQP\x00\x00\x09\x01");
        raw.read_frame().expect("connection.start");
        // 2,000 levels, about 14 KB: this used to overflow a worker's stack and abort the node.
        let mut args = Args(nested_table(2000));
        args = args.short("PLAIN").long(b"\0guest\0guest").short("en_US");
        raw.send(&method_frame(0, 10, 11, args));
        raw.expect_connection_close()
    })
    .await
    .unwrap();
    assert_eq!(closed.code, 502, "{closed:?}");
    assert!(
        closed.text.starts_with("SYNTAX_ERROR") && closed.text.contains("nested deeper"),
        "{closed:?}"
    );
    watcher.still_fine(&mut broker).await;
}

#[tokio::test]
async fn deeply_nested_declare_arguments_and_headers_are_refused_and_nothing_is_stored() {
    let mut broker = TestBroker::start();
    let watcher = Bystander::new(&broker).await;
    let port = broker.port;
    let (declare_closed, header_closed, shallow_ok) = block(move || {
        // queue.declare whose arguments nest 64 levels (this used to brick the node's
        // metadata log) and 18,000 levels (this used to abort the node).
        let mut closes = Vec::new();
        for depth in [64, 18_000] {
            let mut raw = Raw::handshake_with(port, 131_072, 0);
            raw.open_channel(1);
            let mut args = Args::new().u16(0).short("deep").u8(0b10).0;
            args.extend(nested_table(depth));
            raw.send(&method_frame(1, 50, 10, Args(args)));
            closes.push(raw.expect_connection_close());
        }
        // A headers property nested 3,000 levels.
        let mut raw = Raw::handshake_with(port, 131_072, 0);
        raw.open_channel(1);
        raw.send(&publish_frame(1, "", "keep"));
        let mut p = Args::new().u16(60).u16(0).u64(0).u16(1 << 13).0;
        p.extend(nested_table(3000));
        raw.send(&frame(FRAME_HEADER, 1, &p));
        let header = raw.expect_connection_close();
        // Nesting as deep as the limit is accepted.
        let mut raw = Raw::handshake_with(port, 131_072, 0);
        raw.open_channel(1);
        let mut args = Args::new().u16(0).short("nested-ok").u8(0b10).0;
        args.extend(nested_table(32));
        raw.send(&method_frame(1, 50, 10, Args(args)));
        let ok = raw.read_frame().expect("declare-ok");
        (closes, header, ok)
    })
    .await
    .unwrap();
    for c in &declare_closed {
        assert_eq!(c.code, 502, "{c:?}");
        assert!(c.text.contains("nested deeper than 32 levels"), "{c:?}");
    }
    assert_eq!(header_closed.code, 501, "{header_closed:?}");
    assert!(
        matches!(
            shallow_ok.method(),
            lapin::protocol::AMQPClass::Queue(lapin::protocol::queue::AMQPMethod::DeclareOk(_))
        ),
        "{shallow_ok:?}"
    );
    watcher.still_fine(&mut broker).await;
    // The node starts again from its own log, and declares go on.
    broker.node.restart();
    let (c, ch) = open(&broker.url()).await;
    assert!(!queue_exists(&c, "deep").await);
    assert_eq!(ready_count(&ch, "nested-ok").await, 0);
    declare(&ch, "after", durable(), FieldTable::default()).await;
}

#[tokio::test]
async fn a_reply_text_longer_than_255_bytes_is_cut_and_the_connection_lives_on() {
    let broker = TestBroker::start();
    let (_owner, owner_ch) = open(&broker.url()).await;
    let name = "q".repeat(250);
    owner_ch
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exclusive declare");
    let (other, ch) = open(&broker.url()).await;
    let err = ch
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("another connection's exclusive queue");
    assert_eq!(code(&err), Some(405), "{err}");
    let t = text(&err);
    assert!(t.starts_with("RESOURCE_LOCKED"), "{t}");
    assert!(t.len() <= 255, "{} bytes", t.len());
    // Only that channel closed: the connection goes on.
    let ch2 = other.create_channel().await.expect("another channel");
    declare(
        &ch2,
        "still-works",
        Default::default(),
        FieldTable::default(),
    )
    .await;
}
