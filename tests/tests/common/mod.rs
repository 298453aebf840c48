//! Helpers shared by the integration test files: lapin shortcuts, polling, warrenctl JSON, and a
//! raw AMQP client (a plain `TcpStream`) for sending what no well-behaved client would.
#![allow(dead_code)]

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::message::{BasicGetMessage, Delivery};
use lapin::options::*;
use lapin::protocol::{AMQPClass, connection};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};

/// How long a test waits for something that should happen "at once".
pub const PATIENCE: Duration = Duration::from_secs(10);

#[allow(unused_imports)]
pub use warren_tests::{Node, TestBroker};

pub async fn connect(url: &str) -> Connection {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

pub async fn open(url: &str) -> (Connection, Channel) {
    let conn = connect(url).await;
    let ch = conn.create_channel().await.expect("channel.open");
    (conn, ch)
}

/// A user's URL on `port`, vhost `vhost` (percent-encoded here).
pub fn url_for(port: u16, user: &str, pass: &str, vhost: &str) -> String {
    let vhost = vhost.replace('%', "%25").replace('/', "%2f");
    format!("amqp://{user}:{pass}@127.0.0.1:{port}/{vhost}")
}

/// The AMQP reply code of an error the broker sent (channel.close or connection.close).
pub fn code(e: &lapin::Error) -> Option<u16> {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => Some(a.get_id()),
        _ => None,
    }
}

/// The reply text of an error the broker sent.
pub fn text(e: &lapin::Error) -> String {
    match e.kind() {
        lapin::ErrorKind::ProtocolError(a) => a.get_message().as_str().to_string(),
        other => format!("{other:?}"),
    }
}

/// Asserts that `r` failed with the broker's `expected` code, and returns the reply text.
#[track_caller]
pub fn expect_code<T: std::fmt::Debug>(r: Result<T, lapin::Error>, expected: u16) -> String {
    match r {
        Ok(v) => panic!("expected AMQP error {expected}, got Ok({v:?})"),
        Err(e) => {
            assert_eq!(code(&e), Some(expected), "unexpected error: {e:?}");
            text(&e)
        }
    }
}

pub async fn declare(
    ch: &Channel,
    name: &str,
    opts: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Queue {
    ch.queue_declare(name.into(), opts, args)
        .await
        .unwrap_or_else(|e| panic!("declare queue {name}: {e}"))
}

pub fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic.publish");
}

