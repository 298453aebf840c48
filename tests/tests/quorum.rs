//! Quorum queues: replicated by a Raft group per queue over three nodes,
//! with real processes. Confirms mean a majority has the message; the
//! leader's death loses nothing confirmed; consumers on other nodes go on;
//! a minority refuses publishes; delivery counts and limits are replicated.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use warren_tests::{Node, TempDir};

fn quorum_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum".as_bytes().to_vec())),
    );
    for (k, v) in extra {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// The queue's row in `list_queues` on `node`.
fn queue_row(node: &Node, name: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    ctl_rows(
        node,
        &[
            "list_queues",
            "name",
            "type",
            "leader",
            "members",
            "online",
            "messages",
        ],
    )
    .into_iter()
    .find(|r| r["name"] == name)
}

/// Waits until `node` names a leader for the queue, and returns it.
fn wait_leader(node: &Node, name: &str, not: Option<&str>) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(row) = queue_row(node, name)
            && let Some(l) = row["leader"].as_str()
            && !l.is_empty()
            && Some(l) != not
        {
            return l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no leader for {name} on {}",
            node.full_name()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

async fn publish_acked(ch: &Channel, queue: &str, body: &[u8]) -> bool {
    match ch
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
    {
        Ok(confirm) => matches!(confirm.await, Ok(c) if c.is_ack()),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quorum_queue_survives_its_leaders_death() {
    let dir = TempDir::new("quorum-failover");
    let mut nodes = cluster_of_three(&dir, "qf");

    // Declared on node 1: three members, node 1 leads; every node lists it.
    let (_c1, ch1) = open(&nodes[0].url()).await;
    ch1.queue_declare("orders".into(), durable(), quorum_args(&[]))
        .await
        .expect("declare quorum queue");
    let row = queue_row(&nodes[2], "orders").expect("listed on node 3");
    assert_eq!(row["type"], "quorum");
    let mut members: Vec<String> = row["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    members.sort();
    let mut everyone: Vec<String> = nodes.iter().map(|n| n.full_name()).collect();
    everyone.sort();
    assert_eq!(members, everyone);
    let leader = wait_leader(&nodes[2], "orders", None);
    assert_eq!(leader, nodes[0].full_name());

    // Publishers with confirms on node 2, a consumer on node 3.
    let (_c2, ch2) = open(&nodes[1].url()).await;
    ch2.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..100 {
        assert!(
            publish_acked(&ch2, "orders", format!("m{i}").as_bytes()).await,
            "message {i} confirmed"
        );
    }
    let (_c3, ch3) = open(&nodes[2].url()).await;
    ch3.basic_qos(10, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume(&ch3, "orders", "c3", false).await;
    let mut seen = Vec::new();
    for _ in 0..50 {
        let d = next(&mut consumer).await;
        seen.push(body(&d));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }

    // The leader dies: another member takes over; nothing confirmed is lost.
    nodes[0].kill9();
    let new_leader = wait_leader(&nodes[1], "orders", Some(&leader));
    assert_ne!(new_leader, leader);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut confirmed_after = 0;
    let mut i = 100;
    while confirmed_after < 50 {
        if publish_acked(&ch2, "orders", format!("m{i}").as_bytes()).await {
            confirmed_after += 1;
            i += 1;
        } else {
            assert!(Instant::now() < deadline, "publishes refused for 20 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The consumer on node 3 goes on: the rest, with unacked ones redelivered.
    let want: Vec<String> = (0..i).map(|n| format!("m{n}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.iter().all(|w| seen.contains(w)) {
        assert!(
            Instant::now() < deadline,
            "missing after failover: {:?}",
            want.iter()
                .filter(|w| !seen.contains(w))
                .collect::<Vec<_>>()
        );
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await;
        if let Ok(Some(Ok(d))) = d {
            seen.push(body(&d));
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
    }

    // The old leader comes back and catches up; all three are online again.
    nodes[0].start();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let row = queue_row(&nodes[0], "orders").expect("listed on node 1");
        if row["online"].as_array().map(|a| a.len()) == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 not back online: {row:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(publish_acked(&ch2, "orders", b"after restart").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_refuses_publishes_until_the_majority_is_back() {
    let dir = TempDir::new("quorum-minority");
    let mut nodes = cluster_of_three(&dir, "qm");
    let (_c1, ch1) = open(&nodes[0].url()).await;
    ch1.queue_declare("tally".into(), durable(), quorum_args(&[]))
        .await
        .expect("declare");
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    assert!(publish_acked(&ch1, "tally", b"one").await);

    nodes[1].kill9();
    nodes[2].kill9();
    // Alone, node 1 cannot replicate: the publish is refused, not accepted.
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        publish_acked(&ch1, "tally", b"two"),
    )
    .await
    .unwrap_or(false);
    assert!(!refused, "a lone member confirmed a publish");

    nodes[1].start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (_c, ch) = loop {
        let (c, ch) = open(&nodes[0].url()).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        if publish_acked(&ch, "tally", b"three").await {
            break (c, ch);
        }
        assert!(
            Instant::now() < deadline,
            "majority back, publishes still refused"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut bodies = Vec::new();
    while let Some(m) = get(&ch, "tally", true).await {
        bodies.push(String::from_utf8_lossy(&m.delivery.data).into_owned());
    }
    assert!(bodies.contains(&"one".to_string()), "{bodies:?}");
    assert!(bodies.contains(&"three".to_string()), "{bodies:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_counts_and_the_delivery_limit() {
    let broker = TestBroker::start();
    let (_c, ch) = open(&broker.url()).await;
    ch.queue_declare("dlq".into(), durable(), FieldTable::default())
        .await
        .expect("dead-letter queue");
    ch.queue_declare(
        "jobs".into(),
        durable(),
        quorum_args(&[
            ("x-delivery-limit", AMQPValue::LongInt(2)),
            (
                "x-dead-letter-exchange",
                AMQPValue::LongString(LongString::from("".as_bytes().to_vec())),
            ),
            (
                "x-dead-letter-routing-key",
                AMQPValue::LongString(LongString::from("dlq".as_bytes().to_vec())),
            ),
        ]),
    )
    .await
    .expect("declare quorum queue");
    // Non-durable is refused, as in RabbitMQ.
    let (_c2, ch2) = open(&broker.url()).await;
    let text = expect_code(
        ch2.queue_declare(
            "transient-qq".into(),
            QueueDeclareOptions::default(),
            quorum_args(&[]),
        )
        .await,
        406,
    );
    assert!(text.contains("non-durable"), "{text}");

    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    assert!(publish_acked(&ch, "jobs", b"job").await);
    // First delivery: no count. Each return adds one.
    let first = get_wait(&ch, "jobs", false).await;
    assert!(!first.delivery.redelivered);
    let headers = first
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    assert!(!headers.inner().contains_key("x-delivery-count"));
    first
        .delivery
        .nack(BasicNackOptions {
            requeue: true,
            ..Default::default()
        })
        .await
        .expect("nack");
    for expected in 1..=2i64 {
        let again = get_wait(&ch, "jobs", false).await;
        assert!(again.delivery.redelivered);
        let headers = again
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        let count = match headers.inner().get("x-delivery-count") {
            Some(AMQPValue::LongLongInt(n)) => *n,
            Some(AMQPValue::LongInt(n)) => i64::from(*n),
            other => panic!("x-delivery-count: {other:?}"),
        };
        assert_eq!(count, expected);
        again
            .delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .expect("nack");
    }
    // Past the limit it is dead-lettered, not redelivered.
    let dead = get_wait(&ch, "dlq", true).await;
    assert_eq!(dead.delivery.data, b"job");
    assert!(get(&ch, "jobs", true).await.is_none());
}

fn members_of(node: &Node, name: &str) -> Vec<String> {
    let row = queue_row(node, name).unwrap_or_else(|| {
        panic!(
            "{name} not listed: {:?}",
            node.ctl_ok(&[
                "list_queues",
                "name",
                "type",
                "leader",
                "members",
                "online",
                "messages"
            ])
        )
    });
    let mut m: Vec<String> = row["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m.as_str().map(String::from))
        .collect();
    m.sort();
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_are_added_removed_grown_and_shrunk() {
    let dir = TempDir::new("quorum-members");
    let mut nodes = cluster_of_three(&dir, "qs");
    let names: Vec<String> = nodes.iter().map(|n| n.full_name()).collect();
    let (_c, ch) = open(&nodes[0].url()).await;
    ch.queue_declare(
        "ledger".into(),
        durable(),
        quorum_args(&[("x-quorum-initial-group-size", AMQPValue::LongInt(2))]),
    )
    .await
    .expect("declare");
    assert_eq!(
        members_of(&nodes[1], "ledger"),
        vec![names[0].clone(), names[1].clone()]
    );
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..20 {
        assert!(publish_acked(&ch, "ledger", format!("e{i}").as_bytes()).await);
    }

    // quorum_status: a row per member, one leader, logs in step.
    let status = ctl_rows(&nodes[2], &["quorum_status", "ledger"]);
    assert_eq!(status.len(), 2, "{status:?}");
    assert_eq!(
        status
            .iter()
            .filter(|r| r["Raft State"] == "leader")
            .count(),
        1,
        "{status:?}"
    );

    // add_member: node 3 joins and catches up.
    nodes[0].ctl_ok(&["add_member", "ledger", &names[2]]);
    assert_eq!(members_of(&nodes[0], "ledger"), names);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let status = ctl_rows(&nodes[0], &["quorum_status", "ledger"]);
        let third = status.iter().find(|r| r["Node Name"] == names[2].as_str());
        let leader_index = status
            .iter()
            .find(|r| r["Raft State"] == "leader")
            .and_then(|r| r["Commit Index"].as_u64());
        if let (Some(t), Some(l)) = (third, leader_index)
            && t["Raft State"] == "follower"
            && t["Commit Index"].as_u64() >= Some(l)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 3 did not catch up: {status:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Adding it twice, or a node outside the cluster, is refused in one line.
    let again = nodes[0].ctl(&["add_member", "ledger", &names[2]]);
    assert_eq!(again.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already a member"));
    let stranger = nodes[0].ctl(&["add_member", "ledger", "nobody@nowhere"]);
    assert_eq!(stranger.status.code(), Some(65));

    // delete_member of the first node (the leader): the others go on with the messages.
    nodes[1].ctl_ok(&["delete_member", "ledger", &names[0]]);
    assert_eq!(members_of(&nodes[1], "ledger"), names[1..].to_vec());
    let (c2, _) = open(&nodes[1].url()).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // A refused passive declare closes its channel: a new one each time.
        let ch2 = c2.create_channel().await.expect("channel");
        let n = ch2
            .queue_declare(
                "ledger".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map(|q| q.message_count())
            .unwrap_or(0);
        if n == 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages after delete_member: {n}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // grow puts node 1 back everywhere; shrink takes node 3 off everywhere.
    let grown = nodes[2].ctl_ok(&["grow", &names[0], "all"]);
    assert!(grown.contains("ledger"), "{grown}");
    assert_eq!(members_of(&nodes[2], "ledger"), names, "{grown}");
    nodes[2].ctl_ok(&["shrink", &names[2]]);
    assert_eq!(members_of(&nodes[0], "ledger"), names[..2].to_vec());
    let ch2 = c2.create_channel().await.expect("channel");
    let got = drain(&ch2, "ledger").await;
    assert_eq!(got.len(), 20, "{got:?}");

    // forget_cluster_node takes a forgotten node out of its quorum queues too.
    nodes[0].ctl_ok(&["grow", &names[2], "all"]);
    assert_eq!(members_of(&nodes[0], "ledger"), names);
    nodes[2].kill9();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = nodes[0].ctl(&["forget_cluster_node", &names[2]]);
        if out.status.success() {
            break;
        }
        // Refused while the others still think it runs (a few seconds).
        assert!(
            Instant::now() < deadline,
            "forget_cluster_node: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(members_of(&nodes[1], "ledger"), names[..2].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_nodes_quorum_queue_keeps_its_messages_across_a_restart() {
    let dir = TempDir::new("quorum-restart");
    let mut node = Node::new("qr1", &dir.0);
    node.start();
    {
        let (c, ch) = open(&node.url()).await;
        ch.queue_declare("kept".into(), durable(), quorum_args(&[]))
            .await
            .expect("declare");
        // Auto-delete is refused for a quorum queue, as in RabbitMQ.
        let (_c2, ch2) = open(&node.url()).await;
        let text = expect_code(
            ch2.queue_declare(
                "gone".into(),
                QueueDeclareOptions {
                    durable: true,
                    auto_delete: true,
                    ..Default::default()
                },
                quorum_args(&[]),
            )
            .await,
            406,
        );
        assert!(text.contains("auto-delete"), "{text}");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        for i in 0..30 {
            assert!(publish_acked(&ch, "kept", format!("k{i}").as_bytes()).await);
        }
        // Ten consumed and acked before the restart: those stay gone.
        for _ in 0..10 {
            let m = get_wait(&ch, "kept", false).await;
            m.delivery
                .ack(BasicAckOptions::default())
                .await
                .expect("ack");
        }
        c.close(200, "bye".into()).await.expect("close");
    }
    // Acks are replicated asynchronously; once they are committed, a crash keeps them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let status = ctl_rows(&node, &["quorum_status", "kept"]);
        let committed = status
            .first()
            .is_some_and(|r| r["Log Index"] == r["Commit Index"]);
        if ctl_messages(&node, "kept") == Some(20) && committed {
            break;
        }
        assert!(Instant::now() < deadline, "acks not committed: {status:?}");
    }
    node.kill9();
    node.start();
    let (_c, ch) = open(&node.url()).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    while got.len() < 20 {
        assert!(Instant::now() < deadline, "after restart: {got:?}");
        match get(&ch, "kept", true).await {
            Some(m) => got.push(String::from_utf8_lossy(&m.delivery.data).into_owned()),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let want: Vec<String> = (10..30).map(|i| format!("k{i}")).collect();
    assert_eq!(got, want);
    assert!(get(&ch, "kept", true).await.is_none());
}
