//! Clustering as RabbitMQ's clustering guide walks through it, with real
//! processes on one machine: nodes join with stop_app / reset / join_cluster /
//! start_app, metadata declared on one node is there on the others, a lost
//! quorum refuses changes at once and recovers, a killed node rejoins by
//! itself, ram nodes and node-type changes, a wrong cookie, forget_cluster_node.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, ExchangeKind};
use serde_json::Value;
use warren_tests::{Node, TempDir};

fn status(node: &Node) -> Value {
    let out = node.ctl_ok(&["cluster_status", "--formatter", "json"]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("cluster_status json: {e}: {out}"))
}

fn names(v: &Value, field: &str) -> Vec<String> {
    let mut n: Vec<String> = v[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    n.sort();
    n
}

/// Waits until `node` reports `want` (sorted names) in `field`.
fn wait_status(node: &Node, field: &str, want: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let got = names(&status(node), field);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: {field} is {got:?}, want {want:?}",
            node.full_name()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The walkthrough: stop_app, reset, join_cluster, start_app.
fn join(node: &Node, seed: &Node, ram: bool) -> Duration {
    node.ctl_ok(&["stop_app"]);
    node.ctl_ok(&["reset"]);
    let started = Instant::now();
    let seed_name = seed.full_name();
    let mut args = vec!["join_cluster", seed_name.as_str()];
    if ram {
        args.push("--ram");
    }
    node.ctl_ok(&args);
    let took = started.elapsed();
    node.ctl_ok(&["start_app"]);
    took
}

fn cluster_of_three(dir: &TempDir) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::new(&format!("test_rabbit_{i}"), &dir.0))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    for i in 1..3 {
        let took = join(&nodes[i], &nodes[0], false);
        println!("{} joined in {took:?}", nodes[i].full_name());
    }
    nodes
}

