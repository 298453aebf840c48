//! What routing one message through an exchange-type plugin costs, next to
//! the default exchange's path (a protocol rule in the host), and how long
//! enabling a plugin takes cold (compiling) and warm (from the node's cache).
//!
//! `cargo run --release -p warren --example route_bench`

use std::hint::black_box;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use warren::bench::{
    Broker, Destinations, ExchangeType, PluginHost, Queue, QueueConfig, QueueRecord, RouteInput,
    VhostRt,
};
use warren::config::Settings;

const ROUNDS: u32 = 300_000;

fn host(dir: &std::path::Path) -> Arc<PluginHost> {
    let settings =
        Settings::parse("", std::path::Path::new("bench.conf")).expect("empty config parses");
    PluginHost::new(dir, dir.join("enabled_plugins"), None, Arc::new(settings))
        .expect("plugin host")
}

fn per_call(rounds: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..rounds / 10 {
        f();
    }
    let started = Instant::now();
    for _ in 0..rounds {
        f();
    }
    started.elapsed().as_nanos() as f64 / rounds as f64
}

fn main() {
    // Queues start a timer task, so the bench runs inside a runtime like the node does.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let _entered = rt.enter();
    let dir = std::env::temp_dir().join(format!("warren-route-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");

    println!("plugin enable time (compile + instantiate, then from the node's cache):");
    let plugins = [
        "exchange-direct",
        "exchange-topic",
        "exchange-headers",
        "auth-internal",
        "prometheus",
    ];
    for name in plugins {
        let cold_host = host(&dir);
        let t = Instant::now();
        cold_host
            .validate(&[name.to_string()])
            .expect("plugin loads");
        let cold = t.elapsed();
        let warm_host = host(&dir);
        let t = Instant::now();
        warm_host
            .validate(&[name.to_string()])
            .expect("plugin loads");
        let warm = t.elapsed();
        println!(
            "  {name:<18} cold {:>7.1} ms   warm {:>6.1} ms",
            ms(cold),
            ms(warm)
        );
    }

    let host = host(&dir);
    host.load_enabled().expect("default plugins load");

    // The default exchange: the host looks the queue up by name.
    let vhost = VhostRt::new("/");
    let rec = QueueRecord {
        vhost: "/".into(),
        name: "q".into(),
        durable: false,
        auto_delete: false,
        exclusive_owner: None,
        arguments: FieldTable::default(),
        uid: 1,
        node: "bench".into(),
        members: Vec::new(),
    };
    let q: Arc<Queue> = Queue::new(
        rec,
        QueueConfig::default(),
        None,
        Weak::<Broker>::new(),
        Vec::new(),
    );
    vhost.queues.write().insert("q".into(), q);
    let mut out = Destinations::default();
    let default_ns = per_call(ROUNDS, || {
        out.local.clear();
        vhost
            .route("", black_box("q"), None, None, &mut out)
            .expect("default exchange routes");
    });
    println!("\nroute one message (ns per call, {ROUNDS} calls, one thread):");
    println!("  default exchange (host protocol rule)         {default_ns:>8.0} ns");

    let mut headers = FieldTable::default();
    headers.insert(
        "format".into(),
        AMQPValue::LongString(LongString::from("pdf")),
    );
    headers.insert(
        "type".into(),
        AMQPValue::LongString(LongString::from("report")),
    );
    let mut bind_args = FieldTable::default();
    bind_args.insert(
        "x-match".into(),
        AMQPValue::LongString(LongString::from("all")),
    );
    bind_args.insert(
        "format".into(),
        AMQPValue::LongString(LongString::from("pdf")),
    );
    let cases: [(&str, &str, &str, Option<&FieldTable>, &FieldTable); 4] = [
        ("direct", "orders", "orders", None, &FieldTable::default()),
        ("fanout", "", "anything", None, &FieldTable::default()),
        (
            "topic",
            "stock.*.nyse",
            "stock.ibm.nyse",
            None,
            &FieldTable::default(),
        ),
        ("headers", "", "", Some(&headers), &bind_args),
    ];
    for (kind, binding_key, routing_key, hdrs, args) in cases {
        let t = host.exchange_type(kind).expect("type enabled by default");
        let mut router = t.create(&FieldTable::default()).expect("create");
        router.bind(1, binding_key, args).expect("bind");
        // Other bindings that do not match, as a real exchange has.
        for i in 2..100u64 {
            let other = format!("other.{i}");
            if kind != "fanout" && kind != "headers" {
                router
                    .bind(i, &other, &FieldTable::default())
                    .expect("bind");
            }
        }
        let input = RouteInput {
            routing_key,
            headers: hdrs,
            message: None,
        };
        let mut ids = Vec::new();
        let ns = per_call(ROUNDS, || {
            ids.clear();
            router.route(black_box(&input), &mut ids).expect("route");
        });
        assert!(ids.contains(&1), "{kind} routes to its binding");
        println!("  {kind:<8} through its component (plugin call) {ns:>8.0} ns");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
