//! The Raft log and vote in redb, for every Raft on the node: the metadata cluster's (a file
//! on disc nodes, memory on ram nodes) and each quorum queue's (a file of its own). Values
//! are written with `codec`.
//!
//! Appends are group-committed: each append is written at once without an fsync, and Raft is
//! told it is on disk only after a durable commit that follows it (redb makes every earlier
//! commit durable with it). One fsync then covers every append made while the previous one
//! ran; a leader that appends each client write on its own no longer pays an fsync apiece.
//!
//! The newest entries are also kept in memory (`Recent`): right after an append the leader
//! sends them to every follower and then applies them, and each of those reads would
//! otherwise be a redb read and a decode (a copy of every message body) of what was just
//! written.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes); the helpers
// here return the same type so `?` needs no conversions.
#![allow(clippy::result_large_err)]

use std::collections::VecDeque;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, Entry, LogId, LogState, OptionalSend, RaftLogReader, RaftTypeConfig, StorageError,
    StorageIOError, Vote,
};
use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::codec;
use super::{ClusterNode, NodeId};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub type StorageResult<T> = Result<T, StorageError<NodeId>>;

pub fn read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

pub fn write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

/// Opens a Raft database: a file, or memory when `path` is None. `cache_bytes` bounds redb's
/// page cache, which is 1 GiB per database by default: a node with a few quorum queues
/// filled it for each of them and was killed for want of memory.
pub fn open_db(
    path: Option<&std::path::Path>,
    cache_bytes: usize,
) -> Result<Arc<Database>, redb::Error> {
    let mut builder = Database::builder();
    builder.set_cache_size(cache_bytes);
    let db = match path {
        Some(p) => builder.create(p)?,
        None => builder.create_with_backend(redb::backends::InMemoryBackend::new())?,
    };
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.commit()?;
    Ok(Arc::new(db))
}

/// One value of the database's small key-value table (vote, purge point, snapshot).
pub fn get_meta<T: DeserializeOwned>(db: &Database, key: &str) -> StorageResult<Option<T>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => codec::decode(v.value()).map(Some).map_err(read_err),
        None => Ok(None),
    }
}

/// Writes one value of the key-value table, durably.
pub fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> StorageResult<()> {
    put_meta_with(db, key, value, redb::Durability::Immediate)
}

fn put_meta_with<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: redb::Durability,
) -> StorageResult<()> {
    let bytes = codec::encode(value).map_err(write_err)?;
    let mut tx = db.begin_write().map_err(write_err)?;
    tx.set_durability(durability).map_err(write_err)?;
    {
        let mut table = tx.open_table(META).map_err(write_err)?;
        table.insert(key, bytes.as_slice()).map_err(write_err)?;
    }
    tx.commit().map_err(write_err)
}

/// The newest entries of the log, a contiguous run that always ends at its last entry (every
/// append goes through it; a gap starts it afresh). Empty after a restart until appends
/// come; reads it cannot answer in whole go to redb. At most `capacity` entries: a follower
/// a little behind, and the state machine, read them from here.
struct Recent<C: RaftTypeConfig> {
    entries: VecDeque<Entry<C>>,
    capacity: usize,
}

impl<C> Recent<C>
where
    C: RaftTypeConfig<NodeId = NodeId, Entry = Entry<C>>,
    C::D: Clone,
{
    fn first_index(&self) -> Option<u64> {
        self.entries.front().map(|e| e.log_id.index)
    }

    fn last_index(&self) -> Option<u64> {
        self.entries.back().map(|e| e.log_id.index)
    }

    fn push(&mut self, entry: Entry<C>) {
        if self.last_index().map(|i| i + 1) != Some(entry.log_id.index) {
            self.entries.clear();
        }
        self.entries.push_back(entry);
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    /// Drops the entries from `index` on (a truncated log).
    fn truncate(&mut self, index: u64) {
        while self.last_index().is_some_and(|i| i >= index) {
            self.entries.pop_back();
        }
    }

    /// Drops the entries up to `index` (a purged log).
    fn purge(&mut self, index: u64) {
        while self.first_index().is_some_and(|i| i <= index) {
            self.entries.pop_front();
        }
    }

    /// The entries of `start..=end` (`end` None: to the last), if all of them are here.
    fn range(&self, start: u64, end: Option<u64>) -> Option<Vec<Entry<C>>> {
        let (first, last) = (self.first_index()?, self.last_index()?);
        let end = end.unwrap_or(last);
        if start < first || end > last {
            return None;
        }
        if start > end {
            return Some(Vec::new());
        }
        let from = usize::try_from(start - first).ok()?;
        let to = usize::try_from(end - first).ok()?;
        Some(self.entries.range(from..=to).cloned().collect())
    }
}

/// Appends written but not yet durable, and whether a flush is under way.
struct Flushes<C: RaftTypeConfig> {
    waiting: Vec<LogFlushed<C>>,
    running: bool,
}

/// The Raft log and vote of one Raft, whatever its state machine.
pub struct LogStore<C: RaftTypeConfig> {
    db: Arc<Database>,
    recent: Arc<Mutex<Recent<C>>>,
    flushes: Arc<Mutex<Flushes<C>>>,
    _config: PhantomData<C>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            recent: self.recent.clone(),
            flushes: self.flushes.clone(),
            _config: PhantomData,
        }
    }
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// A log store on `db` keeping its newest `recent_entries` entries in memory too.
    pub fn new(db: Arc<Database>, recent_entries: usize) -> LogStore<C> {
        LogStore {
            db,
            recent: Arc::new(Mutex::new(Recent {
                entries: VecDeque::new(),
                capacity: recent_entries,
            })),
            flushes: Arc::new(Mutex::new(Flushes {
                waiting: Vec::new(),
                running: false,
            })),
            _config: PhantomData,
        }
    }

    /// Tells Raft about `callback`'s append once a durable commit has followed it.
    fn once_durable(&self, callback: LogFlushed<C>) {
        let start = {
            let mut f = self.flushes.lock();
            f.waiting.push(callback);
            !std::mem::replace(&mut f.running, true)
        };
        if start {
            let (db, flushes) = (self.db.clone(), self.flushes.clone());
            // The fsync blocks: off the runtime's workers.
            tokio::task::spawn_blocking(move || flush_until_idle(&db, &flushes));
        }
    }
}

