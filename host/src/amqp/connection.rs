//! One client connection: the protocol header, the handshake (start, tune, open), the frame
//! loop that hands methods and content to channels, heartbeats, flow control and closing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use amq_protocol::protocol::{AMQPClass, connection, queue};
use amq_protocol::types::{FieldTable, LongString};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::channel::Channel;
use super::codec::{self, FRAME_MIN_SIZE, PROTOCOL_HEADER, RawFrame};
use super::outbound::{Outbound, OutboundTx};
use super::panic_guard::{CatchUnwind, panic_text};
use super::server_properties::{client_has_capability, server_properties};
use super::writer::{WriterShared, run_writer};
use crate::amqp::short_string::short;
use crate::auth::{parse_amqplain, parse_plain};
use crate::base::clock::now_ms;
use crate::base::error::{AmqpError, AmqpResult, ReplyCode};
use crate::broker::permissions::LoginError;
use crate::broker::{Broker, ConnectionInfo, VhostRt};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_OK_TIMEOUT: Duration = Duration::from_secs(3);

pub struct Connection {
    pub(crate) broker: Arc<Broker>,
    /// The SASL mechanism of the start-ok (for listings).
    pub(crate) auth_mechanism: &'static str,
    pub(crate) id: u64,
    /// Owner id of exclusive queues: unique across the cluster.
    pub(crate) owner: String,
    pub(crate) peer: SocketAddr,
    pub(crate) out: OutboundTx,
    pub(crate) writer: Arc<WriterShared>,
    pub(crate) user: String,
    pub(crate) session: Option<Arc<crate::broker::permissions::AuthSession>>,
    pub(crate) vhost: Option<Arc<VhostRt>>,
    pub(crate) channels: HashMap<u16, Channel>,
    pub(crate) channel_max: u16,
    pub(crate) frame_max: u32,
    pub(crate) cancel_notify: bool,
    blocked_capable: bool,
    client_properties: FieldTable,
    pub(crate) exclusive_queues: Vec<String>,
    close_ok_pending: bool,
    /// Channels both sides closed at once: the client's close was answered and the channel
    /// is gone, but its close-ok to our close is still on its way and is not an error.
    pub(crate) close_ok_expected: std::collections::HashSet<u16>,
    pub(crate) info: Option<Arc<ConnectionInfo>>,
    pub(crate) has_published: bool,
    /// A peer's forwarding backlog this connection's last publish took past its high mark.
    pub(crate) forward_flow: Option<Arc<crate::broker::forward_backlog::Backlog>>,
    recv_bytes: u64,
    /// When bytes last arrived: heartbeat detection counts from here.
    last_recv: tokio::time::Instant,
}

enum ReadEnd {
    Closed,
    Timeout,
    Error(AmqpError),
}

