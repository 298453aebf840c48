//! A quorum queue's state machine: the messages its members agreed on, with
//! their delivery counts. On the leader the same apply also hands each new
//! message to the live queue that serves clients. Raft drives it through the
//! node's shared plumbing (`raft::Machine`).

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use super::types::{QueueCommand, QueueRaft, QueueReply};
use crate::base::carried::Carried;
use crate::base::message::Message;
use crate::queue::{PublishOutcome, Queue};
use crate::raft::Machine;

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
    /// Body bytes of the messages held.
    pub held_bytes: u64,
    /// Body bytes enqueued since the last snapshot was taken: about what the log holds
    /// beyond the snapshot (see `group::snapshot_when_due`).
    pub logged_bytes: u64,
}

impl Contents {
    /// Whether a snapshot is due: the bodies logged since the last one pass `floor` and twice
    /// what the queue holds, so the log (which the snapshot lets Raft purge) stays within a
    /// few queue-lengths of the queue's depth, and a deep queue is not written out whole
    /// more often than every two queue-lengths of traffic.
    pub fn snapshot_due(&self, floor: u64) -> bool {
        self.logged_bytes > floor.max(2 * self.held_bytes)
    }
}

/// The contents at one applied index. Messages are shared, not copied, until the snapshot
/// is written (raw bytes in postcard; in the JSON of earlier versions, the same base64 text
/// as before).
#[derive(Serialize, Deserialize)]
pub struct QueueSnapshot {
    next_id: u64,
    /// (id, message, returns).
    messages: Vec<(u64, Carried, u32)>,
}

/// The state machine: a handle on the group's contents.
#[derive(Clone)]
pub struct QueueMachine(pub Arc<Mutex<Contents>>);

impl Machine<QueueRaft> for QueueMachine {
    type Snapshot = QueueSnapshot;

    fn apply(&mut self, cmd: QueueCommand) -> QueueReply {
        apply_command(&mut self.0.lock(), cmd)
    }

    fn no_command(&self) -> QueueReply {
        QueueReply::default()
    }

    fn freeze(&self) -> QueueSnapshot {
        let mut c = self.0.lock();
        c.logged_bytes = 0;
        QueueSnapshot {
            next_id: c.next_id,
            messages: c
                .messages
                .iter()
                .map(|(id, h)| (*id, Carried(h.msg.clone()), h.returns))
                .collect(),
        }
    }

    fn restore(&mut self, data: QueueSnapshot) {
        let mut c = self.0.lock();
        c.next_id = data.next_id;
        c.messages = data
            .messages
            .into_iter()
            .map(|(id, carried, returns)| {
                (
                    id,
                    Held {
                        msg: carried.0,
                        returns,
                    },
                )
            })
            .collect();
        c.held_bytes = c.messages.values().map(|h| h.msg.size() as u64).sum();
        c.logged_bytes = 0;
    }
}

/// Applies one command to the contents (and to the live queue, on the leader).
pub fn apply_command(c: &mut Contents, cmd: QueueCommand) -> QueueReply {
    let mut reply = QueueReply::default();
    match cmd {
        QueueCommand::Enqueue(carried) => enqueue(c, carried, &mut reply),
        QueueCommand::Settle(ids) => settle(c, ids),
        QueueCommand::Return(ids) => returned(c, ids),
        QueueCommand::Changes {
            settle: settled,
            returned: given_back,
            enqueue: carried,
        } => {
            // Settles and returns name messages committed in earlier entries, so their order
            // against this entry's new messages does not matter; a message returned and then
            // settled in the same window is gone either way.
            returned(c, given_back);
            settle(c, settled);
            enqueue(c, carried, &mut reply);
        }
    }
    reply
}

