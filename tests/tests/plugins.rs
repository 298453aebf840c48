//! Plugins as a user meets them: the built-in exchange types routing as RabbitMQ documents,
//! `x-consistent-hash`, `warren-plugins` on running and stopped nodes, two nodes with their own
//! plugin configuration, OAuth 2 tokens as passwords, and a misbehaving plugin that must not
//! take the node down with it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use warren_tests::{TempDir, free_port, wasm_plugin_dir};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

fn custom(kind: &str) -> ExchangeKind {
    ExchangeKind::Custom(kind.to_string())
}

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, arguments: FieldTable) {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        arguments,
    )
    .await
    .unwrap_or_else(|e| panic!("declare exchange {name}: {e}"));
}

async fn try_exchange(
    conn: &Connection,
    name: &str,
    kind: ExchangeKind,
    arguments: FieldTable,
) -> Result<(), lapin::Error> {
    let ch = conn.create_channel().await.expect("channel");
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions::default(),
        arguments,
    )
    .await
}

async fn queue(ch: &Channel, name: &str) {
    declare(ch, name, Default::default(), FieldTable::default()).await;
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        key.into(),
        QueueBindOptions::default(),
        arguments,
    )
    .await
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange} with '{key}': {e}"));
}

/// A confirm channel on `conn`.
async fn confirm_channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(Default::default())
        .await
        .expect("confirm.select");
    ch
}

/// Publishes (body = routing key) on a confirm channel and waits for every confirm, so the
/// messages are in their queues when it returns.
async fn publish_keys(ch: &Channel, exchange: &str, keys: &[&str]) {
    for k in keys {
        publish(ch, exchange, k, k.as_bytes(), Default::default()).await;
    }
    ch.wait_for_confirms().await.expect("confirms");
}

/// Publishes once on a confirm channel and returns the confirm's outcome (the broker's error
/// if it closed the channel or the connection instead).
async fn publish_outcome(
    ch: &Channel,
    exchange: &str,
    key: &str,
    props: BasicProperties,
) -> Result<lapin::Confirmation, lapin::Error> {
    ch.basic_publish(
        exchange.into(),
        key.into(),
        BasicPublishOptions::default(),
        key.as_bytes(),
        props,
    )
    .await?
    .await
}

