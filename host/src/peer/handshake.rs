//! The dist port's handshake, shared by the CLI's protocol and the peer protocol: a mutual
//! challenge-response keyed by the cookie, so the cookie itself never crosses the wire.
//!
//! 1. server → `{"hello":"warren","node":"<node>","challenge":"<32 random bytes, hex>"}`
//! 2. client → `{"node":"<client id>","response":"<hex hmac-sha256(cookie, challenge)>","challenge":"<client nonce, hex>"}`
//!    and, from a peer node, `"protocol":"peer/1"`: after the verdict the connection carries
//!    binary peer frames (`peer::frame`) instead of the CLI's JSON lines.
//! 3. server → `{"ok":true,"response":"<hex hmac-sha256(cookie, client nonce)>"}`, or
//!    `{"ok":false,"error":"..."}` and close.
//!
//! The lines are JSON, so a CLI of any version can read why it was refused.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Time allowed to establish the TCP connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time allowed for the whole handshake, on both sides.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Handshake lines are tiny; anything longer is not a Warren peer.
const MAX_HANDSHAKE_LINE: usize = 4096;

/// Size of the random challenges, in bytes.
const CHALLENGE_LEN: usize = 32;
/// The accepted range of a peer's challenge: short nonces would make replay feasible, huge ones
/// are pointless work.
const MIN_PEER_CHALLENGE_LEN: usize = 16;
const MAX_PEER_CHALLENGE_LEN: usize = 128;
/// The value of `hello` in the server's greeting.
pub const HELLO: &str = "warren";

/// The CLI's exit codes (sysexits, as RabbitMQ's CLI); a node puts them in
/// the CLI protocol's responses.
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
pub enum DistError {
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
    /// Server side: an authenticated node of another Warren version asked for its peer
    /// protocol.
    #[error(
        "node {node} ({peer}) speaks peer protocol '{theirs}', this node '{ours}': nodes of different Warren versions cannot form a cluster"
    )]
    PeerVersion {
        peer: String,
        node: String,
        theirs: String,
        ours: &'static str,
    },
    #[error("connection to {peer} closed")]
    Closed { peer: String },
    #[error("no answer from node {node} within {} s", timeout.as_secs_f64())]
    RequestTimeout { node: String, timeout: Duration },
    #[error("I/O error with {peer}: {source}")]
    Io { peer: String, source: io::Error },
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

impl DistError {
    /// The CLI exit code this error maps to (see CONVENTIONS.md).
    pub fn exit_code(&self) -> i32 {
        match self {
            DistError::RequestTimeout { .. } => exit_code::TEMP_FAIL,
            DistError::Protocol { .. } | DistError::PeerVersion { .. } | DistError::Bind { .. } => {
                exit_code::SOFTWARE
            }
            _ => exit_code::UNAVAILABLE,
        }
    }

