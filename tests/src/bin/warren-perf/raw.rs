//! The raw mode of warren-perf (`--raw`): AMQP 0-9-1 framing by hand over a plain tokio
//! `TcpStream`, no client library.
//!
//! It does the real handshake (connection.start / start-ok with PLAIN, tune / tune-ok, open,
//! channel.open), then:
//! - a producer encodes basic.publish + content header + body frames for as many messages as its
//!   confirm window, rate limit and a 64 KiB batch allow and hands them to the socket in one
//!   write (pipelined, no await per message); with `-c N` a reader task counts basic.ack /
//!   basic.nack (single or multiple) and the writer waits only when N are outstanding;
//! - a consumer (basic.qos, basic.consume) parses deliveries out of 256 KiB reads and, without
//!   autoack, acks every message on its own (as PerfTest does) but sends the acks of one read in
//!   one write.
//!
//! Setup (exchange, queues, bindings) is pipelined too, so 10,000 bindings take one round trip
//! per 500; with `--bind-sequential` each queue.bind waits for the previous bind-ok (one round
//! trip per binding, as a client that awaits every bind).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use super::{Args, Stats, now_nanos};

const FRAME_METHOD: u8 = 1;
const FRAME_HEADER: u8 = 2;
const FRAME_BODY: u8 = 3;
const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// Bytes of frames a producer hands to the socket in one write (at most).
const BATCH_BYTES: usize = 64 * 1024;
/// Bindings (or other setup methods) sent before their replies are read.
const SETUP_WINDOW: usize = 500;

/// Where and as whom to connect, from an `amqp://user:pass@host:port/vhost` URI.
struct Target {
    addr: String,
    user: String,
    pass: String,
    vhost: String,
}

fn percent_decode(s: &str) -> anyhow::Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = s
                .get(i + 1..i + 3)
                .ok_or_else(|| anyhow!("bad escape in '{s}'"))?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("bad escape in '{s}'"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(String::from_utf8(out)?)
}

fn parse_uri(uri: &str) -> anyhow::Result<Target> {
    let rest = uri
        .strip_prefix("amqp://")
        .ok_or_else(|| anyhow!("raw mode takes amqp:// URIs only, not '{uri}'"))?;
    let (authority, vhost) = match rest.split_once('/') {
        Some((a, v)) => (a, percent_decode(v.split('?').next().unwrap_or(""))?),
        None => (rest, "/".to_string()),
    };
    let vhost = if vhost.is_empty() { "/".into() } else { vhost };
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (user, pass) = match userinfo {
        Some(u) => match u.split_once(':') {
            Some((n, p)) => (percent_decode(n)?, percent_decode(p)?),
            None => (percent_decode(u)?, String::new()),
        },
        None => ("guest".into(), "guest".into()),
    };
    let addr = if hostport.is_empty() {
        "127.0.0.1:5672".to_string()
    } else if hostport
        .rsplit_once(':')
        .is_some_and(|(_, p)| !p.contains(']'))
    {
        hostport.to_string()
    } else {
        format!("{hostport}:5672")
    };
    Ok(Target {
        addr,
        user,
        pass,
        vhost,
    })
}

// ------------------------------------------------------------------------------------------
// Encoding
// ------------------------------------------------------------------------------------------

/// Method arguments, encoded as they are appended.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn new(class: u16, method: u16) -> Enc {
        Enc(Vec::with_capacity(64)).u16(class).u16(method)
    }
    fn u8(mut self, v: u8) -> Enc {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Enc {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn short(mut self, s: &str) -> Enc {
        let n = s.len().min(255);
        self.0.push(n as u8);
        self.0.extend_from_slice(&s.as_bytes()[..n]);
        self
    }
    fn long(mut self, s: &[u8]) -> Enc {
        self.0.extend_from_slice(&(s.len() as u32).to_be_bytes());
        self.0.extend_from_slice(s);
        self
    }
    fn empty_table(self) -> Enc {
        self.u32(0)
    }
    /// A field table of `key=value` pairs: integers as long-long ints, the rest as strings.
    fn table(self, pairs: &[(String, String)]) -> Enc {
        let mut t = Enc(Vec::new());
        for (k, v) in pairs {
            t = t.short(k);
            t = match v.parse::<i64>() {
                Ok(n) => {
                    t.0.push(b'l');
                    t.0.extend_from_slice(&n.to_be_bytes());
                    t
                }
                Err(_) => {
                    t.0.push(b'S');
                    t.long(v.as_bytes())
                }
            };
        }
        self.long(&t.0)
    }
    /// Appends this method as a frame on `channel` to `out`.
    fn frame_into(&self, channel: u16, out: &mut Vec<u8>) {
        push_frame(out, FRAME_METHOD, channel, &self.0);
    }
    fn frame(&self, channel: u16) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.len() + 8);
        self.frame_into(channel, &mut out);
        out
    }
}

