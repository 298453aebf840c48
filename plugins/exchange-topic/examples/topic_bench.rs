//! The topic exchange's trie on its own (native code, no Wasm, no broker): routes per second
//! over 10,000 bindings.
//!
//! 5,000 bindings `a.<i>.*` and 5,000 `#.<i>`; 1,000 routing keys of four shapes (some match
//! one binding, some two, some none), built up front, routed round-robin 1,000,000 times.
//! Prints routes/s, ns per route and how many bindings matched.
//!
//! `cd plugins && cargo run --release --target x86_64-unknown-linux-gnu --target-dir ../target/plugins-native -p exchange-topic --example topic_bench`

use std::hint::black_box;
use std::time::Instant;

use exchange_topic::Topic;
use warren_sdk::{ExchangeType, FieldTable, Message};

const BINDINGS: u64 = 10_000;
const ROUTES: usize = 1_000_000;

fn main() {
    let mut topic = Topic::default();
    let none = FieldTable::default();
    for i in 0..BINDINGS / 2 {
        topic.bind(2 * i, &format!("a.{i}.*"), &none).expect("bind");
        topic
            .bind(2 * i + 1, &format!("#.{i}"), &none)
            .expect("bind");
    }
    // Messages are built up front so the loop measures routing, not allocation.
    let msgs: Vec<Message> = (0..1_000u64)
        .map(|i| match i % 4 {
            0 => format!("a.{}.x", i * 7 % 6_000),
            1 => format!("b.c.{}", i * 13 % 6_000),
            2 => format!("a.{i}"),
            _ => format!("x.y.z.w.{i}"),
        })
        .map(|key| Message {
            routing_key: key,
            headers: vec![],
            properties: None,
        })
        .collect();
    let mut out = Vec::with_capacity(16);
    let mut matched = 0usize;
    let started = Instant::now();
    for i in 0..ROUTES {
        out.clear();
        topic.route(black_box(&msgs[i % msgs.len()]), &mut out);
        matched += out.len();
    }
    let secs = started.elapsed().as_secs_f64();
    assert!(matched > 0, "no route matched");
    println!(
        "topic exchange (native): {ROUTES} routes over {BINDINGS} bindings in {secs:.3} s: \
         {:.0} routes/s, {:.0} ns per route ({matched} bindings matched)",
        ROUTES as f64 / secs,
        secs * 1e9 / ROUTES as f64
    );
}
