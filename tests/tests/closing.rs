//! Closing as the spec and RabbitMQ do it, on raw sockets: a close after a burst gets its
//! close-ok and a clean end (no reset), both sides closing a channel at once costs only that
//! channel, nothing goes out on a channel after its close, and channel.flow active=false is
//! refused as RabbitMQ refuses it.

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;
use lapin::protocol::{AMQPClass, basic, channel, connection, queue};

fn is_close_ok(f: &Frame) -> bool {
    f.kind == FRAME_METHOD
        && matches!(
            f.method(),
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
        )
}

/// A publish of `body` to the default exchange with routing key `key` on `ch`.
fn publish(ch: u16, key: &str, body: &[u8], persistent: bool) -> Vec<u8> {
    let mut out = publish_frame(ch, "", key);
    let mut header = Args::new().u16(60).u16(0).u64(body.len() as u64);
    header = if persistent {
        header.u16(1 << 12).u8(2)
    } else {
        header.u16(0)
    };
    out.extend(frame(FRAME_HEADER, ch, &header.0));
    out.extend(frame(FRAME_BODY, ch, body));
    out
}

#[test]
fn a_close_after_a_burst_gets_close_ok_and_a_clean_end() {
    let broker = TestBroker::start();
    let mut raw = Raw::handshake(broker.port);
    raw.open_channel(1);
    // 2,000 publishes and the close in one write, as amqplib sends them.
    let mut burst = Vec::new();
    for i in 0..2000 {
        burst.extend(publish(1, "nowhere", format!("m{i}").as_bytes(), false));
    }
    burst.extend(method_frame(
        0,
        10,
        50,
        Args::new().u16(200).short("bye").u16(0).u16(0),
    ));
    raw.send(&burst);
    let f = raw.read_frame().expect("connection.close-ok, not a reset");
    assert!(
        matches!(
            f.method(),
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
        ),
        "{f:?}"
    );
    // Then the broker's FIN: a read returns 0, not ECONNRESET.
    let mut rest = [0u8; 64];
    match raw.stream.read(&mut rest) {
        Ok(0) => {}
        other => panic!("expected a clean end of stream, got {other:?}"),
    }
}

#[test]
fn both_sides_closing_a_channel_at_once_closes_only_that_channel() {
    let broker = TestBroker::start();
    let mut raw = Raw::handshake(broker.port);
    raw.open_channel(1);
    // A publish to a missing exchange (the broker closes the channel with 404) and, before
    // that close arrives, the client's own channel.close.
    let mut both = method_frame(
        1,
        60,
        40,
        Args::new().u16(0).short("missing").short("k").u8(0),
    );
    both.extend(frame(
        FRAME_HEADER,
        1,
        &Args::new().u16(60).u16(0).u64(1).u16(0).0,
    ));
    both.extend(frame(FRAME_BODY, 1, b"x"));
    both.extend(method_frame(
        1,
        20,
        40,
        Args::new().u16(200).short("client closing").u16(0).u16(0),
    ));
    raw.send(&both);
    let mut saw_close = false;
    let mut saw_close_ok = false;
    while !(saw_close && saw_close_ok) {
        let f = raw.read_frame().expect("a frame");
        assert_eq!(f.channel, 1, "{f:?}");
        match f.method() {
            AMQPClass::Channel(channel::AMQPMethod::Close(c)) => {
                assert_eq!(c.reply_code, 404, "{c:?}");
                saw_close = true;
            }
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => saw_close_ok = true,
            other => panic!("unexpected {other:?}"),
        }
    }
    // The client's close-ok to the broker's close: not an error.
    raw.send(&method_frame(1, 20, 41, Args::new()));
    // The connection and its other channels go on; the number can be opened again.
    raw.open_channel(2);
    raw.open_channel(1);
    raw.send(&method_frame(
        2,
        50,
        10,
        Args::new().u16(0).short("after").u8(0).empty_table(),
    ));
    let f = raw.read_frame().expect("declare-ok");
    assert!(
        matches!(
            f.method(),
            AMQPClass::Queue(queue::AMQPMethod::DeclareOk(_))
        ),
        "{f:?}"
    );
}

#[test]
fn nothing_goes_out_on_a_channel_after_its_close() {
    let broker = TestBroker::start();
    let mut raw = Raw::handshake(broker.port);
    raw.open_channel(1);
    raw.send(&method_frame(
        1,
        50,
        10,
        Args::new().u16(0).short("durable-q").u8(0b10).empty_table(),
    ));
    raw.read_frame().expect("declare-ok");
    raw.send(&method_frame(1, 85, 10, Args::new().u8(0)));
    raw.read_frame().expect("confirm.select-ok");
    // Persistent publishes (their acks wait for an fsync) and the close right behind them.
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend(publish(1, "durable-q", format!("m{i}").as_bytes(), true));
    }
    burst.extend(method_frame(
        1,
        20,
        40,
        Args::new().u16(200).short("done").u16(0).u16(0),
    ));
    raw.send(&burst);
    // Acks may come before the close-ok; none after it.
    loop {
        let f = raw.read_frame().expect("close-ok");
        if is_close_ok(&f) {
            break;
        }
        assert!(
            matches!(f.method(), AMQPClass::Basic(basic::AMQPMethod::Ack(_))),
            "{f:?}"
        );
    }
    raw.stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("timeout");
    if let Some(f) = raw.read_frame() {
        panic!("a frame on a closed channel: {f:?}");
    }
}

#[test]
fn channel_flow_active_false_is_not_implemented_as_in_rabbitmq() {
    let broker = TestBroker::start();
    let mut raw = Raw::handshake(broker.port);
    raw.open_channel(1);
    raw.send(&method_frame(1, 20, 20, Args::new().u8(0)));
    let closed = raw.expect_connection_close();
    assert_eq!(closed.code, 540, "{closed:?}");
    assert_eq!(closed.text, "NOT_IMPLEMENTED - active=false");
    // active=true is fine.
    let mut raw = Raw::handshake(broker.port);
    raw.open_channel(1);
    raw.send(&method_frame(1, 20, 20, Args::new().u8(1)));
    let f = raw.read_frame().expect("flow-ok");
    assert!(
        matches!(
            f.method(),
            AMQPClass::Channel(channel::AMQPMethod::FlowOk(channel::FlowOk {
                active: true
            }))
        ),
        "{f:?}"
    );
}

#[test]
fn a_channel_number_past_channel_max_is_out_of_range() {
    let broker = TestBroker::start();
    let mut raw = Raw::handshake(broker.port);
    raw.send(&method_frame(65535, 20, 10, Args::new().short("")));
    let closed = raw.expect_connection_close();
    assert_eq!(closed.code, 530, "{closed:?}");
    assert_eq!(
        closed.text,
        "NOT_ALLOWED - channel number 65535 is out of range 1..2047 (the negotiated channel_max)"
    );
}
