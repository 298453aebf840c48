//! The control protocol spoken over a node's dist port by `warrenctl`, `warren-plugins` and
//! (later) cluster peers.
//!
//! Newline-delimited JSON over TCP. A connection starts with a mutual challenge-response
//! handshake keyed by the cookie, so the cookie itself never crosses the wire:
//!
//! 1. server → `{"hello":"warren","node":"<node>","challenge":"<32 random bytes, hex>"}`
//! 2. client → `{"node":"<client id>","response":"<hex hmac-sha256(cookie, challenge)>","challenge":"<client nonce, hex>"}`
//! 3. server → `{"ok":true,"response":"<hex hmac-sha256(cookie, client nonce)>"}`, or
//!    `{"ok":false,"error":"..."}` and close.
//!
//! Then the client sends [`Request`] lines and the server answers each with one [`Response`]
//! line, strictly in turn. Every network step on the client has a timeout and the server
//! bounds the handshake and its writes, so a silent or stuck peer never hangs anyone.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio::time::timeout;

/// Time allowed to establish the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the whole handshake, on both sides.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a client waits for the answer to one request unless told otherwise.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Time the server allows for writing one response to a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Handshake lines are tiny; anything longer is not a Warren peer.
const MAX_HANDSHAKE_LINE: usize = 4096;
/// Requests and responses (long listings) can be large, but not unbounded.
const MAX_MESSAGE_LINE: usize = 64 * 1024 * 1024;
/// Size of the random challenges, in bytes.
const CHALLENGE_LEN: usize = 32;
/// The accepted range of a peer's challenge: short nonces would make replay feasible, huge ones
/// are pointless work.
const MIN_PEER_CHALLENGE_LEN: usize = 16;
const MAX_PEER_CHALLENGE_LEN: usize = 128;
/// The value of `hello` in the server's greeting.
pub const HELLO: &str = "warren";

/// The CLI's exit codes (sysexits, as RabbitMQ's CLI); a node puts them in
/// [`Response::exit_code`].
pub mod exit_code {
    pub const OK: i32 = 0;
    /// EX_USAGE: bad command line.
    pub const USAGE: i32 = 64;
    /// EX_DATAERR: bad input data.
    pub const DATA_ERR: i32 = 65;
    /// EX_UNAVAILABLE: node unreachable or not running.
    pub const UNAVAILABLE: i32 = 69;
    /// EX_SOFTWARE: internal error; the default for a failed request.
    pub const SOFTWARE: i32 = 70;
    /// EX_TEMPFAIL: temporary failure (timeout, no quorum).
    pub const TEMP_FAIL: i32 = 75;
}

/// Errors of the control protocol, on either side.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: io::Error },
    #[error("timed out connecting to {addr} after {} s", timeout.as_secs_f64())]
    ConnectTimeout { addr: String, timeout: Duration },
    #[error("{peer} did not complete the handshake within {} s", timeout.as_secs_f64())]
    HandshakeTimeout { peer: String, timeout: Duration },
    /// The node refused our proof: the cookies differ.
    #[error(
        "authentication failed for node {node}: the cookie of this CLI does not match the node's (~/.warren.cookie or WARREN_COOKIE)"
    )]
    AuthFailed { node: String },
    /// The node could not prove it knows the cookie (an impostor, or a broken peer).
    #[error("authentication failed for node {node}: its reply to our challenge is wrong")]
    PeerAuthFailed { node: String },
    /// Server side: a client presented a wrong proof.
    #[error("control connection from {client} ({addr}) rejected: wrong cookie")]
    ClientRejected { client: String, addr: String },
    #[error("protocol error with {peer}: {reason}")]
    Protocol { peer: String, reason: String },
    #[error("connection to {peer} closed")]
    Closed { peer: String },
    #[error("no answer from node {node} within {} s", timeout.as_secs_f64())]
    RequestTimeout { node: String, timeout: Duration },
    #[error("I/O error with {peer}: {source}")]
    Io { peer: String, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

impl CtlError {
    /// The CLI exit code this error maps to (see CONVENTIONS.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            CtlError::RequestTimeout { .. } => exit_code::TEMP_FAIL,
            CtlError::Protocol { .. } | CtlError::Bind { .. } => exit_code::SOFTWARE,
            _ => exit_code::UNAVAILABLE,
        }
    }

    /// Whether the node could not be reached at all (as opposed to answering badly): the
    /// errors worth retrying while waiting for a node to start.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            CtlError::Connect { .. }
                | CtlError::ConnectTimeout { .. }
                | CtlError::HandshakeTimeout { .. }
                | CtlError::Closed { .. }
                | CtlError::Io { .. }
        )
    }
}

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

