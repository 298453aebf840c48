//! The state machine plumbing every Raft on the node shares: what was applied last, the
//! membership, and snapshots (built from a frozen copy, kept in redb, sent to and installed
//! from peers). A state machine brings only what is its own: its commands, its state and
//! that state's snapshot form (`Machine`).

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes).
#![allow(clippy::result_large_err)]

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, RaftTypeConfig, Snapshot,
    SnapshotMeta, StorageError, StoredMembership,
};
use redb::Database;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::codec;
use super::log::{StorageResult, get_meta, put_meta, read_err, write_err};
use super::{ClusterNode, NodeId};

/// A replicated state machine: the metadata (`meta::MetaState`) or one quorum queue's
/// contents. It is a handle (cloning shares the state): Raft builds snapshots in another
/// task while applying goes on.
pub trait Machine<C: RaftTypeConfig>: Clone + Send + Sync + 'static {
    /// The whole state at one applied index.
    type Snapshot: Serialize + DeserializeOwned + Send + Sync + 'static;

    /// Applies one command, in log order.
    fn apply(&mut self, cmd: C::D) -> C::R;
    /// The answer to an entry that carries no command (blank or membership).
    fn no_command(&self) -> C::R;
    /// The state now, as a snapshot holds it.
    fn freeze(&self) -> Self::Snapshot;
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, snapshot: Self::Snapshot);
    /// Opened on a database with no snapshot: the state is whatever the log will make it,
    /// starting from nothing.
    fn start_empty(&mut self) {}
    /// Everything up to `index` is applied (after opening, each batch and each install).
    fn applied_up_to(&mut self, _index: u64) {}
}

#[derive(Deserialize)]
struct StoredSnapshot<S> {
    meta: SnapshotMeta<NodeId, ClusterNode>,
    data: S,
}

/// What is written under "snapshot": the same fields as `StoredSnapshot`, borrowed.
#[derive(Serialize)]
struct StoredSnapshotRef<'a, S> {
    meta: &'a SnapshotMeta<NodeId, ClusterNode>,
    data: &'a S,
}

/// `M` driven by Raft, with its snapshots in `db`.
pub struct Replicated<M, C>
where
    C: RaftTypeConfig,
    M: Machine<C>,
{
    machine: M,
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, ClusterNode>,
    snapshot_seq: u64,
    /// A snapshot builder's copy of the state, taken when Raft asked for the builder: the
    /// snapshot must hold exactly what `last_applied` says.
    frozen: Option<M::Snapshot>,
}

impl<M, C> Replicated<M, C>
where
    C: RaftTypeConfig,
    M: Machine<C>,
{
    /// Restores `machine` from the last snapshot in `db`; Raft re-applies the log after it.
    pub fn open(db: Arc<Database>, mut machine: M) -> StorageResult<Replicated<M, C>> {
        let stored: Option<StoredSnapshot<M::Snapshot>> = get_meta(&db, "snapshot")?;
        let (last_applied, last_membership) = match stored {
            Some(s) => {
                machine.restore(s.data);
                (s.meta.last_log_id, s.meta.last_membership)
            }
            None => {
                machine.start_empty();
                (None, StoredMembership::default())
            }
        };
        machine.applied_up_to(last_applied.map(|l| l.index).unwrap_or(0));
        Ok(Replicated {
            machine,
            db,
            last_applied,
            last_membership,
            snapshot_seq: 0,
            frozen: None,
        })
    }
}

impl<M, C> RaftSnapshotBuilder<C> for Replicated<M, C>
where
    C: RaftTypeConfig<NodeId = NodeId, Node = ClusterNode, SnapshotData = Cursor<Vec<u8>>>,
    M: Machine<C>,
{
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<C>> {
        self.snapshot_seq += 1;
        let data = match self.frozen.take() {
            Some(d) => d,
            None => self.machine.freeze(),
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
        // A deep quorum queue's snapshot is its every body: encoded and written durably off
        // the runtime's two workers, which its clients' connections share.
        let db = self.db.clone();
        let (bytes, meta) = tokio::task::spawn_blocking(move || {
            let bytes = codec::encode(&data).map_err(write_err)?;
            let stored = StoredSnapshotRef {
                meta: &meta,
                data: &data,
            };
            put_meta(&db, "snapshot", &stored)?;
            Ok::<_, StorageError<NodeId>>((bytes, meta))
        })
        .await
        .map_err(write_err)??;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl<M, C> RaftStateMachine<C> for Replicated<M, C>
where
    C: RaftTypeConfig<
            NodeId = NodeId,
            Node = ClusterNode,
            Entry = Entry<C>,
            SnapshotData = Cursor<Vec<u8>>,
        >,
    M: Machine<C>,
{
    type SnapshotBuilder = Replicated<M, C>;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, ClusterNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<C::R>>
    where
        I: IntoIterator<Item = Entry<C>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for e in entries {
            self.last_applied = Some(e.log_id);
            let reply = match e.payload {
                EntryPayload::Blank => self.machine.no_command(),
                EntryPayload::Normal(cmd) => self.machine.apply(cmd),
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(e.log_id), m);
                    self.machine.no_command()
                }
            };
            replies.push(reply);
        }
        if let (Some(l), false) = (self.last_applied, replies.is_empty()) {
            self.machine.applied_up_to(l.index);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Replicated {
            machine: self.machine.clone(),
            db: self.db.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_seq: self.snapshot_seq + 1,
            frozen: Some(self.machine.freeze()),
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
        // Decoded and kept as received (so this node can pass it on and restart from it) off
        // the runtime's workers, as in `build_snapshot`.
        let db = self.db.clone();
        let kept_meta = meta.clone();
        let data = tokio::task::spawn_blocking(move || {
            let data: M::Snapshot = codec::decode(snapshot.get_ref()).map_err(read_err)?;
            put_meta(
                &db,
                "snapshot",
                &StoredSnapshotRef {
                    meta: &kept_meta,
                    data: &data,
                },
            )?;
            Ok::<_, StorageError<NodeId>>(data)
        })
        .await
        .map_err(write_err)??;
        self.machine.restore(data);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        if let Some(l) = meta.last_log_id {
            self.machine.applied_up_to(l.index);
        }
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<C>>> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let stored: Option<StoredSnapshot<M::Snapshot>> = get_meta(&db, "snapshot")?;
            Ok(match stored {
                Some(s) => {
                    let bytes = codec::encode(&s.data).map_err(read_err)?;
                    Some(Snapshot {
                        meta: s.meta,
                        snapshot: Box::new(Cursor::new(bytes)),
                    })
                }
                None => None,
            })
        })
        .await
        .map_err(read_err)?
    }
}
