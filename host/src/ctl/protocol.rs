//! The control protocol spoken over a node's dist port by `warrenctl` and `warren-plugins`.
//!
//! Newline-delimited JSON over TCP, after the cookie handshake of `peer::handshake`. The client
//! sends [`Request`] lines and the server answers each with one [`Response`] line, strictly in
//! turn. Every network step on the client has a timeout and the server bounds the handshake
//! and its writes, so a silent or stuck peer never hangs anyone. A peer node that asks for the
//! peer protocol in its hello is handed to `peer::serve` instead: the listener is shared, the
//! protocols are not.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

use crate::peer::Router;
use crate::peer::handshake::{self, read_line, read_msg, write_msg};
pub use crate::peer::handshake::{
    CONNECT_TIMEOUT, DistError as CtlError, HANDSHAKE_TIMEOUT, HELLO, PeerInfo, exit_code, proof,
};

/// Time a client waits for the answer to one request unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the server allows for writing one response to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Requests and responses (long listings) can be large, but not unbounded.
const MAX_MESSAGE_LINE: usize = 64 * 1024 * 1024;

/// One command for the node: `command` is the CLI verb (`list_queues`, `add_user`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub command: String,
    #[serde(default)]
    pub args: Vec<String>,
    /// Named options, e.g. `"vhost" -> "/"`.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

impl Request {
    pub fn new(command: impl Into<String>) -> Self {
        Request {
            command: command.into(),
            ..Request::default()
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn option(mut self, k: impl Into<String>, v: impl Into<String>) -> Self {
        self.options.insert(k.into(), v.into());
        self
    }
}

/// The node's answer to one [`Request`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When `!ok`: the CLI's exit code (64, 65, 69, 70, 75 ...); 70 if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Text for the user (a status report, "Success", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Column names of a listing; `rows` holds the values in this order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Vec<serde_json::Value>>>,
    /// Structured data for commands that are not listings (status, cluster_status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

impl Response {
    /// Success with nothing to print.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    /// Success with a message for the user.
    pub fn message(msg: impl Into<String>) -> Self {
        Response {
            message: Some(msg.into()),
            ..Response::ok()
        }
    }

    /// A listing.
    pub fn table(columns: Vec<String>, rows: Vec<Vec<serde_json::Value>>) -> Self {
        Response {
            columns: Some(columns),
            rows: Some(rows),
            ..Response::ok()
        }
    }

    /// Success with structured data.
    pub fn data(data: serde_json::Value) -> Self {
        Response {
            data: Some(data),
            ..Response::ok()
        }
    }

    /// A failure with the CLI exit code to use.
    pub fn error(exit_code: i32, error: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(error.into()),
            exit_code: Some(exit_code),
            ..Response::default()
        }
    }

    /// The exit code the CLI should use for this response.
    pub fn effective_exit_code(&self) -> i32 {
        if self.ok {
            exit_code::OK
        } else {
            match self.exit_code {
                Some(c) if c != 0 => c,
                _ => exit_code::SOFTWARE,
            }
        }
    }
}

/// What the broker implements to answer control requests.
pub trait CtlHandler: Send + Sync + 'static {
    /// Answers one request. Errors are answered with [`Response::error`], never by panicking.
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;