fn enqueue(c: &mut Contents, carried: Vec<Carried>, reply: &mut QueueReply) {
    for m in carried {
        let id = c.next_id;
        c.next_id += 1;
        let msg = m.into_message();
        let size = msg.size() as u64;
        c.held_bytes += size;
        c.logged_bytes += size;
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

fn settle(c: &mut Contents, ids: Vec<u64>) {
    for id in ids {
        if let Some(h) = c.messages.remove(&id) {
            c.held_bytes = c.held_bytes.saturating_sub(h.msg.size() as u64);
        }
    }
}

fn returned(c: &mut Contents, ids: Vec<u64>) {
    for id in ids {
        if let Some(h) = c.messages.get_mut(&id) {
            h.returns += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Replicated, codec, log::open_db};
    use bytes::Bytes;
    use openraft::RaftSnapshotBuilder;
    use openraft::storage::RaftStateMachine;

    fn message(body: &[u8]) -> Carried {
        let props = amq_protocol::protocol::basic::AMQPProperties::default().with_delivery_mode(2);
        let raw = crate::base::message::encode_properties(&props);
        Carried(Arc::new(Message::new(
            "".into(),
            "q".into(),
            props,
            raw,
            Bytes::copy_from_slice(body),
        )))
    }

    fn bodies(c: &Contents) -> Vec<(u64, Vec<u8>, u32)> {
        c.messages
            .iter()
            .map(|(id, h)| (*id, h.msg.body.to_vec(), h.returns))
            .collect()
    }

    #[tokio::test]
    async fn a_snapshot_carries_the_contents_to_another_member() {
        let contents = Arc::new(Mutex::new(Contents::default()));
        let mut machine = QueueMachine(contents.clone());
        machine.apply(QueueCommand::Enqueue(vec![
            message(b"one"),
            message(b"two"),
            message(&[0u8; 2048]),
        ]));
        machine.apply(QueueCommand::Return(vec![1]));
        machine.apply(QueueCommand::Settle(vec![0]));
        let mut leader = Replicated::open(open_db(None, 1 << 20).unwrap(), machine).unwrap();
        let snapshot = leader.build_snapshot().await.unwrap();
        let bytes = snapshot.snapshot.get_ref().clone();
        // Bodies as bytes: the 2 KiB body is in there once, not as base64.
        assert!(bytes.len() < 2048 + 256, "{} bytes", bytes.len());

        let other = Arc::new(Mutex::new(Contents::default()));
        let db = open_db(None, 1 << 20).unwrap();
        let mut follower = Replicated::open(db.clone(), QueueMachine(other.clone())).unwrap();
        follower
            .install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(bodies(&other.lock()), bodies(&contents.lock()));
        assert_eq!(other.lock().next_id, 3);

        // It restarts from the snapshot it kept.
        let again = Arc::new(Mutex::new(Contents::default()));
        let _restarted = Replicated::open(db, QueueMachine(again.clone())).unwrap();
        assert_eq!(bodies(&again.lock()), bodies(&contents.lock()));
    }

    #[test]
    fn one_entry_of_changes_settles_returns_and_enqueues() {
        let contents = Arc::new(Mutex::new(Contents::default()));
        let mut machine = QueueMachine(contents.clone());
        machine.apply(QueueCommand::Enqueue(vec![message(b"a"), message(b"b")]));
        let reply = machine.apply(QueueCommand::Changes {
            settle: vec![0],
            returned: vec![1, 0],
            enqueue: vec![message(b"c")],
        });
        // Only the new message answers: its publisher waits for it.
        assert_eq!(reply.accepted, vec![true]);
        assert_eq!(
            bodies(&contents.lock()),
            vec![(1, b"b".to_vec(), 1), (2, b"c".to_vec(), 0)]
        );
    }

    #[test]
    fn a_snapshot_is_due_when_the_log_outgrows_twice_the_queue_and_not_after_one() {
        let contents = Arc::new(Mutex::new(Contents::default()));
        let mut machine = QueueMachine(contents.clone());
        let kib = [7u8; 1024];
        machine.apply(QueueCommand::Enqueue(vec![
            message(&kib),
            message(&kib),
            message(&kib),
        ]));
        assert!(!contents.lock().snapshot_due(0), "3 KiB logged, 3 held");
        machine.apply(QueueCommand::Settle(vec![0, 1]));
        {
            let c = contents.lock();
            assert_eq!((c.logged_bytes, c.held_bytes), (3072, 1024));
            assert!(c.snapshot_due(0));
            assert!(!c.snapshot_due(4096), "under the floor");
        }
        let frozen = machine.freeze();
        assert!(!contents.lock().snapshot_due(0));
        machine.apply(QueueCommand::Enqueue(vec![message(&kib)]));
        assert!(!contents.lock().snapshot_due(0), "1 KiB logged, 2 held");

        // A member restored from a snapshot counts what it holds, and nothing logged yet.
        let other = Arc::new(Mutex::new(Contents::default()));
        QueueMachine(other.clone()).restore(frozen);
        let c = other.lock();
        assert_eq!((c.logged_bytes, c.held_bytes), (0, 1024));
    }

    #[test]
    fn a_snapshot_written_as_json_by_an_earlier_version_still_reads() {
        let old = serde_json::json!({
            "next_id": 5,
            "messages": [[4, message(b"kept").0.to_wire_text(), 2]],
        });
        let data: QueueSnapshot = codec::decode(&serde_json::to_vec(&old).unwrap()).unwrap();
        let contents = Arc::new(Mutex::new(Contents::default()));
        QueueMachine(contents.clone()).restore(data);
        assert_eq!(bodies(&contents.lock()), vec![(4, b"kept".to_vec(), 2)]);
    }
}