fn push_frame(out: &mut Vec<u8>, kind: u8, channel: u16, payload: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
}

// ------------------------------------------------------------------------------------------
// Decoding
// ------------------------------------------------------------------------------------------

/// A read side that keeps one big buffer and parses frames out of it in place.
struct Reader<R> {
    io: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

/// A frame found in the reader's buffer: kind, channel and where its payload lies.
#[derive(Clone, Copy)]
struct FrameAt {
    kind: u8,
    channel: u16,
    from: usize,
    to: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    fn new(io: R) -> Self {
        Reader {
            io,
            buf: vec![0; 256 * 1024],
            start: 0,
            end: 0,
        }
    }

    /// The next complete frame already buffered, if any (no I/O). Its payload is
    /// `self.buf[f.from..f.to]` until the next `fill`.
    fn next_frame(&mut self) -> anyhow::Result<Option<FrameAt>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < 7 {
            return Ok(None);
        }
        if &avail[..4] == b"AMQP" {
            bail!(
                "the broker refused the protocol header ({:?})",
                &avail[..8.min(avail.len())]
            );
        }
        let size = u32::from_be_bytes([avail[3], avail[4], avail[5], avail[6]]) as usize;
        if avail.len() < size + 8 {
            return Ok(None);
        }
        if avail[size + 7] != FRAME_END {
            bail!("frame without its end marker");
        }
        let f = FrameAt {
            kind: avail[0],
            channel: u16::from_be_bytes([avail[1], avail[2]]),
            from: self.start + 7,
            to: self.start + 7 + size,
        };
        self.start += size + 8;
        Ok(Some(f))
    }

    /// Reads more bytes from the socket (at least one, or an error at end of stream).
    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < 64 * 1024 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // A frame larger than the buffer: grow to hold it.
        if self.end - self.start >= 7 {
            let b = &self.buf[self.start..];
            let need = u32::from_be_bytes([b[3], b[4], b[5], b[6]]) as usize + 8;
            if self.start + need > self.buf.len() {
                self.buf.resize(self.start + need, 0);
            }
        }
        if self.end == self.buf.len() {
            let n = self.buf.len();
            self.buf.resize(n * 2, 0);
        }
        let n = self.io.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            bail!("the broker closed the connection");
        }
        self.end += n;
        Ok(())
    }

    /// The next frame, reading as needed.
    async fn frame(&mut self) -> anyhow::Result<FrameAt> {
        loop {
            if let Some(f) = self.next_frame()? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    fn payload(&self, f: FrameAt) -> &[u8] {
        &self.buf[f.from..f.to]
    }
}

/// Class and method ids of a method frame's payload.
fn method_id(p: &[u8]) -> (u16, u16) {
    if p.len() < 4 {
        return (0, 0);
    }
    (
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    )
}

/// The reply code and text of a connection.close or channel.close payload.
fn close_reason(p: &[u8]) -> String {
    if p.len() < 7 {
        return "closed".into();
    }
    let code = u16::from_be_bytes([p[4], p[5]]);
    let n = p[6] as usize;
    let text = String::from_utf8_lossy(p.get(7..7 + n).unwrap_or(&[]));
    format!("{code} {text}")
}

fn u64_at(p: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&p[at..at + 8]);
    u64::from_be_bytes(b)
}

// ------------------------------------------------------------------------------------------
// Connections
// ------------------------------------------------------------------------------------------

