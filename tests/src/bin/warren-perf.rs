//! `warren-perf`: a load generator modelled on RabbitMQ's PerfTest, on lapin, or with `--raw`
//! on AMQP framing written by hand over a plain tokio socket (see `warren-perf/raw.rs`: batched
//! pipelined publishes, deliveries parsed from big reads; much less client CPU per message).
//!
//! Producers publish bodies that start with a send timestamp; consumers measure latency from
//! it. Each second it prints sent / confirmed / received rates and consumer latency
//! percentiles; at the end a summary line. Flags follow PerfTest's:
//!
//! ```text
//! -x N producers (1)          -y N consumers (1)        -s BYTES body size (12)
//! -u NAME queue (perf-test)   -f persistent             -c N confirm window (0 = none)
//! -q N prefetch (0)           -a autoack                -r N rate per producer (0 = max)
//! -z SECS duration (10)       -e NAME exchange (direct) -t TYPE exchange type (direct)
//! -k KEY routing key (queue name)                        --queues N (1)
//! --uri URI (repeatable: producers and consumers spread over them)
//! -C N messages per producer, then stop (0 = until -z; with -y 0 the run ends when they are
//!      published, and the queue depth is checked and printed: "queued: N messages in Q")
//! --bindings N   bind N keys, --binding-key with {i} replaced by 0..N, round-robin over the
//!                queues; a -k containing {i} then cycles through the same N values
//! --binding-key TEMPLATE (default: the routing key)
//! --bind-sequential  setup sends each queue.bind only after the previous bind-ok (default:
//!                pipelined, 500 binds written before their bind-oks are read)
//! --raw          the raw client instead of lapin
//! --queue-args k=v[,k=v]  queue.declare arguments (PerfTest's -qa); integers as numbers
//! --quorum-queue x-queue-type=quorum and persistent messages (PerfTest's --quorum-queue)
//! ```
//!
//! Setup (exchange, queues, bindings) always goes through the raw client, pipelined unless
//! `--bind-sequential`.

#[path = "warren-perf/raw.rs"]
mod raw;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

struct Args {
    producers: usize,
    consumers: usize,
    size: usize,
    queue: String,
    persistent: bool,
    confirm: usize,
    prefetch: u16,
    autoack: bool,
    rate: u64,
    seconds: u64,
    exchange: String,
    exchange_type: String,
    routing_key: Option<String>,
    queues: usize,
    uris: Vec<String>,
    /// Messages per producer (0: until the time is up).
    pmessages: u64,
    bindings: usize,
    binding_key: String,
    /// Setup awaits each queue.bind's bind-ok before sending the next.
    bind_sequential: bool,
    raw: bool,
    /// Queue declare arguments (PerfTest's --queue-args), in order.
    queue_args: Vec<(String, String)>,
}

const USAGE: &str = "usage: warren-perf [-x producers] [-y consumers] [-s size] [-u queue] [-f persistent] [-c confirm-window] [-q prefetch] [-a] [-r rate] [-z seconds] [-e exchange] [-t type] [-k routing-key] [--queues N] [--uri URI]... [-C messages] [--bindings N] [--binding-key TEMPLATE] [--bind-sequential] [--queue-args k=v,...] [--quorum-queue] [--raw]";

fn parse() -> anyhow::Result<Args> {
    let mut a = Args {
        producers: 1,
        consumers: 1,
        size: 12,
        queue: "perf-test".into(),
        persistent: false,
        confirm: 0,
        prefetch: 0,
        autoack: false,
        rate: 0,
        seconds: 10,
        exchange: "direct".into(),
        exchange_type: "direct".into(),
        routing_key: None,
        queues: 1,
        uris: Vec::new(),
        pmessages: 0,
        bindings: 0,
        binding_key: String::new(),
        bind_sequential: false,
        raw: false,
        queue_args: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "-x" | "--producers" => a.producers = val()?.parse()?,
            "-y" | "--consumers" => a.consumers = val()?.parse()?,
            "-s" | "--size" => a.size = val()?.parse()?,
            "-u" | "--queue" => a.queue = val()?,
            "-f" | "--flag" => match val()?.as_str() {
                "persistent" => a.persistent = true,
                "mandatory" => {}
                other => anyhow::bail!("unknown flag value '{other}'"),
            },
            "-c" | "--confirm" => a.confirm = val()?.parse()?,
            "-q" | "--qos" => a.prefetch = val()?.parse()?,
            "-a" | "--autoack" => a.autoack = true,
            "-r" | "--rate" => a.rate = val()?.parse()?,
            "-z" | "--time" => a.seconds = val()?.parse()?,
            "-e" | "--exchange" => a.exchange = val()?,
            "-t" | "--type" => a.exchange_type = val()?,
            "-k" | "--routing-key" => a.routing_key = Some(val()?),
            "--queues" => a.queues = val()?.parse::<usize>()?.max(1),
            "-h" | "--uri" => a.uris.push(val()?),
            "-C" | "--pmessages" => a.pmessages = val()?.parse()?,
            "--bindings" => a.bindings = val()?.parse()?,
            "--binding-key" => a.binding_key = val()?,
            "--bind-sequential" => a.bind_sequential = true,
            "--raw" => a.raw = true,
            "-qa" | "--queue-args" => {
                for pair in val()?.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').ok_or_else(|| {
                        anyhow::anyhow!("--queue-args wants key=value, got '{pair}'")
                    })?;
                    a.queue_args.push((k.to_string(), v.to_string()));
                }
            }
            // PerfTest's shortcut: a quorum queue is durable and so are its messages.
            "--quorum-queue" => {
                a.queue_args
                    .push(("x-queue-type".to_string(), "quorum".to_string()));
                a.persistent = true;
            }
            "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => anyhow::bail!("unknown option '{other}'\n{USAGE}"),
        }
    }
    if a.uris.is_empty() {
        a.uris.push("amqp://guest:guest@127.0.0.1:5672/%2f".into());
    }
    a.size = a.size.max(8);
    if a.binding_key.is_empty() {
        a.binding_key = a.routing_key.clone().unwrap_or_else(|| a.queue.clone());
    }
    Ok(a)
}

