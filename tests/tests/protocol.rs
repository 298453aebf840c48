//! AMQP 0-9-1 as a client sees it, compared with what RabbitMQ does: declares and their errors,
//! exchange types and routing, consumers, prefetch, acknowledgements, confirms, transactions,
//! TTL, max-length, dead-lettering, priorities, large messages, properties and heartbeats.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};

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

fn int(i: i32) -> AMQPValue {
    AMQPValue::LongInt(i)
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..Default::default()
    }
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
    .unwrap_or_else(|e| panic!("bind {queue} to {exchange}: {e}"));
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

/// Declares plain queues named `names`.
async fn queues(ch: &Channel, names: &[&str]) {
    for n in names {
        declare(ch, n, Default::default(), FieldTable::default()).await;
    }
}

/// A string header value, whichever string type it came as.
fn header_str(t: &FieldTable, key: &str) -> Option<String> {
    match t.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

fn header_int(t: &FieldTable, key: &str) -> Option<i64> {
    match t.inner().get(key)? {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(*i as i64),
        AMQPValue::ShortInt(i) => Some(*i as i64),
        AMQPValue::LongUInt(i) => Some(*i as i64),
        _ => None,
    }
}

/// The x-death entries of a dead-lettered message.
fn x_death(props: &BasicProperties) -> Vec<FieldTable> {
    let headers = props
        .headers()
        .clone()
        .expect("dead-lettered message has headers");
    match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("no x-death array: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// queue.declare
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn passive_declare_of_a_missing_queue_is_404() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    let text = expect_code(
        ch.queue_declare("x".into(), passive(), FieldTable::default())
            .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no queue 'x' in vhost '/'");
}

#[tokio::test]
async fn passive_declare_reports_message_and_consumer_counts() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["counted"]).await;
    for _ in 0..3 {
        publish(&ch, "", "counted", b"m", Default::default()).await;
    }
    let ch2 = _conn.create_channel().await.unwrap();
    let _c = consume(&ch2, "counted", "c1", false).await;
    // The consumer takes all three, so none is ready.
    eventually("the consumer has the messages", || async {
        ready_count(&ch, "counted").await == 0
    })
    .await;
    let q = ch
        .queue_declare("counted".into(), passive(), FieldTable::default())
        .await
        .unwrap();
    assert_eq!(q.consumer_count(), 1);
}

#[tokio::test]
async fn server_named_queues_start_with_amq_gen() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().as_str().to_string();
    assert!(name.starts_with("amq.gen-") && name.len() > 20, "{name}");
    // The name works for publishing through the default exchange.
    publish(&ch, "", &name, b"to a generated queue", Default::default()).await;
    assert_eq!(
        get_wait(&ch, &name, true).await.delivery.data,
        b"to a generated queue"
    );
    // Clients may not pick amq.* names themselves.
    let text = expect_code(
        ch.queue_declare("amq.mine".into(), Default::default(), FieldTable::default())
            .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'"
    );
}

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_deleted_when_it_closes() {
    let broker = TestBroker::start();
    let (owner, och) = open(&broker.url()).await;
    declare(
        &och,
        "mine",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await;
    let (other, ch) = open(&broker.url()).await;
    let text = expect_code(
        ch.queue_declare("mine".into(), passive(), FieldTable::default())
            .await,
        405,
    );
    assert!(
        text.starts_with(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'mine' in vhost '/'"
        ),
        "{text}"
    );
    let ch = other.create_channel().await.unwrap();
    let r = ch
        .basic_consume(
            "mine".into(),
            "".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    expect_code(r, 405);
    let ch = other.create_channel().await.unwrap();
    expect_code(
        ch.queue_delete("mine".into(), QueueDeleteOptions::default())
            .await,
        405,
    );
    // The owner itself can use it.
    publish(&och, "", "mine", b"mine", Default::default()).await;
    assert_eq!(get_wait(&och, "mine", true).await.delivery.data, b"mine");
    owner.close(200, "bye".into()).await.unwrap();
    eventually("the exclusive queue is deleted", || async {
        !queue_exists(&other, "mine").await
    })
    .await;
}

#[tokio::test]
async fn auto_delete_queue_goes_when_its_last_consumer_cancels() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    let ad = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare(&ch, "ad", ad, FieldTable::default()).await;
    declare(&ch, "never-consumed", ad, FieldTable::default()).await;
    let _c1 = consume(&ch, "ad", "one", true).await;
    let _c2 = consume(&ch, "ad", "two", true).await;
    ch.basic_cancel("one".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        queue_exists(&conn, "ad").await,
        "deleted while a consumer was left"
    );
    ch.basic_cancel("two".into(), BasicCancelOptions::default())
        .await
        .unwrap();
    eventually("the auto-delete queue is gone", || async {
        !queue_exists(&conn, "ad").await
    })
    .await;
    // A queue that never had a consumer is not auto-deleted.
    assert!(queue_exists(&conn, "never-consumed").await);
}

#[tokio::test]
async fn redeclaring_with_different_properties_is_406_inequivalent_arg() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    declare(&ch, "q", durable(), FieldTable::default()).await;
    // The same declaration again is fine.
    declare(&ch, "q", durable(), FieldTable::default()).await;
    let text = expect_code(
        ch.queue_declare("q".into(), Default::default(), FieldTable::default())
            .await,
        406,
    );
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'"
    );
    let ch = conn.create_channel().await.unwrap();
    declare(
        &ch,
        "limited",
        Default::default(),
        args(&[("x-max-length", int(10))]),
    )
    .await;
    let text = expect_code(
        ch.queue_declare(
            "limited".into(),
            Default::default(),
            args(&[("x-max-length", int(20))]),
        )
        .await,
        406,
    );
    assert!(
        text.starts_with(
            "PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue 'limited' in vhost '/'"
        ),
        "{text}"
    );
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "x", ExchangeKind::Direct, FieldTable::default()).await;
    let text = expect_code(
        ch.exchange_declare(
            "x".into(),
            ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        )
        .await,
        406,
    );
    assert_eq!(
        text,
        "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'x' in vhost '/': received 'fanout' but current is 'direct'"
    );
}

