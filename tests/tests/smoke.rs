//! The first thing a user does: connect, declare, publish, get it back.

mod common;

use common::get_wait;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren_tests::TestBroker;

#[tokio::test]
async fn publish_and_get_round_trip() {
    let broker = TestBroker::start();
    let conn = Connection::connect(&broker.url(), ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "smoke".into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    ch.basic_publish(
        "".into(),
        "smoke".into(),
        BasicPublishOptions::default(),
        b"hello warren",
        BasicProperties::default(),
    )
    .await
    .expect("publish");
    let got = get_wait(&ch, "smoke", true).await;
    assert_eq!(got.delivery.data, b"hello warren");
    let out = broker.ctl_ok(&["list_queues", "name", "messages"]);
    assert!(out.contains("smoke\t0"), "{out}");
}
