//! A plugin written in Python, end to end: built from source with
//! componentize-py (plugins/python/x-modulus-hash/build.sh installs it if
//! missing), dropped into WARREN_PLUGINS_DIR, enabled on a running node and
//! used by a real client.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use lapin::BasicProperties;
use lapin::options::*;
use lapin::types::FieldTable;
use warren_tests::{Node, TempDir};

/// The routing rule the plugin documents: FNV-1a 32 of the routing key,
/// modulo the number of bindings, bindings in bind order.
fn fnv1a_32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811C9DC5;
    for b in data {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x01000193);
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_exchange_type_routes_real_messages() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let source = repo.join("plugins/python/x-modulus-hash");
    let dir = TempDir::new("python-plugin");
    let plugins_dir = dir.0.join("plugins");
    std::fs::create_dir_all(&plugins_dir).expect("plugins dir");
    let built = Command::new("bash")
        .arg(source.join("build.sh"))
        .arg(&plugins_dir)
        .output()
        .expect("run build.sh");
    assert!(
        built.status.success(),
        "building the Python plugin failed (needs python3 and pip to install componentize-py):\n{}\n{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    std::fs::copy(
        source.join("plugin.toml"),
        plugins_dir.join("x-modulus-hash.toml"),
    )
    .expect("manifest");

    let mut node = Node::new("py", &dir.0);
    node.env.push((
        "WARREN_PLUGINS_DIR".into(),
        plugins_dir.display().to_string(),
    ));
    node.start();

    let (conn, ch) = open(&node.url()).await;
    // Not enabled yet: the type is unknown, as RabbitMQ answers it.
    let probe = conn.create_channel().await.expect("channel");
    let refused = probe
        .exchange_declare(
            "mod".into(),
            lapin::ExchangeKind::Custom("x-modulus-hash".into()),
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect_err("type not enabled yet");
    assert!(
        refused
            .to_string()
            .contains("invalid exchange type 'x-modulus-hash'"),
        "{refused}"
    );

    let out = node.plugins(&["enable", "x-modulus-hash"]);
    assert!(
        out.status.success(),
        "enable failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&node.plugins(&["list"]).stdout).into_owned();
    assert!(
        listed.lines().any(|l| l.starts_with("[E*] x-modulus-hash")),
        "{listed}"
    );

    ch.exchange_declare(
        "mod".into(),
        lapin::ExchangeKind::Custom("x-modulus-hash".into()),
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare x-modulus-hash");
    let queues = ["py-a", "py-b", "py-c"];
    for q in queues {
        declare(
            &ch,
            q,
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await;
        ch.queue_bind(
            q.into(),
            "mod".into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    }
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for i in 0..300 {
        let key = format!("order-{i}");
        let q = queues[(fnv1a_32(key.as_bytes()) % 3) as usize];
        expected.entry(q).or_default().push(key.clone());
        publish(&ch, "mod", &key, key.as_bytes(), BasicProperties::default()).await;
    }
    for q in queues {
        let want = expected.remove(q).unwrap_or_default();
        eventually(&format!("{q} holds its {} messages", want.len()), || {
            let ch = ch.clone();
            let n = want.len() as u32;
            async move { ready_count(&ch, q).await == n }
        })
        .await;
        let got = drain(&ch, q).await;
        assert_eq!(
            got, want,
            "queue {q} holds exactly the keys that hash to it"
        );
    }
    conn.close(200, "bye".into()).await.expect("close");
}