#[tokio::test]
async fn queue_purge_and_delete_if_empty_and_if_unused() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    for _ in 0..4 {
        publish(&ch, "", "q", b"m", Default::default()).await;
    }
    eventually("4 messages", || async { ready_count(&ch, "q").await == 4 }).await;
    let text = expect_code(
        ch.queue_delete(
            "q".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await,
        406,
    );
    assert_eq!(
        text,
        "PRECONDITION_FAILED - queue 'q' in vhost '/' not empty"
    );
    let ch = conn.create_channel().await.unwrap();
    assert_eq!(
        ch.queue_purge("q".into(), Default::default())
            .await
            .unwrap(),
        4
    );
    let cch = conn.create_channel().await.unwrap();
    let _c = consume(&cch, "q", "busy", false).await;
    let text = expect_code(
        ch.queue_delete(
            "q".into(),
            QueueDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await,
        406,
    );
    assert_eq!(text, "PRECONDITION_FAILED - queue 'q' in vhost '/' in use");
    let ch = conn.create_channel().await.unwrap();
    ch.queue_delete("q".into(), Default::default())
        .await
        .unwrap();
    assert!(!queue_exists(&conn, "q").await);
}

// ---------------------------------------------------------------------------------------------
// Exchanges and routing
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn exchange_delete_if_unused_refuses_while_bound() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    exchange(&ch, "ex", ExchangeKind::Direct, FieldTable::default()).await;
    queues(&ch, &["bound"]).await;
    bind(&ch, "bound", "ex", "k", FieldTable::default()).await;
    let text = expect_code(
        ch.exchange_delete(
            "ex".into(),
            ExchangeDeleteOptions {
                if_unused: true,
                ..Default::default()
            },
        )
        .await,
        406,
    );
    assert_eq!(
        text,
        "PRECONDITION_FAILED - exchange 'ex' in vhost '/' in use"
    );
    let ch = conn.create_channel().await.unwrap();
    ch.queue_unbind(
        "bound".into(),
        "ex".into(),
        "k".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_delete(
        "ex".into(),
        ExchangeDeleteOptions {
            if_unused: true,
            ..Default::default()
        },
    )
    .await
    .expect("unused exchange can be deleted");
    let text = expect_code(
        ch.exchange_declare(
            "ex".into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no exchange 'ex' in vhost '/'");
    // amq.* exchanges cannot be deleted or declared by clients.
    let ch = conn.create_channel().await.unwrap();
    expect_code(
        ch.exchange_delete("amq.direct".into(), Default::default())
            .await,
        403,
    );
    let ch = conn.create_channel().await.unwrap();
    expect_code(
        ch.exchange_declare(
            "amq.mine".into(),
            ExchangeKind::Direct,
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
}

#[tokio::test]
async fn default_exchange_routes_by_queue_name_and_cannot_be_bound() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["by-name", "other"]).await;
    publish(
        &ch,
        "",
        "by-name",
        b"direct to the queue",
        Default::default(),
    )
    .await;
    let m = get_wait(&ch, "by-name", true).await;
    assert_eq!(m.delivery.data, b"direct to the queue");
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), "by-name");
    assert_eq!(ready_count(&ch, "other").await, 0);
    let text = expect_code(
        ch.queue_bind(
            "other".into(),
            "".into(),
            "x".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - operation not permitted on the default exchange"
    );
}

#[tokio::test]
async fn publishing_to_a_missing_exchange_closes_the_channel_with_404() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let r = ch
        .basic_publish(
            "nope".into(),
            "k".into(),
            Default::default(),
            b"x",
            Default::default(),
        )
        .await
        .expect("publish is sent")
        .await;
    let text = expect_code(r, 404);
    assert_eq!(text, "NOT_FOUND - no exchange 'nope' in vhost '/'");
    assert!(conn.status().connected(), "a 404 is a channel error only");
}

#[tokio::test]
async fn direct_exchange_routes_on_exact_keys() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["errors", "all"]).await;
    bind(&ch, "errors", "amq.direct", "error", FieldTable::default()).await;
    for key in ["error", "info", "warning"] {
        bind(&ch, "all", "amq.direct", key, FieldTable::default()).await;
    }
    for key in ["error", "info", "debug"] {
        publish(&ch, "amq.direct", key, key.as_bytes(), Default::default()).await;
    }
    eventually("routed", || async { ready_count(&ch, "all").await == 2 }).await;
    assert_eq!(drain(&ch, "errors").await, ["error"]);
    assert_eq!(drain(&ch, "all").await, ["error", "info"]);
}

#[tokio::test]
async fn topic_exchange_matches_star_and_hash() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q1", "q2"]).await;
    bind(&ch, "q1", "amq.topic", "*.orange.*", FieldTable::default()).await;
    bind(&ch, "q2", "amq.topic", "*.*.rabbit", FieldTable::default()).await;
    bind(&ch, "q2", "amq.topic", "lazy.#", FieldTable::default()).await;
    let keys = [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.male.rabbit",
        "lazy.orange.male.rabbit",
        "lazy",
    ];
    for k in keys {
        publish(&ch, "amq.topic", k, k.as_bytes(), Default::default()).await;
    }
    eventually("routed", || async { ready_count(&ch, "q2").await == 6 }).await;
    assert_eq!(
        drain(&ch, "q1").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox"
        ]
    );
    assert_eq!(
        drain(&ch, "q2").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.male.rabbit",
            "lazy",
        ]
    );
}

#[tokio::test]
async fn topic_hash_matches_zero_words() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    bind(&ch, "q", "amq.topic", "lazy.#", FieldTable::default()).await;
    bind(&ch, "q", "amq.topic", "#.end", FieldTable::default()).await;
    for k in ["lazy", "end", "a.b.end", "lazier", "lazy.end", "ends"] {
        publish(&ch, "amq.topic", k, k.as_bytes(), Default::default()).await;
    }
    eventually("routed", || async { ready_count(&ch, "q").await == 4 }).await;
    // "lazy.end" matches both bindings but is delivered once.
    assert_eq!(
        drain(&ch, "q").await,
        ["lazy", "end", "a.b.end", "lazy.end"]
    );
}

#[tokio::test]
async fn fanout_exchange_copies_to_every_bound_queue() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["f1", "f2", "f3"]).await;
    for q in ["f1", "f2", "f3"] {
        bind(&ch, q, "amq.fanout", "ignored", FieldTable::default()).await;
    }
    publish(&ch, "amq.fanout", "any-key", b"to all", Default::default()).await;
    for q in ["f1", "f2", "f3"] {
        let m = get_wait(&ch, q, true).await;
        assert_eq!(m.delivery.data, b"to all");
        assert_eq!(m.delivery.exchange.as_str(), "amq.fanout");
        assert_eq!(m.delivery.routing_key.as_str(), "any-key");
    }
}