/// A free port that is none of `taken` (ports handed out but not bound yet).
fn free_port_except(taken: &[u16]) -> u16 {
    loop {
        let p = free_port();
        if !taken.contains(&p) {
            return p;
        }
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `warren-plugins args`, asserting exit status 0; returns stdout.
#[track_caller]
fn plugins_ok(node: &Node, args: &[&str]) -> String {
    let o = node.plugins(args);
    assert!(
        o.status.success(),
        "warren-plugins {args:?} failed ({:?}):\n{}\n{}",
        o.status.code(),
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

/// Runs `warren-plugins args`, asserting exit `code`; returns stderr.
#[track_caller]
fn plugins_fail(node: &Node, args: &[&str], code: i32) -> String {
    let o = node.plugins(args);
    assert_eq!(
        o.status.code(),
        Some(code),
        "warren-plugins {args:?}: stdout:\n{}\nstderr:\n{}",
        stdout(&o),
        stderr(&o)
    );
    stderr(&o)
}

/// The `[..]` marker of plugin `name` in `warren-plugins list` output, e.g. "[E*]".
#[track_caller]
fn marker(list: &str, name: &str) -> String {
    list.lines()
        .find(|l| {
            l.starts_with('[')
                && l.get(5..)
                    .is_some_and(|rest| rest.split_whitespace().next() == Some(name))
        })
        .map(|l| l[..4].to_string())
        .unwrap_or_else(|| panic!("plugin {name} not listed:\n{list}"))
}

/// A plain HTTP/1.1 GET on localhost: (status, body), or None if nothing listens (yet).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(PATIENCE)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost:{port}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // Stop at EOF, or once the body promised by content-length is there.
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// GET /metrics until it answers 200 (the listener may start a moment after the node).
async fn metrics(port: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .unwrap();
        match got {
            Some((200, body)) => return body,
            other => assert!(
                Instant::now() < deadline,
                "no /metrics on port {port}: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of sample `series` (name and labels exactly) in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series))
        .and_then(|rest| rest.trim().parse().ok())
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/oauth2")
        .join(name)
}

fn token(name: &str) -> String {
    std::fs::read_to_string(fixture(name))
        .expect("token fixture")
        .trim()
        .to_string()
}

/// An AMQP URI for `user`/`pass` on vhost `/`; unlike a URL string it can carry an empty
/// username (the URL parser turns "" into "guest").
fn uri(port: u16, user: &str, pass: &str) -> AMQPUri {
    let mut u: AMQPUri = format!("amqp://x:y@127.0.0.1:{port}/%2f")
        .parse()
        .expect("uri");
    u.authority.userinfo.username = user.to_string();
    u.authority.userinfo.password = pass.to_string();
    u
}

async fn connect_as(port: u16, user: &str, pass: &str) -> Result<Connection, lapin::Error> {
    Connection::connect_uri(uri(port, user, pass), Default::default()).await
}

/// A node whose WARREN_PLUGINS_DIR holds test-misbehave and two plugins that cannot load:
/// `not-a-component` (random bytes) and `wrong-world` (an auth component claiming to be an
/// exchange type).
fn plugin_dir_with_misbehave(base: &Path) -> PathBuf {
    let dir = base.join("plugins");
    std::fs::create_dir_all(&dir).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    std::fs::copy(
        wasm_plugin_dir().join("test_misbehave.wasm"),
        dir.join("test-misbehave.wasm"),
    )
    .expect("test_misbehave.wasm is built by host/build.rs");
    std::fs::copy(
        repo.join("plugins/test-misbehave/plugin.toml"),
        dir.join("test-misbehave.toml"),
    )
    .unwrap();
    // Not a component at all: bytes that are neither wasm nor anything else.
    let junk: Vec<u8> = (0u32..4096)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("not-a-component.wasm"), junk).unwrap();
    std::fs::write(
        dir.join("not-a-component.toml"),
        "name = \"not-a-component\"\nversion = \"0.0.1\"\ndescription = \"junk\"\n\
         kind = \"exchange-type\"\nexchange_type = \"x-junk\"\n",
    )
    .unwrap();
    // A real component, but of the auth-plugin world.
    std::fs::copy(
        wasm_plugin_dir().join("auth_internal.wasm"),
        dir.join("wrong-world.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.join("wrong-world.toml"),
        "name = \"wrong-world\"\nversion = \"0.0.1\"\ndescription = \"an auth backend in disguise\"\n\
         kind = \"exchange-type\"\nexchange_type = \"x-wrong-world\"\n",
    )
    .unwrap();
    dir
}

// ---------------------------------------------------------------------------------------------
// 1. The built-in exchange types
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn builtin_exchange_types_route_as_rabbitmq_documents() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    let pubch = confirm_channel(&conn).await;

    // direct: exact, case-sensitive key match; one queue may have several keys.
    exchange(&ch, "d", ExchangeKind::Direct, FieldTable::default()).await;
    for (q, keys) in [("d1", &["k1"][..]), ("d2", &["k2"]), ("d12", &["k1", "k2"])] {
        queue(&ch, q).await;
        for k in keys {
            bind(&ch, q, "d", k, FieldTable::default()).await;
        }
    }
    publish_keys(&pubch, "d", &["k1", "k2", "K1", "k1.x", ""]).await;
    assert_eq!(drain(&ch, "d1").await, ["k1"]);
    assert_eq!(drain(&ch, "d2").await, ["k2"]);
    assert_eq!(drain(&ch, "d12").await, ["k1", "k2"]);

    // fanout: the key is ignored on both sides.
    exchange(&ch, "f", ExchangeKind::Fanout, FieldTable::default()).await;
    for (q, k) in [("f1", "x"), ("f2", "")] {
        queue(&ch, q).await;
        bind(&ch, q, "f", k, FieldTable::default()).await;
    }
    publish_keys(&pubch, "f", &["x", "", "y.z"]).await;
    for q in ["f1", "f2"] {
        assert_eq!(drain(&ch, q).await, ["x", "", "y.z"], "{q}");
    }

    // topic: `*` is exactly one word, `#` zero or more; "" has zero words, "a..c" three.
    exchange(&ch, "t", ExchangeKind::Topic, FieldTable::default()).await;
    let keys = [
        "a.b.c", "a.c", "c", "a", "", "a.b.b.c", "a.c.d", "b.a", "a..c",
    ];
    let cases: [(&str, &[&str]); 10] = [
        ("a.*.c", &["a.b.c", "a..c"]),
        ("#.c", &["a.b.c", "a.c", "c", "a.b.b.c", "a..c"]),
        ("a.#", &["a.b.c", "a.c", "a", "a.b.b.c", "a.c.d", "a..c"]),
        ("#", &keys),
        ("*", &["c", "a"]),
        ("", &[""]),
        ("a.#.c", &["a.b.c", "a.c", "a.b.b.c", "a..c"]),
        ("*.*", &["a.c", "b.a"]),
        ("a.b.c", &["a.b.c"]),
        ("#.#", &keys),
    ];
    for (i, (pattern, _)) in cases.iter().enumerate() {
        let q = format!("t{i}");
        queue(&ch, &q).await;
        bind(&ch, &q, "t", pattern, FieldTable::default()).await;
    }
    // Two overlapping patterns on one queue: each message at most once.
    queue(&ch, "t-both").await;
    bind(&ch, "t-both", "t", "a.#", FieldTable::default()).await;
    bind(&ch, "t-both", "t", "#.c", FieldTable::default()).await;
    publish_keys(&pubch, "t", &keys).await;
    for (i, (pattern, expected)) in cases.iter().enumerate() {
        assert_eq!(
            drain(&ch, &format!("t{i}")).await,
            *expected,
            "topic pattern '{pattern}'"
        );
    }
    assert_eq!(
        drain(&ch, "t-both").await,
        ["a.b.c", "a.c", "c", "a", "a.b.b.c", "a.c.d", "a..c"]
    );

    // headers: all / any skip x- keys in the binding, all-with-x / any-with-x keep them.
    exchange(&ch, "h", ExchangeKind::Headers, FieldTable::default()).await;
    let bindings = [
        (
            "h-all",
            args(&[
                ("x-match", long("all")),
                ("fmt", long("pdf")),
                ("type", long("report")),
            ]),
        ),
        (
            "h-any",
            args(&[
                ("x-match", long("any")),
                ("fmt", long("pdf")),
                ("type", long("report")),
            ]),
        ),
        (
            "h-all-x",
            args(&[
                ("x-match", long("all-with-x")),
                ("x-tenant", long("t1")),
                ("fmt", long("pdf")),
            ]),
        ),
        (
            "h-any-x",
            args(&[
                ("x-match", long("any-with-x")),
                ("x-tenant", long("t1")),
                ("fmt", long("pdf")),
            ]),
        ),
        // Only x- keys under plain `all`: the pattern is empty, so everything matches.
        (
            "h-all-only-x",
            args(&[("x-match", long("all")), ("x-tenant", long("t1"))]),
        ),
        (
            "h-any-skips-x",
            args(&[
                ("x-match", long("any")),
                ("x-tenant", long("t1")),
                ("fmt", long("pdf")),
            ]),
        ),
    ];
    for (q, a) in &bindings {
        queue(&ch, q).await;
        bind(&ch, q, "h", "", a.clone()).await;
    }
    let messages = [
        (
            "both",
            args(&[("fmt", long("pdf")), ("type", long("report"))]),
        ),
        ("fmt", args(&[("fmt", long("pdf"))])),
        ("tenant", args(&[("x-tenant", long("t1"))])),
        (
            "tenant-fmt",
            args(&[("x-tenant", long("t1")), ("fmt", long("pdf"))]),
        ),
        (
            "other-tenant",
            args(&[("x-tenant", long("t2")), ("fmt", long("zip"))]),
        ),
        ("none", FieldTable::default()),
    ];
    for (body, headers) in &messages {
        pubch
            .basic_publish(
                "h".into(),
                "ignored".into(),
                Default::default(),
                body.as_bytes(),
                BasicProperties::default().with_headers(headers.clone()),
            )
            .await
            .unwrap();
    }
    pubch.wait_for_confirms().await.unwrap();
    let all: Vec<&str> = messages.iter().map(|(b, _)| *b).collect();
    for (q, expected) in [
        ("h-all", &["both"][..]),
        ("h-any", &["both", "fmt", "tenant-fmt"]),
        ("h-all-x", &["tenant-fmt"]),
        ("h-any-x", &["both", "fmt", "tenant", "tenant-fmt"]),
        ("h-all-only-x", &all),
        ("h-any-skips-x", &["both", "fmt", "tenant-fmt"]),
    ] {
        assert_eq!(drain(&ch, q).await, expected, "headers binding {q}");
    }

    // Exchange-to-exchange: headers → topic → queue, both routers are plugins.
    exchange(&ch, "e2e-src", ExchangeKind::Headers, FieldTable::default()).await;
    exchange(&ch, "e2e-dst", ExchangeKind::Topic, FieldTable::default()).await;
    ch.exchange_bind(
        "e2e-dst".into(),
        "e2e-src".into(),
        "".into(),
        Default::default(),
        args(&[("x-match", long("any")), ("route", long("yes"))]),
    )
    .await
    .unwrap();
    queue(&ch, "e2e-q").await;
    bind(&ch, "e2e-q", "e2e-dst", "a.*", FieldTable::default()).await;
    for (key, route) in [
        ("a.b", "yes"),
        ("b.b", "yes"),
        ("a.c", "no"),
        ("a.d", "yes"),
    ] {
        pubch
            .basic_publish(
                "e2e-src".into(),
                key.into(),
                Default::default(),
                key.as_bytes(),
                BasicProperties::default().with_headers(args(&[("route", long(route))])),
            )
            .await
            .unwrap();
    }
    pubch.wait_for_confirms().await.unwrap();
    let m = get_wait(&ch, "e2e-q", true).await;
    assert_eq!(m.delivery.exchange.as_str(), "e2e-src");
    assert_eq!(m.delivery.data, b"a.b");
    assert_eq!(drain(&ch, "e2e-q").await, ["a.d"]);

    // alternate-exchange: a direct exchange hands what it cannot route to a topic exchange.
    exchange(&ch, "ae", ExchangeKind::Topic, FieldTable::default()).await;
    exchange(
        &ch,
        "ae-main",
        ExchangeKind::Direct,
        args(&[("alternate-exchange", long("ae"))]),
    )
    .await;
    for q in ["ae-known", "ae-lost"] {
        queue(&ch, q).await;
    }
    bind(&ch, "ae-known", "ae-main", "known", FieldTable::default()).await;
    bind(&ch, "ae-lost", "ae", "#.lost", FieldTable::default()).await;
    publish_keys(&pubch, "ae-main", &["known", "x.lost", "other", "lost"]).await;
    assert_eq!(drain(&ch, "ae-known").await, ["known"]);
    assert_eq!(drain(&ch, "ae-lost").await, ["x.lost", "lost"]);
}

// ---------------------------------------------------------------------------------------------
// 2. x-consistent-hash
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn consistent_hash_spreads_by_weight_once_enabled() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    // Not there until enabled.
    let e = try_exchange(
        &conn,
        "chx",
        custom("x-consistent-hash"),
        FieldTable::default(),
    )
    .await;
    assert_eq!(
        expect_code(e, 406),
        "PRECONDITION_FAILED - invalid exchange type 'x-consistent-hash'"
    );
    let out = plugins_ok(&broker, &["enable", "exchange-consistent-hash"]);
    assert!(out.contains("exchange-consistent-hash"), "{out}");
    assert_eq!(
        marker(&plugins_ok(&broker, &["list"]), "exchange-consistent-hash"),
        "[E*]"
    );

    exchange(
        &ch,
        "chx",
        custom("x-consistent-hash"),
        FieldTable::default(),
    )
    .await;
    let weights = [("ch-a", "1"), ("ch-b", "1"), ("ch-c", "2")];
    for (q, w) in weights {
        queue(&ch, q).await;
        bind(&ch, q, "chx", w, FieldTable::default()).await;
    }
    const N: usize = 4000;
    let keys: Vec<String> = (0..N).map(|i| format!("order-{i}")).collect();
    let pubch = confirm_channel(&conn).await;
    for k in &keys {
        publish(&pubch, "chx", k, k.as_bytes(), Default::default()).await;
    }
    pubch.wait_for_confirms().await.unwrap();
    let mut owner: BTreeMap<String, &str> = BTreeMap::new();
    let mut counts = Vec::new();
    for (q, _) in weights {
        let got = drain(&ch, q).await;
        counts.push(got.len());
        for body in got {
            if let Some(other) = owner.insert(body.clone(), q) {
                panic!("message {body} reached both {other} and {q}");
            }
        }
    }
    assert_eq!(
        owner.len(),
        N,
        "every message lands in exactly one queue: {counts:?}"
    );
    for ((q, _), (count, want)) in weights.iter().zip(counts.iter().zip([25.0, 25.0, 50.0])) {
        let share = *count as f64 * 100.0 / N as f64;
        assert!(
            (share - want).abs() <= 5.0,
            "queue {q} got {share:.1}% of the messages, expected {want}% ± 5 (counts {counts:?})"
        );
    }
    // Consistent: the same keys go to the same queues again.
    let again: Vec<&str> = keys.iter().take(200).map(String::as_str).collect();
    publish_keys(&pubch, "chx", &again).await;
    for (q, _) in weights {
        for body in drain(&ch, q).await {
            assert_eq!(owner[&body], q, "key {body} moved");
        }
    }

    // hash-header: messages with the same header value stay together, whatever their key.
    exchange(
        &ch,
        "chh",
        custom("x-consistent-hash"),
        args(&[("hash-header", long("user"))]),
    )
    .await;
    for q in ["chh-1", "chh-2"] {
        queue(&ch, q).await;
        bind(&ch, q, "chh", "1", FieldTable::default()).await;
    }
    for i in 0..300 {
        let user = format!("user-{}", i % 50);
        let key = format!("key-{i}");
        pubch
            .basic_publish(
                "chh".into(),
                key.as_str().into(),
                Default::default(),
                user.as_bytes(),
                BasicProperties::default().with_headers(args(&[("user", long(&user))])),
            )
            .await
            .unwrap();
    }
    pubch.wait_for_confirms().await.unwrap();
    let one: BTreeSet<String> = drain(&ch, "chh-1").await.into_iter().collect();
    let two: BTreeSet<String> = drain(&ch, "chh-2").await.into_iter().collect();
    assert!(
        one.is_disjoint(&two),
        "a header value went to both queues: {:?}",
        one.intersection(&two).collect::<Vec<_>>()
    );
    assert_eq!(one.len() + two.len(), 50, "{one:?} {two:?}");
    assert!(
        !one.is_empty() && !two.is_empty(),
        "50 header values all hashed to one queue"
    );

    // The binding key is the weight: anything but an integer is refused.
    let bad = conn.create_channel().await.unwrap();
    let t = expect_code(
        bad.queue_bind(
            "ch-a".into(),
            "chx".into(),
            "heavy".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        406,
    );
    assert!(
        t.starts_with("PRECONDITION_FAILED - The binding key must be an integer"),
        "{t}"
    );
    assert!(
        conn.status().connected(),
        "a refused bind is a channel error"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. warren-plugins on a running node
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn enabling_and_disabling_on_a_running_node_takes_effect_at_once() {
    let broker = TestBroker::start();
    let list = plugins_ok(&broker, &["list"]);
    for p in [
        "exchange-direct",
        "exchange-fanout",
        "exchange-topic",
        "exchange-headers",
        "auth-internal",
    ] {
        assert_eq!(marker(&list, p), "[E*]", "{p}:\n{list}");
    }
    for p in ["exchange-consistent-hash", "auth-oauth2", "prometheus"] {
        assert_eq!(marker(&list, p), "[  ]", "{p}:\n{list}");
    }

    let (conn, ch) = open(&broker.url()).await;
    let pubch = confirm_channel(&conn).await;
    queue(&ch, "hq").await;
    bind(&ch, "hq", "amq.headers", "", args(&[("k", long("v"))])).await;
    let hdr = || BasicProperties::default().with_headers(args(&[("k", long("v"))]));
    publish_outcome(&pubch, "amq.headers", "before", hdr())
        .await
        .unwrap();
    assert_eq!(drain(&ch, "hq").await, ["before"]);

    // Disable headers: the type is gone at once.
    plugins_ok(&broker, &["disable", "exchange-headers"]);
    assert_eq!(
        marker(&plugins_ok(&broker, &["list"]), "exchange-headers"),
        "[  ]"
    );
    let e = try_exchange(&conn, "hx", ExchangeKind::Headers, FieldTable::default()).await;
    assert_eq!(
        expect_code(e, 406),
        "PRECONDITION_FAILED - invalid exchange type 'headers'"
    );
    // amq.headers stays, but routes nowhere while its type is away.
    publish_outcome(&pubch, "amq.headers", "during", hdr())
        .await
        .unwrap();
    assert_eq!(drain(&ch, "hq").await, Vec::<String>::new());

    // Enable it again: declaring works and amq.headers routes on its old binding again.
    plugins_ok(&broker, &["enable", "exchange-headers"]);
    assert_eq!(
        marker(&plugins_ok(&broker, &["list"]), "exchange-headers"),
        "[E*]"
    );
    exchange(&ch, "hx", ExchangeKind::Headers, FieldTable::default()).await;
    publish_outcome(&pubch, "amq.headers", "after", hdr())
        .await
        .unwrap();
    assert_eq!(drain(&ch, "hq").await, ["after"]);
    let enabled = std::fs::read_to_string(broker.data_dir().join("enabled_plugins")).unwrap();
    assert!(enabled.contains("exchange-headers"), "{enabled}");

    // A type a user-declared exchange uses cannot be disabled.
    exchange(&ch, "my-topic", ExchangeKind::Topic, FieldTable::default()).await;
    let err = plugins_fail(&broker, &["disable", "exchange-topic"], 65);
    assert!(err.contains("my-topic"), "{err}");
    assert_eq!(
        marker(&plugins_ok(&broker, &["list"]), "exchange-topic"),
        "[E*]"
    );
    queue(&ch, "tq").await;
    bind(&ch, "tq", "my-topic", "a.#", FieldTable::default()).await;
    publish_keys(&pubch, "my-topic", &["a.b", "b.a"]).await;
    assert_eq!(drain(&ch, "tq").await, ["a.b"]);

    // Names nobody knows.
    for cmd in ["enable", "disable"] {
        let err = plugins_fail(&broker, &[cmd, "no-such-plugin"], 64);
        assert!(
            err.contains("The following plugins could not be found: no-such-plugin"),
            "{cmd}: {err}"
        );
    }
    broker.ctl_ok(&["status"]);
}

// ---------------------------------------------------------------------------------------------
// 4. warren-plugins on a stopped node
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn enabling_on_a_stopped_node_takes_effect_at_start() {
    let dir = TempDir::new("plugins-offline");
    let mut node = Node::new("rabbit", &dir.0);
    let prom = free_port_except(&[node.port]);
    node.config = format!("prometheus.tcp.port = {prom}\n");
    std::fs::create_dir_all(node.data_dir()).unwrap();
    std::fs::write(node.data_dir().join("warren.conf"), &node.config).unwrap();

    let out = plugins_ok(&node, &["enable", "prometheus"]);
    assert!(out.contains("Offline change"), "{out}");
    let enabled = std::fs::read_to_string(node.data_dir().join("enabled_plugins")).unwrap();
    assert!(enabled.contains("prometheus"), "{enabled}");
    let list = plugins_ok(&node, &["list"]);
    assert_eq!(marker(&list, "prometheus"), "[E ]", "{list}");
    assert_eq!(marker(&list, "exchange-direct"), "[E ]", "{list}");
    assert_eq!(marker(&list, "exchange-consistent-hash"), "[  ]", "{list}");
    assert!(
        tokio::task::spawn_blocking(move || http_get(prom, "/metrics"))
            .await
            .unwrap()
            .is_none(),
        "something answers on {prom} before the node starts"
    );

    node.start();
    let page = metrics(prom).await;
    let identity = format!(
        "rabbitmq_identity_info{{rabbitmq_node=\"{0}\",rabbitmq_cluster=\"{0}\"}}",
        node.full_name()
    );
    assert_eq!(sample(&page, &identity), Some(1.0), "{page}");
    assert_eq!(marker(&plugins_ok(&node, &["list"]), "prometheus"), "[E*]");
    // And the rest of the node is as usual.
    let (_c, ch) = open(&node.url()).await;
    queue(&ch, "q").await;
}

// ---------------------------------------------------------------------------------------------
// 5. Two nodes on one host, each with its own plugins
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn two_nodes_on_one_host_have_their_own_plugins_and_ports() {
    let dir = TempDir::new("plugins-two");
    let mut a = Node::new("alpha", &dir.0);
    let mut b = Node::new("beta", &dir.0);
    let pa = free_port_except(&[a.port, b.port]);
    let pb = free_port_except(&[a.port, b.port, pa]);
    a.config = format!("prometheus.tcp.port = {pa}\n");
    b.config = format!("prometheus.tcp.port = {pb}\n");
    a.start();
    b.start();
    plugins_ok(&a, &["enable", "prometheus"]);
    plugins_ok(&b, &["enable", "prometheus", "exchange-consistent-hash"]);
    let (la, lb) = (plugins_ok(&a, &["list"]), plugins_ok(&b, &["list"]));
    assert_eq!(marker(&la, "prometheus"), "[E*]");
    assert_eq!(marker(&la, "exchange-consistent-hash"), "[  ]");
    assert_eq!(marker(&lb, "prometheus"), "[E*]");
    assert_eq!(marker(&lb, "exchange-consistent-hash"), "[E*]");

    for (node, port) in [(&a, pa), (&b, pb)] {
        let page = metrics(port).await;
        let identity = format!(
            "rabbitmq_identity_info{{rabbitmq_node=\"{0}\",rabbitmq_cluster=\"{0}\"}}",
            node.full_name()
        );
        assert_eq!(sample(&page, &identity), Some(1.0), "port {port}:\n{page}");
    }

    let (conn_a, ch_a) = open(&a.url()).await;
    queue(&ch_a, "only-on-a").await;
    let pubch = confirm_channel(&conn_a).await;
    publish_keys(&pubch, "", &["only-on-a", "only-on-a", "only-on-a"]).await;
    let series = "rabbitmq_detailed_queue_messages_ready{vhost=\"/\",queue=\"only-on-a\"}";
    let deadline = Instant::now() + PATIENCE;
    loop {
        let page = metrics(pa).await;
        if sample(&page, series) == Some(3.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{series} never reached 3:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let page_b = metrics(pb).await;
    assert!(
        !page_b.contains("only-on-a"),
        "node b reports a's queue:\n{page_b}"
    );

    // x-consistent-hash is enabled on b only.
    let (conn_b, _ch_b) = open(&b.url()).await;
    try_exchange(
        &conn_b,
        "hash",
        custom("x-consistent-hash"),
        FieldTable::default(),
    )
    .await
    .expect("x-consistent-hash on b");
    let e = try_exchange(
        &conn_a,
        "hash",
        custom("x-consistent-hash"),
        FieldTable::default(),
    )
    .await;
    assert_eq!(
        expect_code(e, 406),
        "PRECONDITION_FAILED - invalid exchange type 'x-consistent-hash'"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. OAuth 2
// ---------------------------------------------------------------------------------------------

fn oauth2_config() -> String {
    let secret = std::fs::read_to_string(fixture("hmac-secret.txt")).unwrap();
    format!(
        "auth_backends.1 = oauth2\n\
         auth_backends.2 = internal\n\
         auth_oauth2.resource_server_id = rabbitmq\n\
         auth_oauth2.signing_keys.rsa-key = {}\n\
         auth_oauth2.symmetric_keys.hmac-key = {}\n",
        fixture("public.pem").display(),
        secret.trim()
    )
}

/// An HS256 token for `sub` with every permission, valid until `exp` (Unix seconds), signed
/// with the fixtures' HMAC secret (as mint.sh signs valid-hs256.jwt).
fn hs256_token(sub: &str, exp: u64) -> String {
    use base64::Engine;
    use hmac::Mac;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(r#"{"alg":"HS256","typ":"JWT","kid":"hmac-key"}"#);
    let claims = b64.encode(format!(
        r#"{{"sub":"{sub}","aud":"rabbitmq","scope":"rabbitmq.configure:*/* rabbitmq.write:*/* rabbitmq.read:*/*","exp":{exp}}}"#
    ));
    let input = format!("{header}.{claims}");
    let secret = std::fs::read_to_string(fixture("hmac-secret.txt")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.trim().as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!("{input}.{}", b64.encode(mac.finalize().into_bytes()))
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// RabbitMQ 4 closes a connection when its token expires, unless connection.update-secret
/// brought a newer one first.
#[tokio::test]
async fn an_oauth2_connection_closes_when_its_token_expires_unless_renewed() {
    let broker = TestBroker::start_with_config(&oauth2_config());
    plugins_ok(&broker, &["enable", "auth-oauth2"]);
    let port = broker.port;
    tokio::task::spawn_blocking(move || {
        let exp = unix_now() + 2;
        let mut short = Raw::handshake_as(port, 4096, 0, "", &hs256_token("short", exp));
        let mut renewed = Raw::handshake_as(port, 4096, 0, "", &hs256_token("renewed", exp));
        renewed.update_secret_ok(hs256_token("renewed", exp + 3600).as_bytes(), "refresh");
        let closed = short.expect_connection_close();
        assert!(unix_now() >= exp, "closed before the token expired");
        assert_eq!(closed.code, 403);
        assert_eq!(closed.text, "ACCESS_REFUSED - credential expired");
        // Past the first token's expiry (the check runs every second), the renewed
        // connection still works.
        while unix_now() < exp + 2 {
            std::thread::sleep(Duration::from_millis(100));
        }
        renewed.open_channel(1);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn oauth2_tokens_are_passwords_and_scopes_are_permissions() {
    let broker = TestBroker::start_with_config(&oauth2_config());
    let port = broker.port;
    // Before the plugin is enabled a token is just a wrong password.
    let e = connect_as(port, "", &token("valid-rs256.jwt"))
        .await
        .map(|_| ())
        .expect_err("no oauth2 backend yet");
    assert_eq!(code(&e), Some(403), "{e:?}");
    plugins_ok(&broker, &["enable", "auth-oauth2"]);

    // A valid token, with an empty or any username: full access.
    for user in ["", "whoever"] {
        let conn = connect_as(port, user, &token("valid-rs256.jwt"))
            .await
            .unwrap_or_else(|e| panic!("valid token as '{user}': {e}"));
        let ch = confirm_channel(&conn).await;
        let q = format!("oauth-q-{}", user.len());
        queue(&ch, &q).await;
        exchange(&ch, "oauth-x", ExchangeKind::Fanout, FieldTable::default()).await;
        bind(&ch, &q, "oauth-x", "", FieldTable::default()).await;
        publish_keys(&ch, "oauth-x", &["hello"]).await;
        let mut consumer = consume(&ch, &q, "c", false).await;
        let d = next(&mut consumer).await;
        assert_eq!(body(&d), "hello");
        d.ack(Default::default()).await.unwrap();
        conn.close(200, "bye".into()).await.unwrap();
    }

    // Expired and forged tokens are refused.
    for t in ["expired-rs256.jwt", "bad-signature-rs256.jwt"] {
        let e = connect_as(port, "", &token(t))
            .await
            .map(|_| ())
            .expect_err(t);
        assert_eq!(code(&e), Some(403), "{t}: {e:?}");
        assert!(text(&e).starts_with("ACCESS_REFUSED"), "{t}: {e:?}");
    }

    // Read-only scopes: in, may declare (configure) and read, may not publish.
    let conn = connect_as(port, "", &token("readonly-rs256.jwt"))
        .await
        .expect("read-only token");
    let ch = conn.create_channel().await.unwrap();
    queue(&ch, "ro-q").await;
    assert_eq!(ready_count(&ch, "ro-q").await, 0);
    let ch = confirm_channel(&conn).await;
    let t = expect_code(
        publish_outcome(&ch, "amq.direct", "ro-q", Default::default()).await,
        403,
    );
    assert_eq!(
        t,
        "ACCESS_REFUSED - write access to exchange 'amq.direct' in vhost '/' refused for user 'oauth-readonly'"
    );

    // HS256 with the configured symmetric key.
    let conn = connect_as(port, "", &token("valid-hs256.jwt"))
        .await
        .expect("hs256 token");
    let ch = confirm_channel(&conn).await;
    queue(&ch, "hs-q").await;
    publish_keys(&ch, "", &["hs-q"]).await;
    assert_eq!(drain(&ch, "hs-q").await, ["hs-q"]);

    // guest still gets in through the internal backend, second in the chain.
    let (_g, gch) = open(&broker.url()).await;
    assert_eq!(ready_count(&gch, "ro-q").await, 0);
    let e = connect_as(port, "guest", "wrong")
        .await
        .map(|_| ())
        .expect_err("wrong password");
    assert_eq!(code(&e), Some(403), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Isolation
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn a_misbehaving_plugin_fails_one_operation_and_the_node_keeps_serving() {
    let dir = TempDir::new("plugins-isolation");
    let plugins_dir = plugin_dir_with_misbehave(&dir.0);
    let mut node = Node::new("rabbit", &dir.0);
    node.config = "plugins.call_timeout_ms = 300\nplugins.memory_limit_mb = 64\n".into();
    node.env.push((
        "WARREN_PLUGINS_DIR".into(),
        plugins_dir.display().to_string(),
    ));
    node.start();
    let list = plugins_ok(&node, &["list"]);
    assert_eq!(marker(&list, "test-misbehave"), "[  ]", "{list}");
    plugins_ok(&node, &["enable", "test-misbehave"]);
    assert_eq!(
        marker(&plugins_ok(&node, &["list"]), "test-misbehave"),
        "[E*]"
    );

    let (conn, ch) = open(&node.url()).await;
    exchange(&ch, "mx", custom("x-misbehave"), FieldTable::default()).await;
    exchange(&ch, "tx", ExchangeKind::Topic, FieldTable::default()).await;
    for (q, x, k) in [("mq", "mx", "any"), ("tq", "tx", "#")] {
        queue(&ch, q).await;
        bind(&ch, q, x, k, FieldTable::default()).await;
    }
    publish_keys(&confirm_channel(&conn).await, "mx", &["ok"]).await;
    assert_eq!(drain(&ch, "mq").await, ["ok"]);

    for bad in ["trap", "loop", "bomb"] {
        let started = Instant::now();
        let victim = connect(&node.url()).await;
        let vch = confirm_channel(&victim).await;
        let r = publish_outcome(&vch, "mx", bad, Default::default()).await;
        let t = expect_code(r, 541);
        assert!(
            t.starts_with("INTERNAL_ERROR") && t.contains("plugin 'test-misbehave' failed routing"),
            "{bad}: {t}"
        );
        eventually(&format!("the {bad} connection is closed"), || async {
            !victim.status().connected()
        })
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{bad} took {:?}",
            started.elapsed()
        );
        // The other connection never noticed; a new one routes through both exchanges,
        // including the very exchange whose call failed.
        assert!(
            conn.status().connected(),
            "{bad} closed an unrelated connection"
        );
        let fresh = connect(&node.url()).await;
        let fch = confirm_channel(&fresh).await;
        publish_keys(&fch, "mx", &["ok"]).await;
        publish_keys(&fch, "tx", &["ok"]).await;
        assert_eq!(drain(&ch, "mq").await, ["ok"], "after {bad}");
        assert_eq!(drain(&ch, "tq").await, ["ok"], "after {bad}");
        fresh.close(200, "bye".into()).await.unwrap();
    }

    // A refusal from create is the plugin's words under 406, and a channel error only.
    let e = try_exchange(
        &conn,
        "mx-refused",
        custom("x-misbehave"),
        args(&[("x-fail-create", long("yes"))]),
    )
    .await;
    let t = expect_code(e, 406);
    assert!(
        t.starts_with("PRECONDITION_FAILED") && t.contains("misbehave: create refused"),
        "{t}"
    );
    assert!(conn.status().connected());

    // Components that cannot load are refused when enabled; nothing else changes.
    for broken in ["not-a-component", "wrong-world"] {
        let err = plugins_fail(&node, &["enable", broken], 65);
        assert_eq!(err.trim_end().lines().count(), 1, "{broken}: {err}");
        assert!(err.starts_with("Error:"), "{broken}: {err}");
        let list = plugins_ok(&node, &["list"]);
        assert_eq!(marker(&list, broken), "[  ]", "{list}");
        assert_eq!(marker(&list, "test-misbehave"), "[E*]", "{list}");
        node.ctl_ok(&["status"]);
    }
    let enabled = std::fs::read_to_string(node.data_dir().join("enabled_plugins")).unwrap();
    assert!(
        !enabled.contains("not-a-component") && !enabled.contains("wrong-world"),
        "{enabled}"
    );
    for t in ["x-junk", "x-wrong-world"] {
        let e = try_exchange(&conn, "junk", custom(t), FieldTable::default()).await;
        assert_eq!(
            expect_code(e, 406),
            format!("PRECONDITION_FAILED - invalid exchange type '{t}'")
        );
    }
    let fresh = connect(&node.url()).await;
    let fch = confirm_channel(&fresh).await;
    publish_keys(&fch, "mx", &["still"]).await;
    assert_eq!(drain(&ch, "mq").await, ["still"]);
    let log = node.log();
    assert!(
        log.contains("test-misbehave"),
        "the node's log says nothing about the failures:\n{log}"
    );

    // A durable exchange of the plugin's type comes back with the node; a broken component
    // is refused on the stopped node too, leaving enabled_plugins alone.
    ch.exchange_declare(
        "mx-durable".into(),
        custom("x-misbehave"),
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "mq-durable", durable(), FieldTable::default()).await;
    bind(&ch, "mq-durable", "mx-durable", "", FieldTable::default()).await;
    drop((fch, fresh, ch, conn));
    node.stop();
    let err = plugins_fail(&node, &["enable", "not-a-component"], 65);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        std::fs::read_to_string(node.data_dir().join("enabled_plugins")).unwrap(),
        enabled
    );
    assert_eq!(
        marker(&plugins_ok(&node, &["list"]), "test-misbehave"),
        "[E ]"
    );
    node.start();
    assert_eq!(
        marker(&plugins_ok(&node, &["list"]), "test-misbehave"),
        "[E*]"
    );
    let (conn, ch) = open(&node.url()).await;
    publish_keys(&confirm_channel(&conn).await, "mx-durable", &["back"]).await;
    assert_eq!(drain(&ch, "mq-durable").await, ["back"]);
}
