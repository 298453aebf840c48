//! Fault injection for durable queues: a three-node cluster of real `warren-server` processes,
//! a publisher with confirms and a consumer with manual acks running against it, while a
//! fault loop SIGKILLs a node (alternately the queue's leader and the next node in turn) and
//! starts it again. At the end every message the broker confirmed must have been delivered.
//!
//! The queue is a quorum queue, or (`classic`) a classic durable queue with persistent
//! messages: then the "leader" is the queue's owner, the one node holding its messages, and
//! while it is down the queue is unavailable; once it is back every confirmed message must be.
//!
//! Messages carry an 8-byte big-endian sequence number, unique and increasing across
//! reconnects. The publisher counts a number as confirmed only when its publisher confirm was
//! an ack; anything outstanding when a connection fails counts as not confirmed (it may or may
//! not be in the queue, so its absence is no loss). The consumer counts how often each number
//! was delivered. Afterwards:
//!
//! * lost: confirmed numbers never delivered (must be empty),
//! * duplicates: deliveries beyond the first of a number (allowed: at-least-once),
//! * longest unavailability: the longest stretch without a publisher ack while faults ran.
//!
//! Nothing here panics on what the broker does: every AMQP call has a timeout, failed node
//! start-ups are caught and reported, and the whole run has an overall time limit.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures_lite::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties, PublisherConfirm};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{Node, TempDir};

/// The queue under test.
pub const QUEUE: &str = "chaos";
/// Every AMQP operation (connect, declare, publish, confirm, ack) gets at most this long.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// warrenctl calls made while faults run get at most this long.
const CTL_TIMEOUT: Duration = Duration::from_secs(15);
/// Publishes in flight without a confirm, at most.
const MAX_OUTSTANDING: usize = 200;
/// Pause before a client reconnects.
const RECONNECT_DELAY: Duration = Duration::from_millis(200);
/// The consumer's prefetch.
const PREFETCH: u16 = 100;
/// Drain: done once nothing was delivered for this long and every confirmed number arrived…
const DRAIN_QUIET: Duration = Duration::from_secs(5);
/// …or after this long.
const DRAIN_MAX: Duration = Duration::from_secs(30);

/// What to run. `Default`: 3 cycles of 4 s up and 3 s down, 300 messages per second.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// Kill/restart cycles.
    pub cycles: u32,
    /// Seconds all three nodes run before a kill (and once more after the last restart).
    pub up_secs: f64,
    /// Seconds the killed node stays down.
    pub down_secs: f64,
    /// Messages per second the producer publishes.
    pub rate: u32,
    /// Picks where the victim rotation and the clients' node rotation start.
    pub seed: u64,
    /// Keep the nodes' base directory (data and logs) instead of removing it.
    pub keep_dir: bool,
    /// A classic durable queue (owned by the first node) instead of a quorum queue.
    pub classic: bool,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            cycles: 3,
            up_secs: 4.0,
            down_secs: 3.0,
            rate: 300,
            seed: 0,
            keep_dir: false,
            classic: false,
        }
    }
}

/// The outcome of a run.
#[derive(Clone, Debug, Default)]
pub struct ChaosReport {
    /// Cycles asked for.
    pub cycles_requested: u32,
    /// Cycles that killed a node and started it again successfully.
    pub cycles: u32,
    /// Publishes handed to the client library.
    pub published: u64,
    /// Publishes the broker acked.
    pub confirmed: u64,
    /// Publishes the broker nacked.
    pub nacked: u64,
    /// Publishes with no confirm either way (connection lost, confirm timed out).
    pub unconfirmed: u64,
    /// Deliveries, counting redeliveries.
    pub delivered: u64,
    /// Distinct sequence numbers delivered.
    pub delivered_unique: u64,
    /// Distinct numbers delivered whose publish was not (or not known to be) acked.
    pub delivered_unconfirmed: u64,
    /// Confirmed sequence numbers never delivered, ascending.
    pub lost: Vec<u64>,
    /// Deliveries beyond the first, summed over all numbers.
    pub duplicates: u64,
    /// Deliveries whose body was not an 8-byte sequence number.
    pub malformed: u64,
    /// Longest time without a publisher ack while faults ran (from the first kill's
    /// "up" phase to the end of the settle phase after the last restart).
    pub longest_unavailability_ms: u64,
    /// When that stretch began, in seconds on the run's clock (as the progress lines).
    pub longest_unavailability_at_s: f64,
    /// Kills that targeted the queue's leader as `list_queues` reported it.
    pub leader_kills: u32,
    /// All kills.
    pub kills: u32,
    pub producer_reconnects: u64,
    pub consumer_reconnects: u64,
    /// Times the drain resubscribed the consumer because deliveries had stopped while
    /// confirmed numbers were still missing.
    pub consumer_resubscribes: u64,
    /// The drain ended with every confirmed number delivered and the queue quiet.
    pub drained: bool,
    /// Messages still in the queue after the drain (`list_queues messages`), if known.
    pub remaining_in_queue: Option<u64>,
    /// One line per cycle.
    pub events: Vec<String>,
    /// Problems of the harness itself (a node that would not restart, …).
    pub errors: Vec<String>,
    /// The base directory, when kept.
    pub kept_dir: Option<PathBuf>,
}