struct Conn {
    reader: Reader<OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
    frame_max: usize,
}

impl Conn {
    /// TCP connect, the AMQP handshake, and channel 1 open.
    async fn open(uri: &str) -> anyhow::Result<Conn> {
        let t = parse_uri(uri)?;
        let stream = TcpStream::connect(&t.addr)
            .await
            .with_context(|| format!("connect to {}", t.addr))?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut c = Conn {
            reader: Reader::new(r),
            writer: w,
            frame_max: 131_072,
        };
        c.send(b"AMQP\x00\x00\x09\x01").await?;
        c.expect(0, (10, 10)).await.context("connection.start")?;
        let mut response = vec![0u8];
        response.extend_from_slice(t.user.as_bytes());
        response.push(0);
        response.extend_from_slice(t.pass.as_bytes());
        let start_ok = Enc::new(10, 11)
            .empty_table()
            .short("PLAIN")
            .long(&response)
            .short("en_US");
        c.send(&start_ok.frame(0)).await?;
        let tune = c.expect(0, (10, 30)).await.context("connection.tune")?;
        let channel_max = u16::from_be_bytes([tune[4], tune[5]]);
        let frame_max = u32::from_be_bytes([tune[6], tune[7], tune[8], tune[9]]);
        let frame_max = if frame_max == 0 { 131_072 } else { frame_max };
        c.frame_max = frame_max as usize;
        let mut out = Vec::new();
        // Heartbeat 0: no heartbeats during a run.
        Enc::new(10, 31)
            .u16(channel_max)
            .u32(frame_max)
            .u16(0)
            .frame_into(0, &mut out);
        Enc::new(10, 40)
            .short(&t.vhost)
            .short("")
            .u8(0)
            .frame_into(0, &mut out);
        c.send(&out).await?;
        c.expect(0, (10, 41)).await.context("connection.open")?;
        c.send(&Enc::new(20, 10).short("").frame(1)).await?;
        c.expect(1, (20, 11)).await.context("channel.open")?;
        Ok(c)
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.writer.write_all(bytes).await?;
        Ok(())
    }

    /// Waits for method `want` on `channel` and returns its payload; a close from the broker
    /// is an error carrying its reason. Heartbeats and other frames are skipped.
    async fn expect(&mut self, channel: u16, want: (u16, u16)) -> anyhow::Result<Vec<u8>> {
        loop {
            let f = self.reader.frame().await?;
            if f.kind != FRAME_METHOD {
                continue;
            }
            let p = self.reader.payload(f);
            let id = method_id(p);
            if id == (10, 50) || id == (20, 40) {
                let reason = close_reason(p);
                let _ = self
                    .writer
                    .write_all(&Enc::new(id.0, 51).frame(f.channel))
                    .await;
                bail!(
                    "the broker closed the {}: {reason}",
                    if id.0 == 10 { "connection" } else { "channel" }
                );
            }
            if f.channel == channel && id == want {
                return Ok(p.to_vec());
            }
        }
    }

    /// connection.close, then close-ok (or give up after a second).
    async fn close(mut self) {
        let close = Enc::new(10, 50).u16(200).short("done").u16(0).u16(0);
        if self.send(&close.frame(0)).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.expect(0, (10, 51))).await;
    }
}

// ------------------------------------------------------------------------------------------
// Setup
// ------------------------------------------------------------------------------------------