#[derive(Debug, Serialize, Deserialize)]
struct ServerHello {
    hello: String,
    node: String,
    challenge: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct ClientHello {
    node: String,
    response: String,
    challenge: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct Verdict {
    ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Who is on the other end of an authenticated server-side connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The name the client announced (`warrenctl-<pid>@host`, or a peer node's name). It is
    /// only trustworthy as far as the cookie is: every holder of the cookie may claim any name.
    pub node: String,
    pub addr: Option<SocketAddr>,
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
// Crypto and encoding helpers
// ---------------------------------------------------------------------------------------------

fn new_challenge() -> [u8; CHALLENGE_LEN] {
    let mut c = [0u8; CHALLENGE_LEN];
    rand::thread_rng().fill_bytes(&mut c);
    c
}

fn mac_for(cookie: &str, msg: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length, so this cannot fail; the match keeps it panic-free.
    let mut mac = match Hmac::<Sha256>::new_from_slice(cookie.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable_hmac(),
    };
    mac.update(msg);
    mac
}

#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 takes keys of any length")
}

/// `hex(hmac-sha256(key = cookie, msg))`.
pub fn proof(cookie: &str, msg: &[u8]) -> String {
    to_hex(&mac_for(cookie, msg).finalize().into_bytes())
}

/// Checks a hex proof in constant time (the comparison is hmac's `verify_slice`).
fn verify_proof(cookie: &str, msg: &[u8], proof_hex: &str) -> bool {
    match from_hex(proof_hex) {
        Some(tag) => mac_for(cookie, msg).verify_slice(&tag).is_ok(),
        None => false,
    }
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some((nibble(p[0])? << 4) | nibble(p[1])?))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Line I/O
// ---------------------------------------------------------------------------------------------

/// Reads one `\n`-terminated line of at most `max` bytes; `Ok(None)` on a clean EOF between
/// lines. Bounded so that a peer cannot make us buffer without limit.
async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    peer: &str,
) -> Result<Option<Vec<u8>>, CtlError> {
    let mut line = Vec::new();
    loop {
        let avail = r.fill_buf().await.map_err(|source| CtlError::Io {
            peer: peer.to_string(),
            source,
        })?;
        if avail.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(CtlError::Protocol {
                    peer: peer.to_string(),
                    reason: "connection closed in the middle of a message".to_string(),
                })
            };
        }
        let (chunk, done) = match avail.iter().position(|&b| b == b'\n') {
            Some(i) => (&avail[..i], Some(i + 1)),
            None => (avail, None),
        };
        if line.len() + chunk.len() > max {
            return Err(CtlError::Protocol {
                peer: peer.to_string(),
                reason: format!("message longer than {max} bytes"),
            });
        }
        line.extend_from_slice(chunk);
        let consumed = done.unwrap_or(chunk.len());
        r.consume(consumed);
        if done.is_some() {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(Some(line));
        }
    }
}

/// Reads a line and decodes it as `T`; EOF is [`CtlError::Closed`].
async fn read_msg<T: serde::de::DeserializeOwned, R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    peer: &str,
) -> Result<T, CtlError> {
    let line = read_line(r, max, peer)
        .await?
        .ok_or_else(|| CtlError::Closed {
            peer: peer.to_string(),
        })?;
    serde_json::from_slice(&line).map_err(|e| CtlError::Protocol {
        peer: peer.to_string(),
        reason: format!("invalid message: {e}"),
    })
}

async fn write_msg<T: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
    peer: &str,
) -> Result<(), CtlError> {
    let mut buf = serde_json::to_vec(msg).map_err(|e| CtlError::Protocol {
        peer: peer.to_string(),
        reason: format!("cannot encode message: {e}"),
    })?;
    // serde_json escapes newlines inside strings, so the only newline is the terminator.
    buf.push(b'\n');
    let io_err = |source| CtlError::Io {
        peer: peer.to_string(),
        source,
    };
    w.write_all(&buf).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)
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
    let stream = match timeout(timeout_after, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(CtlError::ConnectTimeout {
                addr: addr.to_string(),
                timeout: timeout_after,
            });
        }
        Ok(Err(source)) => {
            return Err(CtlError::Connect {
                addr: addr.to_string(),
                source,
            });
        }
        Ok(Ok(s)) => s,
    };
    // Requests are single small lines answered in turn: Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut writer = w;
    let node = match timeout(
        timeout_after,
        client_handshake(&mut reader, &mut writer, addr, cookie, client_id),
    )
    .await
    {
        Err(_) => {
            return Err(CtlError::HandshakeTimeout {
                peer: addr.to_string(),
                timeout: timeout_after,
            });
        }
        Ok(r) => r?,
    };
    Ok(CtlClient {
        reader,
        writer,
        node,
        request_timeout: DEFAULT_REQUEST_TIMEOUT,
        broken: false,
    })
}