#[tokio::test]
async fn headers_exchange_matches_any_and_all() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["all", "any"]).await;
    bind(
        &ch,
        "all",
        "amq.headers",
        "",
        args(&[
            ("x-match", long("all")),
            ("format", long("pdf")),
            ("type", long("report")),
        ]),
    )
    .await;
    bind(
        &ch,
        "any",
        "amq.headers",
        "",
        args(&[
            ("x-match", long("any")),
            ("format", long("pdf")),
            ("type", long("report")),
        ]),
    )
    .await;
    let cases: [(&str, FieldTable); 5] = [
        (
            "both",
            args(&[("format", long("pdf")), ("type", long("report"))]),
        ),
        (
            "both-and-more",
            args(&[
                ("format", long("pdf")),
                ("type", long("report")),
                ("extra", int(1)),
            ]),
        ),
        ("format-only", args(&[("format", long("pdf"))])),
        (
            "wrong-value",
            args(&[("format", long("zip")), ("type", long("log"))]),
        ),
        ("none", FieldTable::default()),
    ];
    for (name, headers) in cases {
        publish(
            &ch,
            "amq.headers",
            "",
            name.as_bytes(),
            BasicProperties::default().with_headers(headers),
        )
        .await;
    }
    eventually("routed", || async { ready_count(&ch, "any").await == 3 }).await;
    assert_eq!(drain(&ch, "all").await, ["both", "both-and-more"]);
    assert_eq!(
        drain(&ch, "any").await,
        ["both", "both-and-more", "format-only"]
    );
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_onwards() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    exchange(&ch, "src", ExchangeKind::Topic, FieldTable::default()).await;
    exchange(&ch, "dst", ExchangeKind::Fanout, FieldTable::default()).await;
    ch.exchange_bind(
        "dst".into(),
        "src".into(),
        "a.*".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    queues(&ch, &["end"]).await;
    bind(&ch, "end", "dst", "", FieldTable::default()).await;
    for k in ["a.b", "b.c", "a.c"] {
        publish(&ch, "src", k, k.as_bytes(), Default::default()).await;
    }
    eventually("routed", || async { ready_count(&ch, "end").await == 2 }).await;
    let m = get_wait(&ch, "end", true).await;
    // The delivery names the exchange the message was published to.
    assert_eq!(m.delivery.exchange.as_str(), "src");
    assert_eq!(m.delivery.data, b"a.b");
    assert_eq!(drain(&ch, "end").await, ["a.c"]);
    ch.exchange_unbind(
        "dst".into(),
        "src".into(),
        "a.*".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "src", "a.b", b"after unbind", Default::default()).await;
    // Published after it on the same channel: once the marker is there, the publish before it
    // has been routed.
    publish(&ch, "", "end", b"marker", Default::default()).await;
    let m = get_wait(&ch, "end", true).await;
    assert_eq!(m.delivery.data, b"marker");
    assert_eq!(ready_count(&ch, "end").await, 0);
}

#[tokio::test]
async fn alternate_exchange_takes_unroutable_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    exchange(&ch, "ae", ExchangeKind::Fanout, FieldTable::default()).await;
    exchange(
        &ch,
        "main",
        ExchangeKind::Direct,
        args(&[("alternate-exchange", long("ae"))]),
    )
    .await;
    queues(&ch, &["routed", "unrouted"]).await;
    bind(&ch, "routed", "main", "k", FieldTable::default()).await;
    bind(&ch, "unrouted", "ae", "", FieldTable::default()).await;
    ch.confirm_select(Default::default()).await.unwrap();
    // mandatory: the alternate exchange counts as a route, so nothing comes back.
    for (key, body) in [("k", "routed"), ("other", "unrouted")] {
        let c = ch
            .basic_publish(
                "main".into(),
                key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body.as_bytes(),
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(c, Confirmation::Ack(None));
    }
    assert_eq!(drain(&ch, "routed").await, ["routed"]);
    assert_eq!(drain(&ch, "unrouted").await, ["unrouted"]);
}