/// Declares the exchange and queues and binds them, pipelining the bindings (`SETUP_WINDOW` at
/// a time) unless `--bind-sequential` asks for one at a time.
pub async fn setup(a: &Args) -> anyhow::Result<()> {
    let mut c = Conn::open(&a.uris[0]).await?;
    let predeclared = a.exchange.is_empty() || a.exchange.starts_with("amq.");
    if !predeclared {
        // Durable as PerfTest declares it, so runs with and without -f persistent share it.
        let declare = Enc::new(40, 10)
            .u16(0)
            .short(&a.exchange)
            .short(&a.exchange_type)
            .u8(0b10)
            .empty_table();
        c.send(&declare.frame(1)).await?;
        c.expect(1, (40, 11)).await.context("exchange.declare")?;
    }
    let queues = super::queue_names(a);
    for q in &queues {
        let declare = Enc::new(50, 10)
            .u16(0)
            .short(q)
            .u8(if a.persistent { 0b10 } else { 0 })
            .table(&a.queue_args);
        c.send(&declare.frame(1)).await?;
        c.expect(1, (50, 11)).await.context("queue.declare")?;
    }
    if !a.exchange.is_empty() {
        let binds: Vec<(usize, String)> = if a.bindings > 0 {
            (0..a.bindings)
                .map(|i| {
                    (
                        i % queues.len(),
                        a.binding_key.replace("{i}", &i.to_string()),
                    )
                })
                .collect()
        } else {
            let key = a.routing_key.clone().unwrap_or_else(|| a.queue.clone());
            (0..queues.len()).map(|q| (q, key.clone())).collect()
        };
        let window = if a.bind_sequential { 1 } else { SETUP_WINDOW };
        for chunk in binds.chunks(window) {
            let mut out = Vec::new();
            for (q, key) in chunk {
                Enc::new(50, 20)
                    .u16(0)
                    .short(&queues[*q])
                    .short(&a.exchange)
                    .short(key)
                    .u8(0)
                    .empty_table()
                    .frame_into(1, &mut out);
            }
            c.send(&out).await?;
            for _ in chunk {
                c.expect(1, (50, 21)).await.context("queue.bind")?;
            }
        }
    }
    c.close().await;
    Ok(())
}

/// Messages ready in `queue` (queue.declare passive).
pub async fn queue_depth(uri: &str, queue: &str) -> anyhow::Result<u64> {
    let mut c = Conn::open(uri).await?;
    let declare = Enc::new(50, 10).u16(0).short(queue).u8(1).empty_table();
    c.send(&declare.frame(1)).await?;
    let ok = c
        .expect(1, (50, 11))
        .await
        .context("queue.declare passive")?;
    c.close().await;
    let n = ok[4] as usize;
    let at = 5 + n;
    Ok(u32::from_be_bytes([ok[at], ok[at + 1], ok[at + 2], ok[at + 3]]) as u64)
}

// ------------------------------------------------------------------------------------------
// Producer
// ------------------------------------------------------------------------------------------

/// Counts publisher confirms: tags up to `low` are settled, `sparse` holds single acks above.
#[derive(Default)]
struct Settled {
    low: u64,
    sparse: BTreeSet<u64>,
}

impl Settled {
    /// Settles `tag` (and with `multiple` every tag below); returns how many became settled.
    fn settle(&mut self, tag: u64, multiple: bool) -> u64 {
        if tag <= self.low || (!multiple && self.sparse.contains(&tag)) {
            return 0;
        }
        if multiple {
            let above: Vec<u64> = self.sparse.range(..=tag).copied().collect();
            for t in &above {
                self.sparse.remove(t);
            }
            let n = tag - self.low - above.len() as u64;
            self.low = tag;
            self.advance();
            n
        } else {
            self.sparse.insert(tag);
            self.advance();
            1
        }
    }
    fn advance(&mut self) {
        while self.sparse.remove(&(self.low + 1)) {
            self.low += 1;
        }
    }
}

/// Reads what the broker sends a producer: confirms, flow notices, a close.
async fn producer_reader(
    mut r: Reader<OwnedReadHalf>,
    stats: Arc<Stats>,
    settled_count: Arc<AtomicU64>,
    wake: Arc<tokio::sync::Notify>,
) -> anyhow::Result<()> {
    let mut settled = Settled::default();
    loop {
        let mut n_ack = 0;
        let mut n_nack = 0;
        while let Some(f) = r.next_frame()? {
            if f.kind != FRAME_METHOD {
                continue;
            }
            let p = r.payload(f);
            match method_id(p) {
                (60, 80) if p.len() >= 13 => n_ack += settled.settle(u64_at(p, 4), p[12] & 1 != 0),
                (60, 120) if p.len() >= 13 => {
                    n_nack += settled.settle(u64_at(p, 4), p[12] & 1 != 0)
                }
                (10, 51) => return Ok(()),
                (10, 50) => bail!("the broker closed the connection: {}", close_reason(p)),
                (20, 40) => bail!("the broker closed the channel: {}", close_reason(p)),
                _ => {}
            }
        }
        if n_ack + n_nack > 0 {
            stats.confirmed.fetch_add(n_ack, Ordering::Relaxed);
            stats.nacked.fetch_add(n_nack, Ordering::Relaxed);
            settled_count.fetch_add(n_ack + n_nack, Ordering::Release);
            wake.notify_one();
        }
        r.fill().await?;
    }
}

