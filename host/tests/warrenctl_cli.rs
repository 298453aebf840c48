//! Runs the real `warrenctl` binary against a dummy control listener and checks what a user
//! sees: output formats, messages and exit codes.

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::oneshot;
use warren::cli::{CtlHandler, CtlServer, Request, Response};
use warren::config::short_hostname;

const COOKIE: &str = "CLITESTCOOKIECLITEST";

/// Answers like a node would, from canned data.
struct Dummy {
    /// The pid `stop` reports.
    stop_pid: Option<u32>,
}

impl CtlHandler for Dummy {
    async fn handle(&self, req: Request) -> Response {
        match req.command.as_str() {
            "list_queues" => {
                let rows = [("q1", 0, true), ("q2", 5, false)]
                    .iter()
                    .map(|(name, messages, durable)| {
                        req.args
                            .iter()
                            .map(|f| match f.as_str() {
                                "name" => json!(name),
                                "messages" => json!(messages),
                                "durable" => json!(durable),
                                _ => json!(null),
                            })
                            .collect()
                    })
                    .collect();
                Response::table(req.args.clone(), rows)
            }
            "add_user" if req.args.first().is_some_and(|u| u == "bob") => {
                Response::error(65, "user 'bob' already exists")
            }
            "add_user" => Response::ok(),
            "await_startup" => Response::ok(),
            "status" => Response::message(format!("vhost option: {:?}", req.options.get("vhost"))),
            "stop" => match self.stop_pid {
                Some(pid) => Response::data(json!({ "pid": pid })),
                None => Response::ok(),
            },
            _ => Response::error(64, format!("unknown command {}", req.command)),
        }
    }
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `warrenctl` with a private HOME and base, the test cookie and the given dist port.
    fn cmd(&self, port: u16, cookie: &str, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_warrenctl"));
        c.args(args)
            .env_clear()
            .env("HOME", self.dir.path())
            .env("WARREN_BASE", self.dir.path().join("base"))
            .env("WARREN_COOKIE", cookie)
            .env("WARREN_DIST_PORT", port.to_string());
        c
    }
}