/// Serves one accepted socket until it closes.
pub async fn serve(socket: TcpStream, peer: SocketAddr, broker: Arc<Broker>) {
    let _ = socket.set_nodelay(true);
    let (mut rd, mut wr) = socket.into_split();
    // Sized when bytes arrive (see `next_frame`): an idle connection holds no read buffer.
    let mut buf = BytesMut::new();
    let header = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        while buf.len() < 8 {
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
        true
    })
    .await;
    if header != Ok(true) {
        return;
    }
    if &buf[..8] != PROTOCOL_HEADER {
        // The spec: answer with the protocol version we speak, then close.
        let _ = wr.write_all(PROTOCOL_HEADER).await;
        let _ = wr.shutdown().await;
        return;
    }
    buf.advance(8);
    let (tx, rx) = super::outbound::outbound();
    let writer = Arc::new(WriterShared {
        frame_max: AtomicU32::new(broker.config.frame_max),
        heartbeat: AtomicU32::new(0),
        sent_bytes: AtomicU64::new(0),
    });
    let writer_task = tokio::spawn(run_writer(wr, rx, writer.clone()));
    let id = broker.next_connection_id();
    let mut conn = Connection {
        owner: format!("{}/{}", broker.config.node, id),
        frame_max: broker.config.frame_max,
        channel_max: broker.config.channel_max,
        broker,
        id,
        peer,
        out: tx,
        writer,
        user: String::new(),
        session: None,
        vhost: None,
        channels: HashMap::new(),
        cancel_notify: false,
        blocked_capable: false,
        client_properties: FieldTable::default(),
        exclusive_queues: Vec::new(),
        close_ok_pending: false,
        close_ok_expected: Default::default(),
        info: None,
        has_published: false,
        recv_bytes: 0,
        last_recv: tokio::time::Instant::now(),
        forward_flow: None,
        auth_mechanism: "PLAIN",
    };
    let served = CatchUnwind::new(async {
        match conn.handshake(&mut rd, &mut buf).await {
            Ok(()) => conn.run(&mut rd, &mut buf).await,
            Err(Some(e)) => conn.close_with(&mut rd, &mut buf, e).await,
            Err(None) => {}
        }
    })
    .await;
    if let Err(payload) = served {
        tracing::error!(
            peer = %conn.peer,
            panic = %panic_text(&*payload),
            "a bug ended this connection; closing it with 541"
        );
        conn.send_close(&AmqpError::connection(
            ReplyCode::InternalError,
            "INTERNAL_ERROR - the connection hit an internal error",
        ));
        conn.close_ok_pending = false;
    }
    // Channels, consumers and exclusive queues go with the connection, even after a bug.
    if let Err(payload) = CatchUnwind::new(conn.cleanup()).await {
        tracing::error!(peer = %conn.peer, panic = %panic_text(&*payload), "cleaning up a connection failed");
    }
    if conn.close_ok_pending {
        conn.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
        );
    }
    let _ = conn.out.send(Outbound::Close);
    let _ = writer_task.await;
    drain_until_closed(&mut rd).await;
}

/// A SASL PLAIN response (`\0user\0secret`): the form auth backends are asked in.
fn plain_response(user: &[u8], secret: &[u8]) -> Vec<u8> {
    let mut plain = Vec::with_capacity(user.len() + secret.len() + 2);
    plain.push(0);
    plain.extend_from_slice(user);
    plain.push(0);
    plain.extend_from_slice(secret);
    plain
}

