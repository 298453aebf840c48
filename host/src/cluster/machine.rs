//! The metadata cluster's state machine: `meta::MetaState` applying `MetaCommand`s, on the
//! Raft plumbing every Raft on the node shares (`raft::Machine`). Every part of the node
//! reads the state through `SharedMeta`.

use std::sync::{Arc, OnceLock};

use openraft::{Entry, EntryPayload, LogId};
use parking_lot::RwLock;

use super::types::{MetaReply, TypeConfig};
use crate::meta::state::MetaSnapshot;
use crate::meta::{MetaCommand, MetaError, MetaEvent, MetaListener, MetaOutcome, MetaState};
use crate::raft::{Machine, codec};

/// Encodes `cmd` as its log entry and reads it back as every node will: a change that would
/// not come back whole is refused before it is committed, instead of bricking every node's
/// log.
pub fn check_round_trip(cmd: &MetaCommand) -> Result<(), MetaError> {
    let refuse =
        |why: String| MetaError::Precondition(format!("arguments cannot be stored: {why}"));
    let entry: Entry<TypeConfig> = Entry {
        log_id: LogId::default(),
        payload: EntryPayload::Normal(cmd.clone()),
    };
    let bytes = codec::encode(&entry).map_err(|e| refuse(e.to_string()))?;
    let back: Entry<TypeConfig> = codec::decode(&bytes).map_err(|e| refuse(e.to_string()))?;
    match back.payload {
        EntryPayload::Normal(c) if c == *cmd => Ok(()),
        _ => Err(refuse("the stored form differs".into())),
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

/// The metadata state machine: a handle on `SharedMeta`.
#[derive(Clone)]
pub struct MetaMachine(pub Arc<SharedMeta>);

impl Machine<TypeConfig> for MetaMachine {
    type Snapshot = MetaSnapshot;

    fn apply(&mut self, cmd: MetaCommand) -> MetaReply {
        let mut state = self.0.state.write();
        let (outcome, events) = state.apply(&cmd)?;
        self.0.notify(&state, &events);
        Ok(outcome)
    }

    fn no_command(&self) -> MetaReply {
        Ok(MetaOutcome::Done)
    }

    fn freeze(&self) -> MetaSnapshot {
        self.0.state.read().to_snapshot()
    }

    fn restore(&mut self, snapshot: MetaSnapshot) {
        let new_state = MetaState::from_snapshot(snapshot);
        let mut state = self.0.state.write();
        let events = MetaState::diff_events(&state, &new_state);
        *state = new_state;
        self.0.notify(&state, &events);
    }

    /// A fresh database empties the state: that is how a reset node forgets everything.
    fn start_empty(&mut self) {
        self.restore(MetaState::default().to_snapshot());
    }

    fn applied_up_to(&mut self, index: u64) {
        self.0.applied.send_replace(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
        // 64 levels once went into the log and could not be read back: every node was
        // bricked. Such a change is refused before it is proposed.
        assert!(declare(nested(33)).check_nesting().is_err());
        // NaN never equals itself: a change holding one would not be the change read back.
        let mut t = FieldTable::default();
        t.insert("x-f".into(), AMQPValue::Double(f64::NAN));
        assert!(check_round_trip(&declare(t)).is_err());
    }

    #[test]
    fn a_node_reads_its_own_json_log_past_serde_jsons_depth_limit() {
        // Logs written before the postcard encoding are JSON, some nested past the
        // default limit: they still read.
        let entry: Entry<TypeConfig> = Entry {
            log_id: LogId::default(),
            payload: EntryPayload::Normal(declare(nested(64))),
        };
        let bytes = serde_json::to_vec(&entry).unwrap();
        assert!(serde_json::from_slice::<Entry<TypeConfig>>(&bytes).is_err());
        let back: Entry<TypeConfig> = codec::decode(&bytes).unwrap();
        assert!(matches!(
            back.payload,
            EntryPayload::Normal(MetaCommand::DeclareQueue(_))
        ));
    }
}