async fn run(mut cmd: Command) -> Output {
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn start(node: &str, handler: Dummy) -> (SocketAddr, oneshot::Sender<()>) {
    let server = CtlServer::bind(
        &["127.0.0.1:0".parse().unwrap()],
        node,
        COOKIE,
        Arc::new(handler),
    )
    .await
    .unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn dummy_node() -> String {
    format!("dummy@{}", short_hostname())
}

fn assert_one_line(stderr: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "stderr: {stderr:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_69_when_nothing_listens() {
    let env = Env::new();
    let out = run(env.cmd(free_port(), COOKIE, &["-n", "dummy", "list_queues"])).await;
    assert_eq!(out.status.code(), Some(69));
    let err = text(&out.stderr);
    assert_one_line(&err);
    assert_eq!(
        err.trim_end(),
        format!(
            "Error: unable to connect to node {}: connection refused (is the node running?)",
            dummy_node()
        )
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_64_on_bad_usage() {
    let env = Env::new();
    for args in [
        &["list_queues", "--bogus"][..],
        &["add_user", "onlyname"][..],
        &["no_such_command"][..],
        &[][..],
        &["change_cluster_node_type", "fast"][..],
        &["-t", "soon", "status"][..],
        &["-n", "bad@", "status"][..],
    ] {
        let out = run(env.cmd(free_port(), COOKIE, args)).await;
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let err = text(&out.stderr);
        assert_one_line(&err);
        assert!(err.starts_with("Error: "), "{err}");
    }
    let out = run(env.cmd(free_port(), COOKIE, &["--help"])).await;
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("list_queues"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_in_table_and_json() {
    let env = Env::new();
    let (addr, _stop) = start(&dummy_node(), Dummy { stop_pid: None }).await;
    let port = addr.port();

    let out = run(env.cmd(
        port,
        COOKIE,
        &[
            "-n",
            "dummy",
            "list_queues",
            "--formatter",
            "json",
            "name",
            "messages",
            "durable",
        ],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        json!([
            {"name": "q1", "messages": 0, "durable": true},
            {"name": "q2", "messages": 5, "durable": false}
        ])
    );
    // Keys come in the order asked for.
    assert!(text(&out.stdout).contains(r#"{"name":"q1","messages":0,"durable":true}"#));

    let out = run(env.cmd(port, COOKIE, &["-n", "dummy", "list_queues"])).await;
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        "Listing queues for vhost / ...\nname\tmessages\nq1\t0\nq2\t5\n"
    );
    let out = run(env.cmd(
        port,
        COOKIE,
        &["-q", "-n", "dummy", "list_queues", "-p", "v"],
    ))
    .await;
    assert_eq!(text(&out.stdout), "name\tmessages\nq1\t0\nq2\t5\n");
    let out = run(env.cmd(port, COOKIE, &["-s", "-n", "dummy", "list_queues"])).await;
    assert_eq!(text(&out.stdout), "q1\t0\nq2\t5\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_and_node_errors() {
    let env = Env::new();
    let (addr, _stop) = start(&dummy_node(), Dummy { stop_pid: None }).await;
    let port = addr.port();

    let out = run(env.cmd(
        port,
        COOKIE,
        &["-n", "dummy", "add_user", "alice", "-s3cret"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Adding user \"alice\" ...\n");

    let out = run(env.cmd(port, COOKIE, &["-n", "dummy", "add_user", "bob", "pw"])).await;
    assert_eq!(out.status.code(), Some(65));
    assert_eq!(text(&out.stderr), "Error: user 'bob' already exists\n");

    let out = run(env.cmd(port, COOKIE, &["-n", "dummy", "cluster_status"])).await;
    assert_eq!(out.status.code(), Some(64));
    assert_one_line(&text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_cookie_and_wrong_node() {
    let env = Env::new();
    let (addr, _stop) = start(&dummy_node(), Dummy { stop_pid: None }).await;
    let out = run(env.cmd(addr.port(), "NOTTHECOOKIE", &["-n", "dummy", "status"])).await;
    assert_eq!(out.status.code(), Some(69));
    assert_eq!(
        text(&out.stderr),
        format!(
            "Error: authentication failed for node {}: the cookie of this CLI does not match the \
             node's (~/.warren.cookie or WARREN_COOKIE)\n",
            dummy_node()
        )
    );

    // await_startup gives up at once on a wrong cookie instead of waiting out its timeout.
    let started = Instant::now();
    let out = run(env.cmd(
        addr.port(),
        "NOTTHECOOKIE",
        &["-n", "dummy", "-t", "30", "await_startup"],
    ))
    .await;
    assert_eq!(out.status.code(), Some(69));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(text(&out.stderr).starts_with("Error: authentication failed for node"));

    // Asking for another node that happens to share the port must not reach this one.
    let out = run(env.cmd(addr.port(), COOKIE, &["-n", "other", "status"])).await;
    assert_eq!(out.status.code(), Some(69));
    assert_one_line(&text(&out.stderr));
    assert!(text(&out.stderr).contains("is node dummy@"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn await_startup_waits_for_the_node() {
    let env = Env::new();
    let port = free_port();
    let started = Instant::now();
    let out = run(env.cmd(port, COOKIE, &["-n", "dummy", "-t", "1", "await_startup"])).await;
    assert_eq!(out.status.code(), Some(69));
    assert_one_line(&text(&out.stderr));
    assert!(started.elapsed() < Duration::from_secs(5));

    // The node comes up while warrenctl is already waiting.
    let cmd = env.cmd(port, COOKIE, &["-n", "dummy", "-t", "20", "await_startup"]);
    let waiter = tokio::spawn(run(cmd));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let server = CtlServer::bind(
        &[SocketAddr::from(([127, 0, 0, 1], port))],
        &dummy_node(),
        COOKIE,
        Arc::new(Dummy { stop_pid: None }),
    )
    .await
    .unwrap();
    let _server = tokio::spawn(server.run(std::future::pending()));
    let out = tokio::time::timeout(Duration::from_secs(20), waiter)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_waits_for_the_process_to_exit() {
    let env = Env::new();
    // Stands in for the node's process; it stays a zombie (we do not reap it before warrenctl
    // returns), which must count as gone.
    let mut child = Command::new("sleep").arg("1").spawn().unwrap();
    let (addr, _stop) = start(
        &dummy_node(),
        Dummy {
            stop_pid: Some(child.id()),
        },
    )
    .await;
    let started = Instant::now();
    let out = run(env.cmd(addr.port(), COOKIE, &["-n", "dummy", "-t", "20", "stop"])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(
        text(&out.stdout),
        format!("Stopping and halting node {} ...\n", dummy_node())
    );
    child.wait().unwrap();
}