fn all_names(nodes: &[Node]) -> Vec<String> {
    let mut v: Vec<String> = nodes.iter().map(|n| n.full_name()).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_one_broker_and_a_killed_node_rejoins() {
    let dir = TempDir::new("cluster-walkthrough");
    let mut nodes = cluster_of_three(&dir);
    let everyone = all_names(&nodes);
    for n in &nodes {
        wait_status(n, "disk_nodes", &everyone);
        wait_status(n, "running_nodes", &everyone);
    }
    let s = status(&nodes[2]);
    // Named after the node that founded it, the same on every node.
    assert_eq!(s["cluster_name"], nodes[0].full_name().as_str());
    assert!(names(&s, "ram_nodes").is_empty());
    nodes[1].ctl_ok(&["set_cluster_name", "warren-east"]);
    for n in &nodes {
        assert_eq!(
            status(n)["cluster_name"],
            "warren-east",
            "{}",
            n.full_name()
        );
        let port = n.port;
        let props = tokio::task::spawn_blocking(move || Raw::server_properties(port))
            .await
            .unwrap();
        assert_eq!(
            props.inner().get("cluster_name"),
            Some(&AMQPValue::LongString("warren-east".into())),
            "connection.start of {}",
            n.full_name()
        );
    }
    let out = nodes[0].ctl(&["set_cluster_name", ""]);
    assert!(!out.status.success(), "an empty cluster name was accepted");

    // Declared on node 1, there at once on node 3 (declare-ok waits for every reachable node).
    let (c1, ch1) = open(&nodes[0].url()).await;
    ch1.exchange_declare(
        "orders".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare exchange on node 1");
    declare(&ch1, "orders.eu", durable(), FieldTable::default()).await;
    ch1.queue_bind(
        "orders.eu".into(),
        "orders".into(),
        "eu.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let (c3, ch3) = open(&nodes[2].url()).await;
    ch3.queue_declare(
        "orders.eu".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("node 3 knows the queue declared on node 1");
    ch3.exchange_declare(
        "orders".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("node 3 knows the exchange declared on node 1");
    let bindings = nodes[1].ctl_ok(&["list_bindings", "--formatter", "json"]);
    assert!(
        bindings.contains("eu.#"),
        "node 2 lists the binding: {bindings}"
    );
    c3.close(200, "bye".into()).await.expect("close");

    // Node 3 dies hard; the other two keep a quorum and keep changing metadata.
    nodes[2].kill9();
    let mut rest = vec![nodes[0].full_name(), nodes[1].full_name()];
    rest.sort();
    wait_status(&nodes[0], "running_nodes", &rest);
    declare(
        &ch1,
        "declared-while-3-was-down",
        durable(),
        FieldTable::default(),
    )
    .await;
    // Routing and delivery on node 1 are undisturbed.
    publish(
        &ch1,
        "orders",
        "eu.de",
        b"hello",
        BasicProperties::default(),
    )
    .await;
    let got = get_wait(&ch1, "orders.eu", true).await;
    assert_eq!(got.delivery.data, b"hello");

    // Restarted, it rejoins by itself and catches up.
    nodes[2].start();
    wait_status(&nodes[2], "running_nodes", &everyone);
    let (c3, ch3) = open(&nodes[2].url()).await;
    ch3.queue_declare(
        "declared-while-3-was-down".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("node 3 caught up on what it missed");
    c3.close(200, "bye".into()).await.expect("close");
    c1.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_reach_queues_on_other_nodes_and_an_owner_loss_is_named() {
    let dir = TempDir::new("cluster-queues");
    let mut nodes = cluster_of_three(&dir);
    let everyone = all_names(&nodes);
    wait_status(&nodes[0], "running_nodes", &everyone);

    // A durable queue on node 2, bound to an exchange, fed through node 3 with confirms.
    let (c2, ch2) = open(&nodes[1].url()).await;
    declare(&ch2, "on-two", durable(), FieldTable::default()).await;
    ch2.queue_bind(
        "on-two".into(),
        "amq.topic".into(),
        "sensor.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind");
    let (c3, ch3) = open(&nodes[2].url()).await;
    ch3.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..50 {
        let body = format!("reading {i}");
        let topic = ch3
            .basic_publish(
                "amq.topic".into(),
                "sensor.t1".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(topic.is_ack(), "message {i} confirmed by the owner");
        let direct = ch3
            .basic_publish(
                "".into(),
                "on-two".into(),
                BasicPublishOptions::default(),
                b"direct",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(direct.is_ack());
    }
    assert_eq!(ready_count(&ch2, "on-two").await, 100);
    assert_eq!(
        get_wait(&ch2, "on-two", true).await.delivery.data,
        b"reading 0"
    );
    c3.close(200, "bye".into()).await.expect("close");
    c2.close(200, "bye".into()).await.expect("close");

    // The owner dies: other nodes name it; it comes back with its messages.
    nodes[1].kill9();
    let (c1, ch1) = open(&nodes[0].url()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let ch = c1.create_channel().await.expect("channel");
        match ch
            .queue_declare(
                "on-two".into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
        {
            Err(e) => break expect_code::<()>(Err(e), 404),
            Ok(_) => {
                assert!(Instant::now() < deadline, "owner loss never noticed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(
        text,
        format!(
            "NOT_FOUND - home node '{}' of durable queue 'on-two' in vhost '/' is down or inaccessible",
            nodes[1].full_name()
        )
    );
    nodes[1].start();
    let (c2, ch2) = open(&nodes[1].url()).await;
    // As in RabbitMQ, persistent messages survive the crash.
    assert_eq!(ready_count(&ch2, "on-two").await, 49);

    // Deleting through another node happens on the owner, which checks and counts.
    let not_empty = ch1
        .queue_delete(
            "on-two".into(),
            QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        )
        .await;
    assert_eq!(
        expect_code(not_empty, 406),
        "PRECONDITION_FAILED - queue 'on-two' in vhost '/' not empty"
    );
    let ch1 = c1.create_channel().await.expect("channel");
    let deleted = ch1
        .queue_delete("on-two".into(), QueueDeleteOptions::default())
        .await
        .expect("delete through node 1");
    assert_eq!(deleted, 49, "delete-ok counts what the owner held");
    for n in &nodes {
        assert_eq!(
            ctl_messages(n, "on-two"),
            None,
            "on-two still listed on {}",
            n.full_name()
        );
    }
    c1.close(200, "bye".into()).await.expect("close");
    c2.close(200, "bye".into()).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_changes_fail_fast_and_routing_goes_on() {
    let dir = TempDir::new("cluster-quorum");
    let mut nodes = cluster_of_three(&dir);
    let everyone = all_names(&nodes);
    wait_status(&nodes[0], "running_nodes", &everyone);
    let (c1, ch1) = open(&nodes[0].url()).await;
    declare(&ch1, "work", durable(), FieldTable::default()).await;

    nodes[1].stop();
    nodes[2].stop();
    wait_status(&nodes[0], "running_nodes", &[nodes[0].full_name()]);

    // Routing and delivery go on with the metadata the node has.
    publish(&ch1, "", "work", b"still here", BasicProperties::default()).await;
    assert_eq!(
        get_wait(&ch1, "work", true).await.delivery.data,
        b"still here"
    );

    // Every metadata change fails within seconds, with a clear error.
    let started = Instant::now();
    let err = ch1
        .queue_declare("new-queue".into(), durable(), FieldTable::default())
        .await
        .expect_err("no quorum: declare refused");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(code(&err), Some(541), "{err:?}");
    assert!(
        text(&err).contains("no quorum of disc nodes (1 of 3 reachable)"),
        "{}",
        text(&err)
    );
    let out = nodes[0].ctl(&["add_user", "late", "pw"]);
    assert_eq!(out.status.code(), Some(75), "warrenctl exit code");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no quorum"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");

    // A disc node comes back: changes work again, nothing lost.
    nodes[1].start();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (c1b, ch1b) = loop {
        let (c, ch) = open(&nodes[0].url()).await;
        match ch
            .queue_declare("new-queue".into(), durable(), FieldTable::default())
            .await
        {
            Ok(_) => break (c, ch),
            Err(e) => {
                assert!(Instant::now() < deadline, "changes never came back: {e:?}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    nodes[0].ctl_ok(&["add_user", "late", "pw"]);
    let users = nodes[1].ctl_ok(&["list_users"]);
    assert!(users.contains("late"), "{users}");
    ch1b.queue_declare(
        "work".into(),
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("the queue from before is still there");
    let _ = c1.close(200, "bye".into()).await;
    c1b.close(200, "bye".into()).await.expect("close");
}

#[test]
fn ram_nodes_node_types_and_forgetting_a_node() {
    let dir = TempDir::new("cluster-ram");
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::new(&format!("ram_test_{i}"), &dir.0))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    join(&nodes[1], &nodes[0], true);
    join(&nodes[2], &nodes[0], false);
    let (n1, n2, n3) = (
        nodes[0].full_name(),
        nodes[1].full_name(),
        nodes[2].full_name(),
    );
    let mut disc = vec![n1.clone(), n3.clone()];
    disc.sort();
    wait_status(&nodes[0], "disk_nodes", &disc);
    wait_status(&nodes[0], "ram_nodes", std::slice::from_ref(&n2));

    // The ram node holds the metadata too, and gets it back after a restart.
    nodes[0].ctl_ok(&["add_vhost", "shared"]);
    assert!(nodes[1].ctl_ok(&["list_vhosts"]).contains("shared"));
    nodes[1].restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !nodes[1].ctl_ok(&["list_vhosts"]).contains("shared") {
        assert!(
            Instant::now() < deadline,
            "ram node did not catch up after restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // change_cluster_node_type needs the app stopped, then turns ram into disc.
    let refused = nodes[1].ctl(&["change_cluster_node_type", "disc"]);
    assert_ne!(refused.status.code(), Some(0));
    nodes[1].ctl_ok(&["stop_app"]);
    nodes[1].ctl_ok(&["change_cluster_node_type", "disc"]);
    nodes[1].ctl_ok(&["start_app"]);
    let mut all = vec![n1.clone(), n2.clone(), n3.clone()];
    all.sort();
    wait_status(&nodes[0], "disk_nodes", &all);
    wait_status(&nodes[0], "ram_nodes", &[]);

    // forget_cluster_node: refused while the node runs, done once it is stopped.
    let refused = nodes[0].ctl(&["forget_cluster_node", &n3]);
    assert_ne!(
        refused.status.code(),
        Some(0),
        "a running node is not forgotten"
    );
    nodes[2].stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = nodes[0].ctl(&["forget_cluster_node", &n3]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forget failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut left = vec![n1, n2];
    left.sort();
    wait_status(&nodes[0], "disk_nodes", &left);
}

#[test]
fn a_wrong_cookie_is_refused_in_one_line() {
    let dir = TempDir::new("cluster-cookie");
    let mut a = Node::new("cookie_a", &dir.0);
    let mut b = Node::new("cookie_b", &dir.0);
    b.env
        .push(("WARREN_COOKIE".into(), "a-different-secret".into()));
    a.start();
    b.start();
    b.ctl_ok(&["stop_app"]);
    let out = b.ctl(&["join_cluster", &a.full_name()]);
    assert_ne!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.to_lowercase().contains("cookie") || stderr.contains("authentication"),
        "{stderr}"
    );
    // Neither node is harmed: b is still its own cluster, a never saw b join.
    assert_eq!(names(&status(&a), "disk_nodes"), vec![a.full_name()]);
    b.ctl_ok(&["start_app"]);
    assert_eq!(names(&status(&b), "disk_nodes"), vec![b.full_name()]);
}

/// The declare is the last metadata change before the crash, so the owner's replica has the
/// queue's record on disk but not yet the knowledge that it was committed: recovery must not
/// take the recovered messages for orphans before the replica has caught up with the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_of_a_classic_queue_survive_its_owner_killed() {
    let dir = TempDir::new("cluster-owner-kill");
    let mut nodes = cluster_of_three(&dir);
    let everyone = all_names(&nodes);
    for n in &nodes {
        wait_status(n, "running_nodes", &everyone);
    }
    let (c2, ch2) = open(&nodes[1].url()).await;
    declare(&ch2, "own2", durable(), FieldTable::default()).await;
    c2.close(200, "bye".into()).await.expect("close");
    let (c1, ch1) = open(&nodes[0].url()).await;
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    publish_all_acked(&ch1, "own2", 0..500, "not acked").await;
    assert_eq!(ready_count(&ch1, "own2").await, 500);

    nodes[1].kill9();
    nodes[1].start();
    for n in &nodes {
        wait_status(n, "running_nodes", &everyone);
    }
    for n in &nodes {
        assert_eq!(
            ctl_messages(n, "own2"),
            Some(500),
            "list_queues on {} after the owner's kill -9; the owner's log:\n{}",
            n.full_name(),
            nodes[1].log()
        );
    }
    // The publisher's node still holds its link to the owner's previous run: the first
    // publishes after the restart go over a dead link, and must be resent, not nacked.
    publish_all_acked(&ch1, "own2", 500..700, "nacked after the owner's restart").await;
    c1.close(200, "bye".into()).await.expect("close");
    for n in &nodes {
        assert_eq!(
            ctl_messages(n, "own2"),
            Some(700),
            "list_queues on {} after the owner's kill -9; the owner's log:\n{}",
            n.full_name(),
            nodes[1].log()
        );
    }
    // And once more: nothing was dropped on the way (a second restart used to lose them).
    nodes[1].restart();
    let (c2, ch2) = open(&nodes[1].url()).await;
    assert_eq!(ready_count(&ch2, "own2").await, 700);
    let first = get_wait(&ch2, "own2", true).await;
    assert_eq!(first.delivery.data, b"m0");
    c2.close(200, "bye".into()).await.expect("close");
}

/// Publishes persistent messages `m<i>` for each i in `range`, pipelined, and asserts each is
/// acked (`what` says what a nack means here).
async fn publish_all_acked(ch: &Channel, queue: &str, range: std::ops::Range<u32>, what: &str) {
    let mut confirms = Vec::new();
    for i in range {
        let body = format!("m{i}");
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                persistent(),
            )
            .await
            .expect("publish");
        confirms.push((i, confirm));
    }
    for (i, c) in confirms {
        assert!(c.await.expect("confirm").is_ack(), "message {i} {what}");
    }
}

/// This machine's short host name, as a node without a host part calls itself.
fn short_hostname() -> String {
    let out = std::process::Command::new("hostname")
        .output()
        .expect("hostname");
    let full = String::from_utf8_lossy(&out.stdout).trim().to_string();
    full.split('.').next().unwrap_or("localhost").to_string()
}

/// `warrenctl ARGS` typed as a user would: only the environment the walkthrough sets.
fn typed(dir: &TempDir, env: &[(&str, &str)], args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(warren_tests::bin("warrenctl"));
    cmd.env("WARREN_BASE", &dir.0)
        .env("HOME", dir.0.join("home"))
        .env("WARREN_COOKIE", "test-cookie-secret")
        .env_remove("WARREN_NODENAME")
        .env_remove("WARREN_NODE_PORT")
        .env_remove("WARREN_DIST_PORT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.args(args).output().expect("run warrenctl")
}

fn typed_ok(dir: &TempDir, env: &[(&str, &str)], args: &[&str]) -> String {
    let out = typed(dir, env, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "warrenctl {args:?} failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// RabbitMQ's clustering walkthrough typed verbatim on a host whose name is not `localhost`:
/// names without a host part, joined to `test_rabbit_1@localhost`, and every command's
/// effect visible the moment it returns.
#[test]
fn the_walkthrough_verbatim_with_names_without_a_host_part() {
    let dir = TempDir::new("walkthrough-verbatim");
    let host = short_hostname();
    let mut nodes: Vec<Node> = (1..=2)
        .map(|i| {
            let mut n = Node::new(&format!("test_rabbit_{i}@{host}"), &dir.0);
            n.env
                .push(("WARREN_NODENAME".into(), format!("test_rabbit_{i}")));
            n
        })
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let one = format!("test_rabbit_1@{host}");
    let two = format!("test_rabbit_2@{host}");
    let stop_app = typed_ok(&dir, &[], &["-n", "test_rabbit_2", "stop_app"]);
    assert_eq!(
        stop_app.trim(),
        format!("Stopping rabbit application on node {two} ..."),
        "one banner line"
    );
    let joined = typed_ok(
        &dir,
        &[],
        &[
            "-n",
            "test_rabbit_2",
            "join_cluster",
            "test_rabbit_1@localhost",
        ],
    );
    assert_eq!(
        joined.trim(),
        format!("Clustering node {two} with test_rabbit_1@localhost")
    );
    // Joined but not started: a member, not running.
    let s = status(&nodes[0]);
    assert_eq!(names(&s, "disk_nodes"), [one.clone(), two.clone()]);
    assert_eq!(names(&s, "running_nodes"), std::slice::from_ref(&one));
    let started = typed_ok(&dir, &[], &["-n", "test_rabbit_2", "start_app"]);
    assert_eq!(started.trim(), format!("Starting node {two} ..."));
    // Running everywhere the moment start_app returns.
    for n in &nodes {
        assert_eq!(
            names(&status(n), "running_nodes"),
            [one.clone(), two.clone()],
            "on {}",
            n.full_name()
        );
    }
    let text = typed_ok(&dir, &[], &["-n", "test_rabbit_1", "cluster_status"]);
    assert!(
        text.contains(&format!("Running Nodes\n\n{one}\n{two}\n")),
        "{text}"
    );
    // The same node by any of this machine's names.
    let via_localhost = typed_ok(
        &dir,
        &[],
        &[
            "-n",
            "test_rabbit_2@localhost",
            "cluster_status",
            "--formatter",
            "json",
        ],
    );
    assert!(via_localhost.contains(&two), "{via_localhost}");

    // `WARREN_NODENAME=test_rabbit_2 warrenctl stop`, then cluster_status.
    typed_ok(&dir, &[("WARREN_NODENAME", "test_rabbit_2")], &["stop"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while nodes[1]
        .child
        .as_mut()
        .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    {
        assert!(Instant::now() < deadline, "test_rabbit_2 did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    nodes[1].child = None;
    let s = status(&nodes[0]);
    assert_eq!(names(&s, "disk_nodes"), [one.clone(), two.clone()]);
    assert_eq!(names(&s, "running_nodes"), std::slice::from_ref(&one));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_and_a_get_through_another_node_are_settled_by_the_owner() {
    let dir = TempDir::new("cluster-relay");
    let nodes = cluster_of_three(&dir);
    wait_status(&nodes[0], "running_nodes", &all_names(&nodes));

    // The queue lives on node 1; the client reads it through node 2.
    let (c1, ch1) = open(&nodes[0].url()).await;
    declare(&ch1, "relayed", durable(), FieldTable::default()).await;
    ch1.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm.select");
    for i in 0..10 {
        publish_confirmed(
            &ch1,
            "",
            "relayed",
            format!("m{i}").as_bytes(),
            persistent(),
        )
        .await;
    }
    let (c2, ch2) = open(&nodes[1].url()).await;

    // basic.get with an ack: the owner's count follows.
    let got = get_wait(&ch2, "relayed", false).await;
    assert_eq!(got.delivery.data, b"m0");
    ch2.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default())
        .await
        .expect("ack");
    eventually("the owner has 9 left", || async {
        ready_count(&ch1, "relayed").await == 9
    })
    .await;

    // A consumer with a prefetch of 3: acks, one requeue, and what it holds when its channel
    // closes goes back to the queue on the owner.
    ch2.basic_qos(3, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = consume(&ch2, "relayed", "through-two", false).await;
    let first = next(&mut consumer).await;
    assert_eq!(body(&first), "m1");
    ch2.basic_nack(
        first.delivery_tag,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await
    .expect("nack");
    let mut seen = Vec::new();
    let mut redelivered_m1 = false;
    while seen.len() < 6 {
        let d = next(&mut consumer).await;
        if body(&d) == "m1" {
            redelivered_m1 = d.redelivered;
        }
        seen.push(body(&d));
        d.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(
        redelivered_m1,
        "the requeued message came back flagged redelivered: {seen:?}"
    );
    // Three more arrive and stay unacked; closing the channel gives them back.
    for _ in 0..3 {
        next(&mut consumer).await;
    }
    ch2.close(200, "bye".into()).await.expect("close");
    eventually("the 3 unacked messages are back on the owner", || async {
        ready_count(&ch1, "relayed").await == 3
    })
    .await;
    let again = get_wait(&ch1, "relayed", true).await;
    assert!(
        again.delivery.redelivered,
        "a returned message is redelivered"
    );

    // A stream through node 2 both ways: its publishes travel to the owner several batches at
    // a time, its deliveries come back several batches at a time, and the client still sees
    // every message once, in the order it was published.
    declare(
        &ch1,
        "stream",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await;
    let (c3, ch3) = open(&nodes[1].url()).await;
    let mut stream = consume(&ch3, "stream", "stream-reader", true).await;
    const STREAM: u32 = 20_000;
    for i in 0..STREAM {
        publish(
            &ch3,
            "",
            "stream",
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        )
        .await;
    }
    for i in 0..STREAM {
        let d = next(&mut stream).await;
        assert_eq!(body(&d), i.to_string(), "message {i} of the stream");
    }
    c3.close(200, "bye".into()).await.expect("close");
    c2.close(200, "bye".into()).await.expect("close");
    c1.close(200, "bye".into()).await.expect("close");
}
