//! warrenctl against a running node: listings as JSON with the right values, user / vhost /
//! permission management, status, stop, and what happens when the node is not there.

mod common;

use std::time::{Duration, Instant};

use common::*;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ExchangeKind};
use serde_json::{Value, json};
use warren_tests::{Node, TempDir};

type Row = serde_json::Map<String, Value>;

fn find<'a>(rows: &'a [Row], key: &str, value: &str) -> &'a Row {
    rows.iter()
        .find(|r| r[key] == value)
        .unwrap_or_else(|| panic!("no row with {key} = {value:?} in {rows:?}"))
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn list_queues_as_json() {
    let broker = TestBroker::start();
    let (conn, ch) = open(&broker.url()).await;
    let mut limit = FieldTable::default();
    limit.insert("x-max-length".into(), AMQPValue::LongInt(10));
    declare(&ch, "jobs", durable(), limit).await;
    for _ in 0..3 {
        publish(&ch, "", "jobs", b"12345", Default::default()).await;
    }
    let _unacked = get_wait(&ch, "jobs", false).await;
    let ch2 = conn.create_channel().await.unwrap();
    ch2.queue_declare(
        "mine".into(),
        QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _c = consume(&ch2, "mine", "watcher", true).await;
    let fields = [
        "list_queues",
        "name",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "message_bytes",
        "consumers",
        "type",
    ];
    let rows = ctl_rows(&broker, &fields);
    assert_eq!(rows.len(), 2, "{rows:?}");
    // Columns come in the order asked for.
    let mut all = fields.to_vec();
    all.extend(["--formatter", "json"]);
    let raw = broker.ctl_ok(&all);
    let first = raw.lines().nth(1).expect("a row line");
    let at: Vec<usize> = fields[1..]
        .iter()
        .map(|f| {
            first
                .find(&format!("\"{f}\":"))
                .unwrap_or_else(|| panic!("{f} in {first}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{first}");
    let jobs = find(&rows, "name", "jobs");
    assert_eq!(jobs["durable"], true);
    assert_eq!(jobs["auto_delete"], false);
    assert_eq!(jobs["exclusive"], false);
    assert_eq!(jobs["arguments"], json!({"x-max-length": 10}));
    assert_eq!(jobs["messages"], 3);
    assert_eq!(jobs["messages_ready"], 2);
    assert_eq!(jobs["messages_unacknowledged"], 1);
    assert_eq!(jobs["message_bytes"], 15);
    assert_eq!(jobs["consumers"], 0);
    assert_eq!(jobs["type"], "classic");
    let mine = find(&rows, "name", "mine");
    assert_eq!(
        (&mine["exclusive"], &mine["auto_delete"], &mine["consumers"]),
        (&json!(true), &json!(true), &json!(1))
    );
    // The default columns, and the plain table format.
    let table = broker.ctl_ok(&["list_queues", "--no-table-headers", "-q"]);
    let mut lines: Vec<&str> = table.lines().collect();
    lines.sort();
    assert_eq!(lines, ["jobs\t3", "mine\t0"]);
    // Another vhost has its own queues.
    broker.ctl_ok(&["add_vhost", "empty"]);
    assert!(ctl_rows(&broker, &["list_queues", "-p", "empty"]).is_empty());
    // An unknown column is a usage error.
    let out = broker.ctl(&["list_queues", "name", "colour"]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

#[tokio::test]
async fn queue_memory_persistent_count_and_state_are_measured() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    declare(&ch, "mixed", durable(), FieldTable::default()).await;
    declare(&ch, "scratch", Default::default(), FieldTable::default()).await;
    let persistent = lapin::BasicProperties::default().with_delivery_mode(2);
    let body = vec![7u8; 10_000];
    for _ in 0..3 {
        publish(&ch, "", "mixed", &body, persistent.clone()).await;
        publish(&ch, "", "scratch", &body, persistent.clone()).await;
    }
    for _ in 0..2 {
        publish(&ch, "", "mixed", &body, Default::default()).await;
    }
    // One persistent message unacknowledged: still counted.
    let _held = get_wait(&ch, "mixed", false).await;
    let fields = [
        "list_queues",
        "name",
        "messages",
        "messages_persistent",
        "memory",
        "state",
    ];
    let rows = ctl_rows(&broker, &fields);
    let mixed = find(&rows, "name", "mixed");
    assert_eq!(mixed["messages"], 5);
    assert_eq!(mixed["messages_persistent"], 3, "{mixed:?}");
    assert_eq!(mixed["state"], "running");
    let memory = mixed["memory"].as_u64().expect("memory is a number");
    // Five 10 kB bodies and their bookkeeping, not just the bodies and not megabytes.
    assert!((50_000..60_000).contains(&memory), "memory {memory}");
    // RabbitMQ counts no persistent messages in a transient queue.
    assert_eq!(find(&rows, "name", "scratch")["messages_persistent"], 0);
    ch.queue_purge("scratch".into(), Default::default())
        .await
        .unwrap();
    let rows = ctl_rows(&broker, &fields);
    assert_eq!(find(&rows, "name", "scratch")["memory"], 0);
    // No policy matches: an empty name, as rabbitmqctl prints it.
    let rows = ctl_rows(&broker, &["list_queues", "name", "policy"]);
    assert_eq!(find(&rows, "name", "scratch")["policy"], "");
}

#[tokio::test]
async fn list_exchanges_and_bindings_as_json() {
    let broker = TestBroker::start();
    let (_conn, ch) = open(&broker.url()).await;
    ch.exchange_declare(
        "events".into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "fan".into(),
        ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "audit", Default::default(), FieldTable::default()).await;
    ch.queue_bind(
        "audit".into(),
        "events".into(),
        "user.*".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_bind(
        "fan".into(),
        "events".into(),
        "#".into(),
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let xs = ctl_rows(
        &broker,
        &[
            "list_exchanges",
            "name",
            "type",
            "durable",
            "auto_delete",
            "internal",
        ],
    );
    for (name, kind) in [
        ("", "direct"),
        ("amq.direct", "direct"),
        ("amq.fanout", "fanout"),
        ("amq.topic", "topic"),
        ("amq.headers", "headers"),
        ("amq.match", "headers"),
        ("events", "topic"),
        ("fan", "fanout"),
    ] {
        assert_eq!(find(&xs, "name", name)["type"], kind, "{name}");
    }
    assert_eq!(find(&xs, "name", "events")["durable"], true);
    assert_eq!(find(&xs, "name", "fan")["durable"], false);
    assert_eq!(find(&xs, "name", "amq.rabbitmq.trace")["internal"], true);

    let bs = ctl_rows(
        &broker,
        &[
            "list_bindings",
            "source_name",
            "source_kind",
            "destination_name",
            "destination_kind",
            "routing_key",
            "arguments",
        ],
    );
    let expected = [
        json!({"source_name": "", "source_kind": "exchange", "destination_name": "audit", "destination_kind": "queue", "routing_key": "audit", "arguments": {}}),
        json!({"source_name": "events", "source_kind": "exchange", "destination_name": "audit", "destination_kind": "queue", "routing_key": "user.*", "arguments": {}}),
        json!({"source_name": "events", "source_kind": "exchange", "destination_name": "fan", "destination_kind": "exchange", "routing_key": "#", "arguments": {}}),
    ];
    let got: Vec<Value> = bs.into_iter().map(Value::Object).collect();
    assert_eq!(got, expected);
}

#[tokio::test]
async fn list_connections_channels_and_consumers_as_json() {
    let broker = TestBroker::start();
    broker.ctl_ok(&["add_user", "watcher", "pw"]);
    broker.ctl_ok(&["set_permissions", "watcher", ".*", ".*", ".*"]);
    let (_c1, ch) = open(&broker.url()).await;
    // AMQPLAIN, as older clients log in, and listed as such.
    let conn2 = connect(&format!(
        "{}?auth_mechanism=amqplain",
        url_for(broker.port, "watcher", "pw", "/")
    ))
    .await;
    let w1 = conn2.create_channel().await.unwrap();
    let _w2 = conn2.create_channel().await.unwrap();

    declare(&ch, "tasks", Default::default(), FieldTable::default()).await;
    for _ in 0..4 {
        publish(&ch, "", "tasks", b"t", Default::default()).await;
    }
    w1.basic_qos(2, Default::default()).await.unwrap();
    w1.confirm_select(Default::default()).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-priority".into(), AMQPValue::LongInt(5));
    let mut c = consume_with(&w1, "tasks", "worker-1", false, args).await;
    next(&mut c).await;
    next(&mut c).await;

    let conns = ctl_rows(
        &broker,
        &[
            "list_connections",
            "user",
            "vhost",
            "peer_host",
            "peer_port",
            "channels",
            "state",
            "auth_mechanism",
        ],
    );
    assert_eq!(conns.len(), 2, "{conns:?}");
    assert_eq!(
        find(&conns, "user", "watcher")["auth_mechanism"],
        "AMQPLAIN"
    );
    assert_eq!(find(&conns, "user", "guest")["auth_mechanism"], "PLAIN");
    let w = find(&conns, "user", "watcher");
    assert_eq!(w["vhost"], "/");
    assert_eq!(w["peer_host"], "127.0.0.1");
    assert_eq!(w["channels"], 2);
    assert_eq!(w["state"], "running");
    assert!(w["peer_port"].as_u64().is_some_and(|p| p > 0));
    assert_eq!(find(&conns, "user", "guest")["channels"], 1);

    let chans = ctl_rows(
        &broker,
        &[
            "list_channels",
            "user",
            "number",
            "consumer_count",
            "messages_unacknowledged",
            "prefetch_count",
            "confirm",
            "transactional",
        ],
    );
    assert_eq!(chans.len(), 3, "{chans:?}");
    let busy = chans
        .iter()
        .find(|r| r["consumer_count"] == 1)
        .unwrap_or_else(|| panic!("{chans:?}"));
    assert_eq!(busy["user"], "watcher");
    assert_eq!(busy["number"], w1.id());
    assert_eq!(busy["messages_unacknowledged"], 2);
    assert_eq!(busy["prefetch_count"], 2);
    assert_eq!(busy["confirm"], true);
    assert_eq!(busy["transactional"], false);

    let cons = ctl_rows(
        &broker,
        &[
            "list_consumers",
            "queue_name",
            "consumer_tag",
            "ack_required",
            "prefetch_count",
            "exclusive",
            "priority",
            "active",
            "arguments",
        ],
    );
    assert_eq!(
        cons.into_iter().map(Value::Object).collect::<Vec<_>>(),
        [json!({
            "queue_name": "tasks",
            "consumer_tag": "worker-1",
            "ack_required": true,
            "prefetch_count": 2,
            "exclusive": false,
            "priority": 5,
            "active": true,
            "arguments": {"x-priority": 5},
        })]
    );
    // Closing the connection removes it (and its channels) from the listings.
    conn2.close(200, "bye".into()).await.unwrap();
    eventually("the connection is gone from the listing", || async {
        ctl_rows(&broker, &["list_connections", "user"]).len() == 1
    })
    .await;
    assert_eq!(ctl_rows(&broker, &["list_channels", "number"]).len(), 1);
    assert!(ctl_rows(&broker, &["list_consumers", "consumer_tag"]).is_empty());
}

#[tokio::test]
async fn users_vhosts_and_permissions_are_managed_with_warrenctl() {
    let broker = TestBroker::start();
    broker.ctl_ok(&["add_user", "hank", "first"]);
    broker.ctl_ok(&["add_vhost", "dev"]);
    broker.ctl_ok(&[
        "set_permissions",
        "-p",
        "dev",
        "hank",
        "^hank",
        "^hank|amq\\.default",
        ".*",
    ]);
    let users = ctl_rows(&broker, &["list_users"]);
    assert!(users.iter().any(|u| u["user"] == "hank"), "{users:?}");
    assert!(
        users
            .iter()
            .any(|u| u["user"] == "guest" && u["tags"] == "[administrator]"),
        "{users:?}"
    );
    let vhosts = ctl_rows(&broker, &["list_vhosts"]);
    let mut names: Vec<&str> = vhosts.iter().map(|v| v["name"].as_str().unwrap()).collect();
    names.sort();
    assert_eq!(names, ["/", "dev"]);
    let perms = ctl_rows(&broker, &["list_permissions", "-p", "dev"]);
    assert_eq!(
        perms.into_iter().map(Value::Object).collect::<Vec<_>>(),
        [
            json!({"user": "hank", "configure": "^hank", "write": "^hank|amq\\.default", "read": ".*"})
        ]
    );
    let mine = ctl_rows(&broker, &["list_user_permissions", "hank"]);
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["vhost"], "dev");

    // The new user can work in the new vhost.
    let url = url_for(broker.port, "hank", "first", "dev");
    let (conn, ch) = open(&url).await;
    declare(&ch, "hank.q", Default::default(), FieldTable::default()).await;
    assert!(
        ctl_rows(&broker, &["list_queues", "-p", "dev", "name"])
            .iter()
            .any(|q| q["name"] == "hank.q")
    );
    broker.ctl_ok(&["authenticate_user", "hank", "first"]);
    broker.ctl_ok(&["change_password", "hank", "second"]);
    let out = broker.ctl(&["authenticate_user", "hank", "first"]);
    assert!(!out.status.success());
    open(&url_for(broker.port, "hank", "second", "dev")).await;

    // Duplicates are errors, on one line of stderr.
    for args in [&["add_user", "hank", "x"][..], &["add_vhost", "dev"]] {
        let out = broker.ctl(args);
        assert_eq!(out.status.code(), Some(65), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim_end().lines().count(),
            1,
            "{}",
            stderr(&out)
        );
    }
    let out = broker.ctl(&["set_permissions", "-p", "dev", "hank", "(", ".*", ".*"]);
    assert!(!out.status.success(), "an invalid regex is refused");

    // Deleting the vhost closes its connections and forgets its permissions.
    broker.ctl_ok(&["delete_vhost", "dev"]);
    eventually("the connection in the deleted vhost is closed", || async {
        !conn.status().connected()
    })
    .await;
    assert!(ctl_rows(&broker, &["list_user_permissions", "hank"]).is_empty());
    // Deleting the user refuses its logins.
    broker.ctl_ok(&["delete_user", "hank"]);
    assert!(
        !ctl_rows(&broker, &["list_users"])
            .iter()
            .any(|u| u["user"] == "hank")
    );
    let r = Connection::connect(
        &url_for(broker.port, "hank", "second", "/"),
        Default::default(),
    )
    .await;
    assert_eq!(code(&r.map(|_| ()).expect_err("deleted user")), Some(403));
    let out = broker.ctl(&["delete_user", "hank"]);
    assert_eq!(out.status.code(), Some(65), "{}", stderr(&out));
}

#[tokio::test]
async fn status_reports_the_node() {
    let mut broker = TestBroker::start();
    let _conn = connect(&broker.url()).await;
    let status = ctl_json(&broker, &["status"]);
    assert_eq!(status["node"], broker.node.full_name());
    let pid = broker.node.child.as_mut().unwrap().id();
    assert_eq!(status["pid"], pid);
    assert_eq!(status["running"], true);
    assert_eq!(status["connections"], 1);
    assert_eq!(status["alarms"], json!({"memory": false, "disk": false}));
    let listeners = status["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["protocol"] == "amqp" && l["port"] == broker.port),
        "{listeners:?}"
    );
    // The table format is text for people.
    let text = broker.ctl_ok(&["status"]);
    assert!(text.contains(&format!("port: {}", broker.port)), "{text}");
}

#[tokio::test]
async fn await_startup_answers_once_the_node_serves_and_not_while_its_app_is_stopped() {
    let broker = TestBroker::start();
    let out = broker.node.ctl(&["await_startup", "-t", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    broker.ctl_ok(&["stop_app"]);
    let out = broker.node.ctl(&["await_startup", "-t", "1"]);
    // Not started within the timeout: unavailable, with the node's reason.
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("its application is stopped"),
        "{}",
        stderr(&out)
    );
    broker.ctl_ok(&["start_app"]);
    let out = broker.node.ctl(&["await_startup", "-t", "30"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let _conn = connect(&broker.url()).await;
}

#[tokio::test]
async fn the_dist_port_listens_only_where_distribution_listener_interface_says() {
    let broker = TestBroker::start_with_config("distribution.listener.interface = 127.0.0.2\n");
    let dist = broker.port + 20000;
    // Nothing answers on the other addresses of the machine ...
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", dist)).is_err(),
        "the dist port answered on 127.0.0.1"
    );
    // ... and the CLI finds the node where it listens.
    assert!(std::net::TcpStream::connect(("127.0.0.2", dist)).is_ok());
    let status = ctl_json(&broker, &["status"]);
    let listeners = status["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["protocol"] == "clustering" && l["interface"] == "127.0.0.2"),
        "{listeners:?}"
    );
    let text = broker.ctl_ok(&["status"]);
    assert!(
        text.contains(&format!(
            "Interface: 127.0.0.2, port: {dist}, protocol: clustering"
        )),
        "{text}"
    );
    // AMQP is not affected.
    let _conn = connect(&broker.url()).await;
}
#[test]
fn a_node_that_is_not_running_is_exit_69_with_one_line_quickly() {
    let dir = TempDir::new("ctl-down");
    let node = Node::new("ghost", &dir.0);
    for args in [
        &["status"][..],
        &["list_queues"],
        &["add_user", "a", "b"],
        &["stop"],
    ] {
        let start = Instant::now();
        let out = node.ctl(args);
        let took = start.elapsed();
        assert_eq!(out.status.code(), Some(69), "{args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(
            err.contains("ghost@localhost"),
            "{args:?}: the message names the node: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}");
        assert!(took < Duration::from_secs(5), "{args:?} took {took:?}");
    }
}

#[test]
fn unknown_commands_and_bad_arguments_are_usage_errors() {
    let broker = TestBroker::start();
    for args in [&["frobnicate"][..], &["add_user", "only-name"], &[]] {
        let out = broker.ctl(args);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {}", stderr(&out));
        assert_eq!(
            stderr(&out).trim_end().lines().count(),
            1,
            "{args:?}: {}",
            stderr(&out)
        );
    }
}

#[tokio::test]
async fn stop_stops_the_node() {
    let mut broker = TestBroker::start();
    let conn = connect(&broker.url()).await;
    let start = Instant::now();
    broker.ctl_ok(&["stop"]);
    // warrenctl stop returns once the process is gone.
    let child = broker.node.child.as_mut().unwrap();
    let status = child.try_wait().expect("try_wait");
    assert!(
        status.is_some(),
        "the node is still running after warrenctl stop returned"
    );
    assert!(
        status.unwrap().success(),
        "a clean stop exits 0: {status:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(10));
    assert!(std::net::TcpStream::connect(("127.0.0.1", broker.port)).is_err());
    // The client was told (connection.close 320) rather than cut off.
    eventually("the client saw the close", || async {
        !conn.status().connected()
    })
    .await;
    let out = broker.ctl(&["status"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    broker.node.child = None;
    // And it starts again.
    broker.start();
    connect(&broker.url()).await;
}

#[test]
fn a_node_killed_with_kill_9_is_exit_69_quickly() {
    let mut broker = TestBroker::start();
    broker.ctl_ok(&["status"]);
    // Its node.json is left behind, naming a dead process and closed ports.
    broker.kill9();
    let start = Instant::now();
    let out = broker.ctl(&["list_queues"]);
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert_eq!(
        stderr(&out).trim_end().lines().count(),
        1,
        "{}",
        stderr(&out)
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

/// RabbitMQ's `stop_app`, `reset`, `start_app`: reset is refused while the application runs,
/// and afterwards the node is as new (its queues, messages and users are gone, guest is back).
#[tokio::test]
async fn reset_after_stop_app_returns_the_node_to_a_fresh_state() {
    let broker = TestBroker::start();
    {
        let (conn, ch) = open(&broker.url()).await;
        declare(&ch, "kept-until-reset", durable(), FieldTable::default()).await;
        publish(&ch, "", "kept-until-reset", b"x", persistent()).await;
        conn.close(200, "bye".into()).await.unwrap();
    }
    broker.ctl_ok(&["add_user", "carol", "pw"]);
    broker.ctl_ok(&["add_vhost", "scratch"]);

    let refused = broker.ctl(&["reset"]);
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("stop_app"),
        "{}",
        stderr(&refused)
    );

    broker.ctl_ok(&["stop_app"]);
    broker.ctl_ok(&["reset"]);
    broker.ctl_ok(&["start_app"]);

    let (_conn, ch) = open(&broker.url()).await;
    let err = ch
        .queue_declare(
            "kept-until-reset".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("the queue is gone after reset");
    assert_eq!(code(&err), Some(404));
    let users = broker.ctl_ok(&["list_users", "-q"]);
    assert!(users.contains("guest"), "{users}");
    assert!(!users.contains("carol"), "{users}");
    let vhosts = broker.ctl_ok(&["list_vhosts", "-q"]);
    assert!(!vhosts.contains("scratch"), "{vhosts}");
}