/// Durable commits, each covering every append made before it began, until none waits.
fn flush_until_idle<C: RaftTypeConfig>(db: &Database, flushes: &Mutex<Flushes<C>>) {
    loop {
        let batch = {
            let mut f = flushes.lock();
            if f.waiting.is_empty() {
                f.running = false;
                return;
            }
            std::mem::take(&mut f.waiting)
        };
        let result = durable_commit(db).map_err(|e| e.to_string());
        for callback in batch {
            callback.log_io_completed(result.clone().map_err(std::io::Error::other));
        }
    }
}

/// An empty commit with Durability::Immediate: redb makes the non-durable commits before it
/// durable with it.
fn durable_commit(db: &Database) -> Result<(), redb::Error> {
    let mut tx = db.begin_write()?;
    tx.set_durability(redb::Durability::Immediate)?;
    tx.commit()?;
    Ok(())
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = NodeId, Node = ClusterNode, Entry = Entry<C>>,
    C::D: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<C>>> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Some(*i),
            Bound::Excluded(0) => return Ok(Vec::new()),
            Bound::Excluded(i) => Some(i - 1),
            Bound::Unbounded => None,
        };
        if let Some(entries) = self.recent.lock().range(start, end) {
            return Ok(entries);
        }
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(LOG).map_err(read_err)?;
        let mut out = Vec::new();
        for row in table.range(start..).map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            if !range.contains(&k.value()) {
                break;
            }
            out.push(codec::decode(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = NodeId, Node = ClusterNode, Entry = Entry<C>>,
    C::D: Clone,
{
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C>> {
        // Written as an Option (see `purge`): read as one. JSON wrote `Some(id)` as `id`, so
        // the two read alike there; postcard tags it, and reading a bare LogId would misread.
        let last_purged = get_meta::<Option<LogId<NodeId>>>(&self.db, "last_purged")?.flatten();
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<C> = codec::decode(v.value()).map_err(read_err)?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        put_meta(&self.db, "vote", vote)
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        get_meta(&self.db, "vote")
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> StorageResult<()> {
        // Only a hint for a faster restart (Raft re-learns it): no fsync of
        // its own, it reaches the disk with the next log append.
        put_meta_with(&self.db, "committed", &committed, redb::Durability::None)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<NodeId>>> {
        Ok(get_meta::<Option<LogId<NodeId>>>(&self.db, "committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut tx = self.db.begin_write().map_err(write_err)?;
        tx.set_durability(redb::Durability::None)
            .map_err(write_err)?;
        let mut written = Vec::new();
        {
            let mut table = tx.open_table(LOG).map_err(write_err)?;
            for e in entries {
                let bytes = codec::encode(&e).map_err(write_err)?;
                table
                    .insert(e.log_id.index, bytes.as_slice())
                    .map_err(write_err)?;
                written.push(e);
            }
        }
        tx.commit().map_err(write_err)?;
        {
            let mut recent = self.recent.lock();
            for e in written {
                recent.push(e);
            }
        }
        // The entries are on disk before Raft counts this node's vote for them: Raft hears
        // of them after the durable commit that follows.
        self.once_durable(callback);
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = tx.open_table(LOG).map_err(write_err)?;
            table
                .retain_in(log_id.index.., |_, _| false)
                .map_err(write_err)?;
        }
        tx.commit().map_err(write_err)?;
        self.recent.lock().truncate(log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        self.recent.lock().purge(log_id.index);
        // The purge point and the removal in one commit (one fsync, and never one without
        // the other).
        let bytes = codec::encode(&Some(log_id)).map_err(write_err)?;
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut meta = tx.open_table(META).map_err(write_err)?;
            meta.insert("last_purged", bytes.as_slice())
                .map_err(write_err)?;
            let mut table = tx.open_table(LOG).map_err(write_err)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::TypeConfig;
    use crate::meta::{MetaCommand, VhostRecord};
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64, vhost: &str) -> Entry<TypeConfig> {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
            payload: EntryPayload::Normal(MetaCommand::AddVhost(VhostRecord {
                name: vhost.into(),
                description: String::new(),
            })),
        }
    }

    /// What a node of an earlier version left in its Raft database: JSON values.
    fn write_json_like_before(db: &Database, entries: &[Entry<TypeConfig>], vote: &Vote<NodeId>) {
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            for e in entries {
                let bytes = serde_json::to_vec(e).unwrap();
                log.insert(e.log_id.index, bytes.as_slice()).unwrap();
            }
            let mut meta = tx.open_table(META).unwrap();
            let bytes = serde_json::to_vec(vote).unwrap();
            meta.insert("vote", bytes.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }

    #[tokio::test]
    async fn a_log_written_as_json_reads_and_grows_in_postcard() {
        let db = open_db(None, 1 << 20).unwrap();
        let vote = Vote::new_committed(3, 1);
        write_json_like_before(&db, &[entry(1, "a"), entry(2, "b")], &vote);
        let mut store = LogStore::<TypeConfig>::new(db.clone(), 1024);
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(2));

        // New entries are written in postcard, next to the JSON ones.
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            let bytes = codec::encode(&entry(3, "c")).unwrap();
            assert_ne!(bytes.first(), Some(&b'{'));
            log.insert(3, bytes.as_slice()).unwrap();
        }
        tx.commit().unwrap();
        let read = store.try_get_log_entries(1..=3).await.unwrap();
        let names: Vec<String> = read
            .iter()
            .map(|e| match &e.payload {
                EntryPayload::Normal(MetaCommand::AddVhost(v)) => v.name.clone(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        store.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(4, 1))
        );
    }

    fn indexes(entries: &[Entry<TypeConfig>]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn the_recent_entries_are_the_log_s_newest_run_and_answer_only_what_they_hold_in_whole() {
        let mut recent = Recent::<TypeConfig> {
            entries: VecDeque::new(),
            capacity: 1024,
        };
        assert!(recent.range(1, None).is_none());
        for i in 5..=9 {
            recent.push(entry(i, "v"));
        }
        assert_eq!(
            recent.range(6, Some(8)).map(|e| indexes(&e)),
            Some(vec![6, 7, 8])
        );
        assert_eq!(
            recent.range(7, None).map(|e| indexes(&e)),
            Some(vec![7, 8, 9])
        );
        assert_eq!(recent.range(10, None).map(|e| indexes(&e)), Some(vec![]));
        // Older than the run, or past its end: redb answers.
        assert!(recent.range(4, Some(6)).is_none());
        assert!(recent.range(8, Some(10)).is_none());

        // A new leader's log replaces the tail from 8 on.
        recent.truncate(8);
        recent.push(entry(8, "w"));
        assert_eq!(
            recent.range(5, None).map(|e| indexes(&e)),
            Some(vec![5, 6, 7, 8])
        );
        // A gap (a snapshot installed) starts the run afresh.
        recent.push(entry(20, "x"));
        assert_eq!(recent.range(20, None).map(|e| indexes(&e)), Some(vec![20]));
        assert!(recent.range(8, None).is_none());
        recent.purge(20);
        assert!(recent.range(20, None).is_none());

        for i in 21..(21 + 1024 + 10) {
            recent.push(entry(i, "y"));
        }
        assert_eq!(recent.entries.len(), 1024);
        assert!(recent.range(21, None).is_none());
    }

    #[tokio::test]
    async fn a_purged_log_reopens_with_its_purge_point_and_the_entries_after_it() {
        // A Raft purges its log after each snapshot; the node must start from it after.
        let db = open_db(None, 1 << 20).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            for i in 1..=5 {
                let bytes = codec::encode(&entry(i, "v")).unwrap();
                log.insert(i, bytes.as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
        let mut store = LogStore::<TypeConfig>::new(db.clone(), 1024);
        let purge_point = entry(3, "v").log_id;
        store.purge(purge_point).await.unwrap();

        let mut reopened = LogStore::<TypeConfig>::new(db, 1024);
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(purge_point));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        let left = reopened.try_get_log_entries(0..).await.unwrap();
        assert_eq!(indexes(&left), vec![4, 5]);

        // Purged up to the last entry: the purge point is the last log id.
        reopened.purge(entry(5, "v").log_id).await.unwrap();
        let state = reopened.get_log_state().await.unwrap();
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        assert!(reopened.try_get_log_entries(0..).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_damaged_entry_is_a_storage_error() {
        let db = open_db(None, 1 << 20).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut log = tx.open_table(LOG).unwrap();
            log.insert(1, [0x01u8, 0xff, 0xff].as_slice()).unwrap();
        }
        tx.commit().unwrap();
        let mut store = LogStore::<TypeConfig>::new(db, 1024);
        assert!(store.try_get_log_entries(1..=1).await.is_err());
        assert!(store.get_log_state().await.is_err());
    }
}