#[tokio::test]
async fn mandatory_unroutable_message_is_returned_before_its_confirm() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let props = BasicProperties::default().with_message_id("m-1".into());
    let c = ch
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"bounce",
            props.clone(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let Confirmation::Ack(Some(returned)) = c else {
        panic!("expected an ack carrying the returned message, got {c:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.exchange.as_str(), "amq.direct");
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(returned.delivery.data, b"bounce");
    assert_eq!(returned.delivery.properties, props);
    // Without mandatory an unroutable message is dropped silently (and still confirmed).
    let c = ch
        .basic_publish(
            "amq.direct".into(),
            "nowhere".into(),
            Default::default(),
            b"drop",
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(c, Confirmation::Ack(None));
}

// ---------------------------------------------------------------------------------------------
// Consumers, prefetch and acknowledgements
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn per_consumer_prefetch_is_respected() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["work"]).await;
    for i in 0..5 {
        publish(
            &ch,
            "",
            "work",
            format!("m{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    ch.basic_qos(2, BasicQosOptions { global: false })
        .await
        .unwrap();
    let mut c = consume(&ch, "work", "worker", false).await;
    let d0 = next(&mut c).await;
    let d1 = next(&mut c).await;
    assert_eq!((body(&d0), body(&d1)), ("m0".into(), "m1".into()));
    nothing_for(&mut c, Duration::from_millis(300)).await;
    d0.acker.ack(Default::default()).await.unwrap();
    let d2 = next(&mut c).await;
    assert_eq!(body(&d2), "m2");
    nothing_for(&mut c, Duration::from_millis(200)).await;
    // A second consumer on the same channel gets its own allowance of two.
    let mut c2 = consume(&ch, "work", "worker-2", false).await;
    assert_eq!(body(&next(&mut c2).await), "m3");
    assert_eq!(body(&next(&mut c2).await), "m4");
}

/// The next delivery from either consumer, or None if none comes within `wait`.
async fn next_of_two(
    a: &mut lapin::Consumer,
    b: &mut lapin::Consumer,
    wait: Duration,
) -> Option<lapin::message::Delivery> {
    use futures_lite::StreamExt;
    let got = tokio::time::timeout(wait, async {
        tokio::select! {
            d = a.next() => d,
            d = b.next() => d,
        }
    })
    .await;
    match got {
        Ok(Some(Ok(d))) => Some(d),
        Ok(other) => panic!("consumer ended: {other:?}"),
        Err(_) => None,
    }
}

#[tokio::test]
async fn global_prefetch_is_shared_by_the_consumers_of_a_channel() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["qa", "qb"]).await;
    for i in 0..5 {
        publish(
            &ch,
            "",
            "qa",
            format!("a{i}").as_bytes(),
            Default::default(),
        )
        .await;
        publish(
            &ch,
            "",
            "qb",
            format!("b{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    eventually("queued", || async { ready_count(&ch, "qb").await == 5 }).await;
    ch.basic_qos(3, BasicQosOptions { global: true })
        .await
        .unwrap();
    let mut ca = consume(&ch, "qa", "ca", false).await;
    let mut cb = consume(&ch, "qb", "cb", false).await;
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(
            next_of_two(&mut ca, &mut cb, PATIENCE)
                .await
                .expect("a delivery"),
        );
    }
    let extra = next_of_two(&mut ca, &mut cb, Duration::from_millis(300)).await;
    assert!(
        extra.is_none(),
        "a fourth unacked delivery on a channel limited to three"
    );
    first[0].acker.ack(Default::default()).await.unwrap();
    next_of_two(&mut ca, &mut cb, PATIENCE)
        .await
        .expect("one ack makes room for one more");
    let extra = next_of_two(&mut ca, &mut cb, Duration::from_millis(300)).await;
    assert!(extra.is_none(), "only one more");
}

#[tokio::test]
async fn ack_nack_and_reject_with_requeue_and_multiple() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["acks"]).await;
    for i in 0..6 {
        publish(
            &ch,
            "",
            "acks",
            format!("m{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    eventually("queued", || async { ready_count(&ch, "acks").await == 6 }).await;
    let mut tags = Vec::new();
    for i in 0..6 {
        let m = get(&ch, "acks", false).await.expect("message");
        assert_eq!(m.delivery.data, format!("m{i}").as_bytes());
        assert!(!m.delivery.redelivered);
        tags.push(m.delivery.delivery_tag);
    }
    assert_eq!(tags, [1, 2, 3, 4, 5, 6]);
    // m0, m1 acked at once; m3 rejected (dropped); m2 nacked back; m4, m5 nacked back at once.
    ch.basic_ack(2, BasicAckOptions { multiple: true })
        .await
        .unwrap();
    ch.basic_reject(4, BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    ch.basic_nack(
        3,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    )
    .await
    .unwrap();
    ch.basic_nack(
        6,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    )
    .await
    .unwrap();
    eventually("requeued", || async { ready_count(&ch, "acks").await == 3 }).await;
    for expected in ["m2", "m4", "m5"] {
        let m = get(&ch, "acks", false).await.expect("requeued message");
        assert_eq!(m.delivery.data, expected.as_bytes());
        assert!(
            m.delivery.redelivered,
            "{expected} should be marked redelivered"
        );
        m.delivery.acker.ack(Default::default()).await.unwrap();
    }
    assert!(get(&ch, "acks", false).await.is_none());
    // Acking a tag that is not outstanding is a channel error.
    ch.basic_ack(42, Default::default()).await.unwrap();
    let text = expect_code(ch.basic_qos(1, Default::default()).await, 406);
    assert_eq!(text, "PRECONDITION_FAILED - unknown delivery tag 42");
}

#[tokio::test]
async fn requeued_message_is_redelivered_to_a_consumer_with_the_flag_set() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    publish(&ch, "", "q", b"again", Default::default()).await;
    let mut c = consume(&ch, "q", "c", false).await;
    let d = next(&mut c).await;
    assert!(!d.redelivered);
    d.acker
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .unwrap();
    let d = next(&mut c).await;
    assert_eq!(d.data, b"again");
    assert!(d.redelivered);
    d.acker.ack(Default::default()).await.unwrap();
}

#[tokio::test]
async fn unacked_messages_return_when_the_channel_closes() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    publish(&ch, "", "q", b"one", Default::default()).await;
    publish(&ch, "", "q", b"two", Default::default()).await;
    let ch2 = conn.create_channel().await.unwrap();
    let mut c = consume(&ch2, "q", "c", false).await;
    next(&mut c).await;
    next(&mut c).await;
    ch2.close(200, "bye".into()).await.unwrap();
    eventually("requeued", || async { ready_count(&ch, "q").await == 2 }).await;
    let m = get(&ch, "q", true).await.unwrap();
    assert_eq!(m.delivery.data, b"one");
    assert!(m.delivery.redelivered);
}

#[tokio::test]
async fn basic_recover_redelivers_unacked_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    publish(&ch, "", "q", b"r1", Default::default()).await;
    publish(&ch, "", "q", b"r2", Default::default()).await;
    let mut c = consume(&ch, "q", "c", false).await;
    let a = next(&mut c).await;
    let b = next(&mut c).await;
    assert!(!a.redelivered && !b.redelivered);
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    let a2 = next(&mut c).await;
    let b2 = next(&mut c).await;
    assert_eq!((body(&a2), body(&b2)), ("r1".into(), "r2".into()));
    assert!(a2.redelivered && b2.redelivered);
    assert!(
        a2.delivery_tag > b.delivery_tag,
        "redeliveries get new delivery tags"
    );
    a2.acker.ack(Default::default()).await.unwrap();
    b2.acker.ack(Default::default()).await.unwrap();
}

#[tokio::test]
async fn consumer_is_cancelled_when_its_queue_is_deleted() {
    use futures_lite::StreamExt;
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    queues(&ch, &["doomed"]).await;
    let mut c = consume(&ch, "doomed", "watcher", true).await;
    let other = conn.create_channel().await.unwrap();
    other
        .queue_delete("doomed".into(), Default::default())
        .await
        .unwrap();
    let end = tokio::time::timeout(PATIENCE, c.next())
        .await
        .expect("no basic.cancel");
    assert!(end.is_none(), "expected the consumer to end, got {end:?}");
    // The channel and the connection stay usable.
    tokio::time::sleep(Duration::from_millis(100)).await;
    queues(&ch, &["after"]).await;
    publish(&ch, "", "after", b"still open", Default::default()).await;
    assert_eq!(
        get_wait(&ch, "after", true).await.delivery.data,
        b"still open"
    );
    assert!(conn.status().connected());
}

#[tokio::test]
async fn exclusive_consumer_keeps_others_out_with_403() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    queues(&ch, &["solo", "shared"]).await;
    // (Dropping lapin's Consumer cancels it: keep it.)
    let _owner = ch
        .basic_consume(
            "solo".into(),
            "owner".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let ch2 = conn.create_channel().await.unwrap();
    let text = expect_code(
        ch2.basic_consume(
            "solo".into(),
            "intruder".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - queue 'solo' in vhost '/' in exclusive use"
    );
    // Nor can an exclusive consumer join a queue that already has consumers.
    let ch3 = conn.create_channel().await.unwrap();
    let _c = consume(&ch3, "shared", "first", true).await;
    let text = expect_code(
        ch3.basic_consume(
            "shared".into(),
            "greedy".into(),
            BasicConsumeOptions {
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await,
        403,
    );
    assert_eq!(
        text,
        "ACCESS_REFUSED - queue 'shared' in vhost '/' in exclusive use"
    );
}

#[tokio::test]
async fn reusing_a_consumer_tag_on_a_channel_is_530() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    let _c = consume(&ch, "q", "same", true).await;
    let r = ch
        .basic_consume(
            "q".into(),
            "same".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await;
    let text = expect_code(r, 530);
    assert_eq!(text, "NOT_ALLOWED - attempt to reuse consumer tag 'same'");
}

#[tokio::test]
async fn higher_priority_consumers_get_messages_first() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    queues(&ch, &["prio"]).await;
    let hi_ch = conn.create_channel().await.unwrap();
    hi_ch.basic_qos(2, Default::default()).await.unwrap();
    let lo_ch = conn.create_channel().await.unwrap();
    let mut lo = consume_with(&lo_ch, "prio", "lo", false, args(&[("x-priority", int(0))])).await;
    let mut hi = consume_with(
        &hi_ch,
        "prio",
        "hi",
        false,
        args(&[("x-priority", int(10))]),
    )
    .await;
    for i in 0..2 {
        publish(
            &ch,
            "",
            "prio",
            format!("m{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    // The high-priority consumer takes everything while it has room...
    let h0 = next(&mut hi).await;
    let _h1 = next(&mut hi).await;
    nothing_for(&mut lo, Duration::from_millis(200)).await;
    // ...and once it is full the next priority level gets the rest.
    for i in 2..4 {
        publish(
            &ch,
            "",
            "prio",
            format!("m{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    assert_eq!(body(&next(&mut lo).await), "m2");
    assert_eq!(body(&next(&mut lo).await), "m3");
    h0.acker.ack(Default::default()).await.unwrap();
    publish(&ch, "", "prio", b"m4", Default::default()).await;
    assert_eq!(body(&next(&mut hi).await), "m4");
}

#[tokio::test]
async fn single_active_consumer_gets_everything_until_it_cancels() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    declare(
        &ch,
        "sac",
        Default::default(),
        args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]),
    )
    .await;
    let ch_a = conn.create_channel().await.unwrap();
    let ch_b = conn.create_channel().await.unwrap();
    let mut a = consume(&ch_a, "sac", "a", true).await;
    let mut b = consume(&ch_b, "sac", "b", true).await;
    for i in 0..4 {
        publish(
            &ch,
            "",
            "sac",
            format!("m{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    for i in 0..4 {
        assert_eq!(body(&next(&mut a).await), format!("m{i}"));
    }
    nothing_for(&mut b, Duration::from_millis(200)).await;
    let consumers = ctl_rows(&broker, &["list_consumers", "consumer_tag", "active"]);
    assert!(
        consumers
            .iter()
            .any(|c| c["consumer_tag"] == "a" && c["active"] == true),
        "{consumers:?}"
    );
    assert!(
        consumers
            .iter()
            .any(|c| c["consumer_tag"] == "b" && c["active"] == false),
        "{consumers:?}"
    );
    ch_a.basic_cancel("a".into(), Default::default())
        .await
        .unwrap();
    publish(&ch, "", "sac", b"for b", Default::default()).await;
    assert_eq!(body(&next(&mut b).await), "for b");
}

// ---------------------------------------------------------------------------------------------
// Publisher confirms and transactions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn publisher_confirms_ack_every_message() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "confirmed", durable(), FieldTable::default()).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut pending = Vec::new();
    for i in 0..200u32 {
        // Mix persistent and transient messages and routed and unroutable ones.
        let props = if i % 2 == 0 {
            persistent()
        } else {
            Default::default()
        };
        let key = if i % 5 == 0 { "nowhere" } else { "confirmed" };
        pending.push(
            ch.basic_publish(
                "".into(),
                key.into(),
                Default::default(),
                &i.to_be_bytes(),
                props,
            )
            .await
            .unwrap(),
        );
    }
    for p in pending {
        assert_eq!(p.await.unwrap(), Confirmation::Ack(None));
    }
    assert!(ch.wait_for_confirms().await.unwrap().is_empty());
    assert_eq!(ready_count(&ch, "confirmed").await, 160);
}

#[tokio::test]
async fn reject_publish_overflow_nacks_the_publisher() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(
        &ch,
        "bounded",
        Default::default(),
        args(&[
            ("x-max-length", int(2)),
            ("x-overflow", long("reject-publish")),
        ]),
    )
    .await;
    ch.confirm_select(Default::default()).await.unwrap();
    let mut results = Vec::new();
    for i in 0..3 {
        let c = ch
            .basic_publish(
                "".into(),
                "bounded".into(),
                Default::default(),
                format!("m{i}").as_bytes(),
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        results.push(c.is_ack());
    }
    assert_eq!(results, [true, true, false]);
    assert_eq!(drain(&ch, "bounded").await, ["m0", "m1"]);
    // With room again, publishing is acked again.
    publish_confirmed(&ch, "", "bounded", b"m3", Default::default()).await;
}

#[tokio::test]
async fn tx_commit_publishes_and_rollback_discards() {
    let broker = TestBroker::start();
    let (conn, tx) = open(&broker.url()).await;
    let ch = conn.create_channel().await.unwrap();
    queues(&ch, &["txq"]).await;
    tx.tx_select().await.unwrap();
    publish(&tx, "", "txq", b"committed", Default::default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ready_count(&ch, "txq").await, 0, "published before commit");
    tx.tx_commit().await.unwrap();
    assert_eq!(ready_count(&ch, "txq").await, 1);
    publish(&tx, "", "txq", b"rolled back", Default::default()).await;
    tx.tx_rollback().await.unwrap();
    tx.tx_commit().await.unwrap();
    assert_eq!(ready_count(&ch, "txq").await, 1);

    // Acks are transactional too: a rolled-back ack leaves the message unacked.
    let m = get_wait(&tx, "txq", false).await;
    assert_eq!(m.delivery.data, b"committed");
    m.delivery.acker.ack(Default::default()).await.unwrap();
    tx.tx_rollback().await.unwrap();
    tx.close(200, "bye".into()).await.unwrap();
    eventually("the unacked message is back", || async {
        ready_count(&ch, "txq").await == 1
    })
    .await;
    let tx = conn.create_channel().await.unwrap();
    tx.tx_select().await.unwrap();
    let m = get_wait(&tx, "txq", false).await;
    m.delivery.acker.ack(Default::default()).await.unwrap();
    tx.tx_commit().await.unwrap();
    tx.close(200, "bye".into()).await.unwrap();
    // Ready and unacked together: an ack the commit did not apply would still count (unacked
    // until the close requeues it, ready after), however slow the broker.
    assert_eq!(ctl_messages(&broker, "txq"), Some(0));
}

#[tokio::test]
async fn confirm_and_tx_modes_exclude_each_other() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    ch.tx_select().await.unwrap();
    let text = expect_code(ch.confirm_select(Default::default()).await, 406);
    assert!(text.starts_with("PRECONDITION_FAILED"), "{text}");
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    expect_code(ch.tx_select().await, 406);
}

// ---------------------------------------------------------------------------------------------
// TTL, length limits, dead-lettering, priorities, expiry
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn per_message_ttl_expires_messages() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["ttl"]).await;
    publish(
        &ch,
        "",
        "ttl",
        b"short",
        BasicProperties::default().with_expiration("20".into()),
    )
    .await;
    publish(
        &ch,
        "",
        "ttl",
        b"long",
        BasicProperties::default().with_expiration("60000".into()),
    )
    .await;
    publish(&ch, "", "ttl", b"forever", Default::default()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = get(&ch, "ttl", true).await.unwrap();
    assert_eq!(m.delivery.data, b"long");
    // The expiration property is delivered as it was published.
    assert_eq!(
        m.delivery
            .properties
            .expiration()
            .as_ref()
            .map(|s| s.as_str()),
        Some("60000")
    );
    assert_eq!(drain(&ch, "ttl").await, ["forever"]);
}

#[tokio::test]
async fn queue_message_ttl_expires_messages_even_without_readers() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(
        &ch,
        "ttlq",
        Default::default(),
        args(&[("x-message-ttl", int(50))]),
    )
    .await;
    for _ in 0..3 {
        publish(&ch, "", "ttlq", b"m", Default::default()).await;
    }
    assert!(ready_count(&ch, "ttlq").await > 0);
    let start = Instant::now();
    eventually("the messages expired", || async {
        ready_count(&ch, "ttlq").await == 0
    })
    .await;
    assert!(start.elapsed() < Duration::from_secs(2));
    // x-message-ttl = 0: a message not delivered at once is dropped.
    declare(
        &ch,
        "zero",
        Default::default(),
        args(&[("x-message-ttl", int(0))]),
    )
    .await;
    publish(&ch, "", "zero", b"m", Default::default()).await;
    // The get follows the publish on the same channel, so the message was enqueued first.
    assert!(get(&ch, "zero", true).await.is_none());
}

#[tokio::test]
async fn max_length_drops_from_the_head() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(
        &ch,
        "bounded",
        Default::default(),
        args(&[("x-max-length", int(2))]),
    )
    .await;
    for i in 1..=5 {
        publish(
            &ch,
            "",
            "bounded",
            format!("m{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    eventually("published", || async {
        ctl_rows(&broker, &["list_queues", "name", "messages"])
            .iter()
            .any(|r| r["name"] == "bounded" && r["messages"] == 2)
    })
    .await;
    assert_eq!(drain(&ch, "bounded").await, ["m4", "m5"]);
    declare(
        &ch,
        "bytes",
        Default::default(),
        args(&[("x-max-length-bytes", int(10))]),
    )
    .await;
    for b in ["aaaa", "bbbb", "cccc"] {
        publish(&ch, "", "bytes", b.as_bytes(), Default::default()).await;
    }
    // The gets follow the publishes on the same channel.
    assert_eq!(drain(&ch, "bytes").await, ["bbbb", "cccc"]);
}

async fn dead_letter_setup(ch: &Channel) {
    exchange(ch, "dlx", ExchangeKind::Fanout, FieldTable::default()).await;
    queues(ch, &["dead"]).await;
    bind(ch, "dead", "dlx", "", FieldTable::default()).await;
}

#[tokio::test]
async fn rejected_message_is_dead_lettered_with_x_death() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    dead_letter_setup(&ch).await;
    declare(
        &ch,
        "work",
        Default::default(),
        args(&[("x-dead-letter-exchange", long("dlx"))]),
    )
    .await;
    let headers = args(&[("app", long("kept"))]);
    publish(
        &ch,
        "",
        "work",
        b"bad job",
        BasicProperties::default()
            .with_headers(headers)
            .with_correlation_id("c-9".into()),
    )
    .await;
    let m = get_wait(&ch, "work", false).await;
    m.delivery
        .acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let d = get_wait(&ch, "dead", true).await;
    assert_eq!(d.delivery.data, b"bad job");
    assert_eq!(d.delivery.exchange.as_str(), "dlx");
    assert_eq!(d.delivery.routing_key.as_str(), "work");
    let props = &d.delivery.properties;
    assert_eq!(
        props.correlation_id().as_ref().map(|s| s.as_str()),
        Some("c-9")
    );
    let headers = props.headers().clone().unwrap();
    assert_eq!(header_str(&headers, "app").as_deref(), Some("kept"));
    let deaths = x_death(props);
    assert_eq!(deaths.len(), 1);
    let death = &deaths[0];
    assert_eq!(header_str(death, "reason").as_deref(), Some("rejected"));
    assert_eq!(header_str(death, "queue").as_deref(), Some("work"));
    assert_eq!(header_str(death, "exchange").as_deref(), Some(""));
    assert_eq!(header_int(death, "count"), Some(1));
    assert!(matches!(
        death.inner().get("time"),
        Some(AMQPValue::Timestamp(_))
    ));
    match death.inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => {
            assert_eq!(keys.as_slice(), &[long("work")]);
        }
        other => panic!("routing-keys: {other:?}"),
    }
    assert_eq!(
        header_str(&headers, "x-first-death-reason").as_deref(),
        Some("rejected")
    );
    assert_eq!(
        header_str(&headers, "x-first-death-queue").as_deref(),
        Some("work")
    );
    assert_eq!(
        header_str(&headers, "x-first-death-exchange").as_deref(),
        Some("")
    );
}

#[tokio::test]
async fn expired_message_is_dead_lettered_with_reason_expired() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    dead_letter_setup(&ch).await;
    declare(
        &ch,
        "delay",
        Default::default(),
        args(&[
            ("x-message-ttl", int(30)),
            ("x-dead-letter-exchange", long("dlx")),
            ("x-dead-letter-routing-key", long("retry")),
        ]),
    )
    .await;
    bind(&ch, "delay", "amq.direct", "later", FieldTable::default()).await;
    publish(
        &ch,
        "amq.direct",
        "later",
        b"timed out",
        BasicProperties::default().with_expiration("10".into()),
    )
    .await;
    // Nobody reads "delay": the timer expires the message on its own.
    let d = get_wait(&ch, "dead", true).await;
    assert_eq!(d.delivery.data, b"timed out");
    assert_eq!(
        d.delivery.routing_key.as_str(),
        "retry",
        "x-dead-letter-routing-key applies"
    );
    let props = &d.delivery.properties;
    assert!(props.expiration().is_none(), "the old TTL is removed");
    let deaths = x_death(props);
    assert_eq!(deaths.len(), 1);
    assert_eq!(header_str(&deaths[0], "reason").as_deref(), Some("expired"));
    assert_eq!(header_str(&deaths[0], "queue").as_deref(), Some("delay"));
    assert_eq!(
        header_str(&deaths[0], "exchange").as_deref(),
        Some("amq.direct")
    );
    assert_eq!(header_int(&deaths[0], "count"), Some(1));
    assert_eq!(
        header_str(&deaths[0], "original-expiration").as_deref(),
        Some("10")
    );
    match deaths[0].inner().get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => assert_eq!(keys.as_slice(), &[long("later")]),
        other => panic!("routing-keys: {other:?}"),
    }
}

#[tokio::test]
async fn max_length_overflow_dead_letters_with_reason_maxlen() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    dead_letter_setup(&ch).await;
    declare(
        &ch,
        "short",
        Default::default(),
        args(&[
            ("x-max-length", int(1)),
            ("x-dead-letter-exchange", long("dlx")),
        ]),
    )
    .await;
    publish(&ch, "", "short", b"first", Default::default()).await;
    publish(&ch, "", "short", b"second", Default::default()).await;
    let d = get_wait(&ch, "dead", true).await;
    assert_eq!(d.delivery.data, b"first");
    assert_eq!(
        header_str(&x_death(&d.delivery.properties)[0], "reason").as_deref(),
        Some("maxlen")
    );
    assert_eq!(drain(&ch, "short").await, ["second"]);
}

#[tokio::test]
async fn repeated_deaths_in_one_queue_increment_the_x_death_count() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    // Rejected messages go back to the same queue through the default exchange.
    declare(
        &ch,
        "retry",
        Default::default(),
        args(&[
            ("x-dead-letter-exchange", long("")),
            ("x-dead-letter-routing-key", long("retry")),
        ]),
    )
    .await;
    publish(&ch, "", "retry", b"again and again", Default::default()).await;
    for round in 1..=3i64 {
        let m = get_wait(&ch, "retry", false).await;
        assert_eq!(m.delivery.data, b"again and again");
        if round > 1 {
            let deaths = x_death(&m.delivery.properties);
            assert_eq!(deaths.len(), 1, "one entry per (queue, reason)");
            assert_eq!(header_int(&deaths[0], "count"), Some(round - 1));
        }
        m.delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn priority_queue_delivers_highest_priority_first() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(
        &ch,
        "prio",
        Default::default(),
        args(&[("x-max-priority", int(10))]),
    )
    .await;
    for (body, prio) in [
        ("p1", 1u8),
        ("p5a", 5),
        ("p3", 3),
        ("p5b", 5),
        ("none", 0),
        ("p99", 99),
    ] {
        let props = if body == "none" {
            BasicProperties::default()
        } else {
            BasicProperties::default().with_priority(prio)
        };
        publish(&ch, "", "prio", body.as_bytes(), props).await;
    }
    eventually("queued", || async { ready_count(&ch, "prio").await == 6 }).await;
    // Above x-max-priority counts as the maximum; equal priorities stay in order.
    assert_eq!(
        drain(&ch, "prio").await,
        ["p99", "p5a", "p5b", "p3", "p1", "none"]
    );
}

#[tokio::test]
async fn x_expires_deletes_an_unused_queue() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    let start = Instant::now();
    declare(
        &ch,
        "fleeting",
        Default::default(),
        args(&[("x-expires", int(200))]),
    )
    .await;
    declare(
        &ch,
        "watched",
        Default::default(),
        args(&[("x-expires", int(200))]),
    )
    .await;
    let _c = consume(&ch, "watched", "w", true).await;
    // Passive declares count as use (RabbitMQ resets the expiry timer): look only via ctl.
    let listed = |name: &'static str| {
        let broker = &broker;
        async move {
            ctl_rows(broker, &["list_queues", "name"])
                .iter()
                .any(|r| r["name"] == name)
        }
    };
    eventually("the unused queue expired", || async {
        !listed("fleeting").await
    })
    .await;
    assert!(
        start.elapsed() >= Duration::from_millis(200),
        "expired too early"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(listed("watched").await, "a queue with a consumer is in use");
    drop(conn);
}

