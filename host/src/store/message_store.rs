//! Persistent message store: an append-only segment log for the persistent
//! messages of durable queues, with group-commit fsync.
//!
//! # Why a log
//! Publishes and acks of persistent messages arrive at a high rate and mostly
//! cancel each other out quickly. Appending both to a log turns every write
//! into a sequential append, and lets one `fdatasync` cover every operation that
//! arrived while the previous one was running (group commit): publisher
//! confirms wait for that single sync instead of one sync each. Space is
//! reclaimed a whole segment file at a time.
//!
//! # On-disk format (all integers little-endian)
//! The directory holds `seg-NNNNNNNNNNNN.wlog` files (12-digit sequence number,
//! replayed in increasing order) and a `LOCK` file that keeps a second store
//! from opening the same directory.
//!
//! Segment header, 32 bytes:
//! ```text
//! 0   magic  "WRNMSTOR"
//! 8   u32    format version (1)
//! 12  u32    CRC-32 of bytes 0..12 and 16..32
//! 16  u64    segment sequence number (must match the file name)
//! 24  u64    message-id floor: next message id when the segment was created
//! ```
//! The floor keeps `next_msg_id` monotonic even after every segment that held
//! the highest ids has been reclaimed.
//!
//! Then records, back to back:
//! ```text
//! 0   u32    body length N
//! 4   u32    CRC-32 (IEEE) of the 4 length bytes followed by the body
//! 8   body   N bytes, first byte is the kind:
//!            1 Publish:     u64 queue, u64 msg id, payload (N - 17 bytes)
//!            2 Remove:      u64 queue, u64 msg id × ((N - 9) / 8)
//!            3 DeleteQueue: u64 queue
//!            4 Delivered:   u64 queue, u64 msg id × ((N - 9) / 8)
//! ```
//! A Delivered record says a consumer was sent the message, so that a message
//! recovered after a crash is marked redelivered only if it really may have
//! been seen (as RabbitMQ's queue index records deliveries). Compaction
//! re-appends the marker after a moved message, so no marker is ever needed
//! from a segment that reclamation may delete.
//! The CRC covers the length so that a torn or zero-filled tail can never be
//! mistaken for a record. A bad record in the last segment is a torn write of a
//! crash (nothing after it was ever reported durable) and is cut off; anywhere
//! else it is corruption and opening fails rather than dropping data, which is
//! sound because a segment is fsynced completely before the next is created.
//!
//! # Reclaiming space
//! Segments are deleted strictly oldest first, and only once they hold no live
//! message: a removal record only ever refers to messages in its own or older
//! segments, so once those are gone it is not needed either. So that one
//! long-lived message cannot pin every later segment, the oldest segment is
//! compacted when it is mostly dead (or the log as a whole is): its live
//! messages are copied verbatim to the tail, and the old file is deleted only
//! after the copies are fsynced. Recovery tolerates seeing a message twice
//! (the later copy wins).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::thread::JoinHandle;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

/// Unique id of a durable queue (random, assigned by the broker).
pub type QueueUid = u64;
/// Node-wide monotonically increasing message id.
pub type MsgId = u64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("message store I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("message store corrupt: {0}")]
    Corrupt(String),
    /// The writer thread hit an error earlier; nothing submitted since is durable.
    #[error("message store failed: {0}")]
    Failed(String),
    /// The operation was submitted after `close()`, so it was not written.
    #[error("message store is closed")]
    Closed,
    #[error("message store directory {0} is in use by another store")]
    InUse(PathBuf),
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A segment is rolled over once appending would take it past this size.
    pub segment_size: u64,
    /// `false` only for tests and benchmarks: tickets then count as durable once written.
    pub fsync: bool,
    /// Bytes of dead records the closed segments may hold before compaction runs. A segment
    /// just rolled over still holds the messages consumers have not acked yet, which are
    /// gone a moment later: compacting it at once read and rewrote every segment under a
    /// steady stream (a quarter of the owner's CPU at 126k 1 KiB msg/s). Compaction is for
    /// the long-lived message that pins a segment whose other records are dead.
    pub compact_after_dead_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_size: 8 * 1024 * 1024,
            fsync: true,
            compact_after_dead_bytes: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredMessage {
    pub queue: QueueUid,
    pub id: MsgId,
    pub payload: Bytes,
    /// A consumer was sent the message before the restart.
    pub delivered: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Live messages (published, not removed), sorted by `(queue, id)`.
    pub messages: Vec<RecoveredMessage>,
    /// 1 + highest id ever seen, at least 1.
    pub next_msg_id: MsgId,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub segments: usize,
    pub bytes: u64,
    pub live_messages: u64,
    /// Number of data fsyncs so far; compare with publishes to see group commit at work.
    pub fsyncs: u64,
}

const MAGIC: [u8; 8] = *b"WRNMSTOR";
const VERSION: u32 = 1;
const HEADER_LEN: u64 = 32;
const REC_HDR: usize = 8;
const KIND_PUBLISH: u8 = 1;
const KIND_REMOVE: u8 = 2;
const KIND_DELETE_QUEUE: u8 = 3;
const KIND_DELIVERED: u8 = 4;
/// kind + queue + id
const PUBLISH_FIXED: usize = 17;
/// kind + queue
const QUEUE_FIXED: usize = 9;
/// Keeps the whole record length representable in the u32 kept per message.
const MAX_BODY: usize = u32::MAX as usize - REC_HDR;
/// Bounds the record size of huge `remove_many` calls.
const MAX_IDS_PER_RECORD: usize = 64 * 1024;
/// Write the buffer out before it grows past this, so a huge batch does not
/// hold a huge buffer.
const FLUSH_AT: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// CRC-32 (IEEE, reflected 0xEDB88320), slicing-by-8: every payload byte passes
// through it on the writer thread, and the byte-at-a-time loop would make the
// checksum, not the disk, the limit for large messages.

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut i = 0;
    while i < 256 {
        let mut s = 1;
        while s < 8 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            s += 1;
        }
        i += 1;
    }
    t
}

static CRC_TABLES: [[u32; 256]; 8] = crc_tables();

/// Continues a CRC: `crc32_update(crc32_update(0, a), b)` is the CRC of `a ++ b`.
fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]) ^ c;
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

fn crc32_parts(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32_update(crc, p))
}

// ---------------------------------------------------------------------------
// Encoding and decoding

fn seg_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("seg-{seq:012}.wlog"))
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".wlog")?;
    if digits.len() != 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn encode_header(seq: u64, id_floor: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&id_floor.to_le_bytes());
    let crc = crc32_parts(&[&h[0..12], &h[16..32]]);
    h[12..16].copy_from_slice(&crc.to_le_bytes());
    h
}

enum HeaderError {
    /// Short or failing its CRC: a crash while the segment was being created.
    Torn,
    /// Intact but not something this code may touch.
    Invalid(String),
}

