//! A quorum queue's state machine: the messages its members agreed on, with
//! their delivery counts. On the leader the same apply also hands each new
//! message to the live queue that serves clients.

// openraft's storage traits fix the error type (`StorageError`, ~224 bytes).
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::RaftStateMachine;
use openraft::{
    Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StoredMembership,
};
use parking_lot::Mutex;
use redb::Database;
use serde::{Deserialize, Serialize};

use super::types::{QueueCommand, QueueRaft, QueueReply};
use crate::base::message::Message;
use crate::cluster::ClusterNode;
use crate::cluster::store::{NodeId, StorageResult, get_meta, put_meta, read_err, write_err};
use crate::queue::{PublishOutcome, Queue};

/// One message the group holds.
pub struct Held {
    pub msg: Arc<Message>,
    /// How many times it was given back to the queue.
    pub returns: u32,
}

/// The replicated contents, and the live queue while this node leads.
#[derive(Default)]
pub struct Contents {
    pub messages: BTreeMap<u64, Held>,
    pub next_id: u64,
    pub live: Option<Arc<Queue>>,
}

#[derive(Serialize, Deserialize)]
struct QueueSnapshot {
    next_id: u64,
    /// (id, message in wire form, returns).
    messages: Vec<(u64, String, u32)>,
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, ClusterNode>,
    data: QueueSnapshot,
}

pub struct QueueMachine {
    contents: Arc<Mutex<Contents>>,
    db: Arc<Database>,
    last_applied: Option<LogId<NodeId>>,
    last_membership: StoredMembership<NodeId, ClusterNode>,
    snapshot_seq: u64,
    /// A snapshot builder's copy of the contents, taken when Raft asked for
    /// the builder: Raft builds in another task while applying goes on, and
    /// the snapshot must hold exactly what `last_applied` says.
    frozen: Option<Frozen>,
}

/// (next id, (id, message, returns)...) at one applied index.
type Frozen = (u64, Vec<(u64, Arc<Message>, u32)>);

fn freeze(c: &Contents) -> Frozen {
    (
        c.next_id,
        c.messages
            .iter()
            .map(|(id, h)| (*id, h.msg.clone(), h.returns))
            .collect(),
    )
}

impl QueueMachine {
    /// Restores the contents from the last snapshot in `db`; Raft re-applies
    /// the log after it.
    pub fn open(db: Arc<Database>, contents: Arc<Mutex<Contents>>) -> StorageResult<QueueMachine> {
        let stored: Option<StoredSnapshot> = get_meta(&db, "snapshot")?;
        let (last_applied, last_membership) = match stored {
            Some(s) => {
                restore(&mut contents.lock(), s.data);
                (s.meta.last_log_id, s.meta.last_membership)
            }
            None => (None, StoredMembership::default()),
        };
        Ok(QueueMachine {
            contents,
            db,
            last_applied,
            last_membership,
            snapshot_seq: 0,
            frozen: None,
        })
    }

    fn snapshot_now(&mut self) -> StorageResult<(StoredSnapshot, Vec<u8>)> {
        self.snapshot_seq += 1;
        let (next_id, messages) = match self.frozen.take() {
            Some(f) => f,
            None => freeze(&self.contents.lock()),
        };
        let data = QueueSnapshot {
            next_id,
            messages: messages
                .into_iter()
                .map(|(id, msg, returns)| (id, msg.to_wire_text(), returns))
                .collect(),
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

fn restore(c: &mut Contents, data: QueueSnapshot) {
    c.next_id = data.next_id;
    c.messages = data
        .messages
        .into_iter()
        .filter_map(|(id, text, returns)| {
            let msg = Message::from_wire_text(&text)?;
            Some((
                id,
                Held {
                    msg: Arc::new(msg),
                    returns,
                },
            ))
        })
        .collect();
}

/// Applies one command to the contents (and to the live queue, on the leader).
pub fn apply_command(c: &mut Contents, cmd: QueueCommand) -> QueueReply {
    let mut reply = QueueReply::default();
    match cmd {
        QueueCommand::Enqueue(carried) => {
            for m in carried {
                let id = c.next_id;
                c.next_id += 1;
                let msg = m.into_message();
                c.messages.insert(
                    id,
                    Held {
                        msg: msg.clone(),
                        returns: 0,
                    },
                );
                let accepted = match &c.live {
                    Some(q) => !matches!(q.enqueue_committed(msg, id, 0), PublishOutcome::Rejected),
                    None => true,
                };
                reply.accepted.push(accepted);
            }
        }
        QueueCommand::Settle(ids) => {
            for id in ids {
                c.messages.remove(&id);
            }
        }
        QueueCommand::Return(ids) => {
            for id in ids {
                if let Some(h) = c.messages.get_mut(&id) {
                    h.returns += 1;
                }
            }
        }
    }
    reply
}

impl RaftSnapshotBuilder<QueueRaft> for QueueMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<QueueRaft>> {
        let (stored, bytes) = self.snapshot_now()?;
        put_meta(&self.db, "snapshot", &stored)?;
        Ok(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<QueueRaft> for QueueMachine {
    type SnapshotBuilder = QueueMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<NodeId>>, StoredMembership<NodeId, ClusterNode>)> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<QueueReply>>
    where
        I: IntoIterator<Item = Entry<QueueRaft>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for e in entries {
            self.last_applied = Some(e.log_id);
            let reply = match e.payload {
                EntryPayload::Blank => QueueReply::default(),
                EntryPayload::Normal(cmd) => apply_command(&mut self.contents.lock(), cmd),
                EntryPayload::Membership(m) => {
                    self.last_membership = StoredMembership::new(Some(e.log_id), m);
                    QueueReply::default()
                }
            };
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        QueueMachine {
            contents: self.contents.clone(),
            db: self.db.clone(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_seq: self.snapshot_seq + 1,
            frozen: Some(freeze(&self.contents.lock())),
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
        let data: QueueSnapshot = serde_json::from_slice(snapshot.get_ref()).map_err(read_err)?;
        // Kept as received, so this node can pass it on and restart from it.
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        put_meta(&self.db, "snapshot", &stored)?;
        restore(&mut self.contents.lock(), stored.data);
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<QueueRaft>>> {
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