// ---------------------------------------------------------------------------------------------
// Content: large bodies, properties; connection tuning
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn one_mebibyte_body_crosses_small_frames_intact() {
    let broker = TestBroker::start();
    let url = format!("{}?frame_max=4096", broker.url());
    let (conn, ch) = open(&url).await;
    assert_eq!(conn.configuration().frame_max(), 4096);
    queues(&ch, &["big"]).await;
    let data: Vec<u8> = (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    ch.confirm_select(Default::default()).await.unwrap();
    publish_confirmed(&ch, "", "big", &data, Default::default()).await;
    let m = get_wait(&ch, "big", true).await;
    assert_eq!(m.delivery.data.len(), data.len());
    assert!(m.delivery.data == data, "body changed on the way");
    // And through a consumer on a connection with the default frame size.
    let (_c2, ch2) = open(&broker.url()).await;
    publish(&ch, "", "big", &data, Default::default()).await;
    let mut c = consume(&ch2, "big", "big", true).await;
    assert!(next(&mut c).await.data == data);
}

#[tokio::test]
async fn properties_and_headers_round_trip_exactly() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["props"]).await;
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), long("value"));
    nested.insert("n".into(), AMQPValue::LongLongInt(-5));
    let mut array = FieldArray::default();
    array.push(long("a"));
    array.push(AMQPValue::LongInt(2));
    array.push(AMQPValue::Boolean(false));
    let headers = args(&[
        ("string", long("héllo wörld")),
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(8)),
        ("i16", AMQPValue::ShortInt(-16)),
        ("u16", AMQPValue::ShortUInt(16)),
        ("i32", AMQPValue::LongInt(-32)),
        ("u32", AMQPValue::LongUInt(32)),
        ("i64", AMQPValue::LongLongInt(-64_000_000_000)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(-2.25)),
        ("ts", AMQPValue::Timestamp(1_700_000_000)),
        ("bytes", AMQPValue::ByteArray(vec![0u8, 1, 255].into())),
        ("void", AMQPValue::Void),
        ("table", AMQPValue::FieldTable(nested)),
        ("array", AMQPValue::FieldArray(array)),
    ]);
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("gzip".into())
        .with_headers(headers)
        .with_delivery_mode(2)
        .with_priority(7)
        .with_correlation_id("corr-1".into())
        .with_reply_to("replies".into())
        .with_expiration("600000".into())
        .with_message_id("msg-1".into())
        .with_timestamp(1_700_000_123)
        .with_type("order.created".into())
        .with_user_id("guest".into())
        .with_app_id("tests".into())
        .with_cluster_id("c1".into());
    publish(&ch, "", "props", b"{}", props.clone()).await;
    let m = get_wait(&ch, "props", true).await;
    assert_eq!(m.delivery.properties, props);
    // Empty properties stay empty.
    publish(&ch, "", "props", b"", BasicProperties::default()).await;
    let m = get_wait(&ch, "props", true).await;
    assert_eq!(m.delivery.properties, BasicProperties::default());
    assert!(m.delivery.data.is_empty());
}

