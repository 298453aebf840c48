//! A quorum queue's members as operators see and change them (`quorum_status`,
//! `add_member`, `delete_member`, `grow`, `shrink`, as RabbitMQ's `rabbitmq-queues`): a
//! change is made in the queue's Raft group by its leader and recorded in the metadata, which
//! tells new members to open their copy and removed ones to drop theirs.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Broker;
use crate::cluster::NodeKind;
use crate::meta::{MetaCommand, QueueRecord};
use crate::quorum::members::{CATCH_UP, MemberError, MemberStatus};
use crate::quorum::{calls, is_quorum};

impl Broker {
    /// The quorum queue `name` in `vhost`.
    pub fn quorum_record(&self, vhost: &str, name: &str) -> Result<QueueRecord, MemberError> {
        let record = self
            .meta
            .read()
            .queue(vhost, name)
            .cloned()
            .ok_or_else(|| {
                MemberError::Invalid(format!("queue '{name}' in vhost '{vhost}' does not exist"))
            })?;
        if !is_quorum(&record) {
            return Err(MemberError::Invalid(format!(
                "queue '{name}' in vhost '{vhost}' is not a quorum queue"
            )));
        }
        Ok(record)
    }

    /// Every member's view, asked of each member (those that do not answer: noproc).
    pub async fn quorum_status(&self, record: &QueueRecord) -> Vec<MemberStatus> {
        let mut rows = Vec::new();
        for member in &record.members {
            let status = if member == &self.config.node {
                self.quorum.get(record.uid).map(|g| g.status())
            } else {
                match self
                    .meta
                    .cluster()
                    .and_then(|c| c.running_node(member).map(|n| (c, n)))
                {
                    Some((c, n)) => c
                        .peers
                        .call(&n, &calls::QqStatus(record.uid), Duration::from_secs(5))
                        .await
                        .ok(),
                    None => None,
                }
            };
            rows.push(status.unwrap_or_else(|| MemberStatus {
                node: member.clone(),
                raft_state: "noproc".into(),
                log_index: 0,
                commit_index: 0,
                snapshot_index: 0,
                term: 0,
            }));
        }
        rows
    }

    /// Adds `node` (a running disc node) to the queue's group.
    pub async fn quorum_add_member(
        &self,
        record: &QueueRecord,
        node: &str,
    ) -> Result<(), MemberError> {
        if record.members.iter().any(|m| m == node) {
            return Err(MemberError::Invalid(format!(
                "{node} is already a member of quorum queue '{}' in vhost '{}'",
                record.name, record.vhost
            )));
        }
        self.check_member_node(node)?;
        let mut members = record.members.clone();
        members.push(node.to_string());
        self.set_members_meta(record, members.clone()).await?;
        if let Err(e) = self.quorum_change_voters(record, &members).await {
            // Undone, so the metadata does not name a member the group lacks.
            let _ = self.set_members_meta(record, record.members.clone()).await;
            return Err(e);
        }
        Ok(())
    }

    /// Removes `node` from the queue's group (not its last member).
    pub async fn quorum_delete_member(
        &self,
        record: &QueueRecord,
        node: &str,
    ) -> Result<(), MemberError> {
        if !record.members.iter().any(|m| m == node) {
            return Err(MemberError::Invalid(format!(
                "{node} is not a member of quorum queue '{}' in vhost '{}'",
                record.name, record.vhost
            )));
        }
        if record.members.len() <= 1 {
            return Err(MemberError::Invalid(format!(
                "{node} is the last member of quorum queue '{}' in vhost '{}': delete the queue instead",
                record.name, record.vhost
            )));
        }
        let members: Vec<String> = record
            .members
            .iter()
            .filter(|m| *m != node)
            .cloned()
            .collect();
        self.quorum_change_voters(record, &members).await?;
        self.set_members_meta(record, members).await
    }

    /// The quorum queues of the cluster, every vhost, sorted.
    pub fn quorum_records(&self) -> Vec<QueueRecord> {
        let mut all: Vec<QueueRecord> = self
            .meta
            .read()
            .queues
            .values()
            .filter(|q| is_quorum(q))
            .cloned()
            .collect();
        all.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        all
    }

    fn check_member_node(&self, node: &str) -> Result<(), MemberError> {
        let cluster = self
            .meta
            .cluster()
            .ok_or_else(|| MemberError::Unavailable("metadata store restarting".into()))?;
        match cluster.kind_of(node) {
            None => Err(MemberError::Invalid(format!(
                "{node} is not a member of this cluster"
            ))),
            Some(NodeKind::Ram) => Err(MemberError::Invalid(format!(
                "{node} is a ram node: quorum queue members are disc nodes"
            ))),
            Some(NodeKind::Disc) if cluster.running_node(node).is_none() => {
                Err(MemberError::Unavailable(format!("{node} is not running")))
            }
            Some(NodeKind::Disc) => Ok(()),
        }
    }

    async fn set_members_meta(
        &self,
        record: &QueueRecord,
        members: Vec<String>,
    ) -> Result<(), MemberError> {
        self.meta
            .submit(MetaCommand::SetQueueMembers {
                vhost: record.vhost.clone(),
                name: record.name.clone(),
                uid: record.uid,
                members,
            })
            .await
            .map(|_| ())
            .map_err(|e| MemberError::Unavailable(e.to_string()))
    }

    /// Has the group's leader make `members` the voters.
    async fn quorum_change_voters(
        &self,
        record: &QueueRecord,
        members: &[String],
    ) -> Result<(), MemberError> {
        let cluster = self
            .meta
            .cluster()
            .ok_or_else(|| MemberError::Unavailable("metadata store restarting".into()))?;
        // Right after the leader itself was removed, this node may still name it: wait
        // (briefly) for a leader among the members, which is the only kind that can act.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let leader = loop {
            let leader = self
                .quorum
                .get(record.uid)
                .and_then(|g| g.leader())
                .unwrap_or_else(|| self.queue_home(record));
            if record.members.contains(&leader) || tokio::time::Instant::now() >= deadline {
                break leader;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if leader == self.config.node {
            return self.quorum_set_voters(record.uid, members.to_vec()).await;
        }
        let node = cluster.running_node(&leader).ok_or_else(|| {
            MemberError::Unavailable(format!(
                "quorum queue '{}' in vhost '{}' has no leader reachable now",
                record.name, record.vhost
            ))
        })?;
        cluster
            .peers
            .call(
                &node,
                &calls::QqSetVoters {
                    group: record.uid,
                    members: members.to_vec(),
                },
                CATCH_UP + Duration::from_secs(10),
            )
            .await
            .map_err(|e| MemberError::Unavailable(e.to_string()))
    }

    /// The leader's half of a membership change.
    pub async fn quorum_set_voters(
        &self,
        uid: u64,
        members: Vec<String>,
    ) -> Result<(), MemberError> {
        let group = self.quorum.get(uid).ok_or_else(|| {
            MemberError::Unavailable("this node holds no copy of the queue".into())
        })?;
        let cluster = self
            .meta
            .cluster()
            .ok_or_else(|| MemberError::Unavailable("metadata store restarting".into()))?;
        let voters: BTreeMap<String, crate::cluster::ClusterNode> = members
            .iter()
            .filter_map(|m| cluster.node_by_name(m).map(|n| (m.clone(), n)))
            .collect();
        let voters: Vec<_> = voters.into_values().collect();
        group
            .set_voters(&voters)
            .await
            .map_err(MemberError::Unavailable)
    }
}