/// After our last frame (close-ok, or a close the client never answered) and our FIN, reads
/// and discards what the client still sends until it closes too, for a few seconds at most.
/// Closing a socket with unread bytes makes the kernel answer with a reset, and a client
/// that pipelined a burst of publishes before its close would get ECONNRESET instead of the
/// close-ok already sent.
async fn drain_until_closed(rd: &mut OwnedReadHalf) {
    const LINGER: Duration = Duration::from_secs(3);
    let mut scratch = vec![0u8; 16 * 1024];
    let _ = tokio::time::timeout(LINGER, async {
        loop {
            match rd.read(&mut scratch).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

impl Connection {
    pub(crate) fn send(&self, channel: u16, method: AMQPClass) {
        let _ = self.out.send(Outbound::Method { channel, method });
    }

    async fn next_frame(
        &mut self,
        rd: &mut OwnedReadHalf,
        buf: &mut BytesMut,
        timeout: Option<Duration>,
    ) -> Result<RawFrame, ReadEnd> {
        loop {
            match codec::take_frame(buf, self.frame_max) {
                Ok(Some(f)) => return Ok(f),
                Ok(None) => {}
                Err(e) => return Err(ReadEnd::Error(e)),
            }
            let read = read_some(rd, buf);
            let n = match timeout {
                Some(t) => match tokio::time::timeout(t, read).await {
                    Ok(r) => r,
                    Err(_) => return Err(ReadEnd::Timeout),
                },
                None => read.await,
            };
            match n {
                Ok(0) | Err(_) => return Err(ReadEnd::Closed),
                Ok(n) => {
                    self.recv_bytes += n as u64;
                    self.last_recv = tokio::time::Instant::now();
                }
            }
        }
    }

    /// Start, start-ok, tune, tune-ok, open. `Err(None)` = just drop the socket.
    async fn handshake(
        &mut self,
        rd: &mut OwnedReadHalf,
        buf: &mut BytesMut,
    ) -> Result<(), Option<AmqpError>> {
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: server_properties(&self.broker.cluster_name()),
                mechanisms: LongString::from("PLAIN AMQPLAIN".as_bytes().to_vec()),
                locales: LongString::from("en_US".as_bytes().to_vec()),
            })),
        );
        let start_ok = match self.handshake_method(rd, buf).await? {
            connection::AMQPMethod::StartOk(s) => s,
            _ => return Err(Some(handshake_error("expected connection.start-ok"))),
        };
        self.client_properties = start_ok.client_properties.clone();
        self.cancel_notify =
            client_has_capability(&self.client_properties, "consumer_cancel_notify");
        self.blocked_capable = client_has_capability(&self.client_properties, "connection.blocked");
        let auth_failure_close =
            client_has_capability(&self.client_properties, "authentication_failure_close");
        let creds = match start_ok.mechanism.as_str() {
            "PLAIN" => {
                self.auth_mechanism = "PLAIN";
                parse_plain(start_ok.response.as_bytes())
            }
            "AMQPLAIN" => {
                self.auth_mechanism = "AMQPLAIN";
                parse_amqplain(start_ok.response.as_bytes())
            }
            other => {
                return Err(Some(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!("COMMAND_INVALID - unknown authentication mechanism '{other}'"),
                )));
            }
        };
        let Some((user, pass)) = creds else {
            return Err(Some(AmqpError::connection(
                ReplyCode::AccessRefused,
                format!(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    start_ok.mechanism.as_str()
                ),
            )));
        };
        // Auth backends see PLAIN form for both mechanisms.
        let plain = plain_response(user.as_bytes(), pass.as_bytes());
        let session = match self.broker.login("PLAIN", &plain, self.peer.ip()) {
            Ok(s) => s,
            Err(e) => {
                // As RabbitMQ: the client learns only that the login was refused (a loopback-only
                // user included); the reason goes to the log.
                let reason = match e {
                    LoginError::Refused(t) | LoginError::LoopbackOnly(t) => t,
                };
                let text = format!(
                    "ACCESS_REFUSED - Login was refused using authentication mechanism {}. For details see the broker logfile.",
                    start_ok.mechanism.as_str()
                );
                tracing::warn!(peer = %self.peer, user, reason, "login refused");
                // Without authentication_failure_close a client learns only that the socket closed.
                return Err(auth_failure_close
                    .then(|| AmqpError::connection(ReplyCode::AccessRefused, text)));
            }
        };
        self.user = session.username.clone();
        self.session = Some(session);
        let cfg = self.broker.config.clone();
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune {
                channel_max: cfg.channel_max,
                frame_max: cfg.frame_max,
                heartbeat: cfg.heartbeat,
            })),
        );
        let tune_ok = match self.handshake_method(rd, buf).await? {
            connection::AMQPMethod::TuneOk(t) => t,
            _ => return Err(Some(handshake_error("expected connection.tune-ok"))),
        };
        // As RabbitMQ: a frame_max outside what the spec and the server allow is refused (a
        // silently clamped value would make the client's frames a FRAME_ERROR later).
        let refuse = |text: String| {
            Some(AmqpError::connection(ReplyCode::NotAllowed, text).with_method(10, 31))
        };
        if tune_ok.frame_max != 0 && tune_ok.frame_max < FRAME_MIN_SIZE {
            return Err(refuse(format!(
                "NOT_ALLOWED - frame_max={} < {FRAME_MIN_SIZE} min size",
                tune_ok.frame_max
            )));
        }
        if cfg.frame_max != 0 && tune_ok.frame_max > cfg.frame_max {
            return Err(refuse(format!(
                "NOT_ALLOWED - frame_max={} > {} max size",
                tune_ok.frame_max, cfg.frame_max
            )));
        }
        self.frame_max = match tune_ok.frame_max {
            0 => cfg.frame_max,
            n => n,
        };
        self.channel_max = match tune_ok.channel_max {
            0 => cfg.channel_max,
            n => n.min(cfg.channel_max),
        };
        self.writer
            .frame_max
            .store(self.frame_max, Ordering::Relaxed);
        self.writer
            .heartbeat
            .store(tune_ok.heartbeat as u32, Ordering::Relaxed);
        let open = match self.handshake_method(rd, buf).await? {
            connection::AMQPMethod::Open(o) => o,
            _ => return Err(Some(handshake_error("expected connection.open"))),
        };
        let vhost = open.virtual_host.as_str().to_string();
        let Some(session) = self.session.clone() else {
            return Err(Some(handshake_error(
                "connection.open before authentication",
            )));
        };
        self.broker
            .check_vhost_access(&session, &vhost)
            .map_err(|e| Some(e.with_method(10, 40)))?;
        self.vhost = self.broker.vhost(&vhost);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        let info = Arc::new(ConnectionInfo {
            id: self.id,
            name: format!("{} -> {}", self.peer, self.broker.config.node),
            peer: self.peer,
            user: self.user.clone(),
            vhost,
            client_properties: describe_client(&self.client_properties),
            connected_at: now_ms(),
            channels: AtomicU64::new(0),
            recv_oct: AtomicU64::new(0),
            send_oct: AtomicU64::new(0),
            auth_mechanism: self.auth_mechanism,
            blocked: Default::default(),
            channel_handles: Default::default(),
            kill: tokio::sync::Notify::new(),
        });
        self.broker.register_connection(info.clone());
        self.info = Some(info);
        tracing::debug!(peer = %self.peer, user = %self.user, "connection opened");
        Ok(())
    }

    async fn handshake_method(
        &mut self,
        rd: &mut OwnedReadHalf,
        buf: &mut BytesMut,
    ) -> Result<connection::AMQPMethod, Option<AmqpError>> {
        loop {
            let frame = match self.next_frame(rd, buf, Some(HANDSHAKE_TIMEOUT)).await {
                Ok(f) => f,
                Err(ReadEnd::Error(e)) => return Err(Some(e)),
                Err(_) => return Err(None),
            };
            match frame {
                RawFrame::Heartbeat { .. } => continue,
                RawFrame::Method {
                    channel: 0,
                    payload,
                } => match codec::decode_method(&payload).map_err(Some)? {
                    AMQPClass::Connection(m) => return Ok(m),
                    _ => return Err(Some(handshake_error("expected a connection method"))),
                },
                _ => return Err(Some(handshake_error("expected a connection method"))),
            }
        }
    }

    async fn run(&mut self, rd: &mut OwnedReadHalf, buf: &mut BytesMut) {
        let info = self.info.clone();
        let mut alarms = self.broker.alarms.subscribe();
        let mut consumer_check = tokio::time::interval(Duration::from_secs(1));
        consumer_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.has_published {
                // A burst is stopped here, frame by frame, not at the monitor's next tick.
                crate::resources::check_memory(self.broker.as_ref());
                if alarms.borrow().any()
                    && !self.wait_while_blocked(&mut alarms, info.as_deref()).await
                {
                    return;
                }
                if let Some(backlog) = self.forward_flow.take()
                    && !self.wait_for_forwarding(&backlog, info.as_deref()).await
                {
                    return;
                }
            }
            let hb = self.writer.heartbeat.load(Ordering::Relaxed);
            // Two missed heartbeats mean the peer is gone.
            let timeout = (hb > 0).then(|| {
                Duration::from_secs(hb as u64 * 2).saturating_sub(self.last_recv.elapsed())
            });
            let frame = tokio::select! {
                f = self.next_frame(rd, buf, timeout) => f,
                _ = consumer_check.tick() => {
                    if self.credential_expired() {
                        tracing::info!(peer = %self.peer, user = %self.user, "closing connection: credential expired");
                        let e = AmqpError::connection(
                            ReplyCode::AccessRefused,
                            "ACCESS_REFUSED - credential expired",
                        );
                        return self.close_with(rd, buf, e).await;
                    }
                    self.enforce_consumer_timeout();
                    self.publish_byte_counts(info.as_deref());
                    continue;
                }
                _ = killed(info.as_deref()) => {
                    let e = AmqpError::connection(
                        ReplyCode::ConnectionForced,
                        "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'",
                    );
                    return self.close_with(rd, buf, e).await;
                }
            };
            self.publish_byte_counts(info.as_deref());
            let frame = match frame {
                Ok(f) => f,
                Err(ReadEnd::Closed) => return,
                Err(ReadEnd::Timeout) => {
                    tracing::warn!(peer = %self.peer, "missed heartbeats from client, closing");
                    return;
                }
                Err(ReadEnd::Error(e)) => return self.close_with(rd, buf, e).await,
            };
            match self.handle_frame(frame, buf).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) if e.closes_connection() => return self.close_with(rd, buf, e).await,
                Err(e) => self.close_channel_with(e),
            }
        }
    }

    /// A token's expiry (checked each second, as the consumer timeout): RabbitMQ closes a
    /// connection whose credential expired unless connection.update-secret renewed it.
    fn credential_expired(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.session.as_ref().is_some_and(|s| s.expired(now))
    }

    /// Byte counts for listings; also each second, for a client that sends nothing.
    fn publish_byte_counts(&self, info: Option<&ConnectionInfo>) {
        if let Some(i) = info {
            i.recv_oct.store(self.recv_bytes, Ordering::Relaxed);
            i.send_oct.store(
                self.writer.sent_bytes.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
        }
    }

    /// Closes channels holding a delivery unacknowledged past consumer_timeout, as RabbitMQ.
    fn enforce_consumer_timeout(&mut self) {
        let Some(limit) = self.broker.config.consumer_timeout_ms else {
            return;
        };
        let now = now_ms();
        let late: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, ch)| !ch.closing)
            .filter(|(_, ch)| {
                ch.handle
                    .oldest_unacked()
                    .is_some_and(|t| now.saturating_sub(t) > limit)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.close_channel_with(
                AmqpError::precondition(format!(
                    "delivery acknowledgement on channel {id} timed out. Timeout value used: {limit} ms. This timeout value can be configured, see consumers doc guide to learn more"
                ))
                .on_channel(id),
            );
        }
    }

    /// Holds a publisher whose messages for another node's queues wait faster than that node
    /// answers (see `broker::forward_backlog`): nothing is read from its socket meanwhile.
    /// False if the connection is being closed.
    async fn wait_for_forwarding(
        &mut self,
        backlog: &crate::broker::forward_backlog::Backlog,
        info: Option<&ConnectionInfo>,
    ) -> bool {
        let drained = tokio::select! {
            d = backlog.drained() => d,
            _ = killed(info) => return false,
        };
        if !drained {
            tracing::warn!(peer = %self.peer, "forwarded publishes unanswered for {:?}: publisher let go", crate::broker::forward_backlog::MAX_WAIT);
        }
        // Nothing was read while waiting: the client's heartbeats count from now.
        self.last_recv = tokio::time::Instant::now();
        true
    }

    /// Blocks a publishing connection until the alarm clears. False if the client went away.
    async fn wait_while_blocked(
        &mut self,
        alarms: &mut tokio::sync::watch::Receiver<crate::resources::Alarms>,
        info: Option<&ConnectionInfo>,
    ) -> bool {
        let reason = alarms.borrow().reason().to_string();
        if self.blocked_capable {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Blocked(connection::Blocked {
                    reason: short(reason.as_str()),
                })),
            );
        }
        tracing::info!(peer = %self.peer, reason, "publisher blocked by resource alarm");
        if let Some(i) = info {
            i.blocked.store(true, Ordering::Relaxed);
        }
        loop {
            let changed = tokio::select! {
                c = alarms.changed() => c.is_ok(),
                _ = killed(info) => false,
            };
            if !changed {
                return false;
            }
            if !alarms.borrow().any() {
                break;
            }
        }
        if let Some(i) = info {
            i.blocked.store(false, Ordering::Relaxed);
        }
        if self.blocked_capable {
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Unblocked(connection::Unblocked {})),
            );
        }
        true
    }

    /// Ok(false) = the connection is done.
    async fn handle_frame(&mut self, frame: RawFrame, buf: &mut BytesMut) -> AmqpResult<bool> {
        match frame {
            RawFrame::Heartbeat { channel: 0 } => Ok(true),
            RawFrame::Heartbeat { .. } => Err(AmqpError::connection(
                ReplyCode::FrameError,
                "FRAME_ERROR - heartbeat frame on a non-zero channel",
            )),
            RawFrame::Method {
                channel: 0,
                payload,
            } => {
                let method = codec::decode_method(&payload)?;
                self.connection_method(method)
            }
            RawFrame::Method { channel, payload } => {
                let method = codec::decode_method(&payload)?;
                let (class_id, method_id) = method_ids(&method);
                let done = match method {
                    AMQPClass::Queue(queue::AMQPMethod::Bind(first)) if self.batchable(channel) => {
                        let (binds, trailing) = self.buffered_binds(channel, first, buf);
                        self.queue_bind_batch(channel, binds, trailing).await
                    }
                    method => self.channel_method(channel, method).await,
                };
                done.map_err(|e| e.with_method(class_id, method_id).on_channel(channel))?;
                Ok(true)
            }
            RawFrame::Header { channel, payload } => {
                self.content_header(channel, payload).await?;
                Ok(true)
            }
            RawFrame::Body { channel, payload } => {
                self.content_body(channel, payload).await?;
                Ok(true)
            }
        }
    }

    /// Whether a queue.bind on this channel may be committed together with the
    /// binds after it: the channel is open and not in the middle of a publish.
    fn batchable(&self, channel: u16) -> bool {
        self.channels
            .get(&channel)
            .is_some_and(|c| !c.closing && c.pending.is_none())
    }

    /// `first` and the queue.binds for the same channel that follow it in the read
    /// buffer, up to the first other frame (left in the buffer). A bind that does
    /// not decode ends the run and is returned as its error.
    fn buffered_binds(
        &mut self,
        channel: u16,
        first: queue::Bind,
        buf: &mut BytesMut,
    ) -> (Vec<queue::Bind>, Option<AmqpError>) {
        const MAX_BATCH: usize = 1000;
        // queue.bind is class 50, method 20.
        const QUEUE_BIND: [u8; 4] = [0, 50, 0, 20];
        let mut binds = vec![first];
        while binds.len() < MAX_BATCH
            && buf.len() >= 11
            && buf[0] == amq_protocol::protocol::constants::FRAME_METHOD
            && u16::from_be_bytes([buf[1], buf[2]]) == channel
            && buf[7..11] == QUEUE_BIND
        {
            let payload = match codec::take_frame(buf, self.frame_max) {
                Ok(Some(RawFrame::Method { payload, .. })) => payload,
                // Incomplete or broken: the normal read path deals with it.
                _ => break,
            };
            match codec::decode_method(&payload) {
                Ok(AMQPClass::Queue(queue::AMQPMethod::Bind(b))) => binds.push(b),
                Ok(_) => break,
                Err(e) => return (binds, Some(e)),
            }
        }
        (binds, None)
    }

    fn connection_method(&mut self, method: AMQPClass) -> AmqpResult<bool> {
        match method {
            AMQPClass::Connection(connection::AMQPMethod::Close(_)) => {
                // close-ok goes out after cleanup: as in RabbitMQ, a client that
                // saw it finds its exclusive queues gone on any node.
                self.close_ok_pending = true;
                Ok(false)
            }
            AMQPClass::Connection(connection::AMQPMethod::UpdateSecret(u)) => {
                // As RabbitMQ: the new secret is checked by the auth backends for this user
                // and, if good, replaces the session (tags, permissions); refused, it closes
                // the connection.
                let plain = plain_response(self.user.as_bytes(), u.new_secret.as_bytes());
                match self.broker.login("PLAIN", &plain, self.peer.ip()) {
                    Ok(session) if session.username == self.user => {
                        self.session = Some(session);
                        self.send(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::UpdateSecretOk(
                                connection::UpdateSecretOk {},
                            )),
                        );
                        Ok(true)
                    }
                    _ => {
                        tracing::warn!(peer = %self.peer, user = %self.user, "secret update refused");
                        Err(AmqpError::connection(
                            ReplyCode::NotAllowed,
                            "NOT_ALLOWED - New secret was refused by one of the backends",
                        )
                        .with_method(10, 70))
                    }
                }
            }
            AMQPClass::Connection(connection::AMQPMethod::CloseOk(_)) => Ok(false),
            other => {
                let (c, m) = method_ids(&other);
                Err(AmqpError::connection(
                    ReplyCode::CommandInvalid,
                    format!("COMMAND_INVALID - unexpected method {c}.{m} on channel 0"),
                )
                .with_method(c, m))
            }
        }
    }

    /// connection.close for `e`: the one place that builds it.
    fn send_close(&self, e: &AmqpError) {
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(connection::Close {
                reply_code: e.code.code(),
                reply_text: short(e.text.as_str()),
                class_id: e.class_id,
                method_id: e.method_id,
            })),
        );
    }

    /// Sends connection.close and waits (briefly) for close-ok, ignoring everything else.
    async fn close_with(&mut self, rd: &mut OwnedReadHalf, buf: &mut BytesMut, e: AmqpError) {
        tracing::info!(peer = %self.peer, error = %e, "closing connection");
        self.send_close(&e);
        let deadline = tokio::time::Instant::now() + CLOSE_OK_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return;
            }
            match self.next_frame(rd, buf, Some(left)).await {
                Ok(RawFrame::Method {
                    channel: 0,
                    payload,
                }) => match codec::decode_method(&payload) {
                    Ok(AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))) => return,
                    Ok(AMQPClass::Connection(connection::AMQPMethod::Close(_))) => {
                        self.send(
                            0,
                            AMQPClass::Connection(connection::AMQPMethod::CloseOk(
                                connection::CloseOk {},
                            )),
                        );
                        return;
                    }
                    _ => {}
                },
                Ok(_) => {}
                Err(ReadEnd::Error(_)) => {
                    // Garbage after the close: drop what is buffered and keep waiting.
                    buf.clear();
                }
                Err(_) => return,
            }
        }
    }

    /// Releases everything the connection held: channels (requeueing unacked messages),
    /// consumers, exclusive queues.
    async fn cleanup(&mut self) {
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        for id in ids {
            if let Some(ch) = self.channels.remove(&id) {
                ch.release(&self.broker.direct_replies);
            }
        }
        for q in std::mem::take(&mut self.exclusive_queues) {
            if let Some(v) = &self.vhost {
                let _ = self
                    .broker
                    .meta
                    .submit(crate::meta::MetaCommand::DeleteQueue {
                        vhost: v.name.to_string(),
                        name: q,
                    })
                    .await;
            }
        }
        if let Some(i) = &self.info {
            self.broker.unregister_connection(i.id);
        }
    }
}