#[tokio::test]
async fn user_id_must_match_the_connection_user() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    ch.confirm_select(Default::default()).await.unwrap();
    let r = ch
        .basic_publish(
            "".into(),
            "q".into(),
            Default::default(),
            b"forged",
            BasicProperties::default().with_user_id("admin".into()),
        )
        .await
        .unwrap()
        .await;
    let text = expect_code(r, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - user_id property set to 'admin' but authenticated user was 'guest'"
    );
}

#[tokio::test]
async fn heartbeat_interval_is_negotiated() {
    let broker = TestBroker::start();
    let conn = connect(&format!("{}?heartbeat=5", broker.url())).await;
    assert_eq!(conn.configuration().heartbeat(), 5);
    // Without a preference the client takes the server's 60 s.
    let conn = connect(&broker.url()).await;
    assert_eq!(conn.configuration().heartbeat(), 60);
    let conn = connect(&format!("{}?heartbeat=5", broker.url())).await;
    let rows = ctl_rows(&broker, &["list_connections", "user"]);
    assert_eq!(rows.len(), 3, "{rows:?}");
    drop(conn);
}

#[tokio::test]
async fn server_sends_heartbeats_and_drops_a_silent_client() {
    let broker = TestBroker::start();
    let port = broker.port;
    tokio::task::spawn_blocking(move || {
        let mut raw = Raw::handshake_with(port, 131072, 1);
        let start = Instant::now();
        // With a 1 s interval the server speaks at least every half second or so.
        let f = raw.read_frame().expect("a heartbeat");
        assert_eq!(
            (f.kind, f.channel, f.payload.len()),
            (FRAME_HEARTBEAT, 0, 0)
        );
        assert!(
            start.elapsed() < Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
        // We never send one: after two missed intervals the server closes the socket.
        raw.expect_eof();
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(1500) && waited < Duration::from_secs(5),
            "closed after {waited:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn binding_to_missing_queues_or_exchanges_is_404() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    queues(&ch, &["here"]).await;
    let text = expect_code(
        ch.queue_bind(
            "missing".into(),
            "amq.direct".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no queue 'missing' in vhost '/'");
    let ch = conn.create_channel().await.unwrap();
    let text = expect_code(
        ch.queue_bind(
            "here".into(),
            "nope".into(),
            "k".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await,
        404,
    );
    assert_eq!(text, "NOT_FOUND - no exchange 'nope' in vhost '/'");
    // Unbinding what was never bound is fine.
    let ch = conn.create_channel().await.unwrap();
    ch.queue_unbind(
        "here".into(),
        "amq.direct".into(),
        "never".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn auto_delete_exchange_goes_with_its_last_binding() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    ch.exchange_declare(
        "ephemeral".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    queues(&ch, &["a", "b"]).await;
    bind(&ch, "a", "ephemeral", "", FieldTable::default()).await;
    bind(&ch, "b", "ephemeral", "", FieldTable::default()).await;
    let exists = || async {
        ctl_rows(&broker, &["list_exchanges", "name"])
            .iter()
            .any(|x| x["name"] == "ephemeral")
    };
    ch.queue_unbind(
        "a".into(),
        "ephemeral".into(),
        "".into(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    assert!(exists().await, "deleted while a binding was left");
    // Deleting the last bound queue removes the last binding too.
    ch.queue_delete("b".into(), Default::default())
        .await
        .unwrap();
    eventually("the auto-delete exchange is gone", || async {
        !exists().await
    })
    .await;
}

#[tokio::test]
async fn basic_get_reports_the_messages_left() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    for i in 0..3 {
        publish(&ch, "", "q", format!("m{i}").as_bytes(), Default::default()).await;
    }
    eventually("queued", || async { ready_count(&ch, "q").await == 3 }).await;
    let counts: Vec<u32> = {
        let mut v = Vec::new();
        while let Some(m) = get(&ch, "q", true).await {
            v.push(m.message_count);
        }
        v
    };
    assert_eq!(counts, [2, 1, 0]);
}

#[tokio::test]
async fn immediate_publishing_is_not_implemented() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    queues(&ch, &["q"]).await;
    ch.basic_publish(
        "".into(),
        "q".into(),
        BasicPublishOptions {
            immediate: true,
            ..Default::default()
        },
        b"now",
        Default::default(),
    )
    .await
    .unwrap();
    // A connection error, as in RabbitMQ.
    let text = expect_code(ch.basic_qos(1, Default::default()).await, 540);
    assert_eq!(text, "NOT_IMPLEMENTED - immediate=true");
    eventually("the connection is closed", || async {
        !conn.status().connected()
    })
    .await;
}

#[tokio::test]
async fn publishing_to_an_internal_exchange_is_refused() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    ch.exchange_declare(
        "inner".into(),
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            internal: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    let r = ch
        .basic_publish(
            "inner".into(),
            "".into(),
            Default::default(),
            b"x",
            Default::default(),
        )
        .await
        .unwrap()
        .await;
    let text = expect_code(r, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - cannot publish to internal exchange 'inner' in vhost '/'"
    );
}

#[tokio::test]
async fn nack_without_requeue_dead_letters_every_message_it_names() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    dead_letter_setup(&ch).await;
    declare(
        &ch,
        "src",
        Default::default(),
        args(&[("x-dead-letter-exchange", long("dlx"))]),
    )
    .await;
    for i in 0..3 {
        publish(
            &ch,
            "",
            "src",
            format!("m{i}").as_bytes(),
            Default::default(),
        )
        .await;
    }
    let mut c = consume(&ch, "src", "c", false).await;
    next(&mut c).await;
    next(&mut c).await;
    let last = next(&mut c).await;
    last.acker
        .nack(BasicNackOptions {
            multiple: true,
            requeue: false,
        })
        .await
        .unwrap();
    eventually("dead-lettered", || async {
        ready_count(&ch, "dead").await == 3
    })
    .await;
    assert_eq!(drain(&ch, "dead").await, ["m0", "m1", "m2"]);
}

#[tokio::test]
async fn declaring_a_queue_renews_its_x_expires_lease() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    let expiring = || args(&[("x-expires", int(300))]);
    declare(&ch, "renewed", Default::default(), expiring()).await;
    // Passive declares (queue.declare-ok carries the queue's stats, which RabbitMQ counts as a
    // use) keep it alive well past 300 ms; a passive declare of a deleted queue would be a 404.
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(900) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ready_count(&ch, "renewed").await;
    }
    // So does an active redeclare.
    declare(&ch, "renewed", Default::default(), expiring()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    ready_count(&ch, "renewed").await;
    // Then left alone, it expires.
    eventually("the queue expired once left alone", || async {
        !ctl_rows(&broker, &["list_queues", "name"])
            .iter()
            .any(|r| r["name"] == "renewed")
    })
    .await;
}

/// Binds sent back to back (Warren commits those it reads together as one change) answer
/// as binding one at a time would: ok up to the first failure, that failure's 404, and
/// nothing after it bound.
#[tokio::test]
async fn pipelined_binds_stop_at_the_first_failure() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    exchange(&ch, "pipe-x", ExchangeKind::Direct, FieldTable::default()).await;
    queues(&ch, &["pipe-q"]).await;
    let bind_to = |exchange: &'static str, key: String| {
        let ch = ch.clone();
        async move {
            ch.queue_bind(
                "pipe-q".into(),
                exchange.into(),
                key.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
        }
    };
    let mut pending = Vec::new();
    for i in 0..200 {
        let exchange = if i == 150 { "pipe-missing" } else { "pipe-x" };
        pending.push(Box::pin(bind_to(exchange, format!("k{i}"))));
    }
    // Poll all of them, in order, so the binds go out back to back without waiting
    // for each other's answers.
    let mut results: Vec<Option<Result<(), lapin::Error>>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (f, r) in pending.iter_mut().zip(results.iter_mut()) {
            if r.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *r = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    let mut results = results.into_iter().flatten();
    for i in 0..150 {
        let r = results.next();
        assert!(matches!(r, Some(Ok(()))), "bind {i} should succeed: {r:?}");
    }
    let text = expect_code(results.next().expect("bind 150 answered"), 404);
    assert_eq!(text, "NOT_FOUND - no exchange 'pipe-missing' in vhost '/'");
    assert!(results.all(|r| r.is_err()));

    // Bound: k0..k149; not bound: k151.. (the channel closed before them).
    let ch = conn.create_channel().await.unwrap();
    publish(&ch, "pipe-x", "k149", b"in", Default::default()).await;
    publish(&ch, "pipe-x", "k151", b"out", Default::default()).await;
    publish(&ch, "pipe-x", "k199", b"out", Default::default()).await;
    eventually("the routed message is queued", || async {
        ready_count(&ch, "pipe-q").await >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ready_count(&ch, "pipe-q").await, 1);
}

/// connection.update-secret is checked as a login is: the right secret is accepted, a wrong one
/// closes the connection with 530 as RabbitMQ does.
#[tokio::test]
async fn update_secret_is_checked_by_the_auth_backend() {
    let broker = TestBroker::start();
    let port = broker.port;
    tokio::task::spawn_blocking(move || {
        let mut raw = Raw::handshake(port);
        raw.update_secret_ok(b"guest", "token refresh");
        raw.send_update_secret(b"not-the-password", "token refresh");
        let closed = raw.expect_connection_close();
        assert_eq!(closed.code, 530);
        assert_eq!(
            closed.text,
            "NOT_ALLOWED - New secret was refused by one of the backends"
        );
        assert_eq!((closed.class_id, closed.method_id), (10, 70));
    })
    .await
    .unwrap();
}