pub async fn produce(
    a: Arc<Args>,
    n: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut c = Conn::open(&a.uris[n % a.uris.len()]).await?;
    if a.confirm > 0 {
        c.send(&Enc::new(85, 10).u8(0).frame(1)).await?;
        c.expect(1, (85, 11)).await.context("confirm.select")?;
    }
    // The frames of one message: the publish method per routing key, then header and body.
    let publishes: Vec<Vec<u8>> = super::routing_keys(&a)
        .iter()
        .map(|key| {
            Enc::new(60, 40)
                .u16(0)
                .short(&a.exchange)
                .short(key)
                .u8(0)
                .frame(1)
        })
        .collect();
    let mut content = Vec::new();
    let mut header = Enc::default().u16(60).u16(0).0;
    header.extend_from_slice(&(a.size as u64).to_be_bytes());
    if a.persistent {
        header.extend_from_slice(&0x1000u16.to_be_bytes());
        header.push(2);
    } else {
        header.extend_from_slice(&0u16.to_be_bytes());
    }
    push_frame(&mut content, FRAME_HEADER, 1, &header);
    // The timestamp goes into the first body frame's first 8 bytes.
    let stamp_at = content.len() + 7;
    let body = vec![0u8; a.size];
    for piece in body.chunks(c.frame_max.saturating_sub(8).max(1)) {
        push_frame(&mut content, FRAME_BODY, 1, piece);
    }
    let message_len = publishes[0].len() + content.len();
    let batch = (BATCH_BYTES / message_len).max(1) as u64;

    let Conn {
        reader, mut writer, ..
    } = c;
    let settled = Arc::new(AtomicU64::new(0));
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut reader = tokio::spawn(producer_reader(
        reader,
        stats.clone(),
        settled.clone(),
        wake.clone(),
    ));
    let limit = a.pmessages;
    let window = a.confirm as u64;
    let start = Instant::now();
    let mut published = 0u64;
    let mut out = Vec::with_capacity(BATCH_BYTES + message_len);
    while !stop.load(Ordering::Relaxed) && (limit == 0 || published < limit) {
        if reader.is_finished() {
            break;
        }
        let mut allowed = batch;
        if limit > 0 {
            allowed = allowed.min(limit - published);
        }
        if window > 0 {
            let outstanding = published - settled.load(Ordering::Acquire);
            if outstanding >= window {
                let _ = tokio::time::timeout(Duration::from_millis(100), wake.notified()).await;
                continue;
            }
            allowed = allowed.min(window - outstanding);
        }
        if a.rate > 0 {
            let due = (start.elapsed().as_secs_f64() * a.rate as f64) as u64 + 1;
            if due <= published {
                let next = start + Duration::from_secs_f64(published as f64 / a.rate as f64);
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            allowed = allowed.min(due - published);
        }
        out.clear();
        for i in 0..allowed {
            let publish = &publishes[((published + i) % publishes.len() as u64) as usize];
            out.extend_from_slice(publish);
            let at = out.len() + stamp_at;
            out.extend_from_slice(&content);
            out[at..at + 8].copy_from_slice(&now_nanos().to_be_bytes());
        }
        // Written piecewise so that a broker holding the socket back (flow control) does not
        // keep the producer past the end of the run.
        let mut at = 0;
        while at < out.len() && !stop.load(Ordering::Relaxed) {
            if let Ok(n) =
                tokio::time::timeout(Duration::from_millis(200), writer.write(&out[at..])).await
            {
                at += n?;
            }
        }
        if at < out.len() {
            // Stopped in the middle of a message: the stream is cut, no orderly close.
            reader.abort();
            return Ok(());
        }
        published += allowed;
        stats.sent.fetch_add(allowed, Ordering::Relaxed);
    }
    // Wait (briefly) for the last confirms, then close.
    let deadline = Instant::now() + Duration::from_secs(5);
    while window > 0
        && settled.load(Ordering::Acquire) < published
        && Instant::now() < deadline
        && !reader.is_finished()
    {
        let _ = tokio::time::timeout(Duration::from_millis(100), wake.notified()).await;
    }
    if reader.is_finished() {
        return match (&mut reader).await {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        };
    }
    let close = Enc::new(10, 50).u16(200).short("done").u16(0).u16(0);
    if writer.write_all(&close.frame(0)).await.is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), &mut reader).await;
    }
    reader.abort();
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Consumer
// ------------------------------------------------------------------------------------------