/// Returns the message-id floor.
fn parse_header(buf: &[u8], seq: u64) -> Result<u64, HeaderError> {
    if buf.len() >= 12 && buf[0..8] == MAGIC {
        let version = le_u32(&buf[8..12]);
        if version != VERSION {
            // A newer format must never be "repaired" by deleting it.
            return Err(HeaderError::Invalid(format!(
                "unsupported format version {version}"
            )));
        }
    }
    if buf.len() < HEADER_LEN as usize || buf[0..8] != MAGIC {
        return Err(HeaderError::Torn);
    }
    let crc = crc32_parts(&[&buf[0..12], &buf[16..32]]);
    if crc != le_u32(&buf[12..16]) {
        return Err(HeaderError::Torn);
    }
    let file_seq = le_u64(&buf[16..24]);
    if file_seq != seq {
        return Err(HeaderError::Invalid(format!(
            "header says segment {file_seq}, file name says {seq}"
        )));
    }
    Ok(le_u64(&buf[24..32]))
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

enum Record<'a> {
    Publish {
        queue: QueueUid,
        id: MsgId,
        payload: &'a [u8],
    },
    /// Raw little-endian ids, decoded lazily to avoid an allocation per record.
    Remove {
        queue: QueueUid,
        ids: &'a [u8],
    },
    DeleteQueue {
        queue: QueueUid,
    },
    /// Raw little-endian ids, like `Remove`.
    Delivered {
        queue: QueueUid,
        ids: &'a [u8],
    },
}

enum RecordError {
    /// Incomplete or checksum mismatch: what a torn write looks like.
    Torn(&'static str),
    /// Checksum fine but content impossible: never a torn write.
    Malformed(String),
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Torn(why) => f.write_str(why),
            RecordError::Malformed(why) => f.write_str(why),
        }
    }
}

/// Decodes the record at `off`; `Ok(None)` at the exact end of `buf`.
fn read_record(buf: &[u8], off: usize) -> Result<Option<(Record<'_>, usize)>, RecordError> {
    let rest = &buf[off..];
    if rest.is_empty() {
        return Ok(None);
    }
    if rest.len() < REC_HDR {
        return Err(RecordError::Torn("incomplete record header"));
    }
    let body_len = le_u32(&rest[0..4]) as usize;
    if body_len == 0 {
        return Err(RecordError::Torn("zero record length"));
    }
    if body_len > rest.len() - REC_HDR {
        return Err(RecordError::Torn("record extends past end of file"));
    }
    let body = &rest[REC_HDR..REC_HDR + body_len];
    if crc32_parts(&[&rest[0..4], body]) != le_u32(&rest[4..8]) {
        return Err(RecordError::Torn("record checksum mismatch"));
    }
    let rec = match body[0] {
        KIND_PUBLISH if body.len() >= PUBLISH_FIXED => Record::Publish {
            queue: le_u64(&body[1..9]),
            id: le_u64(&body[9..17]),
            payload: &body[PUBLISH_FIXED..],
        },
        KIND_REMOVE
            if body.len() >= QUEUE_FIXED && (body.len() - QUEUE_FIXED).is_multiple_of(8) =>
        {
            Record::Remove {
                queue: le_u64(&body[1..9]),
                ids: &body[QUEUE_FIXED..],
            }
        }
        KIND_DELIVERED
            if body.len() >= QUEUE_FIXED && (body.len() - QUEUE_FIXED).is_multiple_of(8) =>
        {
            Record::Delivered {
                queue: le_u64(&body[1..9]),
                ids: &body[QUEUE_FIXED..],
            }
        }
        KIND_DELETE_QUEUE if body.len() == QUEUE_FIXED => Record::DeleteQueue {
            queue: le_u64(&body[1..9]),
        },
        kind => {
            return Err(RecordError::Malformed(format!(
                "invalid record (kind {kind}, body length {body_len})"
            )));
        }
    };
    Ok(Some((rec, REC_HDR + body_len)))
}

// ---------------------------------------------------------------------------
// In-memory index of live messages, shared by recovery and the writer

/// Where the live copy of a message is; `offset` tells it apart from older
/// copies of the same message that compaction left behind.
#[derive(Debug, Clone, Copy)]
struct Loc {
    seg: u64,
    offset: u64,
    len: u32,
}

#[derive(Debug, Default)]
struct SegInfo {
    file_bytes: u64,
    /// Bytes of all records (dead, live, removals).
    data_bytes: u64,
    live_count: u64,
    live_bytes: u64,
    /// Set after a failure so that the writer does not spin retrying; a failed
    /// delete is still retried after each batch.
    delete_failed: bool,
    compact_failed: bool,
}

#[derive(Debug, Default)]
struct Index {
    queues: HashMap<QueueUid, HashMap<MsgId, Loc>>,
    /// Live messages a consumer was sent.
    delivered: HashSet<(QueueUid, MsgId)>,
    segs: BTreeMap<u64, SegInfo>,
    live: u64,
    total_bytes: u64,
    max_id: u64,
}

impl Index {
    fn add_segment(&mut self, seq: u64) {
        self.segs.insert(
            seq,
            SegInfo {
                file_bytes: HEADER_LEN,
                ..SegInfo::default()
            },
        );
        self.total_bytes += HEADER_LEN;
    }

    fn drop_segment(&mut self, seq: u64) {
        if let Some(info) = self.segs.remove(&seq) {
            self.total_bytes -= info.file_bytes;
        }
    }

    fn note_record(&mut self, seq: u64, len: u64) {
        if let Some(info) = self.segs.get_mut(&seq) {
            info.file_bytes += len;
            info.data_bytes += len;
        }
        self.total_bytes += len;
    }

    fn unlink(&mut self, loc: Loc) {
        if let Some(info) = self.segs.get_mut(&loc.seg) {
            info.live_count -= 1;
            info.live_bytes -= u64::from(loc.len);
        }
    }

    fn add(&mut self, queue: QueueUid, id: MsgId, loc: Loc) {
        self.max_id = self.max_id.max(id);
        if let Some(info) = self.segs.get_mut(&loc.seg) {
            info.live_count += 1;
            info.live_bytes += u64::from(loc.len);
        }
        match self.queues.entry(queue).or_default().insert(id, loc) {
            Some(old) => self.unlink(old),
            None => self.live += 1,
        }
    }

    fn remove(&mut self, queue: QueueUid, id: MsgId) -> bool {
        self.max_id = self.max_id.max(id);
        let Some(msgs) = self.queues.get_mut(&queue) else {
            return false;
        };
        let Some(loc) = msgs.remove(&id) else {
            return false;
        };
        if msgs.is_empty() {
            self.queues.remove(&queue);
        }
        self.delivered.remove(&(queue, id));
        self.unlink(loc);
        self.live -= 1;
        true
    }

    fn delete_queue(&mut self, queue: QueueUid) -> usize {
        let Some(msgs) = self.queues.remove(&queue) else {
            return 0;
        };
        for (id, loc) in &msgs {
            self.delivered.remove(&(queue, *id));
            self.unlink(*loc);
        }
        self.live -= msgs.len() as u64;
        msgs.len()
    }

    /// Whether the record at (`seg`, `offset`) is the live copy of the message.
    fn is_live_at(&self, queue: QueueUid, id: MsgId, seg: u64, offset: u64) -> bool {
        self.queues
            .get(&queue)
            .and_then(|m| m.get(&id))
            .is_some_and(|l| l.seg == seg && l.offset == offset)
    }

