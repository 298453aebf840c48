//! Raft's storage for the metadata cluster: the log, the vote and snapshots in
//! redb (a file on disc nodes, memory on ram nodes), and the state machine,
//! which is `meta::MetaState` applying `MetaCommand`s.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes);
// the helpers here return the same type so `?` needs no conversions.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io::Cursor;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, OnceLock};

use openraft::storage::{LogFlushed, RaftLogStorage, RaftStateMachine};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, LogState, OptionalSend, RaftLogReader,
    RaftSnapshotBuilder, RaftTypeConfig, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use parking_lot::RwLock;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

use super::types::{ClusterNode, MetaReply, TypeConfig};
use crate::meta::state::MetaSnapshot;
use crate::meta::{MetaEvent, MetaListener, MetaOutcome, MetaState};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

pub(crate) type NodeId = u64;
pub(crate) type StorageResult<T> = Result<T, StorageError<NodeId>>;

pub(crate) fn read_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::read(AnyError::error(e.to_string())).into()
}

pub(crate) fn write_err(e: impl ToString) -> StorageError<NodeId> {
    StorageIOError::write(AnyError::error(e.to_string())).into()
}

/// Opens the Raft database: a file for a disc node, memory for a ram node.
pub fn open_db(path: Option<&std::path::Path>) -> Result<Arc<Database>, redb::Error> {
    let db = match path {
        Some(p) => Database::create(p)?,
        None => Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?,
    };
    let tx = db.begin_write()?;
    tx.open_table(LOG)?;
    tx.open_table(META)?;
    tx.commit()?;
    Ok(Arc::new(db))
}

/// Reads what this node itself wrote to its log. Every change was shown to round-trip
/// through the default (depth-limited) decoder before it was committed
/// ([`check_round_trip`]); the limit is lifted here anyway so that a node can always start
/// from its own log, also one written before that check existed.
pub(crate) fn decode_own<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.disable_recursion_limit();
    let value = T::deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Encodes `cmd` as its log entry and reads it back with the decoder every node uses for
/// entries from peers: a change that would not come back whole (nesting past serde_json's
/// limit, a float JSON cannot hold) is refused before it is committed, instead of bricking
/// every node's log.
pub fn check_round_trip(cmd: &crate::meta::MetaCommand) -> Result<(), crate::meta::MetaError> {
    let refuse = |why: String| {
        crate::meta::MetaError::Precondition(format!("arguments cannot be stored: {why}"))
    };
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::default(),
        payload: EntryPayload::Normal(cmd.clone()),
    };
    let bytes = serde_json::to_vec(&entry).map_err(|e| refuse(e.to_string()))?;
    let back: Entry<TypeConfig> =
        serde_json::from_slice(&bytes).map_err(|e| refuse(e.to_string()))?;
    match back.payload {
        EntryPayload::Normal(c) if c == *cmd => Ok(()),
        _ => Err(refuse("the stored form differs".into())),
    }
}

pub(crate) fn get_meta<T: for<'de> Deserialize<'de>>(
    db: &Database,
    key: &str,
) -> StorageResult<Option<T>> {
    let tx = db.begin_read().map_err(read_err)?;
    let table = tx.open_table(META).map_err(read_err)?;
    match table.get(key).map_err(read_err)? {
        Some(v) => decode_own(v.value()).map(Some).map_err(read_err),
        None => Ok(None),
    }
}

pub(crate) fn put_meta<T: Serialize>(db: &Database, key: &str, value: &T) -> StorageResult<()> {
    put_meta_with(db, key, value, redb::Durability::Immediate)
}

fn put_meta_with<T: Serialize>(
    db: &Database,
    key: &str,
    value: &T,
    durability: redb::Durability,
) -> StorageResult<()> {
    let bytes = serde_json::to_vec(value).map_err(write_err)?;
    let mut tx = db.begin_write().map_err(write_err)?;
    tx.set_durability(durability).map_err(write_err)?;
    {
        let mut table = tx.open_table(META).map_err(write_err)?;
        table.insert(key, bytes.as_slice()).map_err(write_err)?;
    }
    tx.commit().map_err(write_err)
}

/// The Raft log and vote.
/// Generic over the type configuration: the metadata cluster and every quorum
/// queue's group keep their logs the same way.
pub struct LogStore<C = TypeConfig> {
    db: Arc<Database>,
    _config: PhantomData<C>,
}

impl<C> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        LogStore {
            db: self.db.clone(),
            _config: PhantomData,
        }
    }
}