/// Resolves when the broker closes this connection (vhost deleted, node stopping).
async fn killed(info: Option<&ConnectionInfo>) {
    match info {
        Some(i) => i.kill.notified().await,
        None => std::future::pending().await,
    }
}

fn handshake_error(text: &str) -> AmqpError {
    AmqpError::connection(
        ReplyCode::CommandInvalid,
        format!("COMMAND_INVALID - {text}"),
    )
}

pub fn method_ids(m: &AMQPClass) -> (u16, u16) {
    (m.get_amqp_class_id(), m.get_amqp_method_id())
}

fn describe_client(props: &FieldTable) -> String {
    let get = |k: &str| match props.inner().get(k) {
        Some(amq_protocol::types::AMQPValue::LongString(s)) => {
            String::from_utf8_lossy(s.as_bytes()).into_owned()
        }
        _ => String::new(),
    };
    format!("{} {}", get("product"), get("version"))
        .trim()
        .to_string()
}

/// Bytes a connection reads into at once.
const READ_CHUNK: usize = 64 * 1024;

/// Reads what the socket has. The buffer is given its room only once the socket is readable,
/// and an empty one is let go before waiting: a thousand idle connections would otherwise
/// hold a read chunk each.
async fn read_some(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> std::io::Result<usize> {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
    rd.readable().await?;
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
    // read_buf, not try_read_buf: it counts against the task's cooperative budget, so a
    // publisher whose socket always has bytes still yields to the consumers it wakes.
    rd.read_buf(buf).await
}