impl ChaosReport {
    /// Confirmed sequence numbers never delivered.
    pub fn lost(&self) -> &[u64] {
        &self.lost
    }

    /// One line with the numbers that matter.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "cycles={} published={} confirmed={} nacked={} delivered_unique={} lost={} \
             duplicates={} longest_unavailability_ms={} (from {:.1}s) leader_kills={}",
            self.cycles,
            self.published,
            self.confirmed,
            self.nacked,
            self.delivered_unique,
            self.lost.len(),
            self.duplicates,
            self.longest_unavailability_ms,
            self.longest_unavailability_at_s,
            self.leader_kills,
        );
        s.push_str(&format!(
            " unconfirmed={} delivered_unconfirmed={} producer_reconnects={} consumer_reconnects={}",
            self.unconfirmed,
            self.delivered_unconfirmed,
            self.producer_reconnects,
            self.consumer_reconnects
        ));
        if self.consumer_resubscribes > 0 {
            s.push_str(&format!(
                " consumer_resubscribes={}",
                self.consumer_resubscribes
            ));
        }
        if self.malformed > 0 {
            s.push_str(&format!(" malformed={}", self.malformed));
        }
        if let Some(n) = self.remaining_in_queue {
            s.push_str(&format!(" remaining_in_queue={n}"));
        }
        if !self.drained {
            s.push_str(" drained=false");
        }
        if !self.errors.is_empty() {
            s.push_str(&format!(" harness_errors={}", self.errors.len()));
        }
        s
    }
}

/// Runs the whole scenario with real processes; see the module documentation.
pub async fn run(cfg: &ChaosConfig) -> anyhow::Result<ChaosReport> {
    let cfg = cfg.clone();
    if !(cfg.up_secs.is_finite() && cfg.up_secs >= 0.0) {
        bail!("up_secs must be a non-negative number, not {}", cfg.up_secs);
    }
    if !(cfg.down_secs.is_finite() && cfg.down_secs >= 0.0) {
        bail!(
            "down_secs must be a non-negative number, not {}",
            cfg.down_secs
        );
    }
    if cfg.rate == 0 {
        bail!("rate must be at least 1 message per second");
    }

    let dir = TempDir::new("chaos");
    let nodes: Arc<Vec<Mutex<Node>>> = Arc::new(
        (1..=3)
            .map(|i| Mutex::new(Node::new(&format!("qc{i}"), &dir.0)))
            .collect(),
    );
    let shared = {
        let n: Vec<_> = nodes.iter().map(|n| n.lock()).collect();
        Arc::new(Shared::new(
            n.iter().map(|n| n.full_name()).collect(),
            n.iter().map(|n| n.url()).collect(),
        ))
    };
    shared.log(&format!("base directory {}", dir.0.display()));

    let budget = Duration::from_secs_f64(
        240.0 + f64::from(cfg.cycles) * (cfg.up_secs + cfg.down_secs + 300.0) + cfg.up_secs + 180.0,
    );
    let outcome = tokio::time::timeout(budget, drive(&cfg, &nodes, &shared)).await;

    // Clean-up, also after an error or the overall limit.
    shared.stop_producer.store(true, Ordering::SeqCst);
    shared.stop_all.store(true, Ordering::SeqCst);
    let fault_deadline = Instant::now() + Duration::from_secs(150);
    while shared.fault_running.load(Ordering::SeqCst) && Instant::now() < fault_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.log("stopping the nodes");
    let n2 = nodes.clone();
    if let Err(e) = blocking(move || stop_all(&n2)).await {
        shared.log(&format!("stopping the nodes: {e}"));
    }

    let mut result = match outcome {
        Ok(r) => r,
        Err(_) => Err(anyhow!(
            "the chaos run exceeded its overall limit of {} s",
            budget.as_secs()
        )),
    };
    if cfg.keep_dir {
        let path = dir.0.clone();
        // TempDir removes its directory on drop: keep it by never dropping it.
        std::mem::forget(dir);
        shared.log(&format!(
            "kept {} (node logs: qc1.log, qc2.log, qc3.log)",
            path.display()
        ));
        if let Ok(r) = result.as_mut() {
            r.kept_dir = Some(path);
        }
    }
    result
}