    /// Like [`CtlHandler::handle`] but also told who asks; cluster code that needs the peer's
    /// node name overrides this one.
    fn handle_from(&self, peer: &PeerInfo, req: Request) -> impl Future<Output = Response> + Send {
        let _ = peer;
        self.handle(req)
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// An authenticated connection to a node.
#[derive(Debug)]
pub struct CtlClient {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    node: String,
    request_timeout: Duration,
    /// Set when a call was interrupted mid-way: the stream position is then unknown and the
    /// next answer could belong to the previous request, so the client refuses further calls.
    broken: bool,
}

/// Connects to `addr` (`host:port`), authenticates with `cookie` announcing itself as
/// `client_id`, and checks the node's proof in return. `timeout` bounds the TCP connect and,
/// separately, the handshake (use [`CONNECT_TIMEOUT`]).
pub async fn client_connect(
    addr: &str,
    cookie: &str,
    client_id: &str,
    timeout_after: Duration,
) -> Result<CtlClient, CtlError> {
    let conn = handshake::connect(addr, cookie, client_id, None, timeout_after).await?;
    Ok(CtlClient {
        reader: conn.reader,
        writer: conn.writer,
        node: conn.node,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        broken: false,
    })
}

impl CtlClient {
    /// The name the node announced in its greeting.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How long [`CtlClient::call`] waits for an answer.
    pub fn set_request_timeout(&mut self, t: Duration) {
        self.request_timeout = t;
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends one request and waits (at most the request timeout) for its response.
    pub async fn call(&mut self, req: &Request) -> Result<Response, CtlError> {
        if self.broken {
            return Err(CtlError::Closed {
                peer: self.node.clone(),
            });
        }
        // Marked broken until the exchange completes, so a timeout or error mid-way poisons
        // the client instead of desynchronising requests and responses.
        self.broken = true;
        let node = self.node.clone();
        let exchange = async {
            write_msg(&mut self.writer, req, &node).await?;
            read_msg::<Response, _>(&mut self.reader, MAX_MESSAGE_LINE, &node).await
        };
        let resp = match timeout(self.request_timeout, exchange).await {
            Err(_) => {
                return Err(CtlError::RequestTimeout {
                    node,
                    timeout: self.request_timeout,
                });
            }
            Ok(r) => r?,
        };
        self.broken = false;
        Ok(resp)
    }
}

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Serves one accepted connection: handshake, then requests until the client closes. Returns
/// the reason the connection ended badly, if it did (callers log it).
pub async fn serve_connection<H: CtlHandler>(
    stream: TcpStream,
    node: &str,
    cookie: &str,
    handler: Arc<H>,
) -> Result<(), CtlError> {
    serve_dist_connection(stream, node, cookie, handler, None).await
}

/// [`serve_connection`], and a peer node that asks for the peer protocol is served by
/// `peers` (refused when the node serves no peers).
pub async fn serve_dist_connection<H: CtlHandler>(
    stream: TcpStream,
    node: &str,
    cookie: &str,
    handler: Arc<H>,
    peers: Option<Arc<Router>>,
) -> Result<(), CtlError> {
    let addr = stream.peer_addr().ok();
    let peer_label = addr.map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let (r, mut writer) = stream.into_split();
    let mut reader = BufReader::new(r);

    let (client, protocol) = match timeout(
        HANDSHAKE_TIMEOUT,
        handshake::server_handshake(&mut reader, &mut writer, &peer_label, node, cookie),
    )
    .await
    {
        Err(_) => {
            return Err(CtlError::HandshakeTimeout {
                peer: peer_label,
                timeout: HANDSHAKE_TIMEOUT,
            });
        }
        Ok(r) => r?,
    };
    let peer = PeerInfo { node: client, addr };
    match (protocol.as_deref(), peers) {
        (None, _) => {}
        (Some(handshake::PEER_PROTOCOL), Some(router)) => {
            tracing::debug!(peer = %peer.node, addr = %peer_label, "peer connection authenticated");
            return crate::peer::serve(reader, writer, peer, router)
                .await
                .map_err(|source| CtlError::Io {
                    peer: peer_label,
                    source,
                });
        }
        (Some(other), _) if other != handshake::PEER_PROTOCOL && other.starts_with("peer/") => {
            return Err(CtlError::PeerVersion {
                peer: peer_label,
                node: peer.node,
                theirs: other.to_string(),
                ours: handshake::PEER_PROTOCOL,
            });
        }
        (Some(other), _) => {
            return Err(CtlError::Protocol {
                peer: peer_label,
                reason: format!("protocol '{other}' is not served here"),
            });
        }
    }
    tracing::debug!(peer = %peer.node, addr = %peer_label, "control connection authenticated");

    loop {
        // No idle timeout: an authenticated peer (a cluster link) may legitimately stay quiet.
        let line = match read_line(&mut reader, MAX_MESSAGE_LINE, &peer_label).await? {
            Some(l) => l,
            None => return Ok(()),
        };
        let resp = match serde_json::from_slice::<Request>(&line) {
            Ok(req) => handler.handle_from(&peer, req).await,
            Err(e) => Response::error(exit_code::USAGE, format!("invalid request: {e}")),
        };
        match timeout(WRITE_TIMEOUT, write_msg(&mut writer, &resp, &peer_label)).await {
            Err(_) => {
                return Err(CtlError::Io {
                    peer: peer_label,
                    source: io::Error::new(io::ErrorKind::TimedOut, "client does not read"),
                });
            }
            Ok(r) => r?,
        }
    }
}

/// The addresses a node's control listener binds by default: every IPv4 and IPv6 interface.
pub fn default_bind_addrs(port: u16) -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([0, 0, 0, 0], port)),
        SocketAddr::from(([0u16; 8], port)),
    ]
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        let s = TcpSocket::new_v6()?;
        // Without V6ONLY, "[::]:p" also claims IPv4 and the "0.0.0.0:p" bind would fail.
        set_v6only(&s)?;
        s
    } else {
        TcpSocket::new_v4()?
    };
    // Lets a restarted node rebind at once despite connections in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

fn set_v6only(s: &TcpSocket) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is a live socket owned by `s`; the option value points to a c_int of the
    // length passed.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&one as *const libc::c_int).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A bound, not yet running, control listener. Binding separately from running lets the node
