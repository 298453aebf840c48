//! Policies and operator policies through `warrenctl`, seen by AMQP clients: a policy changes
//! queues that already exist and those declared later, queue arguments and operator
//! policies combine with it as in RabbitMQ, bad definitions are refused with RabbitMQ's
//! reasons, and on a cluster a policy set on one node changes queues on every node.

mod common;

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::{Value, json};
use warren_tests::{Node, TempDir};

fn queue_row(node: &Node, name: &str) -> serde_json::Map<String, Value> {
    ctl_rows(
        node,
        &[
            "list_queues",
            "name",
            "messages",
            "policy",
            "operator_policy",
            "effective_policy_definition",
        ],
    )
    .into_iter()
    .find(|r| r["name"] == name)
    .unwrap_or_else(|| panic!("no queue {name}"))
}

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

async fn wait_messages(node: &Node, queue: &str, want: u64) {
    eventually(&format!("{queue} holds {want}"), || async {
        ctl_messages(node, queue) == Some(want)
    })
    .await;
}

#[tokio::test]
async fn a_policy_changes_existing_and_later_queues_and_clearing_it_lifts_it() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "pol.before", durable(), FieldTable::default()).await;
    for i in 1..=5 {
        publish(
            &ch,
            "",
            "pol.before",
            format!("m{i}").as_bytes(),
            persistent(),
        )
        .await;
    }
    wait_messages(&broker, "pol.before", 5).await;

    let out = broker.ctl_ok(&[
        "set_policy",
        "--apply-to",
        "queues",
        "cap",
        "^pol\\.",
        "{\"max-length\": 2}",
    ]);
    assert!(
        out.contains("Setting policy \"cap\" for pattern \"^pol\\.\""),
        "{out}"
    );
    // Lowered below the queue's length: the head goes at once, as in RabbitMQ.
    wait_messages(&broker, "pol.before", 2).await;
    assert_eq!(drain(&ch, "pol.before").await, ["m4", "m5"]);
    let row = queue_row(&broker, "pol.before");
    assert_eq!(row["policy"], "cap");
    assert_eq!(row["operator_policy"], "");
    assert_eq!(row["effective_policy_definition"], json!({"max-length": 2}));

    // A queue declared later takes it too; one whose name does not match does not.
    declare(&ch, "pol.after", durable(), FieldTable::default()).await;
    declare(&ch, "other", durable(), FieldTable::default()).await;
    for i in 1..=4 {
        publish(
            &ch,
            "",
            "pol.after",
            format!("a{i}").as_bytes(),
            persistent(),
        )
        .await;
        publish(&ch, "", "other", b"o", persistent()).await;
    }
    wait_messages(&broker, "other", 4).await;
    assert_eq!(ctl_messages(&broker, "pol.after"), Some(2));
    assert_eq!(queue_row(&broker, "other")["policy"], "");

    let policies = ctl_rows(&broker, &["list_policies"]);
    assert_eq!(policies.len(), 1, "{policies:?}");
    assert_eq!(policies[0]["name"], "cap");
    assert_eq!(policies[0]["pattern"], "^pol\\.");
    assert_eq!(policies[0]["apply-to"], "queues");
    // As rabbitmqctl prints it: the definition is JSON text.
    assert_eq!(policies[0]["definition"], "{\"max-length\":2}");
    assert_eq!(policies[0]["priority"], 0);

    broker.ctl_ok(&["clear_policy", "cap"]);
    for i in 5..=7 {
        publish(
            &ch,
            "",
            "pol.after",
            format!("a{i}").as_bytes(),
            persistent(),
        )
        .await;
    }
    wait_messages(&broker, "pol.after", 5).await;
    assert_eq!(queue_row(&broker, "pol.after")["policy"], "");
    assert!(ctl_rows(&broker, &["list_policies"]).is_empty());
    let again = broker.ctl(&["clear_policy", "cap"]);
    assert_eq!(again.status.code(), Some(65));
}

#[tokio::test]
async fn ttl_and_dead_lettering_from_a_policy_reach_the_dead_letter_queue() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "dead", durable(), FieldTable::default()).await;
    ch.queue_bind(
        "dead".into(),
        "amq.direct".into(),
        "expired".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    declare(&ch, "short.lived", durable(), FieldTable::default()).await;
    broker.ctl_ok(&[
        "set_policy",
        "ttl",
        "^short\\.",
        r#"{"message-ttl": 100, "dead-letter-exchange": "amq.direct", "dead-letter-routing-key": "expired"}"#,
    ]);
    publish(&ch, "", "short.lived", b"gone soon", persistent()).await;
    let dead = get_wait(&ch, "dead", true).await;
    assert_eq!(String::from_utf8_lossy(&dead.delivery.data), "gone soon");
    assert_eq!(ctl_messages(&broker, "short.lived"), Some(0));
}