    fn replay(&mut self, seg: u64, offset: u64, len: usize, rec: &Record<'_>) {
        self.note_record(seg, len as u64);
        match *rec {
            Record::Publish { queue, id, .. } => self.add(
                queue,
                id,
                Loc {
                    seg,
                    offset,
                    len: len as u32,
                },
            ),
            Record::Remove { queue, ids } => {
                for raw in ids.chunks_exact(8) {
                    self.remove(queue, le_u64(raw));
                }
            }
            Record::DeleteQueue { queue } => {
                self.delete_queue(queue);
            }
            Record::Delivered { queue, ids } => {
                for raw in ids.chunks_exact(8) {
                    self.mark_delivered(queue, le_u64(raw));
                }
            }
        }
    }

    /// Records a delivery of a live message; false if the message is not live.
    fn mark_delivered(&mut self, queue: QueueUid, id: MsgId) -> bool {
        let live = self.queues.get(&queue).is_some_and(|m| m.contains_key(&id));
        if live {
            self.delivered.insert((queue, id));
        }
        live
    }
}

// ---------------------------------------------------------------------------
// State shared between callers and the writer thread

enum Op {
    Publish {
        queue: QueueUid,
        id: MsgId,
        payload: Bytes,
    },
    Remove {
        queue: QueueUid,
        id: MsgId,
    },
    RemoveMany {
        queue: QueueUid,
        ids: Vec<MsgId>,
    },
    DeleteQueue {
        queue: QueueUid,
    },
    Delivered {
        queue: QueueUid,
        id: MsgId,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Open,
    Closing,
    Stopped,
}

struct Pending {
    ops: Vec<Op>,
    /// Tickets are assigned under the same lock that enqueues, so ticket order
    /// is write order and one watermark describes durability of everything.
    last_ticket: u64,
    state: RunState,
}

#[derive(Debug, Clone, Default)]
struct SyncState {
    synced: u64,
    failed: Option<Arc<str>>,
    closed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
    /// Mirrors `SyncState::synced` so the fast paths need no lock.
    synced: AtomicU64,
    sync_tx: watch::Sender<SyncState>,
    segments: AtomicUsize,
    bytes: AtomicU64,
    live: AtomicU64,
    fsyncs: AtomicU64,
    /// Makes the next sync fail, to test what callers see when the disk fails.
    #[cfg(test)]
    inject_sync_error: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn fail(&self, msg: String) {
        let dropped = {
            let mut p = self.pending.lock();
            p.state = RunState::Stopped;
            std::mem::take(&mut p.ops)
        };
        drop(dropped);
        self.sync_tx.send_modify(|s| s.failed = Some(msg.into()));
    }
}

struct Handle {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Handle {
    fn close(&self) {
        // Holding the lock while joining makes a concurrent close() return only
        // once the writer has really stopped.
        let mut thread = self.thread.lock();
        let Some(handle) = thread.take() else {
            return;
        };
        {
            let mut p = self.shared.pending.lock();
            if p.state == RunState::Open {
                p.state = RunState::Closing;
            }
        }
        self.shared.wake.notify_one();
        if handle.join().is_err() {
            tracing::error!("message store writer thread panicked");
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.close();
    }
}

/// Cloneable handle (Arc inside). All methods are non-blocking except `open`
/// and `close` (and dropping the last handle, which closes).
#[derive(Clone)]
pub struct MessageStore {
    inner: Arc<Handle>,
}

impl fmt::Debug for MessageStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageStore")
            .field("synced", &self.synced())
            .finish_non_exhaustive()
    }
}

impl MessageStore {
    /// Opens (creating if missing) the store in `dir`, replays all segments,
    /// truncates a torn tail record in the last segment and starts the writer
    /// thread.
    pub fn open(dir: &Path, opts: StoreOptions) -> Result<(MessageStore, Recovery), StoreError> {
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let dir_file = File::open(dir)?;
        let (mut index, tail, next_msg_id, messages) = recover(dir, &dir_file, opts.fsync)?;
        // Later segment headers must carry floors at least as high as what was
        // recovered, even if no message with such an id is live any more.
        index.max_id = next_msg_id - 1;

        let (file, seq, size) = match tail {
            Some((seq, size)) => {
                let file = OpenOptions::new().append(true).open(seg_path(dir, seq))?;
                if opts.fsync {
                    // What recovery read (and truncated) must be durable before
                    // the writer deletes segments on the strength of it.
                    file.sync_all()?;
                }
                (file, seq, size)
            }
            None => {
                let seq = index.segs.keys().next_back().map_or(1, |s| s + 1);
                let mut file = OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(seg_path(dir, seq))?;
                file.write_all(&encode_header(seq, next_msg_id))?;
                if opts.fsync {
                    file.sync_all()?;
                    dir_file.sync_all()?;
                }
                index.add_segment(seq);
                (file, seq, HEADER_LEN)
            }
        };

        let (sync_tx, _) = watch::channel(SyncState::default());
        let shared = Arc::new(Shared {
            pending: Mutex::new(Pending {
                ops: Vec::new(),
                last_ticket: 0,
                state: RunState::Open,
            }),
            wake: Condvar::new(),
            synced: AtomicU64::new(0),
            sync_tx,
            segments: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            live: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            #[cfg(test)]
            inject_sync_error: std::sync::atomic::AtomicBool::new(false),
        });
        let writer = Writer {
            shared: Arc::clone(&shared),
            dir: dir.to_path_buf(),
            dir_file,
            _lock: lock,
            fsync: opts.fsync,
            segment_size: opts.segment_size,
            compact_after_dead_bytes: opts.compact_after_dead_bytes,
            file,
            seq,
            size,
            buf: Vec::with_capacity(FLUSH_AT),
            dirty: false,
            index,
            batch: Vec::new(),
            scratch_ids: Vec::new(),
            scratch_rec: Vec::new(),
            read_buf: Vec::new(),
        };
        writer.publish_stats();
        let thread = std::thread::Builder::new()
            .name("msgstore-writer".into())
            .spawn(move || writer.run())?;
        let store = MessageStore {
            inner: Arc::new(Handle {
                shared,
                thread: Mutex::new(Some(thread)),
            }),
        };
        Ok((
            store,
            Recovery {
                messages,
                next_msg_id,
            },
        ))
    }

    fn submit(&self, op: Op) -> u64 {
        let shared = &self.inner.shared;
        let mut p = shared.pending.lock();
        if p.state != RunState::Open {
            // A ticket that can never be reached: waiting on it reports why.
            return p.last_ticket + 1;
        }
        p.last_ticket += 1;
        let ticket = p.last_ticket;
        let was_empty = p.ops.is_empty();
        p.ops.push(op);
        drop(p);
        // The writer only sleeps on an empty queue, so only the push that
        // makes it non-empty needs to wake it.
        if was_empty {
            shared.wake.notify_one();
        }
        ticket
    }

    /// Appends a publish record. The record is on disk once `synced() >= ticket`.
    pub fn publish(&self, queue: QueueUid, id: MsgId, payload: Bytes) -> u64 {
        self.submit(Op::Publish { queue, id, payload })
    }

    /// Appends an ack (removal) record for one message.
    pub fn remove(&self, queue: QueueUid, id: MsgId) -> u64 {
        self.submit(Op::Remove { queue, id })
    }

