//! The message store alone: group-committed fsync throughput of persistent publishes.
//!
//! Four tasks each behave like a publisher with 1,000 unconfirmed messages: they append 1 KiB
//! payloads and wait for the oldest one's fsync whenever 1,000 are outstanding. The store's
//! writer thread writes whatever is queued with one `write` and one `fdatasync`, so one fsync
//! covers many publishes. Prints messages/s, MiB/s, the fsync count and publishes per fsync.
//! The store lives in a temporary directory under `$TMPDIR` (default `/tmp`): the figure is
//! that disk's.
//!
//! `cargo run --release -p warren --example store_bench`

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;
use warren::bench::{MessageStore, StoreOptions};

const TASKS: u64 = 4;
const TOTAL: u64 = 200_000;
const WINDOW: usize = 1000;
const BODY: usize = 1024;

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).expect("open store");
    let body = Bytes::from(vec![0x5a; BODY]);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut inflight = VecDeque::with_capacity(WINDOW);
            for i in 0..TOTAL / TASKS {
                let id = task * (TOTAL / TASKS) + i + 1;
                inflight.push_back(store.publish(task, id, body.clone()));
                if inflight.len() >= WINDOW {
                    let ticket = inflight.pop_front().expect("window is full");
                    store.wait_synced(ticket).await.expect("fsync");
                }
            }
            // Tickets are ordered: the newest one synced means all of them are.
            if let Some(ticket) = inflight.pop_back() {
                store.wait_synced(ticket).await.expect("fsync");
            }
        }));
    }
    for t in tasks {
        t.await.expect("publisher task");
    }
    let elapsed = start.elapsed();
    let fsyncs = store.stats().fsyncs;
    store.close();
    let secs = elapsed.as_secs_f64();
    println!(
        "message store: {TOTAL} x 1 KiB persistent publishes from {TASKS} tasks, window {WINDOW} each, fsync on: \
         {:.0} msg/s ({:.1} MiB/s), {fsyncs} fsyncs ({:.0} publishes per fsync), {:.2} s",
        TOTAL as f64 / secs,
        TOTAL as f64 * BODY as f64 / (1024.0 * 1024.0) / secs,
        TOTAL as f64 / fsyncs.max(1) as f64,
        secs
    );
}
