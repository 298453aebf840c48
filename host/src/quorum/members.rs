//! A quorum queue's members: reporting them (`quorum_status`) and changing
//! them (`add_member`, `delete_member`, `grow`, `shrink`), as RabbitMQ's
//! `rabbitmq-queues` does. A change is made in the queue's Raft group by its
//! leader and recorded in the metadata, which tells new members to open
//! their copy and removed ones to drop theirs.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ServerState;
use serde::{Deserialize, Serialize};

use super::QuorumGroup;
use crate::cluster::node_id;

/// How long a new member may take to catch up before `add_member` gives up.
pub const CATCH_UP: Duration = Duration::from_secs(60);

/// Why a membership request failed: the caller's mistake, or the cluster's state.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MemberError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unavailable(String),
}

/// One member's view of its group, one row of `quorum_status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberStatus {
    pub node: String,
    /// leader, follower, candidate, learner, or noproc when it did not answer.
    pub raft_state: String,
    pub log_index: u64,
    pub commit_index: u64,
    pub snapshot_index: u64,
    pub term: u64,
}

impl QuorumGroup {
    pub fn status(&self) -> MemberStatus {
        let m = self.raft.metrics().borrow().clone();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        MemberStatus {
            node: self.me.clone(),
            raft_state: state.to_string(),
            log_index: m.last_log_index.unwrap_or(0),
            commit_index: m.last_applied.map_or(0, |l| l.index),
            snapshot_index: m.snapshot.map_or(0, |l| l.index),
            term: m.current_term,
        }
    }

    /// Makes `voters` the group's members (leader only): new ones join as
    /// learners and catch up first, then one membership change swaps the set.
    pub async fn set_voters(&self, voters: &[crate::cluster::ClusterNode]) -> Result<(), String> {
        if !self.is_leader() {
            return Err("not the leader".into());
        }
        let current: BTreeSet<u64> = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect();
        for n in voters {
            let id = node_id(&n.name);
            if !current.contains(&id) {
                tokio::time::timeout(CATCH_UP, self.raft.add_learner(id, n.clone(), true))
                    .await
                    .map_err(|_| format!("{} did not catch up within {CATCH_UP:?}", n.name))?
                    .map_err(|e| e.to_string())?;
            }
        }
        let ids: BTreeSet<u64> = voters.iter().map(|n| node_id(&n.name)).collect();
        self.raft
            .change_membership(ids, false)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}