    /// Removes many messages of one queue in one record (purge, batch acks).
    pub fn remove_many(&self, queue: QueueUid, ids: &[MsgId]) -> u64 {
        self.submit(Op::RemoveMany {
            queue,
            ids: ids.to_vec(),
        })
    }

    /// Records that a consumer was sent the message (for the redelivered flag after a crash).
    pub fn mark_delivered(&self, queue: QueueUid, id: MsgId) -> u64 {
        self.submit(Op::Delivered { queue, id })
    }

    /// Forgets every message of a queue (queue deleted).
    pub fn delete_queue(&self, queue: QueueUid) -> u64 {
        self.submit(Op::DeleteQueue { queue })
    }

    /// Highest ticket known to be durable (fsynced, or written when fsync=false).
    pub fn synced(&self) -> u64 {
        self.inner.shared.synced.load(Ordering::Acquire)
    }

    /// Resolves once `synced() >= ticket`. Fails with `Failed` if the writer hit
    /// an error before getting there, or `Closed` if the operation came after
    /// `close()`.
    pub async fn wait_synced(&self, ticket: u64) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        if shared.synced.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let mut rx = shared.sync_tx.subscribe();
        let state = rx
            .wait_for(|s| s.synced >= ticket || s.failed.is_some() || s.closed)
            .await
            .map_err(|_| StoreError::Closed)?;
        if state.synced >= ticket {
            Ok(())
        } else if let Some(msg) = &state.failed {
            Err(StoreError::Failed(msg.to_string()))
        } else {
            Err(StoreError::Closed)
        }
    }

    /// Flushes, fsyncs and stops the writer thread (blocking). Operations
    /// submitted afterwards are not written; waiting on their tickets returns
    /// `Closed`. Later calls do nothing.
    pub fn close(&self) {
        self.inner.close();
    }

    /// Segment files on disk, their bytes, live messages, fsyncs so far.
    /// Reflects the operations the writer has processed.
    pub fn stats(&self) -> StoreStats {
        let s = &self.inner.shared;
        StoreStats {
            segments: s.segments.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            live_messages: s.live.load(Ordering::Relaxed),
            fsyncs: s.fsyncs.load(Ordering::Relaxed),
        }
    }
}

fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join("LOCK");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    // flock rather than a PID file: the kernel drops it when the process
    // dies, so a crash never leaves the store locked.
    // SAFETY: flock only reads the descriptor, which `file` keeps open.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(file);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(StoreError::InUse(dir.to_path_buf()))
    } else {
        Err(err.into())
    }
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_seg_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

type Recovered = (Index, Option<(u64, u64)>, MsgId, Vec<RecoveredMessage>);

/// Replays every segment. Returns the index, the last segment and its valid
/// length (if it is fit to append to), `next_msg_id` and the live messages.
fn recover(dir: &Path, dir_file: &File, fsync: bool) -> Result<Recovered, StoreError> {
    let seqs = list_segments(dir)?;
    let mut index = Index::default();
    let mut floor = 1u64;
    let mut tail = None;
    let mut buf = Vec::new();

    // Pass 1: validate and index, keeping no payloads, so memory stays bounded
    // by the live set rather than by the size of the log.
    for (i, &seq) in seqs.iter().enumerate() {
        let is_last = i + 1 == seqs.len();
        let path = seg_path(dir, seq);
        buf.clear();
        File::open(&path)?.read_to_end(&mut buf)?;
        match parse_header(&buf, seq) {
            Ok(f) => floor = floor.max(f),
            Err(HeaderError::Torn) if is_last => {
                // Only a crash between creating the file and its first fsync
                // gets here, so none of its contents was ever confirmed.
                tracing::warn!(file = %path.display(), "removing last segment with a torn header");
                fs::remove_file(&path)?;
                if fsync {
                    dir_file.sync_all()?;
                }
                continue;
            }
            Err(HeaderError::Torn) => {
                return Err(StoreError::Corrupt(format!(
                    "{}: bad segment header",
                    path.display()
                )));
            }
            Err(HeaderError::Invalid(why)) => {
                return Err(StoreError::Corrupt(format!("{}: {why}", path.display())));
            }
        }
        index.add_segment(seq);
        let mut off = HEADER_LEN as usize;
        loop {
            match read_record(&buf, off) {
                Ok(None) => break,
                Ok(Some((rec, len))) => {
                    index.replay(seq, off as u64, len, &rec);
                    off += len;
                }
                Err(RecordError::Torn(why)) if is_last => {
                    tracing::warn!(
                        file = %path.display(),
                        offset = off,
                        dropped_bytes = buf.len() - off,
                        reason = why,
                        "truncating torn tail of message store"
                    );
                    let f = OpenOptions::new().write(true).open(&path)?;
                    f.set_len(off as u64)?;
                    if fsync {
                        f.sync_all()?;
                    }
                    break;
                }
                Err(e) => {
                    return Err(StoreError::Corrupt(format!(
                        "{}: {e} at offset {off}",
                        path.display()
                    )));
                }
            }
        }
        if is_last {
            tail = Some((seq, off as u64));
        }
    }

    // Pass 2: collect the live payloads.
    let mut messages = Vec::with_capacity(index.live as usize);
    for (&seq, info) in &index.segs {
        if info.live_count == 0 {
            continue;
        }
        let mut data = Vec::new();
        File::open(seg_path(dir, seq))?.read_to_end(&mut data)?;
        let data = Bytes::from(data);
        // Slicing shares the whole segment buffer; only worth it when most of
        // it is live, otherwise one message would pin megabytes.
        let share = info.live_bytes * 2 >= info.data_bytes;
        let mut off = HEADER_LEN as usize;
        while let Ok(Some((rec, len))) = read_record(&data, off) {
            let live = match rec {
                Record::Publish { queue, id, payload }
                    if index.is_live_at(queue, id, seq, off as u64) =>
                {
                    Some((queue, id, payload))
                }
                _ => None,
            };
            if let Some((queue, id, payload)) = live {
                let payload = if share {
                    data.slice_ref(payload)
                } else {
                    Bytes::copy_from_slice(payload)
                };
                let delivered = index.delivered.contains(&(queue, id));
                messages.push(RecoveredMessage {
                    queue,
                    id,
                    payload,
                    delivered,
                });
            }
            off += len;
        }
    }
    if messages.len() as u64 != index.live {
        return Err(StoreError::Corrupt(format!(
            "segments changed during recovery: indexed {} live messages, read {}",
            index.live,
            messages.len()
        )));
    }
    messages.sort_unstable_by_key(|m| (m.queue, m.id));
    let next_msg_id = index.max_id.saturating_add(1).max(floor);
    Ok((index, tail, next_msg_id, messages))
}

// ---------------------------------------------------------------------------
// Writer thread