async fn client_handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    addr: &str,
    cookie: &str,
    client_id: &str,
) -> Result<String, CtlError> {
    let hello: ServerHello = read_msg(reader, MAX_HANDSHAKE_LINE, addr).await?;
    let protocol = |reason: &str| CtlError::Protocol {
        peer: addr.to_string(),
        reason: reason.to_string(),
    };
    if hello.hello != HELLO {
        return Err(protocol("not a Warren node (unexpected greeting)"));
    }
    let server_challenge = from_hex(&hello.challenge)
        .filter(|c| (MIN_PEER_CHALLENGE_LEN..=MAX_PEER_CHALLENGE_LEN).contains(&c.len()))
        .ok_or_else(|| protocol("the node's challenge is not valid hex of a sensible length"))?;
    let my_challenge = new_challenge();
    let reply = ClientHello {
        node: client_id.to_string(),
        response: proof(cookie, &server_challenge),
        challenge: to_hex(&my_challenge),
    };
    write_msg(writer, &reply, addr).await?;
    let verdict: Verdict = match read_msg(reader, MAX_HANDSHAKE_LINE, addr).await {
        Ok(v) => v,
        // A node that closes without a verdict has rejected us in all but words.
        Err(CtlError::Closed { .. }) => return Err(CtlError::AuthFailed { node: hello.node }),
        Err(e) => return Err(e),
    };
    if !verdict.ok {
        return Err(CtlError::AuthFailed { node: hello.node });
    }
    let ok = verdict
        .response
        .as_deref()
        .is_some_and(|r| verify_proof(cookie, &my_challenge, r));
    if !ok {
        return Err(CtlError::PeerAuthFailed { node: hello.node });
    }
    Ok(hello.node)
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
    let addr = stream.peer_addr().ok();
    let peer_label = addr.map_or_else(|| "unknown peer".to_string(), |a| a.to_string());
    let _ = stream.set_nodelay(true);
    let (r, mut writer) = stream.into_split();
    let mut reader = BufReader::new(r);

    let client = match timeout(
        HANDSHAKE_TIMEOUT,
        server_handshake(&mut reader, &mut writer, &peer_label, node, cookie),
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

async fn server_handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    peer: &str,
    node: &str,
    cookie: &str,
) -> Result<String, CtlError> {
    let challenge = new_challenge();
    let hello = ServerHello {
        hello: HELLO.to_string(),
        node: node.to_string(),
        challenge: to_hex(&challenge),
    };
    write_msg(writer, &hello, peer).await?;
    let reply: ClientHello = read_msg(reader, MAX_HANDSHAKE_LINE, peer).await?;
    if !verify_proof(cookie, &challenge, &reply.response) {
        let verdict = Verdict {
            ok: false,
            response: None,
            error: Some(format!(
                "authentication failed: the cookie does not match node {node}'s"
            )),
        };
        // Best effort: the client learns why, but we close either way.
        let _ = write_msg(writer, &verdict, peer).await;
        let err = CtlError::ClientRejected {
            client: reply.node,
            addr: peer.to_string(),
        };
        tracing::warn!("{err}");
        return Err(err);
    }
    let client_challenge = from_hex(&reply.challenge)
        .filter(|c| (MIN_PEER_CHALLENGE_LEN..=MAX_PEER_CHALLENGE_LEN).contains(&c.len()));
    let Some(client_challenge) = client_challenge else {
        let verdict = Verdict {
            ok: false,
            response: None,
            error: Some("invalid challenge".to_string()),
        };
        let _ = write_msg(writer, &verdict, peer).await;
        return Err(CtlError::Protocol {
            peer: peer.to_string(),
            reason: "the client's challenge is not valid hex of a sensible length".to_string(),
        });
    };
    let verdict = Verdict {
        ok: true,
        response: Some(proof(cookie, &client_challenge)),
        error: None,
    };
    write_msg(writer, &verdict, peer).await?;
    Ok(reply.node)
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
        })
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
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    let (node, cookie, handler) = (node.clone(), cookie.clone(), handler.clone());
                    conns.spawn(async move {
                        if let Err(e) = serve_connection(stream, &node, &cookie, handler).await {
                            tracing::debug!(%addr, "control connection ended: {e}");
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
    fn hex_roundtrip() {
        let bytes = [0u8, 1, 0xab, 0xff, 0x10];
        assert_eq!(to_hex(&bytes), "0001abff10");
        assert_eq!(from_hex("0001ABff10").unwrap(), bytes);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }

    #[test]
    fn proofs_verify_only_with_the_same_cookie() {
        let c = new_challenge();
        let p = proof("COOKIE", &c);
        assert_eq!(p.len(), 64);
        assert!(verify_proof("COOKIE", &c, &p));
        assert!(!verify_proof("OTHER", &c, &p));
        assert!(!verify_proof("COOKIE", &c, "not hex"));
        assert!(!verify_proof("COOKIE", &c, &p[..62]));
    }

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

    #[tokio::test]
    async fn read_line_is_bounded() {
        let data: &[u8] = b"0123456789\nrest";
        let mut r = BufReader::with_capacity(4, data);
        assert!(read_line(&mut r, 5, "t").await.is_err());
        let mut r = BufReader::with_capacity(4, data);
        assert_eq!(
            read_line(&mut r, 10, "t").await.unwrap().unwrap(),
            b"0123456789"
        );
        assert!(read_line(&mut r, 10, "t").await.is_err());
        let mut r = BufReader::new(&b""[..]);
        assert!(read_line(&mut r, 10, "t").await.unwrap().is_none());
    }
}