/// State the clients and the fault loop share.
struct Shared {
    names: Vec<String>,
    urls: Vec<String>,
    /// Which nodes clients may connect to (false from just before a kill until restarted).
    up: Vec<AtomicBool>,
    stop_producer: AtomicBool,
    stop_all: AtomicBool,
    /// The fault thread is running (clean-up waits for it before stopping nodes).
    fault_running: AtomicBool,
    next_seq: AtomicU64,
    published: AtomicU64,
    nacked: AtomicU64,
    acks: Mutex<Acks>,
    deliveries: Mutex<Deliveries>,
    producer_reconnects: AtomicU64,
    consumer_reconnects: AtomicU64,
    /// Bumped to make the consumer drop its subscription and subscribe again.
    consumer_generation: AtomicU64,
    t0: Instant,
}

#[derive(Default)]
struct Acks {
    confirmed: HashSet<u64>,
    times: Vec<Instant>,
}

struct Deliveries {
    counts: HashMap<u64, u32>,
    total: u64,
    malformed: u64,
    last: Instant,
}

impl Shared {
    fn new(names: Vec<String>, urls: Vec<String>) -> Shared {
        Shared {
            up: names.iter().map(|_| AtomicBool::new(false)).collect(),
            names,
            urls,
            stop_producer: AtomicBool::new(false),
            stop_all: AtomicBool::new(false),
            fault_running: AtomicBool::new(false),
            next_seq: AtomicU64::new(1),
            published: AtomicU64::new(0),
            nacked: AtomicU64::new(0),
            acks: Mutex::new(Acks::default()),
            deliveries: Mutex::new(Deliveries {
                counts: HashMap::new(),
                total: 0,
                malformed: 0,
                last: Instant::now(),
            }),
            producer_reconnects: AtomicU64::new(0),
            consumer_reconnects: AtomicU64::new(0),
            consumer_generation: AtomicU64::new(0),
            t0: Instant::now(),
        }
    }

    fn log(&self, msg: &str) {
        println!("[{:>8.1}s] {msg}", self.t0.elapsed().as_secs_f64());
    }

    fn is_up(&self, i: usize) -> bool {
        self.up[i].load(Ordering::SeqCst)
    }

    fn set_up(&self, i: usize, up: bool) {
        self.up[i].store(up, Ordering::SeqCst);
    }

    /// Confirmed numbers not delivered (yet).
    fn missing(&self) -> usize {
        let acks = self.acks.lock();
        let d = self.deliveries.lock();
        acks.confirmed
            .iter()
            .filter(|s| !d.counts.contains_key(s))
            .count()
    }
}