struct Writer {
    shared: Arc<Shared>,
    dir: PathBuf,
    dir_file: File,
    /// Held for the writer's lifetime: the directory is free again once it stops.
    _lock: File,
    fsync: bool,
    segment_size: u64,
    compact_after_dead_bytes: u64,
    file: File,
    seq: u64,
    /// Size of the current segment including what is still in `buf`.
    size: u64,
    buf: Vec<u8>,
    /// Written to the current file since its last sync.
    dirty: bool,
    index: Index,
    /// Swapped with the callers' queue so both allocations are reused.
    batch: Vec<Op>,
    scratch_ids: Vec<MsgId>,
    scratch_rec: Vec<u8>,
    read_buf: Vec<u8>,
}

/// Turns a writer exit that is neither a close nor a handled error (a panic)
/// into a store failure, so that waiters do not hang forever.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let stopped = self.0.pending.lock().state == RunState::Stopped;
        if !stopped {
            self.0.fail("writer thread stopped unexpectedly".into());
        }
    }
}

impl Writer {
    fn run(mut self) {
        let _guard = ExitGuard(Arc::clone(&self.shared));
        let mut last_published = 0;
        loop {
            let (upto, closing) = self.next_batch();
            match self.process(closing) {
                Ok(()) => {
                    // Before the tickets advance, so that a caller whose wait
                    // just resolved sees its own operations in `stats()`.
                    self.publish_stats();
                    if upto != last_published || closing {
                        last_published = upto;
                        self.shared.synced.store(upto, Ordering::Release);
                        self.shared.sync_tx.send_modify(|s| {
                            s.synced = upto;
                            s.closed = closing;
                        });
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "message store writer failed; no further writes");
                    self.shared.fail(e.to_string());
                    return;
                }
            }
            self.reclaim();
            self.publish_stats();
            if closing {
                self.shared.pending.lock().state = RunState::Stopped;
                return;
            }
        }
    }

    /// Blocks until there are operations, a close, or maintenance to do.
    /// Returns the last ticket included and whether the store is closing.
    fn next_batch(&mut self) -> (u64, bool) {
        let shared = Arc::clone(&self.shared);
        let mut p = shared.pending.lock();
        while p.ops.is_empty() && p.state == RunState::Open && !self.has_maintenance() {
            shared.wake.wait(&mut p);
        }
        std::mem::swap(&mut p.ops, &mut self.batch);
        (p.last_ticket, p.state != RunState::Open)
    }