impl<C> LogStore<C> {
    pub fn new(db: Arc<Database>) -> LogStore<C> {
        LogStore {
            db,
            _config: PhantomData,
        }
    }
}

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = NodeId, Node = ClusterNode, Entry = Entry<C>>,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<C>>> {
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(LOG).map_err(read_err)?;
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for row in table.range(start..).map_err(read_err)? {
            let (k, v) = row.map_err(read_err)?;
            if !range.contains(&k.value()) {
                break;
            }
            out.push(decode_own(v.value()).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig<NodeId = NodeId, Node = ClusterNode, Entry = Entry<C>>,
{
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> StorageResult<LogState<C>> {
        let last_purged: Option<LogId<NodeId>> = get_meta(&self.db, "last_purged")?;
        let tx = self.db.begin_read().map_err(read_err)?;
        let table = tx.open_table(LOG).map_err(read_err)?;
        let last = match table.last().map_err(read_err)? {
            Some((_, v)) => {
                let e: Entry<C> = decode_own(v.value()).map_err(read_err)?;
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
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = tx.open_table(LOG).map_err(write_err)?;
            for e in entries {
                let bytes = serde_json::to_vec(&e).map_err(write_err)?;
                table
                    .insert(e.log_id.index, bytes.as_slice())
                    .map_err(write_err)?;
            }
        }
        // redb commits durably (fsync) by default: the entries are on disk
        // before Raft counts this node's vote for them.
        tx.commit().map_err(write_err)?;
        callback.log_io_completed(Ok(()));
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
        tx.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        put_meta(&self.db, "last_purged", &Some(log_id))?;
        let tx = self.db.begin_write().map_err(write_err)?;
        {
            let mut table = tx.open_table(LOG).map_err(write_err)?;
            table
                .retain_in(..=log_id.index, |_, _| false)
                .map_err(write_err)?;
        }
        tx.commit().map_err(write_err)
    }
}

/// The metadata every part of the node reads, kept current by the state machine.
pub struct SharedMeta {
    pub state: RwLock<MetaState>,
    listener: OnceLock<Arc<dyn MetaListener>>,
    /// The index of the last applied log entry, for "applied here yet?" waits.
    pub applied: tokio::sync::watch::Sender<u64>,
}

impl SharedMeta {
    pub fn new(state: MetaState) -> Arc<SharedMeta> {
        Arc::new(SharedMeta {
            state: RwLock::new(state),
            listener: OnceLock::new(),
            applied: tokio::sync::watch::channel(0).0,
        })
    }

    /// Attaches the node's runtime and tells it about everything already known.
    pub fn attach(&self, listener: Arc<dyn MetaListener>) {
        let state = self.state.read();
        let events = state.creation_events();
        listener.on_events(&state, &events);
        let _ = self.listener.set(listener);
    }

    fn notify(&self, state: &MetaState, events: &[MetaEvent]) {
        if let Some(l) = self.listener.get()
            && !events.is_empty()
        {
            l.on_events(state, events);
        }
    }

    /// Waits until this node has applied the log up to `index`.
    pub async fn wait_applied(&self, index: u64) {
        let mut rx = self.applied.subscribe();
        let _ = rx.wait_for(|applied| *applied >= index).await;
    }
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, ClusterNode>,
    data: MetaSnapshot,
}

/// The state machine Raft drives.
pub struct MetaMachine {
    shared: Arc<SharedMeta>,
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, ClusterNode>,
    snapshot_seq: u64,
    /// A snapshot builder's copy of the state, taken when Raft asked for the
    /// builder: Raft builds in another task while applying goes on, and the
    /// snapshot must hold exactly what `last_applied` says.
    frozen: Option<MetaSnapshot>,
}

impl MetaMachine {
    /// Restores the state from the last snapshot in `db` into `shared` (the
    /// log after it is re-applied by Raft). A fresh database empties `shared`:
    /// that is how a reset node forgets everything.
    pub fn open(
        db: Arc<Database>,
        shared: Arc<SharedMeta>,
    ) -> Result<MetaMachine, StorageError<NodeId>> {
        let stored: Option<StoredSnapshot> = get_meta(&db, "snapshot")?;
        let (state, last_applied, last_membership) = match stored {
            Some(s) => (
                MetaState::from_snapshot(s.data),
                s.meta.last_log_id,
                s.meta.last_membership,
            ),
            None => (MetaState::default(), None, StoredMembership::default()),
        };
        {
            let mut current = shared.state.write();
            let events = MetaState::diff_events(&current, &state);
            *current = state;
            shared.notify(&current, &events);
        }
        shared
            .applied
            .send_replace(last_applied.map(|l| l.index).unwrap_or(0));
        Ok(MetaMachine {
            shared,
            db,
            last_applied,
            last_membership,
            snapshot_seq: 0,
            frozen: None,
        })
    }

    fn snapshot_now(&mut self) -> StorageResult<(StoredSnapshot, Vec<u8>)> {
        self.snapshot_seq += 1;
        let data = match self.frozen.take() {
            Some(d) => d,
            None => self.shared.state.read().to_snapshot(),
        };
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, self.snapshot_seq),
            None => format!("0-0-{}", self.snapshot_seq),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        let bytes = serde_json::to_vec(&data).map_err(write_err)?;
        Ok((StoredSnapshot { meta, data }, bytes))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MetaMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let (stored, bytes) = self.snapshot_now()?;
        put_meta(&self.db, "snapshot", &stored)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for MetaMachine {
    type SnapshotBuilder = MetaMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, ClusterNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<MetaReply>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let mut last = None;
        for e in entries {
            last = Some(e.log_id.index);
            self.last_applied = Some(e.log_id);
            let reply = match e.payload {
                EntryPayload::Blank => Ok(MetaOutcome::Done),
                EntryPayload::Normal(cmd) => {
                    let mut state = self.shared.state.write();
                    match state.apply(&cmd) {
                        Ok((outcome, events)) => {
                            self.shared.notify(&state, &events);
                            Ok(outcome)
                        }
                        Err(err) => Err(err),
                    }
                }
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(e.log_id), m);
                    Ok(MetaOutcome::Done)
                }
            };
            replies.push(reply);
        }
        if let Some(index) = last {
            self.shared.applied.send_replace(index);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        MetaMachine {
            shared: self.shared.clone(),
            db: self.db.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_seq: self.snapshot_seq + 1,
            frozen: Some(self.shared.state.read().to_snapshot()),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, ClusterNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let data: MetaSnapshot = serde_json::from_slice(snapshot.get_ref()).map_err(read_err)?;
        let new_state = MetaState::from_snapshot(data.clone());
        {
            let mut state = self.shared.state.write();
            let events = MetaState::diff_events(&state, &new_state);
            *state = new_state;
            self.shared.notify(&state, &events);
        }
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        put_meta(
            &self.db,
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                data,
            },
        )?;
        if let Some(l) = meta.last_log_id {
            self.shared.applied.send_replace(l.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let stored: Option<StoredSnapshot> = get_meta(&self.db, "snapshot")?;
        Ok(match stored {
            Some(s) => {
                let bytes = serde_json::to_vec(&s.data).map_err(read_err)?;
                Some(Snapshot {
                    meta: s.meta,
                    snapshot: Box::new(Cursor::new(bytes)),
                })
            }
            None => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::MetaCommand;
    use crate::meta::model::QueueRecord;
    use amq_protocol::types::{AMQPValue, FieldTable};

    fn declare(arguments: FieldTable) -> MetaCommand {
        MetaCommand::DeclareQueue(QueueRecord {
            vhost: "/".into(),
            name: "q".into(),
            durable: true,
            auto_delete: false,
            exclusive_owner: None,
            arguments,
            uid: 1,
            node: "n@localhost".into(),
            members: Vec::new(),
        })
    }

    fn nested(depth: usize) -> FieldTable {
        let mut t = FieldTable::default();
        for _ in 1..depth {
            let mut outer = FieldTable::default();
            outer.insert("k".into(), AMQPValue::FieldTable(t));
            t = outer;
        }
        t
    }

    #[test]
    fn changes_that_would_not_read_back_are_refused_before_the_log() {
        assert!(check_round_trip(&declare(nested(crate::field_depth::MAX_DEPTH))).is_ok());
        assert!(declare(nested(32)).check_nesting().is_ok());
        // 64 levels went into the log and could not be read back: every node was bricked.
        assert!(check_round_trip(&declare(nested(64))).is_err());
        assert!(declare(nested(33)).check_nesting().is_err());
        // JSON has no NaN: serde_json writes null, which does not read back as a float.
        let mut t = FieldTable::default();
        t.insert("x-f".into(), AMQPValue::Double(f64::NAN));
        assert!(check_round_trip(&declare(t)).is_err());
    }

    #[test]
    fn a_node_reads_its_own_log_past_serde_jsons_depth_limit() {
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::default(),
            payload: EntryPayload::Normal(declare(nested(64))),
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        assert!(serde_json::from_slice::<Entry<TypeConfig>>(&bytes).is_err());
        let back: Entry<TypeConfig> = decode_own(&bytes).unwrap();
        assert!(matches!(
            back.payload,
            EntryPayload::Normal(MetaCommand::DeclareQueue(_))
        ));
    }
}