/// Setup, traffic, faults, drain, and the numbers.
async fn drive(
    cfg: &ChaosConfig,
    nodes: &Arc<Vec<Mutex<Node>>>,
    shared: &Arc<Shared>,
) -> anyhow::Result<ChaosReport> {
    shared.log("starting qc1, qc2, qc3 and forming a cluster");
    let n2 = nodes.clone();
    blocking(move || form_cluster(&n2))
        .await
        .context("forming the cluster")??;
    for i in 0..nodes.len() {
        shared.set_up(i, true);
    }
    shared.log(&format!(
        "cluster formed: {}; declaring {} queue {QUEUE:?}",
        shared.names.join(", "),
        queue_kind(cfg)
    ));
    declare_queue(&shared.urls[0], cfg.classic).await?;

    let mut rng = cfg.seed;
    let n = nodes.len();
    let producer_start = splitmix(&mut rng) as usize % n;
    let consumer_start = splitmix(&mut rng) as usize % n;
    let victim_start = splitmix(&mut rng) as usize % n;
    let mut producer = Task(tokio::spawn(producer(
        shared.clone(),
        cfg.rate,
        producer_start,
    )));
    let mut consumer = Task(tokio::spawn(consumer(shared.clone(), consumer_start)));

    // The fault loop runs on a thread of its own: it kills and starts processes and waits.
    let (tx, rx) = tokio::sync::oneshot::channel();
    shared.fault_running.store(true, Ordering::SeqCst);
    let (cfg2, nodes2, shared2) = (cfg.clone(), nodes.clone(), shared.clone());
    let fault_start = Instant::now();
    let spawned = std::thread::Builder::new()
        .name("chaos-faults".into())
        .spawn(move || {
            let _running = Flag(&shared2.fault_running);
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                fault_loop(&cfg2, &nodes2, &shared2, victim_start)
            }));
            let _ = tx.send(outcome.map_err(panic_text));
        });
    if let Err(e) = spawned {
        shared.fault_running.store(false, Ordering::SeqCst);
        bail!("cannot start the fault thread: {e}");
    }
    let faults = match rx.await {
        Ok(Ok(f)) => f,
        Ok(Err(p)) => bail!("the fault loop panicked: {p}"),
        Err(_) => bail!("the fault loop ended without a result"),
    };
    let fault_end = Instant::now();

    shared.log("faults done; stopping the producer");
    shared.stop_producer.store(true, Ordering::SeqCst);
    if tokio::time::timeout(Duration::from_secs(40), &mut producer.0)
        .await
        .is_err()
    {
        shared.log("the producer did not stop within 40 s; abandoning it");
        producer.0.abort();
    }

    // Drain: wait until the consumer has everything that was confirmed and the queue is quiet.
    let published = shared.published.load(Ordering::SeqCst);
    shared.log(&format!(
        "draining: {} published, {} confirmed, {} delivered so far",
        published,
        shared.acks.lock().confirmed.len(),
        shared.deliveries.lock().counts.len()
    ));
    let drain_start = Instant::now();
    let mut last_kick = Instant::now();
    let mut resubscribes = 0u64;
    let drained = loop {
        let quiet = shared.deliveries.lock().last.elapsed();
        let missing = shared.missing();
        if missing == 0 && quiet >= DRAIN_QUIET {
            break true;
        }
        if drain_start.elapsed() >= DRAIN_MAX {
            shared.log(&format!(
                "drain gave up after {} s: {missing} confirmed messages not delivered",
                DRAIN_MAX.as_secs()
            ));
            break false;
        }
        if missing > 0 && quiet >= DRAIN_QUIET && last_kick.elapsed() >= DRAIN_QUIET {
            // Deliveries stopped with confirmed numbers missing: subscribe afresh, so "lost"
            // means what a new consumer cannot get either. Counted in the report.
            shared.log(&format!(
                "drain: {missing} confirmed messages missing and nothing delivered for {} s: \
                 resubscribing the consumer",
                quiet.as_secs()
            ));
            shared.consumer_generation.fetch_add(1, Ordering::SeqCst);
            resubscribes += 1;
            last_kick = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    shared.stop_all.store(true, Ordering::SeqCst);
    if tokio::time::timeout(Duration::from_secs(15), &mut consumer.0)
        .await
        .is_err()
    {
        consumer.0.abort();
    }

    let remaining_in_queue = remaining(nodes, shared).await;

    // The numbers.
    let acks = shared.acks.lock();
    let d = shared.deliveries.lock();
    let mut lost: Vec<u64> = acks
        .confirmed
        .iter()
        .copied()
        .filter(|s| !d.counts.contains_key(s))
        .collect();
    lost.sort_unstable();
    let duplicates = d
        .counts
        .values()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum();
    let delivered_unconfirmed = d
        .counts
        .keys()
        .filter(|s| !acks.confirmed.contains(s))
        .count() as u64;
    let confirmed = acks.confirmed.len() as u64;
    let nacked = shared.nacked.load(Ordering::SeqCst);
    let published = shared.published.load(Ordering::SeqCst);
    let gap = longest_gap(&acks.times, fault_start, fault_end);
    let report = ChaosReport {
        cycles_requested: cfg.cycles,
        cycles: faults.cycles,
        published,
        confirmed,
        nacked,
        unconfirmed: published.saturating_sub(confirmed + nacked),
        delivered: d.total,
        delivered_unique: d.counts.len() as u64,
        delivered_unconfirmed,
        duplicates,
        malformed: d.malformed,
        longest_unavailability_ms: gap.0.as_millis() as u64,
        longest_unavailability_at_s: (fault_start.saturating_duration_since(shared.t0) + gap.1)
            .as_secs_f64(),
        leader_kills: faults.leader_kills,
        kills: faults.kills,
        producer_reconnects: shared.producer_reconnects.load(Ordering::SeqCst),
        consumer_reconnects: shared.consumer_reconnects.load(Ordering::SeqCst),
        consumer_resubscribes: resubscribes,
        drained,
        remaining_in_queue,
        events: faults.events,
        errors: faults.errors,
        kept_dir: None,
        lost,
    };
    drop((acks, d));
    if !report.lost.is_empty() {
        let first: Vec<String> = report.lost.iter().take(20).map(u64::to_string).collect();
        shared.log(&format!(
            "LOST {} confirmed messages; the first {}: {}",
            report.lost.len(),
            first.len(),
            first.join(" ")
        ));
    }
    for e in &report.errors {
        shared.log(&format!("harness error: {e}"));
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------------
// Nodes

/// Starts the three nodes and joins nodes 2 and 3 to node 1, the way tests/tests/cluster.rs
/// does (stop_app, reset, join_cluster, start_app). Panics (from the harness) are caught by
/// the caller.
fn form_cluster(nodes: &[Mutex<Node>]) -> anyhow::Result<()> {
    for n in nodes {
        n.lock().start();
    }
    let seed = nodes[0].lock().full_name();
    for n in &nodes[1..] {
        let n = n.lock();
        n.ctl_ok(&["stop_app"]);
        n.ctl_ok(&["reset"]);
        n.ctl_ok(&["join_cluster", seed.as_str()]);
        n.ctl_ok(&["start_app"]);
    }
    let mut want: Vec<String> = nodes.iter().map(|n| n.lock().full_name()).collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    loop {
        let mut all = true;
        for n in nodes {
            let out = n.lock().ctl(&["cluster_status", "--formatter", "json"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let running = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| {
                    v["running_nodes"].as_array().map(|a| {
                        let mut r: Vec<String> = a
                            .iter()
                            .filter_map(|x| x.as_str().map(String::from))
                            .collect();
                        r.sort();
                        r
                    })
                })
                .unwrap_or_default();
            if running != want {
                all = false;
                last = format!("{text}{}", String::from_utf8_lossy(&out.stderr));
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the cluster did not show all three nodes running within 30 s: {last}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn stop_all(nodes: &[Mutex<Node>]) {
    std::thread::scope(|s| {
        for n in nodes {
            s.spawn(move || n.lock().stop());
        }
    });
}

/// Starts node `i` again (twice at most); a start-up failure is an error, not a panic.
fn start_node(nodes: &[Mutex<Node>], i: usize) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..2 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut n = nodes[i].lock();
        if n.child.is_some() {
            n.kill9();
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| n.start())) {
            Ok(()) => return Ok(()),
            Err(p) => {
                n.kill9();
                last = panic_text(p);
            }
        }
    }
    Err(last)
}

/// A copy of a node's settings without its process, for running warrenctl outside its lock.
fn detached(n: &Node) -> Node {
    Node {
        name: n.name.clone(),
        port: n.port,
        base: n.base.clone(),
        home: n.home.clone(),
        child: None,
        config: n.config.clone(),
        env: n.env.clone(),
    }
}

/// Runs warrenctl for node `i` on a thread of its own, giving up after `limit`.
fn ctl_bounded(
    nodes: &[Mutex<Node>],
    i: usize,
    args: &[&str],
    limit: Duration,
) -> Result<String, String> {
    let node = detached(&nodes[i].lock());
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = std::panic::catch_unwind(AssertUnwindSafe(|| node.ctl(&a)));
        let _ = tx.send(out);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(out)) if out.status.success() => Ok(String::from_utf8_lossy(&out.stdout).into()),
        Ok(Ok(out)) => Err(format!(
            "warrenctl failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )),
        Ok(Err(p)) => Err(panic_text(p)),
        Err(_) => Err(format!("warrenctl gave no answer in {} s", limit.as_secs())),
    }
}

/// `list_queues name <column>` on the first live node: the row of the queue under test.
fn queue_row(nodes: &[Mutex<Node>], shared: &Shared, column: &str) -> Result<Value, String> {
    let i = (0..nodes.len())
        .find(|&i| shared.is_up(i))
        .ok_or("no node is up")?;
    let out = ctl_bounded(
        nodes,
        i,
        &[
            "list_queues",
            "name",
            column,
            "--formatter",
            "json",
            "--timeout",
            "10",
        ],
        CTL_TIMEOUT,
    )?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    v.as_array()
        .and_then(|rows| rows.iter().find(|r| r["name"] == QUEUE))
        .map(|r| r[column].clone())
        .ok_or_else(|| format!("no row for {QUEUE:?}: {out}"))
}

/// The index of the queue's leader, if `list_queues` names a live node.
fn leader(nodes: &[Mutex<Node>], shared: &Shared) -> Result<usize, String> {
    let v = queue_row(nodes, shared, "leader")?;
    let name = v.as_str().ok_or_else(|| format!("leader is {v}"))?;
    let i = shared
        .names
        .iter()
        .position(|n| n == name)
        .ok_or_else(|| format!("unknown leader {name:?}"))?;
    if shared.is_up(i) {
        Ok(i)
    } else {
        Err(format!("leader {name} is down"))
    }
}

async fn remaining(nodes: &Arc<Vec<Mutex<Node>>>, shared: &Arc<Shared>) -> Option<u64> {
    let (n2, s2) = (nodes.clone(), shared.clone());
    match blocking(move || queue_row(&n2, &s2, "messages")).await {
        Ok(Ok(v)) => v.as_u64(),
        Ok(Err(e)) => {
            shared.log(&format!("queue depth unknown: {e}"));
            None
        }
        Err(e) => {
            shared.log(&format!("queue depth unknown: {e}"));
            None
        }
    }
}

struct FaultOutcome {
    cycles: u32,
    kills: u32,
    leader_kills: u32,
    events: Vec<String>,
    errors: Vec<String>,
}

/// Sleeps `secs`, waking early when the run is aborted.
fn nap(shared: &Shared, secs: f64) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    while !shared.stop_all.load(Ordering::SeqCst) {
        let now = Instant::now();
        if now >= until {
            return;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

fn fault_loop(
    cfg: &ChaosConfig,
    nodes: &[Mutex<Node>],
    shared: &Shared,
    mut rotation: usize,
) -> FaultOutcome {
    let mut out = FaultOutcome {
        cycles: 0,
        kills: 0,
        leader_kills: 0,
        events: Vec::new(),
        errors: Vec::new(),
    };
    let aborted = || shared.stop_all.load(Ordering::SeqCst);
    let n = nodes.len();
    let total = cfg.cycles;
    for c in 0..total {
        let label = format!("cycle {}/{total}", c + 1);
        nap(shared, cfg.up_secs);
        if aborted() {
            break;
        }
        // A node that failed to restart earlier gets another chance; with one still down,
        // killing another would take the majority away, so the cycle is skipped.
        for i in 0..n {
            if !shared.is_up(i) {
                match start_node(nodes, i) {
                    Ok(()) => {
                        shared.set_up(i, true);
                        shared.log(&format!("{label}: {} is back", shared.names[i]));
                    }
                    Err(e) => out.errors.push(format!(
                        "{label}: {} still does not start: {e}",
                        shared.names[i]
                    )),
                }
            }
        }
        let down: Vec<&str> = (0..n)
            .filter(|&i| !shared.is_up(i))
            .map(|i| shared.names[i].as_str())
            .collect();
        if !down.is_empty() {
            let line = format!("{label}: skipped, {} still down", down.join(", "));
            shared.log(&line);
            out.events.push(line);
            continue;
        }

        let mut rotate = || {
            let v = rotation % n;
            rotation += 1;
            v
        };
        let (victim, why) = if c % 2 == 0 {
            match leader(nodes, shared) {
                Ok(i) => (i, "leader".to_string()),
                Err(e) => (rotate(), format!("rotation; leader unknown: {e}")),
            }
        } else {
            (rotate(), "rotation".to_string())
        };
        let name = shared.names[victim].clone();
        shared.set_up(victim, false);
        nodes[victim].lock().kill9();
        out.kills += 1;
        if why == "leader" {
            out.leader_kills += 1;
        }
        shared.log(&format!("{label}: killed {name} ({why})"));
        nap(shared, cfg.down_secs);
        if aborted() {
            break;
        }
        let line = match start_node(nodes, victim) {
            Ok(()) => {
                shared.set_up(victim, true);
                out.cycles += 1;
                format!("{label}: killed {name} ({why}), restarted")
            }
            Err(e) => {
                out.errors
                    .push(format!("{label}: {name} did not start again: {e}"));
                format!("{label}: killed {name} ({why}), restart FAILED")
            }
        };
        shared.log(&line);
        out.events.push(line);
    }
    if !aborted() && total > 0 {
        shared.log(&format!(
            "settling for {} s after the last restart",
            cfg.up_secs
        ));
        nap(shared, cfg.up_secs);
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Clients

/// The next live node from `cursor` on (rotating); waits while none is up. `None` once `stop`.
async fn pick(shared: &Shared, cursor: &mut usize, stop: &AtomicBool) -> Option<usize> {
    let n = shared.urls.len();
    loop {
        if stop.load(Ordering::SeqCst) || shared.stop_all.load(Ordering::SeqCst) {
            return None;
        }
        for k in 0..n {
            let i = (*cursor + k) % n;
            if shared.is_up(i) {
                *cursor = i + 1;
                return Some(i);
            }
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Logs a client's reconnect reasons, folding a run of the same error (while a queue is
/// unavailable a client retries every 200 ms) into one line and a count.
#[derive(Default)]
struct Repeats {
    last: String,
    repeated: u32,
}

impl Repeats {
    fn log(&mut self, shared: &Shared, who: &str, e: anyhow::Error) {
        let text = format!("{e:#}");
        if text == self.last {
            self.repeated += 1;
            return;
        }
        if self.repeated > 0 {
            shared.log(&format!("  (the same error {} more times)", self.repeated));
        }
        shared.log(&format!("{who}: {text}; reconnecting"));
        self.last = text;
        self.repeated = 0;
    }
}

/// Awaits `f` for at most [`OP_TIMEOUT`].
async fn op<T, E: std::fmt::Display>(
    what: &str,
    f: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(anyhow!("{what}: {e}")),
        Err(_) => Err(anyhow!("{what}: no answer in {} s", OP_TIMEOUT.as_secs())),
    }
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    op(
        "connect",
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
}

fn queue_kind(cfg: &ChaosConfig) -> &'static str {
    if cfg.classic {
        "classic durable"
    } else {
        "quorum"
    }
}

async fn declare_queue(url: &str, classic: bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match try_declare(url, classic).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("declaring queue {QUEUE:?}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

async fn try_declare(url: &str, classic: bool) -> anyhow::Result<()> {
    let conn = connect(url).await?;
    let ch = op("channel.open", conn.create_channel()).await?;
    let mut args = FieldTable::default();
    if !classic {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(b"quorum".to_vec())),
        );
    }
    op(
        "queue.declare",
        ch.queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        ),
    )
    .await?;
    let _ = tokio::time::timeout(OP_TIMEOUT, conn.close(200, "declared".into())).await;
    Ok(())
}

async fn producer(shared: Arc<Shared>, rate: u32, mut cursor: usize) {
    let mut first = true;
    let mut quiet = Repeats::default();
    loop {
        if !first {
            shared.producer_reconnects.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
        first = false;
        let Some(i) = pick(&shared, &mut cursor, &shared.stop_producer).await else {
            return;
        };
        match produce_on(&shared, i, rate).await {
            Ok(()) => return,
            Err(e) => quiet.log(&shared, &format!("producer on {}", shared.names[i]), e),
        }
    }
}

/// Publishes on node `i` until an error or the stop flag; resolves the confirms it can.
async fn produce_on(shared: &Arc<Shared>, i: usize, rate: u32) -> anyhow::Result<()> {
    let conn = connect(&shared.urls[i]).await?;
    let ch = op("channel.open", conn.create_channel()).await?;
    op(
        "confirm.select",
        ch.confirm_select(ConfirmSelectOptions::default()),
    )
    .await?;
    let (tx, rx) = mpsc::channel::<(u64, PublisherConfirm)>(MAX_OUTSTANDING);
    let mut confirms = Task(tokio::spawn(await_confirms(shared.clone(), rx)));
    let props = BasicProperties::default().with_delivery_mode(2);
    let gap = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut base = Instant::now();
    let mut sent: u32 = 0;
    let result = loop {
        if shared.stop_producer.load(Ordering::SeqCst) {
            break Ok(());
        }
        let due = base + gap * sent;
        let now = Instant::now();
        if due > now {
            tokio::time::sleep(due - now).await;
        } else if now - due > Duration::from_secs(1) {
            // Fell behind (a slow confirm, a stall): no burst to catch up.
            base = now;
            sent = 0;
        }
        // A slot among the outstanding publishes; none free for 10 s means confirms stalled.
        let permit = match tokio::time::timeout(OP_TIMEOUT, tx.reserve()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => break Err(anyhow!("confirms stopped (a confirm failed)")),
            Err(_) => {
                break Err(anyhow!(
                    "{MAX_OUTSTANDING} publishes unconfirmed for {} s",
                    OP_TIMEOUT.as_secs()
                ));
            }
        };
        let seq = shared.next_seq.fetch_add(1, Ordering::SeqCst);
        let body = seq.to_be_bytes();
        let confirm = match op(
            "basic.publish",
            ch.basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                &body,
                props.clone(),
            ),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        shared.published.fetch_add(1, Ordering::SeqCst);
        sent = sent.saturating_add(1);
        permit.send((seq, confirm));
    };
    drop(tx);
    // Let outstanding confirms resolve (each within OP_TIMEOUT; a timeout ends the wait).
    // After a failed publish the connection is gone and so are its confirms (lapin may
    // leave their futures pending): a short wait, or the reconnect would come 10 s late
    // and count as the broker's unavailability.
    let wait = if result.is_ok() {
        OP_TIMEOUT + Duration::from_secs(5)
    } else {
        Duration::from_secs(1)
    };
    if tokio::time::timeout(wait, &mut confirms.0).await.is_err() {
        confirms.0.abort();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    result
}

/// Awaits confirms in publish order, recording acks; stops at the first that times out
/// (dropping the receiver, which tells the publisher to reconnect).
async fn await_confirms(shared: Arc<Shared>, mut rx: mpsc::Receiver<(u64, PublisherConfirm)>) {
    while let Some((seq, confirm)) = rx.recv().await {
        match tokio::time::timeout(OP_TIMEOUT, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => {
                let mut a = shared.acks.lock();
                a.confirmed.insert(seq);
                a.times.push(Instant::now());
            }
            Ok(Ok(Confirmation::Nack(_))) => {
                shared.nacked.fetch_add(1, Ordering::SeqCst);
            }
            // Not requested cannot happen after confirm.select; an error (connection or
            // channel gone) leaves the number unconfirmed, as do the rest after it.
            Ok(Ok(Confirmation::NotRequested)) | Ok(Err(_)) => {}
            Err(_) => return,
        }
    }
}

async fn consumer(shared: Arc<Shared>, mut cursor: usize) {
    let mut first = true;
    let mut quiet = Repeats::default();
    let mut n = 0u64;
    loop {
        if !first {
            shared.consumer_reconnects.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
        first = false;
        let Some(i) = pick(&shared, &mut cursor, &shared.stop_all).await else {
            return;
        };
        n += 1;
        match consume_on(&shared, i, n).await {
            Ok(()) => return,
            Err(e) => quiet.log(&shared, &format!("consumer on {}", shared.names[i]), e),
        }
    }
}

/// Consumes on node `i` until an error, a resubscribe request or the stop flag.
async fn consume_on(shared: &Arc<Shared>, i: usize, n: u64) -> anyhow::Result<()> {
    let generation = shared.consumer_generation.load(Ordering::SeqCst);
    let conn = connect(&shared.urls[i]).await?;
    let ch = op("channel.open", conn.create_channel()).await?;
    op(
        "basic.qos",
        ch.basic_qos(PREFETCH, BasicQosOptions::default()),
    )
    .await?;
    let tag = format!("chaos-checker-{n}");
    let mut consumer = op(
        "basic.consume",
        ch.basic_consume(
            QUEUE.into(),
            tag.as_str().into(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await?;
    let result = loop {
        if shared.stop_all.load(Ordering::SeqCst) {
            break Ok(());
        }
        if shared.consumer_generation.load(Ordering::SeqCst) != generation {
            break Err(anyhow!("resubscribing on request"));
        }
        let delivery = match tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
        {
            Err(_) => continue,
            Ok(None) => break Err(anyhow!("the consumer was cancelled")),
            Ok(Some(Err(e))) => break Err(anyhow!("delivery: {e}")),
            Ok(Some(Ok(d))) => d,
        };
        {
            let mut d = shared.deliveries.lock();
            d.total += 1;
            d.last = Instant::now();
            match <[u8; 8]>::try_from(delivery.data.as_slice()) {
                Ok(b) => *d.counts.entry(u64::from_be_bytes(b)).or_insert(0) += 1,
                Err(_) => d.malformed += 1,
            }
        }
        if let Err(e) = op("basic.ack", delivery.ack(BasicAckOptions::default())).await {
            break Err(e);
        }
    };
    drop(consumer);
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close(200, "bye".into())).await;
    result
}

// ---------------------------------------------------------------------------------------------
// Small helpers

/// The longest stretch in `[from, to]` without an ack (the bounds count as points).
/// The longest stretch without an ack, and when (after `from`) it began.
fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> (Duration, Duration) {
    let mut points: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    points.sort_unstable();
    points.push(to);
    let mut prev = from;
    let mut longest = (Duration::ZERO, Duration::ZERO);
    for t in points {
        let gap = t.saturating_duration_since(prev);
        if gap > longest.0 {
            longest = (gap, prev.saturating_duration_since(from));
        }
        prev = t;
    }
    longest
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    let text = p
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into());
    // The harness's start-up panics carry the whole node log: keep the head.
    match text.char_indices().nth(2000) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Runs blocking work (process control) off the async workers; a panic becomes an error.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        if e.is_panic() {
            anyhow!(panic_text(e.into_panic()))
        } else {
            anyhow!("{e}")
        }
    })
}

/// A spawned task that is aborted when dropped.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Clears a flag when dropped.
struct Flag<'a>(&'a AtomicBool);

impl Drop for Flag<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::SeqCst);
    }
}
