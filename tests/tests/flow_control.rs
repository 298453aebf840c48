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
    // listings say which connection is held and which would be if it published.
    let states: Vec<String> = ctl_rows(broker, &["list_connections", "state"])
        .iter()
        .map(|r| r["state"].as_str().unwrap_or("").to_string())
        .collect();
    let mut sorted = states.clone();
    sorted.sort();
    assert_eq!(sorted, ["blocked", "blocking"], "{states:?}");
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

/// Waits for connection.unblocked on `events`.
async fn unblocked(events: &mut (impl futures_lite::Stream<Item = Event> + Unpin)) {
    let wait = async {
        while let Some(e) = events.next().await {
            if let Event::ConnectionUnblocked = e {
                return;
            }
        }
        panic!("the event stream ended");
    };
    tokio::time::timeout(PATIENCE, wait)
        .await
        .expect("no connection.unblocked");
}

/// A consumer whose socket is never read: the broker stops delivering to it once a few MB
/// wait for it (the rest stays in the queue), the publisher is blocked near the watermark,
/// and once the consumer is gone and its queue deleted the alarm clears by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_does_not_read_is_bounded_and_the_alarm_clears_once_memory_is_freed() {
    const MB: usize = 1 << 20;
    let broker = TestBroker::start_with_config("vm_memory_high_watermark.absolute = 160MB\n");
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "sink", Default::default(), FieldTable::default()).await;

    // The consumer: autoack, and it never reads its socket.
    let port = broker.port;
    let stalled = tokio::task::spawn_blocking(move || {
        let mut raw = Raw::handshake(port);
        raw.open_channel(1);
        raw.send(&consume_frame(1, "sink", "stalled", true));
        let ok = raw.read_frame().expect("basic.consume-ok");
        assert_eq!(ok.kind, FRAME_METHOD);
        raw
    })
    .await
    .unwrap();

    let publisher = connect(&broker.url()).await;
    let mut events = Box::pin(publisher.events_listener());
    let pch = publisher.create_channel().await.unwrap();
    let body = vec![b'x'; MB];
    let publishing = tokio::spawn(async move {
        for _ in 0..400 {
            if pch
                .basic_publish(
                    "".into(),
                    "sink".into(),
                    Default::default(),
                    &body,
                    Default::default(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let reason = blocked_reason(&mut events).await;
    assert_eq!(reason, "low on memory");
    assert!(
        !publishing.is_finished(),
        "400 MB went by a 160 MB watermark"
    );

    // What waits for the stalled socket is bounded; the rest waits in the queue.
    let stalled_port = stalled.stream.local_addr().unwrap().port();
    let rows = ctl_rows(&broker, &["list_connections", "peer_port", "send_pend"]);
    let consumer_row = rows
        .iter()
        .find(|r| r["peer_port"] == stalled_port)
        .unwrap_or_else(|| panic!("no consumer connection in {rows:?}"));
    let pending = consumer_row["send_pend"].as_u64().unwrap();
    assert!(
        pending <= 6 * MB as u64,
        "{pending} bytes wait for a socket that is not read"
    );
    assert!(
        ctl_messages(&broker, "sink").unwrap() > 50,
        "the queue was drained into a socket that is not read"
    );

    // The consumer goes, its queue is deleted: the memory is free and the alarm clears.
    stalled.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(stalled);
    eventually("the stalled consumer's connection is gone", || async {
        ctl_rows(&broker, &["list_connections", "name"]).len() == 2
    })
    .await;
    ch.queue_delete("sink".into(), Default::default())
        .await
        .unwrap();
    unblocked(&mut events).await;
    assert!(!publisher.status().blocked());
    assert_eq!(
        ctl_json(&broker, &["status"])["alarms"],
        serde_json::json!({"memory": false, "disk": false})
    );
    publishing.abort();
}