#[derive(Default)]
struct Stats {
    sent: AtomicU64,
    confirmed: AtomicU64,
    nacked: AtomicU64,
    received: AtomicU64,
    /// Latencies (µs) of the current second; the reporter takes them.
    latencies: parking_lot::Mutex<Vec<u32>>,
    all_latencies: parking_lot::Mutex<Vec<u32>>,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn percentiles(v: &mut [u32]) -> Option<[u32; 5]> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Some([v[0], at(0.5), at(0.75), at(0.95), at(0.99)])
}

fn queue_names(a: &Args) -> Vec<String> {
    if a.queues == 1 {
        vec![a.queue.clone()]
    } else {
        (1..=a.queues).map(|i| format!("{}-{i}", a.queue)).collect()
    }
}

/// The routing keys producers cycle through: `-k` (default: the queue name), with `{i}` taking
/// the values 0..`--bindings`.
fn routing_keys(a: &Args) -> Vec<String> {
    let key = a.routing_key.clone().unwrap_or_else(|| a.queue.clone());
    if key.contains("{i}") && a.bindings > 0 {
        (0..a.bindings)
            .map(|i| key.replace("{i}", &i.to_string()))
            .collect()
    } else {
        vec![key]
    }
}

async fn produce(
    a: Arc<Args>,
    n: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let uri = &a.uris[n % a.uris.len()];
    let conn = Connection::connect(uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    if a.confirm > 0 {
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
    }
    let keys = routing_keys(&a);
    let mut props = BasicProperties::default();
    if a.persistent {
        props = props.with_delivery_mode(2);
    }
    let mut body = vec![0u8; a.size];
    let mut pending = VecDeque::new();
    let start = Instant::now();
    let mut published = 0u64;
    while !stop.load(Ordering::Relaxed) && (a.pmessages == 0 || published < a.pmessages) {
        if a.rate > 0 {
            let due = start + Duration::from_secs_f64(published as f64 / a.rate as f64);
            let now = Instant::now();
            if due > now {
                tokio::time::sleep(due - now).await;
            }
        }
        body[..8].copy_from_slice(&now_nanos().to_be_bytes());
        let confirm = ch
            .basic_publish(
                a.exchange.as_str().into(),
                keys[published as usize % keys.len()].as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            )
            .await?;
        published += 1;
        stats.sent.fetch_add(1, Ordering::Relaxed);
        if a.confirm > 0 {
            pending.push_back(confirm);
            while pending.len() >= a.confirm {
                if let Some(c) = pending.pop_front() {
                    if c.await?.is_nack() {
                        stats.nacked.fetch_add(1, Ordering::Relaxed);
                    } else {
                        stats.confirmed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
    while let Some(c) = pending.pop_front() {
        if c.await.is_ok_and(|c| c.is_ack()) {
            stats.confirmed.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

async fn consume(
    a: Arc<Args>,
    n: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let uri = &a.uris[n % a.uris.len()];
    let queues = queue_names(&a);
    let queue = &queues[n % queues.len()];
    let conn = Connection::connect(uri, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    if a.prefetch > 0 {
        ch.basic_qos(a.prefetch, BasicQosOptions::default()).await?;
    }
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            format!("perf-{n}").as_str().into(),
            BasicConsumeOptions {
                no_ack: a.autoack,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    while !stop.load(Ordering::Relaxed) {
        let next = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await;
        let Ok(Some(delivery)) = next else { continue };
        let d = delivery?;
        if d.data.len() >= 8 {
            let mut ts = [0u8; 8];
            ts.copy_from_slice(&d.data[..8]);
            let sent = u64::from_be_bytes(ts);
            let micros = now_nanos().saturating_sub(sent) / 1000;
            stats
                .latencies
                .lock()
                .push(micros.min(u32::MAX as u64) as u32);
        }
        stats.received.fetch_add(1, Ordering::Relaxed);
        if !a.autoack {
            d.ack(BasicAckOptions::default()).await?;
        }
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

fn latency_text(p: Option<[u32; 5]>) -> String {
    match p {
        Some([min, p50, p75, p95, p99]) => {
            format!("min/median/75th/95th/99th consumer latency: {min}/{p50}/{p75}/{p95}/{p99} µs")
        }
        None => "min/median/75th/95th/99th consumer latency: -".into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Arc::new(parse()?);
    let setup_start = Instant::now();
    raw::setup(&args).await?;
    let id = format!("test-{}", std::process::id());
    println!(
        "id: {id}, setup: {} ms ({} bindings)",
        setup_start.elapsed().as_millis(),
        if args.exchange.is_empty() {
            0
        } else if args.bindings > 0 {
            args.bindings
        } else {
            queue_names(&args).len()
        }
    );
    let stats = Arc::new(Stats::default());
    let stop = Arc::new(AtomicBool::new(false));
    println!(
        "id: {id}, starting consumer(s): {}, producer(s): {}, body {} B{}{}{}",
        args.consumers,
        args.producers,
        args.size,
        if args.persistent { ", persistent" } else { "" },
        if args.confirm > 0 {
            format!(", confirm window {}", args.confirm)
        } else {
            String::new()
        },
        if args.raw { ", raw client" } else { ", lapin" }
    );
    let mut tasks = Vec::new();
    for n in 0..args.consumers {
        let (a, s, st) = (args.clone(), stats.clone(), stop.clone());
        tasks.push(if args.raw {
            tokio::spawn(raw::consume(a, n, s, st))
        } else {
            tokio::spawn(consume(a, n, s, st))
        });
    }
    let producers_done = Arc::new(AtomicUsize::new(0));
    for n in 0..args.producers {
        let (a, s, st) = (args.clone(), stats.clone(), stop.clone());
        let done = producers_done.clone();
        let raw = args.raw;
        tasks.push(tokio::spawn(async move {
            let r = if raw {
                raw::produce(a, n, s, st).await
            } else {
                produce(a, n, s, st).await
            };
            done.fetch_add(1, Ordering::Relaxed);
            r
        }));
    }
    // With -C and no consumers the run ends once every producer is through.
    let until_published = args.pmessages > 0 && args.consumers == 0;
    let start = Instant::now();
    let mut last = [0u64; 4];
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while start.elapsed() < Duration::from_secs(args.seconds) {
        if until_published && producers_done.load(Ordering::Relaxed) == args.producers {
            break;
        }
        tick.tick().await;
        let now = [
            stats.sent.load(Ordering::Relaxed),
            stats.confirmed.load(Ordering::Relaxed),
            stats.nacked.load(Ordering::Relaxed),
            stats.received.load(Ordering::Relaxed),
        ];
        let mut lat = std::mem::take(&mut *stats.latencies.lock());
        stats.all_latencies.lock().extend_from_slice(&lat);
        println!(
            "id: {id}, time {:.3} s, sent: {} msg/s, confirmed: {} msg/s, nacked: {} msg/s, received: {} msg/s, {}",
            start.elapsed().as_secs_f64(),
            now[0] - last[0],
            now[1] - last[1],
            now[2] - last[2],
            now[3] - last[3],
            latency_text(percentiles(&mut lat))
        );
        last = now;
    }
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in tasks {
        match tokio::time::timeout(Duration::from_secs(10), t).await {
            Ok(Ok(Err(e))) => eprintln!("warren-perf: {e}"),
            Ok(Err(e)) => eprintln!("warren-perf: task failed: {e}"),
            _ => {}
        }
    }
    let mut all = std::mem::take(&mut *stats.all_latencies.lock());
    println!(
        "id: {id}, sending rate avg: {:.0} msg/s, confirmed avg: {:.0} msg/s, receiving rate avg: {:.0} msg/s, {}",
        stats.sent.load(Ordering::Relaxed) as f64 / elapsed,
        stats.confirmed.load(Ordering::Relaxed) as f64 / elapsed,
        stats.received.load(Ordering::Relaxed) as f64 / elapsed,
        latency_text(percentiles(&mut all))
    );
    if until_published {
        // Published is not yet queued: wait until the broker counts them all in the queue.
        let queues = queue_names(&args);
        let expected = stats.sent.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut depth = 0;
            for q in &queues {
                depth += raw::queue_depth(&args.uris[0], q).await?;
            }
            if depth >= expected || Instant::now() > deadline {
                println!("id: {id}, queued: {depth} messages in {}", queues.join(","));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}
