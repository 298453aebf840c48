//! RabbitMQ's consumer_timeout: a delivery left unacknowledged for longer than the timeout
//! closes its channel with 406, and the message goes back to the queue.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lapin::protocol::{AMQPClass, channel};
use lapin::types::FieldTable;

#[tokio::test]
async fn an_unacknowledged_delivery_past_consumer_timeout_closes_its_channel() {
    let broker = TestBroker::start_with_config("consumer_timeout = 1000\n");
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "slow-work", Default::default(), FieldTable::default()).await;
    publish(&ch, "", "slow-work", b"job", Default::default()).await;

    let mut raw = Raw::handshake(broker.port);
    raw.open_channel(1);
    raw.send(&consume_frame(1, "slow-work", "slowpoke", false));
    let started = Instant::now();
    let close = loop {
        let f = raw.read_frame().expect("the broker closes the channel");
        if f.kind == 1
            && f.channel == 1
            && let AMQPClass::Channel(channel::AMQPMethod::Close(c)) = f.method()
        {
            break c;
        }
    };
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert_eq!(close.reply_code, 406);
    assert!(
        close
            .reply_text
            .as_str()
            .starts_with("PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: 1000 ms"),
        "{}",
        close.reply_text
    );
    // The delivery was requeued and is there for the next consumer, marked redelivered.
    let m = get_wait(&ch, "slow-work", true).await;
    assert_eq!(m.delivery.data, b"job");
    assert!(m.delivery.redelivered);
}
