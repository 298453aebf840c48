//! A quick throughput check with lapin: one producer (with a window of outstanding publisher
//! confirms) and one consumer (manual acks, prefetch) on one queue, for a few seconds.
//!
//! usage: quick-bench [--uri URI] [--size BYTES] [--seconds N] [--persistent] [--window N]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

struct Args {
    uri: String,
    size: usize,
    seconds: u64,
    persistent: bool,
    window: usize,
}

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        uri: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        size: 16,
        seconds: 10,
        persistent: false,
        window: 1000,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--uri" => a.uri = val()?,
            "--size" => a.size = val()?.parse()?,
            "--seconds" => a.seconds = val()?.parse()?,
            "--window" => a.window = val()?.parse()?,
            "--persistent" => a.persistent = true,
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    Ok(a)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse()?;
    let queue = format!("quick-bench-{}", std::process::id());
    let pconn = Connection::connect(&args.uri, ConnectionProperties::default()).await?;
    let cconn = Connection::connect(&args.uri, ConnectionProperties::default()).await?;
    let pch = pconn.create_channel().await?;
    let cch = cconn.create_channel().await?;
    pch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            durable: args.persistent,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    pch.confirm_select(ConfirmSelectOptions::default()).await?;
    cch.basic_qos(1000, BasicQosOptions::default()).await?;
    let received = Arc::new(AtomicU64::new(0));
    let mut consumer = cch
        .basic_consume(
            queue.as_str().into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let r = received.clone();
    let consume = tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            r.fetch_add(1, Ordering::Relaxed);
            if d.ack(BasicAckOptions::default()).await.is_err() {
                break;
            }
        }
    });
    let body = vec![b'x'; args.size];
    let props = if args.persistent {
        BasicProperties::default().with_delivery_mode(2)
    } else {
        BasicProperties::default()
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(args.seconds);
    let mut confirmed = 0u64;
    let mut pending = std::collections::VecDeque::new();
    while Instant::now() < end {
        let c = pch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        pending.push_back(c);
        if pending.len() >= args.window
            && let Some(c) = pending.pop_front()
        {
            c.await?;
            confirmed += 1;
        }
    }
    while let Some(c) = pending.pop_front() {
        c.await?;
        confirmed += 1;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < confirmed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = start.elapsed().as_secs_f64();
    println!(
        "size={}B persistent={} window={}: confirmed {:.0} msg/s, consumed {:.0} msg/s ({} msgs in {:.1}s)",
        args.size,
        args.persistent,
        args.window,
        confirmed as f64 / elapsed,
        received.load(Ordering::Relaxed) as f64 / total,
        confirmed,
        elapsed
    );
    consume.abort();
    let _ = pch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    Ok(())
}