    /// Whether the node could not be reached at all (as opposed to answering badly): the
    /// errors worth retrying while waiting for a node to start.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            DistError::Connect { .. }
                | DistError::ConnectTimeout { .. }
                | DistError::HandshakeTimeout { .. }
                | DistError::Closed { .. }
                | DistError::Io { .. }
        )
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
    /// What the connection carries after the verdict: absent for the CLI's JSON lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
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
pub async fn read_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    peer: &str,
) -> Result<Option<Vec<u8>>, DistError> {
    let mut line = Vec::new();
    loop {
        let avail = r.fill_buf().await.map_err(|source| DistError::Io {
            peer: peer.to_string(),
            source,
        })?;
        if avail.is_empty() {
            return if line.is_empty() {
                Ok(None)
            } else {
                Err(DistError::Protocol {
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
            return Err(DistError::Protocol {
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

/// Reads a line and decodes it as `T`; EOF is [`DistError::Closed`].
pub async fn read_msg<T: serde::de::DeserializeOwned, R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    peer: &str,
) -> Result<T, DistError> {
    let line = read_line(r, max, peer)
        .await?
        .ok_or_else(|| DistError::Closed {
            peer: peer.to_string(),
        })?;
    serde_json::from_slice(&line).map_err(|e| DistError::Protocol {
        peer: peer.to_string(),
        reason: format!("invalid message: {e}"),
    })
}

pub async fn write_msg<T: Serialize, W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
    peer: &str,
) -> Result<(), DistError> {
    let mut buf = serde_json::to_vec(msg).map_err(|e| DistError::Protocol {
        peer: peer.to_string(),
        reason: format!("cannot encode message: {e}"),
    })?;
    // serde_json escapes newlines inside strings, so the only newline is the terminator.
    buf.push(b'\n');
    let io_err = |source| DistError::Io {
        peer: peer.to_string(),
        source,
    };
    w.write_all(&buf).await.map_err(io_err)?;
    w.flush().await.map_err(io_err)
}

/// What a peer node asks for in its hello: binary peer frames after the verdict. The number
/// changes whenever a peer message's encoding does (postcard has no field names to tolerate
/// a change): a node of another version is refused at the handshake, by name, instead of
/// misreading frames. peer/2: publish batches name their targets once (`PublishBatch`).
pub const PEER_PROTOCOL: &str = "peer/2";

/// An authenticated connection, ready for requests.
pub struct Authenticated {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    /// The name the node announced in its greeting.
    pub node: String,
}

/// Connects to `addr` (`host:port`), authenticates with `cookie` announcing itself as
/// `client_id` (asking for `protocol`, if any), and checks the node's proof in return.
/// `timeout_after` bounds the TCP connect and, separately, the handshake.
pub async fn connect(
    addr: &str,
    cookie: &str,
    client_id: &str,
    protocol: Option<&str>,
    timeout_after: Duration,
) -> Result<Authenticated, DistError> {
    let stream = match tokio::time::timeout(timeout_after, TcpStream::connect(addr)).await {
        Err(_) => {
            return Err(DistError::ConnectTimeout {
                addr: addr.to_string(),
                timeout: timeout_after,
            });
        }
        Ok(Err(source)) => {
            return Err(DistError::Connect {
                addr: addr.to_string(),
                source,
            });
        }
        Ok(Ok(s)) => s,
    };
    // Requests are answered as they come: Nagle would only add latency.
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut writer = w;
    let node = match tokio::time::timeout(
        timeout_after,
        client_handshake(&mut reader, &mut writer, addr, cookie, client_id, protocol),
    )
    .await
    {
        Err(_) => {
            return Err(DistError::HandshakeTimeout {
                peer: addr.to_string(),
                timeout: timeout_after,
            });
        }
        Ok(r) => r?,
    };
    Ok(Authenticated {
        reader,
        writer,
        node,
    })
}

async fn client_handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    addr: &str,
    cookie: &str,
    client_id: &str,
    protocol: Option<&str>,
) -> Result<String, DistError> {
    let hello: ServerHello = read_msg(reader, MAX_HANDSHAKE_LINE, addr).await?;
    let refuse = |reason: &str| DistError::Protocol {
        peer: addr.to_string(),
        reason: reason.to_string(),
    };
    if hello.hello != HELLO {
        return Err(refuse("not a Warren node (unexpected greeting)"));
    }
    let server_challenge = from_hex(&hello.challenge)
        .filter(|c| (MIN_PEER_CHALLENGE_LEN..=MAX_PEER_CHALLENGE_LEN).contains(&c.len()))
        .ok_or_else(|| refuse("the node's challenge is not valid hex of a sensible length"))?;
    let my_challenge = new_challenge();
    let reply = ClientHello {
        node: client_id.to_string(),
        response: proof(cookie, &server_challenge),
        challenge: to_hex(&my_challenge),
        protocol: protocol.map(str::to_string),
    };
    write_msg(writer, &reply, addr).await?;
    let verdict: Verdict = match read_msg(reader, MAX_HANDSHAKE_LINE, addr).await {
        Ok(v) => v,
        // A node that closes without a verdict has rejected us in all but words.
        Err(DistError::Closed { .. }) => return Err(DistError::AuthFailed { node: hello.node }),
        Err(e) => return Err(e),
    };
    if !verdict.ok {
        return Err(DistError::AuthFailed { node: hello.node });
    }
    let ok = verdict
        .response
        .as_deref()
        .is_some_and(|r| verify_proof(cookie, &my_challenge, r));
    if !ok {
        return Err(DistError::PeerAuthFailed { node: hello.node });
    }
    Ok(hello.node)
}

/// The server's half: greets, checks the client's proof, proves itself in return. Answers
/// the client's announced name and the protocol it asked for.
pub async fn server_handshake(
    reader: &mut BufReader<OwnedReadHalf>,
    writer: &mut OwnedWriteHalf,
    peer: &str,
    node: &str,
    cookie: &str,
) -> Result<(String, Option<String>), DistError> {
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
        let err = DistError::ClientRejected {
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
        return Err(DistError::Protocol {
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
    Ok((reply.node, reply.protocol))
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