/// Publishes on a confirm channel and waits for the broker's ack.
pub async fn publish_confirmed(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirm = ch
        .basic_publish(
            exchange.into(),
            key.into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .expect("basic.publish")
        .await
        .expect("publisher confirm");
    assert!(confirm.is_ack(), "expected an ack, got {confirm:?}");
}

/// One basic.get (no polling).
pub async fn get(ch: &Channel, queue: &str, no_ack: bool) -> Option<BasicGetMessage> {
    ch.basic_get(queue.into(), BasicGetOptions { no_ack })
        .await
        .expect("basic.get")
}

/// basic.get until a message comes (messages routed by another connection may take a moment).
pub async fn get_wait(ch: &Channel, queue: &str, no_ack: bool) -> BasicGetMessage {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(m) = get(ch, queue, no_ack).await {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "no message arrived in queue '{queue}'"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Takes every message from a queue (no-ack) and returns their bodies as strings.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue, true).await {
        out.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    out
}

/// The queue's ready count as queue.declare(passive) reports it.
pub async fn ready_count(ch: &Channel, queue: &str) -> u32 {
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap_or_else(|e| panic!("passive declare of {queue}: {e}"))
    .message_count()
}

pub async fn consume(ch: &Channel, queue: &str, tag: &str, no_ack: bool) -> Consumer {
    consume_with(ch, queue, tag, no_ack, FieldTable::default()).await
}

pub async fn consume_with(
    ch: &Channel,
    queue: &str,
    tag: &str,
    no_ack: bool,
    args: FieldTable,
) -> Consumer {
    ch.basic_consume(
        queue.into(),
        tag.into(),
        BasicConsumeOptions {
            no_ack,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap_or_else(|e| panic!("consume from {queue}: {e}"))
}

/// The next delivery, failing the test if none comes in time.
pub async fn next(consumer: &mut Consumer) -> Delivery {
    match tokio::time::timeout(PATIENCE, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consumer error: {e}"),
        Ok(None) => panic!("consumer was cancelled"),
        Err(_) => panic!("no delivery within {PATIENCE:?}"),
    }
}

/// Asserts that nothing is delivered for `wait`.
pub async fn nothing_for(consumer: &mut Consumer, wait: Duration) {
    if let Ok(item) = tokio::time::timeout(wait, consumer.next()).await {
        match item {
            Some(Ok(d)) => panic!(
                "unexpected delivery: {:?}",
                String::from_utf8_lossy(&d.data)
            ),
            other => panic!("unexpected consumer event: {other:?}"),
        }
    }
}

pub fn body(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

/// Polls `check` until it is true (every 20 ms, up to PATIENCE).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + PATIENCE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether queue `name` exists, asked on a fresh channel (a 404 or 405 closes the channel).
pub async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = conn.create_channel().await.expect("channel");
    let r = ch
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    match r {
        Ok(_) => {
            let _ = ch.close(200, "bye".into()).await;
            true
        }
        Err(e) if code(&e) == Some(404) => false,
        // Another connection's exclusive queue: it exists, but is locked.
        Err(e) if code(&e) == Some(405) => true,
        Err(e) => panic!("passive declare of {name}: {e}"),
    }
}

/// Joins `node` to `seed`'s cluster as RabbitMQ's walkthrough does it.
pub fn join_cluster(node: &Node, seed: &Node) {
    node.ctl_ok(&["stop_app"]);
    node.ctl_ok(&["reset"]);
    node.ctl_ok(&["join_cluster", &seed.full_name()]);
    node.ctl_ok(&["start_app"]);
}

/// Three disc nodes named `<prefix>1..3`, the second and third joined to the first.
pub fn cluster_of_three(dir: &warren_tests::TempDir, prefix: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::new(&format!("{prefix}{i}"), &dir.0))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    for i in 1..3 {
        join_cluster(&nodes[i], &nodes[0]);
    }
    nodes
}

/// Runs `warrenctl <args> --formatter json` and parses the JSON it prints.
pub fn ctl_json(node: &Node, args: &[&str]) -> serde_json::Value {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--formatter", "json"]);
    let out = node.ctl_ok(&all);
    serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("warrenctl {args:?}: not JSON ({e}):\n{out}"))
}

/// The rows of a `list_*` command as JSON objects.
pub fn ctl_rows(node: &Node, args: &[&str]) -> Vec<serde_json::Map<String, serde_json::Value>> {
    match ctl_json(node, args) {
        serde_json::Value::Array(rows) => rows
            .into_iter()
            .map(|r| match r {
                serde_json::Value::Object(o) => o,
                other => panic!("row is not an object: {other}"),
            })
            .collect(),
        other => panic!("expected a JSON array, got {other}"),
    }
}

/// `messages` of queue `name` in vhost `/` according to warrenctl.
pub fn ctl_messages(node: &Node, name: &str) -> Option<u64> {
    ctl_rows(node, &["list_queues", "name", "messages"])
        .into_iter()
        .find(|r| r["name"] == name)
        .map(|r| r["messages"].as_u64().expect("messages is a number"))
}

// ---------------------------------------------------------------------------------------------
// Raw AMQP: frames encoded by hand on a blocking TcpStream.
// ---------------------------------------------------------------------------------------------

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;

#[derive(Debug)]
pub struct Frame {
    pub kind: u8,
    pub channel: u16,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The method this frame carries (panics on non-method frames).
    pub fn method(&self) -> AMQPClass {
        assert_eq!(self.kind, FRAME_METHOD, "not a method frame: {self:?}");
        match lapin::protocol::parse_class(&self.payload[..]) {
            Ok((_, m)) => m,
            Err(e) => panic!("cannot parse method frame {:?}: {e:?}", self.payload),
        }
    }
}

/// Encodes argument lists of methods.
#[derive(Default)]
pub struct Args(pub Vec<u8>);

impl Args {
    pub fn new() -> Args {
        Args(Vec::new())
    }
    pub fn u8(mut self, v: u8) -> Args {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Args {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Args {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Args {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn short(mut self, s: &str) -> Args {
        self.0.push(s.len() as u8);
        self.0.extend_from_slice(s.as_bytes());
        self
    }
    pub fn long(mut self, s: &[u8]) -> Args {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    pub fn empty_table(self) -> Args {
        self.u32(0)
    }
}

pub fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 8);
    f.push(kind);
    f.extend_from_slice(&channel.to_be_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    f.extend_from_slice(payload);
    f.push(FRAME_END);
    f
}

pub fn method_frame(channel: u16, class: u16, method: u16, args: Args) -> Vec<u8> {
    let mut p = Vec::with_capacity(args.0.len() + 4);
    p.extend_from_slice(&class.to_be_bytes());
    p.extend_from_slice(&method.to_be_bytes());
    p.extend_from_slice(&args.0);
    frame(FRAME_METHOD, channel, &p)
}

/// A content header for class basic with no properties.
pub fn header_frame(channel: u16, body_size: u64) -> Vec<u8> {
    let p = Args::new().u16(60).u16(0).u64(body_size).u16(0).0;
    frame(FRAME_HEADER, channel, &p)
}

/// basic.publish to `exchange` with `routing_key`.
/// basic.consume on `channel`: reserved, queue, tag, bits (bit 1: no-ack), no arguments.
pub fn consume_frame(channel: u16, queue: &str, tag: &str, no_ack: bool) -> Vec<u8> {
    method_frame(
        channel,
        60,
        20,
        Args::new()
            .u16(0)
            .short(queue)
            .short(tag)
            .u8(if no_ack { 0b10 } else { 0 })
            .empty_table(),
    )
}

pub fn publish_frame(channel: u16, exchange: &str, routing_key: &str) -> Vec<u8> {
    method_frame(
        channel,
        60,
        40,
        Args::new().u16(0).short(exchange).short(routing_key).u8(0),
    )
}

/// What a raw connection saw when the broker closed it.
#[derive(Debug)]
pub struct Closed {
    pub code: u16,
    pub text: String,
    pub class_id: u16,
    pub method_id: u16,
}

pub struct Raw {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    /// A TCP connection, nothing sent yet.
    pub fn tcp(port: u16) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("tcp connect");
        stream.set_read_timeout(Some(PATIENCE)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// A connection through the whole handshake as guest on vhost `/`, with `frame_max` and
    /// `heartbeat` proposed in tune-ok.
    pub fn handshake_with(port: u16, frame_max: u32, heartbeat: u16) -> Raw {
        Raw::handshake_as(port, frame_max, heartbeat, "guest", "guest")
    }

    /// The server-properties table of connection.start (the connection goes no further).
    pub fn server_properties(port: u16) -> FieldTable {
        let mut raw = Raw::tcp(port);
        raw.send(b"AMQP\x00\x00\x09\x01");
        let start = raw.read_frame().expect("connection.start");
        match start.method() {
            AMQPClass::Connection(connection::AMQPMethod::Start(s)) => s.server_properties,
            other => panic!("expected connection.start, got {other:?}"),
        }
    }

    /// The handshake logging in as `user` with `pass` (PLAIN).
    pub fn handshake_as(port: u16, frame_max: u32, heartbeat: u16, user: &str, pass: &str) -> Raw {
        let mut raw = Raw::tcp(port);
        raw.send(b"AMQP\x00\x00\x09\x01");
        let start = raw.read_frame().expect("connection.start");
        assert!(
            matches!(
                start.method(),
                AMQPClass::Connection(connection::AMQPMethod::Start(_))
            ),
            "expected connection.start, got {start:?}"
        );
        raw.send(&method_frame(
            0,
            10,
            11,
            Args::new()
                .empty_table()
                .short("PLAIN")
                .long(format!("\0{user}\0{pass}").as_bytes())
                .short("en_US"),
        ));
        let tune = raw.read_frame().expect("connection.tune");
        let AMQPClass::Connection(connection::AMQPMethod::Tune(t)) = tune.method() else {
            panic!("expected connection.tune, got {tune:?}");
        };
        let frame_max = if t.frame_max == 0 {
            frame_max
        } else {
            frame_max.min(t.frame_max)
        };
        raw.send(&method_frame(
            0,
            10,
            31,
            Args::new().u16(t.channel_max).u32(frame_max).u16(heartbeat),
        ));
        raw.send(&method_frame(
            0,
            10,
            40,
            Args::new().short("/").short("").u8(0),
        ));
        let open_ok = raw.read_frame().expect("connection.open-ok");
        assert!(
            matches!(
                open_ok.method(),
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
            ),
            "expected connection.open-ok, got {open_ok:?}"
        );
        raw
    }

    /// The handshake with frame_max 4096 and no heartbeats.
    pub fn handshake(port: u16) -> Raw {
        Raw::handshake_with(port, 4096, 0)
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// Sends channel.open and waits for open-ok.
    pub fn open_channel(&mut self, channel: u16) {
        self.send(&method_frame(channel, 20, 10, Args::new().short("")));
        let f = self.read_frame().expect("channel.open-ok");
        assert!(
            matches!(
                f.method(),
                AMQPClass::Channel(lapin::protocol::channel::AMQPMethod::OpenOk(_))
            ),
            "expected channel.open-ok, got {f:?}"
        );
    }

    /// Reads raw bytes until `n` are there or the peer closes; returns what came.
    pub fn read_bytes(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(k) => self.buf.extend_from_slice(&chunk[..k]),
            }
        }
        let take = n.min(self.buf.len());
        self.buf.drain(..take).collect()
    }

    /// The next frame, or None once the peer closed the socket (or the read timed out).
    pub fn read_frame(&mut self) -> Option<Frame> {
        let head = self.read_bytes(7);
        if head.len() < 7 {
            return None;
        }
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let rest = self.read_bytes(size + 1);
        if rest.len() < size + 1 {
            return None;
        }
        assert_eq!(
            rest[size], FRAME_END,
            "frame from the broker lacks its end marker"
        );
        Some(Frame {
            kind: head[0],
            channel: u16::from_be_bytes([head[1], head[2]]),
            payload: rest[..size].to_vec(),
        })
    }

    /// Sends connection.update-secret (class 10, method 70).
    pub fn send_update_secret(&mut self, secret: &[u8], reason: &str) {
        self.send(&method_frame(
            0,
            10,
            70,
            Args::new().long(secret).short(reason),
        ));
    }

    /// Sends connection.update-secret and asserts that the broker answers update-secret-ok.
    pub fn update_secret_ok(&mut self, secret: &[u8], reason: &str) {
        self.send_update_secret(secret, reason);
        let ok = self.read_frame().expect("update-secret-ok");
        assert!(
            matches!(
                ok.method(),
                AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(_))
            ),
            "{ok:?}"
        );
    }

    /// Reads until the broker's connection.close, answers close-ok and checks that the broker
    /// then closes the socket.
    pub fn expect_connection_close(&mut self) -> Closed {
        loop {
            let Some(f) = self.read_frame() else {
                panic!("socket closed without connection.close");
            };
            if f.kind != FRAME_METHOD || f.channel != 0 {
                continue;
            }
            if let AMQPClass::Connection(connection::AMQPMethod::Close(c)) = f.method() {
                self.send(&method_frame(0, 10, 51, Args::new()));
                self.expect_eof();
                return Closed {
                    code: c.reply_code,
                    text: c.reply_text.as_str().to_string(),
                    class_id: c.class_id,
                    method_id: c.method_id,
                };
            }
        }
    }

    /// Asserts that the broker closes the socket (within PATIENCE), ignoring any bytes first.
    pub fn expect_eof(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        self.buf.clear();
        loop {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ) =>
                {
                    return;
                }
                Err(e) => panic!("socket still open: {e}"),
            }
            assert!(Instant::now() < deadline, "socket still open");
        }
    }
}
