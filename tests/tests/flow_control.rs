//! Resource alarms: past the memory high-watermark or the free-disk limit the broker blocks
//! publishing connections (connection.blocked, publishes held unread) while consumers keep
//! draining what was queued before.

mod common;

use std::time::Duration;

use common::*;
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{Confirmation, Connection, Event};

/// Publishes `n` persistent messages to durable queue `backlog`, then restarts the node with
/// `config` (so the alarm is on from the start and the backlog predates it).
async fn backlog_then_restart_with(broker: &mut TestBroker, n: usize, config: &str) {
    {
        let (conn, ch) = open(&broker.url()).await;
        ch.confirm_select(Default::default()).await.unwrap();
        declare(&ch, "backlog", durable(), FieldTable::default()).await;
        declare(&ch, "incoming", durable(), FieldTable::default()).await;
        for i in 0..n {
            publish_confirmed(
                &ch,
                "",
                "backlog",
                format!("old-{i}").as_bytes(),
                persistent(),
            )
            .await;
        }
        conn.close(200, "bye".into()).await.unwrap();
    }
    broker.node.config = config.to_string();
    broker.restart();
}

async fn wait_for_alarm(broker: &TestBroker, which: &str) {
    eventually(&format!("the {which} alarm is on"), || async {
        ctl_json(broker, &["status"])["alarms"][which] == true
    })
    .await;
}

/// Waits for connection.blocked on `events`, returning its reason.
async fn blocked_reason(events: &mut (impl futures_lite::Stream<Item = Event> + Unpin)) -> String {
    let wait = async {
        while let Some(e) = events.next().await {
            if let Event::ConnectionBlocked(reason) = e {
                return reason;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("no connection.blocked")
}

/// The checks both alarms share: the publisher is blocked and held, the consumer drains.
async fn publisher_blocked_consumer_drains(broker: &TestBroker, expected_reason: &str) {
    // The publisher: declaring is fine, publishing gets it blocked.
    let publisher = connect(&broker.url()).await;
    let mut events = Box::pin(publisher.events_listener());
    let pch = publisher.create_channel().await.unwrap();
    pch.confirm_select(Default::default()).await.unwrap();
    declare(&pch, "incoming", durable(), FieldTable::default()).await;
    let confirm = pch
        .basic_publish(
            "".into(),
            "incoming".into(),
            Default::default(),
            b"held",
            persistent(),
        )
        .await
        .expect("the publish is written to the socket");
    let reason = blocked_reason(&mut events).await;
    assert_eq!(reason, expected_reason);
    assert!(publisher.status().blocked());

    // The consumer, on its own connection, still gets the backlog and can ack it.
    let (_cconn, cch) = open(&broker.url()).await;
    let mut c = consume(&cch, "backlog", "drain", false).await;
    for i in 0..5 {
        let d = next(&mut c).await;
        assert_eq!(body(&d), format!("old-{i}"));
        d.acker.ack(Default::default()).await.unwrap();
    }
    eventually("the backlog is acked", || async {
        ctl_messages(broker, "backlog") == Some(0)
    })
    .await;

    // The held message is not in its queue and its confirm does not come.
    let confirm = tokio::time::timeout(Duration::from_millis(500), confirm).await;
    assert!(
        confirm.is_err(),
        "a blocked publish was confirmed: {confirm:?}"
    );
    assert_eq!(ready_count(&cch, "incoming").await, 0);
    assert_eq!(ctl_messages(broker, "incoming"), Some(0));
    // The consumer's connection was never blocked.
    let status = ctl_json(broker, &["status"]);
    assert_eq!(status["connections"], 2, "{status}");
    assert!(publisher.status().connected());
}

#[tokio::test]
async fn memory_alarm_blocks_publishers_but_not_consumers() {
    let mut broker = TestBroker::start();
    backlog_then_restart_with(&mut broker, 5, "vm_memory_high_watermark.absolute = 1\n").await;
    wait_for_alarm(&broker, "memory").await;
    publisher_blocked_consumer_drains(&broker, "low on memory").await;
}

#[tokio::test]
async fn disk_alarm_blocks_publishers_but_not_consumers() {
    let mut broker = TestBroker::start();
    backlog_then_restart_with(&mut broker, 5, "disk_free_limit.absolute = 1000TB\n").await;
    wait_for_alarm(&broker, "disk").await;
    publisher_blocked_consumer_drains(&broker, "low on disk").await;
}

#[tokio::test]
async fn a_blocked_publisher_without_the_capability_is_held_silently() {
    let broker = TestBroker::start_with_config("vm_memory_high_watermark.absolute = 1\n");
    wait_for_alarm(&broker, "memory").await;
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "incoming", Default::default(), FieldTable::default()).await;
    let port = broker.port;
    let raw = tokio::task::spawn_blocking(move || {
        // Raw clients announce no capabilities, so no connection.blocked for this one.
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&publish_frame(1, "", "incoming"));
        raw.send(&header_frame(1, 4));
        raw.send(&frame(FRAME_BODY, 1, b"held"));
        // channel.close: a reading broker would answer close-ok.
        raw.send(&method_frame(
            1,
            20,
            40,
            Args::new().u16(200).short("").u16(0).u16(0),
        ));
        raw.stream
            .set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        assert!(
            raw.read_frame().is_none(),
            "the blocked connection answered"
        );
        raw
    })
    .await
    .unwrap();
    assert_eq!(ready_count(&ch, "incoming").await, 0);
    drop(raw);
    // A connection that only consumes and declares carries on.
    declare(&ch, "still-fine", Default::default(), FieldTable::default()).await;
}

#[tokio::test]
async fn without_an_alarm_publishers_are_not_blocked() {
    let broker = TestBroker::start();
    let conn = Connection::connect(&broker.url(), Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(Default::default()).await.unwrap();
    declare(&ch, "q", Default::default(), FieldTable::default()).await;
    for _ in 0..50 {
        let c = ch
            .basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                b"m",
                Default::default(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(c, Confirmation::Ack(None));
    }
    assert!(!conn.status().blocked());
    assert_eq!(
        ctl_json(&broker, &["status"])["alarms"],
        serde_json::json!({"memory": false, "disk": false})
    );
}