/// fail its start with the reason (port in use) before it announces itself.
pub struct CtlServer<H: CtlHandler> {
    listeners: Vec<TcpListener>,
    node: Arc<str>,
    cookie: Arc<str>,
    handler: Arc<H>,
    peers: Option<Arc<Router>>,
}

impl<H: CtlHandler> CtlServer<H> {
    /// Binds every address. An IPv6 address is skipped (with a warning) when the host has no
    /// IPv6 and another address bound; any other failure is an error.
    pub async fn bind(
        addrs: &[SocketAddr],
        node: &str,
        cookie: &str,
        handler: Arc<H>,
    ) -> Result<Self, CtlError> {
        let mut listeners = Vec::new();
        let mut skipped = Vec::new();
        for &addr in addrs {
            match bind_one(addr) {
                Ok(l) => listeners.push(l),
                Err(e) if addr.is_ipv6() && ipv6_unavailable(&e) => skipped.push((addr, e)),
                Err(source) => return Err(CtlError::Bind { addr, source }),
            }
        }
        if listeners.is_empty() {
            if let Some((addr, source)) = skipped.into_iter().next() {
                return Err(CtlError::Bind { addr, source });
            }
        } else {
            for (addr, e) in skipped {
                tracing::warn!("not listening on {addr}: {e}");
            }
        }
        Ok(CtlServer {
            listeners,
            node: node.into(),
            cookie: cookie.into(),
            handler,
            peers: None,
        })
    }

    /// Serves peer nodes' connections (the peer protocol) with `router`.
    pub fn with_peers(mut self, router: Arc<Router>) -> Self {
        self.peers = Some(router);
        self
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Accepts and serves connections until `shutdown` completes; then stops accepting and
    /// drops every open connection.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) {
        let mut accepts = JoinSet::new();
        for listener in self.listeners {
            accepts.spawn(accept_loop(
                listener,
                self.node.clone(),
                self.cookie.clone(),
                self.handler.clone(),
                self.peers.clone(),
            ));
        }
        shutdown.await;
        // Aborting an accept loop drops its JoinSet of connections, which aborts them too.
        accepts.shutdown().await;
    }
}

fn ipv6_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable
        || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
        || e.raw_os_error() == Some(libc::EPROTONOSUPPORT)
}

async fn accept_loop<H: CtlHandler>(
    listener: TcpListener,
    node: Arc<str>,
    cookie: Arc<str>,
    handler: Arc<H>,
    peers: Option<Arc<Router>>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let (node, cookie, handler) = (node.clone(), cookie.clone(), handler.clone());
                    let peers = peers.clone();
                    conns.spawn(async move {
                        match serve_dist_connection(stream, &node, &cookie, handler, peers).await {
                            // A node of another version: the operator must hear of it.
                            Err(e @ CtlError::PeerVersion { .. }) => {
                                tracing::warn!(%addr, "connection refused: {e}");
                            }
                            Err(e) => tracing::debug!(%addr, "control connection ended: {e}"),
                            Ok(()) => {}
                        }
                    });
                }
                Err(e) => {
                    // Typically EMFILE: back off rather than spin on a listener that stays ready.
                    tracing::warn!("control listener accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished connections so the set does not grow without bound.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Binds `addrs` and serves until `shutdown` completes: [`CtlServer::bind`] then
/// [`CtlServer::run`] in one call.
pub async fn run_listener<H: CtlHandler>(
    addrs: &[SocketAddr],
    node: &str,
    cookie: &str,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CtlError> {
    CtlServer::bind(addrs, node, cookie, handler)
        .await?
        .run(shutdown)
        .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_wire_format_omits_absent_fields() {
        let r = Response::message("done");
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"ok":true,"message":"done"}"#
        );
        let r: Response = serde_json::from_str(r#"{"ok":false,"error":"x"}"#).unwrap();
        assert_eq!(r.effective_exit_code(), 70);
        assert_eq!(Response::error(75, "later").effective_exit_code(), 75);
        let q: Request = serde_json::from_str(r#"{"command":"status"}"#).unwrap();
        assert_eq!(q, Request::new("status"));
    }

    struct Silent;

    impl CtlHandler for Silent {
        async fn handle(&self, _req: Request) -> Response {
            Response::message("")
        }
    }

    #[tokio::test]
    async fn a_node_of_another_peer_protocol_version_is_refused_by_name() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            serve_dist_connection(stream, "new@host", "cookie", Arc::new(Silent), None).await
        });
        // The cookie is right: the refusal is about the version alone.
        let _client = handshake::connect(
            &addr,
            "cookie",
            "old@host",
            Some("peer/1"),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let refused = server.await.unwrap().unwrap_err();
        assert!(matches!(refused, CtlError::PeerVersion { .. }), "{refused}");
        let text = refused.to_string();
        assert!(
            text.contains("old@host") && text.contains("'peer/1'") && text.contains("'peer/2'"),
            "{text}"
        );
    }
}