pub async fn consume(
    a: Arc<Args>,
    n: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let queues = super::queue_names(&a);
    let queue = &queues[n % queues.len()];
    let mut c = Conn::open(&a.uris[n % a.uris.len()]).await?;
    if a.prefetch > 0 {
        let qos = Enc::new(60, 10).u32(0).u16(a.prefetch).u8(0);
        c.send(&qos.frame(1)).await?;
        c.expect(1, (60, 11)).await.context("basic.qos")?;
    }
    let consume = Enc::new(60, 20)
        .u16(0)
        .short(queue)
        .short(&format!("perf-{n}"))
        .u8(if a.autoack { 0b10 } else { 0 })
        .empty_table();
    c.send(&consume.frame(1)).await?;
    c.expect(1, (60, 21)).await.context("basic.consume")?;

    // Per delivery: its tag, the body size announced by the header, bytes seen, timestamp.
    let mut tag = 0u64;
    let mut size = 0u64;
    let mut seen = 0u64;
    let mut stamp = [0u8; 8];
    let mut in_content = false;
    let mut acks = Vec::new();
    let mut latencies = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let mut received = 0;
        while let Some(f) = c.reader.next_frame()? {
            let p = c.reader.payload(f);
            match f.kind {
                FRAME_METHOD => match method_id(p) {
                    (60, 60) => {
                        let n = p[4] as usize;
                        tag = u64_at(p, 5 + n);
                        in_content = true;
                        seen = 0;
                        size = u64::MAX;
                    }
                    (10, 50) => bail!("the broker closed the connection: {}", close_reason(p)),
                    (20, 40) => bail!("the broker closed the channel: {}", close_reason(p)),
                    _ => {}
                },
                FRAME_HEADER if in_content => {
                    size = u64_at(p, 4);
                }
                FRAME_BODY if in_content => {
                    let have = seen as usize;
                    if have < 8 {
                        let k = (8 - have).min(p.len());
                        stamp[have..have + k].copy_from_slice(&p[..k]);
                    }
                    seen += p.len() as u64;
                }
                FRAME_HEARTBEAT => {}
                _ => {}
            }
            if in_content && seen >= size {
                in_content = false;
                received += 1;
                if size >= 8 {
                    let sent = u64::from_be_bytes(stamp);
                    let micros = now_nanos().saturating_sub(sent) / 1000;
                    latencies.push(micros.min(u32::MAX as u64) as u32);
                }
                if !a.autoack {
                    let mut ack = Enc::new(60, 80).0;
                    ack.extend_from_slice(&tag.to_be_bytes());
                    ack.push(0);
                    push_frame(&mut acks, FRAME_METHOD, 1, &ack);
                }
            }
        }
        if received > 0 {
            stats.received.fetch_add(received, Ordering::Relaxed);
            stats.latencies.lock().extend_from_slice(&latencies);
            latencies.clear();
        }
        if !acks.is_empty() {
            c.send(&acks).await?;
            acks.clear();
        }
        match tokio::time::timeout(Duration::from_millis(200), c.reader.fill()).await {
            Ok(r) => r?,
            Err(_) => continue,
        }
    }
    c.close().await;
    Ok(())
}