#[tokio::test]
async fn arguments_operator_policies_and_priorities_combine_as_in_rabbitmq() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    // For length limits the lower of argument and policy applies.
    declare(
        &ch,
        "limits.arg10",
        durable(),
        args(&[("x-max-length", AMQPValue::LongInt(10))]),
    )
    .await;
    declare(
        &ch,
        "limits.arg1",
        durable(),
        args(&[("x-max-length", AMQPValue::LongInt(1))]),
    )
    .await;
    broker.ctl_ok(&["set_policy", "low", "^limits\\.", r#"{"max-length": 3}"#]);
    // Higher priority wins; among the matching only one applies.
    broker.ctl_ok(&[
        "set_policy",
        "--priority",
        "5",
        "high",
        "^limits\\.arg1$",
        r#"{"max-length": 4}"#,
    ]);
    for q in ["limits.arg10", "limits.arg1"] {
        for _ in 0..6 {
            publish(&ch, "", q, b"x", persistent()).await;
        }
    }
    wait_messages(&broker, "limits.arg10", 3).await;
    wait_messages(&broker, "limits.arg1", 1).await;
    assert_eq!(queue_row(&broker, "limits.arg10")["policy"], "low");
    assert_eq!(queue_row(&broker, "limits.arg1")["policy"], "high");

    // An operator policy caps the user policy's value with its lower one.
    let out = broker.ctl_ok(&[
        "set_operator_policy",
        "--apply-to",
        "queues",
        "ops",
        "^limits\\.arg10$",
        r#"{"max-length": 2, "message-ttl": 600000}"#,
    ]);
    assert!(out.contains("operator policy override"), "{out}");
    wait_messages(&broker, "limits.arg10", 2).await;
    let row = queue_row(&broker, "limits.arg10");
    assert_eq!(row["policy"], "low");
    assert_eq!(row["operator_policy"], "ops");
    assert_eq!(
        row["effective_policy_definition"],
        json!({"max-length": 2, "message-ttl": 600000})
    );
    let ops = ctl_rows(&broker, &["list_operator_policies"]);
    assert_eq!(ops.len(), 1, "{ops:?}");
    assert_eq!(
        ops[0]["definition"],
        "{\"max-length\":2,\"message-ttl\":600000}"
    );
    broker.ctl_ok(&["clear_operator_policy", "ops"]);
    for _ in 0..3 {
        publish(&ch, "", "limits.arg10", b"x", persistent()).await;
    }
    wait_messages(&broker, "limits.arg10", 3).await;
}

#[tokio::test]
async fn an_exchange_policy_gives_an_alternate_exchange() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    ch.exchange_declare(
        "orders".into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare orders");
    declare(&ch, "unrouted", durable(), FieldTable::default()).await;
    ch.queue_bind(
        "unrouted".into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    broker.ctl_ok(&[
        "set_policy",
        "--apply-to",
        "exchanges",
        "ae",
        "^orders$",
        r#"{"alternate-exchange": "amq.fanout"}"#,
    ]);
    let listed = ctl_rows(&broker, &["list_exchanges", "name", "policy"]);
    assert!(
        listed
            .iter()
            .any(|r| r["name"] == "orders" && r["policy"] == "ae"),
        "{listed:?}"
    );
    publish(&ch, "orders", "nobody", b"lost?", persistent()).await;
    let got = get_wait(&ch, "unrouted", true).await;
    assert_eq!(String::from_utf8_lossy(&got.delivery.data), "lost?");
}

#[test]
fn bad_policies_are_refused_with_rabbitmq_s_reasons_and_change_nothing() {
    let broker = TestBroker::start();
    let refused = |args: &[&str], reason: &str| {
        let out = broker.ctl(args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(65), "{args:?}: {err}");
        assert!(err.contains(reason), "{args:?}: {err}");
    };
    refused(
        &["set_policy", "p", ".*", r#"{"message-ttl": "soon"}"#],
        "<<\"soon\">> is not a valid message TTL",
    );
    refused(
        &["set_policy", "p", ".*", r#"{"ha-mode": "all", "foo": 1}"#],
        "are not recognised policy settings",
    );
    refused(&["set_policy", "p", ".*", "{}"], "no policy provided");
    refused(&["set_policy", "p", ".*", "not json"], "not a valid JSON");
    refused(
        &["set_policy", "p", "(", r#"{"max-length": 1}"#],
        "pattern should be regular expression but is invalid",
    );
    refused(
        &[
            "set_policy",
            "--apply-to",
            "streams",
            "p",
            ".*",
            r#"{"max-length": 1}"#,
        ],
        "apply-to 'streams' unrecognised",
    );
    refused(
        &[
            "set_operator_policy",
            "p",
            ".*",
            r#"{"dead-letter-exchange": "x"}"#,
        ],
        "are not recognised policy settings",
    );
    refused(
        &[
            "set_policy",
            "-p",
            "nowhere",
            "p",
            ".*",
            r#"{"max-length": 1}"#,
        ],
        "nowhere",
    );
    assert!(ctl_rows(&broker, &["list_policies"]).is_empty());
    assert!(ctl_rows(&broker, &["list_operator_policies"]).is_empty());
}

#[tokio::test]
async fn a_quorum_queue_dead_letters_after_twenty_redeliveries_by_default() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "dl", durable(), FieldTable::default()).await;
    ch.queue_bind(
        "dl".into(),
        "amq.fanout".into(),
        "".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    declare(
        &ch,
        "work",
        durable(),
        args(&[
            ("x-queue-type", text("quorum")),
            ("x-dead-letter-exchange", text("amq.fanout")),
        ]),
    )
    .await;
    publish(&ch, "", "work", b"poison", persistent()).await;
    // Delivered once, then returned 20 times: the 21st return is one too many.
    for attempt in 0..=20 {
        let m = get_wait(&ch, "work", false).await;
        assert_eq!(
            m.delivery.redelivered,
            attempt > 0,
            "attempt {attempt} redelivered flag"
        );
        ch.basic_nack(
            m.delivery.delivery_tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        )
        .await
        .expect("nack");
    }
    let dead = get_wait(&ch, "dl", true).await;
    assert_eq!(String::from_utf8_lossy(&dead.delivery.data), "poison");
    assert_eq!(get(&ch, "work", true).await.map(|m| m.delivery.data), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_on_one_node_changes_queues_on_every_node() {
    let dir = TempDir::new("policies-cluster");
    let nodes = cluster_of_three(&dir, "pol");
    // A classic queue owned by each node, and a quorum queue led by the third.
    let mut channels = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let (conn, ch) = open(&n.url()).await;
        declare(&ch, &format!("c.{i}"), durable(), FieldTable::default()).await;
        channels.push((conn, ch));
    }
    let ch3 = &channels[2].1;
    declare(
        ch3,
        "c.quorum",
        durable(),
        args(&[("x-queue-type", text("quorum"))]),
    )
    .await;
    let names = ["c.0", "c.1", "c.2", "c.quorum"];
    for q in names {
        for i in 0..5 {
            publish(ch3, "", q, format!("{q}-{i}").as_bytes(), persistent()).await;
        }
    }
    for q in names {
        wait_messages(&nodes[0], q, 5).await;
    }

    nodes[0].ctl_ok(&["set_policy", "cap", "^c\\.", r#"{"max-length": 1}"#]);
    for q in names {
        wait_messages(&nodes[1], q, 1).await;
    }
    for n in &nodes {
        for q in names {
            assert_eq!(
                queue_row(n, q)["policy"],
                "cap",
                "{q} seen from {}",
                n.full_name()
            );
        }
        assert_eq!(ctl_rows(n, &["list_policies"]).len(), 1);
    }
    // What is left is the newest of each, wherever the queue lives.
    let ch1 = &channels[0].1;
    for q in names {
        let m = get_wait(ch1, q, true).await;
        assert_eq!(String::from_utf8_lossy(&m.delivery.data), format!("{q}-4"));
    }

    nodes[1].ctl_ok(&["clear_policy", "cap"]);
    for q in names {
        for i in 0..3 {
            publish(ch1, "", q, format!("{i}").as_bytes(), persistent()).await;
        }
    }
    for q in names {
        wait_messages(&nodes[2], q, 3).await;
    }
}
