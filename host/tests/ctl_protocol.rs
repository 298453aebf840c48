//! End-to-end tests of the control protocol over real TCP sockets: the handshake with a good
//! and a wrong cookie, requests and responses, and that silent peers time out instead of
//! hanging.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use warren::cli::{
    CtlError, CtlHandler, CtlServer, PeerInfo, Request, Response, client_connect, serve_connection,
};

const COOKIE: &str = "GOODCOOKIEGOODCOOKIE";
const NODE: &str = "warren@testhost";

/// Echoes the request back, says who asked, and can be made to hang.
struct Echo;

impl CtlHandler for Echo {
    async fn handle(&self, req: Request) -> Response {
        Response::data(serde_json::json!({ "command": req.command, "args": req.args }))
    }

    async fn handle_from(&self, peer: &PeerInfo, req: Request) -> Response {
        match req.command.as_str() {
            "whoami" => Response::message(peer.node.clone()),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Response::ok()
            }
            "fail" => Response::error(75, "no quorum"),
            _ => self.handle(req).await,
        }
    }
}

async fn start_server() -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let server = CtlServer::bind(
        &["127.0.0.1:0".parse().unwrap()],
        NODE,
        COOKIE,
        Arc::new(Echo),
    )
    .await
    .unwrap();
    let addr = server.local_addrs()[0];
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

#[tokio::test]
async fn good_cookie_works_end_to_end() {
    let (addr, stop, task) = start_server().await;
    let mut c = client_connect(
        &addr.to_string(),
        COOKIE,
        "tester@here",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(c.node(), NODE);

    let r = c
        .call(&Request::new("list_queues").arg("name").option("vhost", "/"))
        .await
        .unwrap();
    assert!(r.ok);
    assert_eq!(
        r.data.unwrap(),
        serde_json::json!({"command": "list_queues", "args": ["name"]})
    );
    // Several requests on one connection, and the handler learns the client's name.
    let r = c.call(&Request::new("whoami")).await.unwrap();
    assert_eq!(r.message.as_deref(), Some("tester@here"));
    let r = c.call(&Request::new("fail")).await.unwrap();
    assert!(!r.ok);
    assert_eq!(r.effective_exit_code(), 75);

    // Shutdown stops accepting and ends the server task.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
    let err = client_connect(
        &addr.to_string(),
        COOKIE,
        "tester@here",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CtlError::Connect { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 69);
}

#[tokio::test]
async fn wrong_cookie_is_rejected_on_both_sides() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_connection(stream, NODE, COOKIE, Arc::new(Echo)).await
    });
    let err = client_connect(
        &addr.to_string(),
        "WRONGCOOKIE",
        "tester@here",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "authentication failed for node warren@testhost: the cookie of this CLI does not match \
         the node's (~/.warren.cookie or WARREN_COOKIE)"
    );
    assert_eq!(err.exit_code(), 69);
    let server_err = tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(&server_err, CtlError::ClientRejected { client, .. } if client == "tester@here"),
        "{server_err:?}"
    );
}

#[tokio::test]
async fn silent_server_times_out_instead_of_hanging() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and holds the connection without ever saying hello.
    let _holder = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
        drop(stream);
    });
    let started = Instant::now();
    let err = client_connect(
        &addr.to_string(),
        COOKIE,
        "tester@here",
        Duration::from_millis(300),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CtlError::HandshakeTimeout { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn silent_client_is_dropped_by_the_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        serve_connection(stream, NODE, COOKIE, Arc::new(Echo)).await
    });
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server must give up on a silent client")
        .unwrap();
    assert!(
        matches!(res, Err(CtlError::HandshakeTimeout { .. })),
        "{res:?}"
    );
}

#[tokio::test]
async fn a_hung_request_times_out_and_poisons_the_client() {
    let (addr, _stop, _task) = start_server().await;
    let mut c = client_connect(
        &addr.to_string(),
        COOKIE,
        "tester@here",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    c.set_request_timeout(Duration::from_millis(300));
    let err = c.call(&Request::new("hang")).await.unwrap_err();
    assert!(matches!(err, CtlError::RequestTimeout { .. }), "{err:?}");
    assert_eq!(err.exit_code(), 75);
    // The late answer to "hang" must never be taken for the answer to a later request.
    let err = c.call(&Request::new("whoami")).await.unwrap_err();
    assert!(matches!(err, CtlError::Closed { .. }), "{err:?}");
}

#[tokio::test]
async fn an_impostor_node_is_detected() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Does not know the cookie: accepts any proof and answers with garbage.
    let _fake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let hello = format!(
            "{{\"hello\":\"warren\",\"node\":\"{NODE}\",\"challenge\":\"{}\"}}\n",
            "ab".repeat(32)
        );
        w.write_all(hello.as_bytes()).await.unwrap();
        let mut line = String::new();
        BufReader::new(r).read_line(&mut line).await.unwrap();
        let verdict = format!("{{\"ok\":true,\"response\":\"{}\"}}\n", "00".repeat(32));
        w.write_all(verdict.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let err = client_connect(
        &addr.to_string(),
        COOKIE,
        "tester@here",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CtlError::PeerAuthFailed { .. }), "{err:?}");
}

#[tokio::test]
async fn not_a_warren_node() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _fake = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.write_all(b"AMQP\x00\x00\x09\x01\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let err = client_connect(
        &addr.to_string(),
        COOKIE,
        "tester@here",
        Duration::from_secs(5),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, CtlError::Protocol { .. }), "{err:?}");
}

#[tokio::test]
async fn default_addresses_bind_ipv4_and_ipv6_side_by_side() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = CtlServer::bind(
        &warren::cli::default_bind_addrs(port),
        NODE,
        COOKIE,
        Arc::new(Echo),
    )
    .await
    .unwrap();
    assert!(server.local_addrs().iter().all(|a| a.port() == port));
    let _task = tokio::spawn(server.run(std::future::pending()));
    let mut c = client_connect(
        &format!("127.0.0.1:{port}"),
        COOKIE,
        "tester@here",
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(c.call(&Request::new("status")).await.unwrap().ok);
    // A second node on the same port fails with the reason instead of starting half-bound.
    let err = CtlServer::bind(
        &warren::cli::default_bind_addrs(port),
        NODE,
        COOKIE,
        Arc::new(Echo),
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(err, CtlError::Bind { .. }), "{err:?}");
}