    fn process(&mut self, closing: bool) -> io::Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        for op in batch.drain(..) {
            self.apply(op)?;
        }
        self.batch = batch;
        if !closing {
            self.maybe_compact()?;
        }
        self.flush()?;
        self.sync()
    }

    fn apply(&mut self, op: Op) -> io::Result<()> {
        match op {
            Op::Publish { queue, id, payload } => {
                if PUBLISH_FIXED + payload.len() > MAX_BODY {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("payload of {} bytes is too large to store", payload.len()),
                    ));
                }
                let mut fixed = [0u8; PUBLISH_FIXED];
                fixed[0] = KIND_PUBLISH;
                fixed[1..9].copy_from_slice(&queue.to_le_bytes());
                fixed[9..17].copy_from_slice(&id.to_le_bytes());
                let (offset, len) = self.append(&[&fixed[..], &payload[..]])?;
                let loc = Loc {
                    seg: self.seq,
                    offset,
                    len,
                };
                self.index.add(queue, id, loc);
            }
            Op::Remove { queue, id } => self.remove(queue, &[id])?,
            Op::Delivered { queue, id } => {
                if self.index.mark_delivered(queue, id) {
                    self.append_delivered(queue, id)?;
                }
            }
            Op::RemoveMany { queue, ids } => self.remove(queue, &ids)?,
            Op::DeleteQueue { queue } => {
                // Nothing live means no record on disk still needs cancelling.
                if self.index.delete_queue(queue) > 0 {
                    let mut body = [0u8; QUEUE_FIXED];
                    body[0] = KIND_DELETE_QUEUE;
                    body[1..9].copy_from_slice(&queue.to_le_bytes());
                    self.append(&[&body])?;
                }
            }
        }
        Ok(())
    }

    fn append_delivered(&mut self, queue: QueueUid, id: MsgId) -> io::Result<()> {
        let mut body = [0u8; QUEUE_FIXED + 8];
        body[0] = KIND_DELIVERED;
        body[1..9].copy_from_slice(&queue.to_le_bytes());
        body[9..17].copy_from_slice(&id.to_le_bytes());
        self.append(&[&body]).map(|_| ())
    }

    fn remove(&mut self, queue: QueueUid, ids: &[MsgId]) -> io::Result<()> {
        let mut live = std::mem::take(&mut self.scratch_ids);
        live.clear();
        // Ids that are not live have no publish record left to cancel.
        live.extend(
            ids.iter()
                .copied()
                .filter(|&id| self.index.remove(queue, id)),
        );
        let mut rec = std::mem::take(&mut self.scratch_rec);
        let mut result = Ok(());
        for chunk in live.chunks(MAX_IDS_PER_RECORD) {
            rec.clear();
            rec.push(KIND_REMOVE);
            rec.extend_from_slice(&queue.to_le_bytes());
            for id in chunk {
                rec.extend_from_slice(&id.to_le_bytes());
            }
            if let Err(e) = self.append(&[&rec]) {
                result = Err(e);
                break;
            }
        }
        self.scratch_ids = live;
        self.scratch_rec = rec;
        result
    }

    /// Appends one record whose body is the concatenation of `parts`.
    /// Returns its offset and total length.
    fn append(&mut self, parts: &[&[u8]]) -> io::Result<(u64, u32)> {
        let body_len: usize = parts.iter().map(|p| p.len()).sum();
        let len_bytes = (body_len as u32).to_le_bytes();
        let mut crc = crc32_update(0, &len_bytes);
        for p in parts {
            crc = crc32_update(crc, p);
        }
        let total = REC_HDR + body_len;
        self.make_room(total as u64)?;
        let offset = self.size;
        self.buf.extend_from_slice(&len_bytes);
        self.buf.extend_from_slice(&crc.to_le_bytes());
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.wrote(total as u64)?;
        Ok((offset, total as u32))
    }

    /// Appends an already encoded (and verified) record unchanged.
    fn append_raw(&mut self, record: &[u8]) -> io::Result<u64> {
        self.make_room(record.len() as u64)?;
        let offset = self.size;
        self.buf.extend_from_slice(record);
        self.wrote(record.len() as u64)?;
        Ok(offset)
    }

    fn wrote(&mut self, len: u64) -> io::Result<()> {
        self.size += len;
        self.index.note_record(self.seq, len);
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    fn make_room(&mut self, len: u64) -> io::Result<()> {
        // A record larger than a segment still goes somewhere: alone in one.
        if self.size > HEADER_LEN && self.size + len > self.segment_size {
            self.roll()?;
        }
        Ok(())
    }

    fn roll(&mut self) -> io::Result<()> {
        self.flush()?;
        // Syncing the old segment completely before the next exists is what
        // lets recovery treat damage in any non-last segment as corruption.
        self.sync()?;
        let seq = self.seq + 1;
        let file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .open(seg_path(&self.dir, seq))?;
        if self.fsync {
            self.dir_file.sync_all()?;
        }
        self.file = file;
        self.seq = seq;
        self.size = HEADER_LEN;
        self.index.add_segment(seq);
        let floor = self.index.max_id.saturating_add(1);
        self.buf.extend_from_slice(&encode_header(seq, floor));
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        self.file.write_all(&self.buf)?;
        self.buf.clear();
        self.dirty = true;
        if self.buf.capacity() > 4 * FLUSH_AT {
            self.buf.shrink_to(FLUSH_AT);
        }
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if self.shared.inject_sync_error.swap(false, Ordering::Relaxed) {
            return Err(io::Error::other("injected sync failure"));
        }
        if self.dirty {
            if self.fsync {
                self.file.sync_data()?;
                self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
            }
            self.dirty = false;
        }
        Ok(())
    }

    fn has_maintenance(&self) -> bool {
        if let Some((&seq, info)) = self.index.segs.first_key_value()
            && seq != self.seq
            && info.live_count == 0
            && !info.delete_failed
        {
            return true;
        }
        self.compaction_candidate().is_some()
    }

    /// The oldest segment, if rewriting its live messages is worth it: it is
    /// mostly dead (it pins little), or the log as a whole is mostly dead (the
    /// oldest segment is what keeps the dead segments behind it on disk).
    /// Either way writing its live bytes frees at least as many dead ones.
    fn compaction_candidate(&self) -> Option<u64> {
        // Leading empty segments are about to be reclaimed; looking past them
        // lets compaction run in the same round instead of the next one.
        let (&seq, info) = self
            .index
            .segs
            .iter()
            .find(|(_, i)| i.live_count > 0 || i.delete_failed)?;
        if seq == self.seq || info.live_count == 0 || info.compact_failed {
            return None;
        }
        let (live, data) = self
            .index
            .segs
            .iter()
            .filter(|&(&s, _)| s != self.seq)
            .fold((0u64, 0u64), |(l, d), (_, i)| {
                (l + i.live_bytes, d + i.data_bytes)
            });
        if data.saturating_sub(live) <= self.compact_after_dead_bytes {
            return None;
        }
        (info.live_bytes * 10 < info.data_bytes || live * 2 < data).then_some(seq)
    }

    /// Copies the live messages of the oldest segment to the tail; `reclaim`
    /// deletes the segment after the batch (and so the copies) is synced.
    fn maybe_compact(&mut self) -> io::Result<()> {
        let Some(seq) = self.compaction_candidate() else {
            return Ok(());
        };
        let path = seg_path(&self.dir, seq);
        let mut data = std::mem::take(&mut self.read_buf);
        data.clear();
        if let Err(e) = File::open(&path).and_then(|mut f| f.read_to_end(&mut data)) {
            tracing::warn!(file = %path.display(), error = %e, "cannot read segment for compaction");
            self.mark_compact_failed(seq);
            self.read_buf = data;
            return Ok(());
        }
        let mut off = HEADER_LEN as usize;
        let mut moved = 0u64;
        let mut result = Ok(());
        while off < data.len() {
            match read_record(&data, off) {
                Ok(None) => break,
                Ok(Some((rec, len))) => {
                    let live = match rec {
                        Record::Publish { queue, id, .. }
                            if self.index.is_live_at(queue, id, seq, off as u64) =>
                        {
                            Some((queue, id))
                        }
                        _ => None,
                    };
                    if let Some((queue, id)) = live {
                        match self.append_raw(&data[off..off + len]) {
                            Ok(new_off) => {
                                let loc = Loc {
                                    seg: self.seq,
                                    offset: new_off,
                                    len: len as u32,
                                };
                                self.index.add(queue, id, loc);
                                moved += 1;
                                // The marker may sit in a segment reclaimed later.
                                if self.index.delivered.contains(&(queue, id))
                                    && let Err(e) = self.append_delivered(queue, id)
                                {
                                    result = Err(e);
                                    break;
                                }
                            }
                            Err(e) => {
                                result = Err(e);
                                break;
                            }
                        }
                    }
                    off += len;
                }
                Err(e) => {
                    tracing::error!(file = %path.display(), offset = off, error = %e,
                        "corrupt record found while compacting; segment kept");
                    break;
                }
            }
        }
        if data.capacity() > 2 * self.segment_size as usize + FLUSH_AT {
            data = Vec::new();
        }
        self.read_buf = data;
        result?;
        let left = self.index.segs.get(&seq).map_or(0, |i| i.live_count);
        if left > 0 {
            // Without this the same segment would be picked again forever.
            tracing::error!(file = %path.display(), left, "compaction could not move every live message");
            self.mark_compact_failed(seq);
        } else {
            tracing::debug!(file = %path.display(), moved, "compacted message store segment");
        }
        Ok(())
    }

    fn mark_compact_failed(&mut self, seq: u64) {
        if let Some(info) = self.index.segs.get_mut(&seq) {
            info.compact_failed = true;
        }
    }

    /// Deletes leading segments without live messages. Runs only after the
    /// batch is synced, so the removals and copies that emptied them are durable.
    fn reclaim(&mut self) {
        while let Some((&seq, info)) = self.index.segs.first_key_value() {
            if seq == self.seq || info.live_count > 0 {
                break;
            }
            let path = seg_path(&self.dir, seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    if !info.delete_failed {
                        tracing::warn!(file = %path.display(), error = %e, "cannot delete empty segment");
                    }
                    if let Some(info) = self.index.segs.get_mut(&seq) {
                        info.delete_failed = true;
                    }
                    // Later segments must stay: their removal records are
                    // what keeps this one's messages dead.
                    break;
                }
            }
            self.index.drop_segment(seq);
            // Unlinks must reach the disk in order, for the same reason.
            if self.fsync
                && let Err(e) = self.dir_file.sync_all()
            {
                tracing::warn!(error = %e, "cannot sync message store directory");
            }
        }
    }

    fn publish_stats(&self) {
        let s = &self.shared;
        s.segments.store(self.index.segs.len(), Ordering::Relaxed);
        s.bytes.store(self.index.total_bytes, Ordering::Relaxed);
        s.live.store(self.index.live, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(segment_size: u64) -> StoreOptions {
        StoreOptions {
            segment_size,
            fsync: false,
            compact_after_dead_bytes: 0,
        }
    }

    fn seg_files(dir: &Path) -> Vec<u64> {
        list_segments(dir).unwrap()
    }

    fn payload(q: u64, id: u64, len: usize) -> Bytes {
        Bytes::from(
            (0..len)
                .map(|i| (q as usize * 31 + id as usize * 7 + i) as u8)
                .collect::<Vec<_>>(),
        )
    }

    async fn settle(store: &MessageStore, max_segments: usize) {
        for _ in 0..500 {
            if store.stats().segments <= max_segments {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn ids(r: &Recovery) -> Vec<(u64, u64)> {
        r.messages.iter().map(|m| (m.queue, m.id)).collect()
    }

    #[test]
    fn crc32_matches_reference() {
        assert_eq!(crc32_update(0, b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32_update(0, b""), 0);
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let split = crc32_update(crc32_update(0, &data[..333]), &data[333..]);
        assert_eq!(split, crc32_update(0, &data));
        // slicing-by-8 must agree with the bytewise loop
        let bytewise = !data.iter().fold(!0u32, |c, &b| {
            CRC_TABLES[0][((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
        });
        assert_eq!(bytewise, crc32_update(0, &data));
    }

    #[tokio::test]
    async fn publish_remove_reopen_recovers_live_messages_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (store, rec) = MessageStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert!(rec.messages.is_empty());
        assert_eq!(rec.next_msg_id, 1);
        for id in 1..=10 {
            store.publish(2, id, payload(2, id, 50));
            store.publish(1, id + 100, payload(1, id + 100, 70));
        }
        store.remove(2, 3);
        store.remove_many(1, &[101, 105, 110, 999]);
        let t = store.remove(2, 10);
        store.wait_synced(t).await.unwrap();
        assert_eq!(store.stats().live_messages, 15);
        store.close();
        drop(store);

        let (store, rec) = MessageStore::open(dir.path(), StoreOptions::default()).unwrap();
        let mut expected = Vec::new();
        for id in [102, 103, 104, 106, 107, 108, 109] {
            expected.push((1, id));
        }
        for id in [1, 2, 4, 5, 6, 7, 8, 9] {
            expected.push((2, id));
        }
        assert_eq!(ids(&rec), expected);
        for m in &rec.messages {
            let len = if m.queue == 1 { 70 } else { 50 };
            assert_eq!(m.payload, payload(m.queue, m.id, len));
        }
        assert_eq!(rec.next_msg_id, 111);
        assert_eq!(store.stats().live_messages, 15);
    }

    fn write_sample(dir: &Path, n: u64) {
        let (store, _) = MessageStore::open(dir, opts(1 << 20)).unwrap();
        for id in 1..=n {
            store.publish(7, id, payload(7, id, 100));
        }
        store.close();
    }

    #[test]
    fn garbage_appended_to_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path(), 20);
        let path = seg_path(dir.path(), 1);
        let good_len = fs::metadata(&path).unwrap().len();
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0xAB; 37]).unwrap();
        drop(f);

        let (store, rec) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(rec.messages.len(), 20);
        assert_eq!(rec.next_msg_id, 21);
        assert_eq!(fs::metadata(&path).unwrap().len(), good_len);
        // the store stays usable after the repair
        store.publish(7, 21, payload(7, 21, 100));
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(rec.messages.len(), 21);
        assert_eq!(rec.messages[20].payload, payload(7, 21, 100));
    }

    #[test]
    fn record_cut_mid_write_is_dropped_and_earlier_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path(), 20);
        let path = seg_path(dir.path(), 1);
        let len = fs::metadata(&path).unwrap().len();
        // cut inside the last record's payload
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(len - 40)
            .unwrap();
        let (_store, rec) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(ids(&rec), (1..=19).map(|id| (7, id)).collect::<Vec<_>>());
        for m in &rec.messages {
            assert_eq!(m.payload, payload(7, m.id, 100));
        }
    }

    #[test]
    fn segment_with_torn_header_at_tail_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        write_sample(dir.path(), 5);
        fs::write(seg_path(dir.path(), 2), b"WRNM").unwrap();
        let (store, rec) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(rec.messages.len(), 5);
        // replaced by a fresh, valid segment
        store.publish(7, 6, payload(7, 6, 100));
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(ids(&rec), (1..=6).map(|id| (7, id)).collect::<Vec<_>>());
        assert_eq!(seg_files(dir.path()), vec![1, 2]);
    }

    #[test]
    fn corruption_in_older_segment_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(2048)).unwrap();
        for id in 1..=60 {
            store.publish(1, id, payload(1, id, 200));
        }
        store.close();
        drop(store);
        assert!(seg_files(dir.path()).len() > 3);
        let path = seg_path(dir.path(), 2);
        let mut data = fs::read(&path).unwrap();
        data[HEADER_LEN as usize + 300] ^= 0x01;
        fs::write(&path, &data).unwrap();

        let err = MessageStore::open(dir.path(), opts(2048)).unwrap_err();
        match err {
            StoreError::Corrupt(msg) => {
                assert!(msg.contains("seg-000000000002.wlog"), "{msg}");
                assert!(msg.contains("offset"), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        // and nothing was "repaired" away
        assert_eq!(fs::read(&path).unwrap(), data);
    }

    #[tokio::test]
    async fn emptied_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        for id in 1..=100 {
            store.publish(1, id, payload(1, id, 500));
        }
        let t = store.remove(1, 1);
        store.wait_synced(t).await.unwrap();
        let before = seg_files(dir.path()).len();
        assert!(before > 10, "{before}");
        // removing most leaves the segment holding the rest
        let t = store.remove_many(1, &(2..=99).collect::<Vec<_>>());
        store.wait_synced(t).await.unwrap();
        store.close();
        let files = seg_files(dir.path());
        assert!(files.len() <= 3, "{files:?}");
        assert_eq!(store.stats().live_messages, 1);
        assert_eq!(store.stats().segments, files.len());
        drop(store);

        let (store, rec) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        assert_eq!(ids(&rec), vec![(1, 100)]);
        assert_eq!(rec.messages[0].payload, payload(1, 100, 500));
        assert_eq!(rec.next_msg_id, 101);
        let t = store.remove(1, 100);
        store.wait_synced(t).await.unwrap();
        store.close();
        // only the segment being appended to is left
        assert_eq!(seg_files(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn compaction_moves_long_lived_message_forward() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        store.publish(9, 1, payload(9, 1, 300));
        for id in 2..=400 {
            store.publish(1, id, payload(1, id, 300));
            let t = store.remove(1, id);
            if id % 50 == 0 {
                store.wait_synced(t).await.unwrap();
            }
        }
        settle(&store, 3).await;
        store.close();
        let files = seg_files(dir.path());
        assert!(!files.contains(&1), "{files:?}");
        assert!(files.len() <= 3, "{files:?}");
        drop(store);

        let (_store, rec) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        assert_eq!(ids(&rec), vec![(9, 1)]);
        assert_eq!(rec.messages[0].payload, payload(9, 1, 300));
        assert_eq!(rec.next_msg_id, 401);
    }

    #[tokio::test]
    async fn delivery_markers_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        store.publish(9, 1, payload(9, 1, 300));
        store.publish(9, 2, payload(9, 2, 300));
        store.mark_delivered(9, 1);
        // A marker for a message that is gone changes nothing.
        store.mark_delivered(9, 77);
        // Push both messages' segment to compaction: they move forward, and the marker of
        // message 1 must move with them.
        for id in 3..=400 {
            store.publish(1, id, payload(1, id, 300));
            let t = store.remove(1, id);
            if id % 50 == 0 {
                store.wait_synced(t).await.unwrap();
            }
        }
        settle(&store, 3).await;
        store.close();
        assert!(!seg_files(dir.path()).contains(&1));
        drop(store);

        let (store, rec) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        let flags: Vec<(u64, bool)> = rec.messages.iter().map(|m| (m.id, m.delivered)).collect();
        assert_eq!(flags, vec![(1, true), (2, false)]);
        // Removing and re-reading forgets the marker with the message.
        let t = store.remove(9, 1);
        store.wait_synced(t).await.unwrap();
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        let flags: Vec<(u64, bool)> = rec.messages.iter().map(|m| (m.id, m.delivered)).collect();
        assert_eq!(flags, vec![(2, false)]);
    }

    /// Messages 16..=20 left unacked in a segment that then rolls over under a stream of
    /// messages acked at once: whether that segment is still on disk while they are live.
    async fn unacked_tail_kept_in_place(opts: StoreOptions) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts.clone()).unwrap();
        for id in 1..=20 {
            store.publish(1, id, payload(1, id, 300));
        }
        let mut t = 0;
        for id in 1..=15 {
            t = store.remove(1, id);
        }
        store.wait_synced(t).await.unwrap();
        let tail = *seg_files(dir.path()).last().unwrap();
        for id in 21..=40 {
            store.publish(1, id, payload(1, id, 300));
            t = store.remove(1, id);
        }
        store.wait_synced(t).await.unwrap();
        settle(&store, 2).await;
        let kept = seg_files(dir.path()).contains(&tail);
        store.close();
        drop(store);
        let (store, rec) = MessageStore::open(dir.path(), opts).unwrap();
        assert_eq!(ids(&rec), (16..=20).map(|id| (1, id)).collect::<Vec<_>>());
        // Acked at last: the segment goes either way.
        for id in 16..=20 {
            t = store.remove(1, id);
        }
        store.wait_synced(t).await.unwrap();
        settle(&store, 1).await;
        store.close();
        assert!(!seg_files(dir.path()).contains(&tail));
        kept
    }

    #[tokio::test]
    async fn a_stream_s_unacked_tail_is_not_compacted_until_dead_bytes_pass_the_allowance() {
        // Consumers ack a moment after delivery: copying the few live messages of a segment
        // just rolled over is wasted work (they are removed a moment later).
        let allowed = StoreOptions {
            compact_after_dead_bytes: 64 * 1024,
            ..opts(4096)
        };
        assert!(unacked_tail_kept_in_place(allowed).await);
        // With no allowance the same segment is compacted while its messages are live.
        assert!(!unacked_tail_kept_in_place(opts(4096)).await);
    }

    #[tokio::test]
    async fn compaction_of_mostly_live_oldest_segment_when_log_is_mostly_dead() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        // a stuck queue fills the first segment entirely
        for id in 1..=10 {
            store.publish(5, id, payload(5, id, 300));
        }
        for id in 11..=500 {
            store.publish(1, id, payload(1, id, 300));
            store.remove(1, id);
        }
        let t = store.publish(1, 501, payload(1, 501, 10));
        store.wait_synced(t).await.unwrap();
        // compaction is background work: give it time to catch up
        settle(&store, 4).await;
        store.close();
        let files = seg_files(dir.path());
        assert!(files.len() <= 4, "{files:?}");
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        let mut expected: Vec<_> = (1..=10).map(|id| (5, id)).collect();
        expected.insert(0, (1, 501));
        assert_eq!(ids(&rec), expected);
    }

    #[tokio::test]
    async fn wait_synced_resolves_after_publish() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).unwrap();
        let t1 = store.publish(1, 1, Bytes::from_static(b"hello"));
        let t2 = store.publish(1, 2, Bytes::from_static(b"world"));
        assert!(t2 > t1);
        store.wait_synced(t2).await.unwrap();
        assert!(store.synced() >= t2);
        store.wait_synced(t1).await.unwrap();
        assert!(store.stats().fsyncs >= 1);
    }

    #[tokio::test]
    async fn operations_after_close_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        let t = store.publish(1, 1, Bytes::from_static(b"kept"));
        store.close();
        assert!(store.synced() >= t);
        store.wait_synced(t).await.unwrap();
        let late = store.publish(1, 2, Bytes::from_static(b"late"));
        assert!(matches!(
            store.wait_synced(late).await,
            Err(StoreError::Closed)
        ));
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        assert_eq!(ids(&rec), vec![(1, 1)]);
    }

    #[tokio::test]
    async fn sync_failure_fails_pending_and_later_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).unwrap();
        let ok = store.publish(1, 1, Bytes::from_static(b"durable"));
        store.wait_synced(ok).await.unwrap();
        store
            .inner
            .shared
            .inject_sync_error
            .store(true, Ordering::Relaxed);
        let lost = store.publish(1, 2, Bytes::from_static(b"lost"));
        let err = store.wait_synced(lost).await.unwrap_err();
        assert!(matches!(err, StoreError::Failed(_)), "{err:?}");
        assert!(store.synced() < lost);
        // already durable tickets stay fine, everything later fails
        store.wait_synced(ok).await.unwrap();
        let later = store.publish(1, 3, Bytes::from_static(b"later"));
        assert!(matches!(
            store.wait_synced(later).await,
            Err(StoreError::Failed(_))
        ));
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(rec.messages[0].id, 1);
    }

    #[test]
    fn second_open_of_same_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
        assert!(matches!(
            MessageStore::open(dir.path(), opts(1 << 20)),
            Err(StoreError::InUse(_))
        ));
        store.close();
        let (_again, _) = MessageStore::open(dir.path(), opts(1 << 20)).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_publishers_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), StoreOptions::default()).unwrap();
        const TASKS: u64 = 16;
        const PER_TASK: u64 = 250;
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_TASK {
                    let id = task * PER_TASK + i + 1;
                    let t = store.publish(task, id, payload(task, id, 100));
                    // a publisher with a confirm window of 10
                    if i % 10 == 9 {
                        store.wait_synced(t).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let publishes = TASKS * PER_TASK;
        let fsyncs = store.stats().fsyncs;
        assert!(store.synced() >= publishes);
        assert!(
            fsyncs * 5 < publishes,
            "{fsyncs} fsyncs for {publishes} publishes"
        );
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), StoreOptions::default()).unwrap();
        assert_eq!(rec.messages.len() as u64, publishes);
        assert_eq!(rec.next_msg_id, publishes + 1);
    }

    #[tokio::test]
    async fn delete_queue_is_forgotten_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        for id in 1..=30 {
            store.publish(1, id, payload(1, id, 200));
            store.publish(2, id + 30, payload(2, id + 30, 200));
        }
        let t = store.delete_queue(1);
        store.wait_synced(t).await.unwrap();
        assert_eq!(store.stats().live_messages, 30);
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), opts(4096)).unwrap();
        assert_eq!(ids(&rec), (31..=60).map(|id| (2, id)).collect::<Vec<_>>());
        assert_eq!(rec.next_msg_id, 61);
    }

    #[tokio::test]
    async fn next_msg_id_survives_reclaimed_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = MessageStore::open(dir.path(), opts(1024)).unwrap();
        for id in 1..=42 {
            store.publish(1, id, payload(1, id, 100));
        }
        let t = store.remove_many(1, &(1..=42).collect::<Vec<_>>());
        store.wait_synced(t).await.unwrap();
        store.close();
        // every message gone, the last one's segment too
        assert!(!seg_files(dir.path()).contains(&1));
        drop(store);
        let (store, rec) = MessageStore::open(dir.path(), opts(1024)).unwrap();
        assert!(rec.messages.is_empty());
        assert_eq!(rec.next_msg_id, 43);
        store.close();
        drop(store);
        let (_store, rec) = MessageStore::open(dir.path(), opts(1024)).unwrap();
        assert_eq!(rec.next_msg_id, 43);
    }
}
