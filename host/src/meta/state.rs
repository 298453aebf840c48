//! The metadata state machine: one in-memory copy of all metadata and the one function that
//! changes it. It is deterministic (no clocks, no randomness, no I/O) so that every node of a
//! cluster applying the same commands in the same order ends in the same state.

use std::collections::{BTreeMap, HashMap};

use amq_protocol::types::{AMQPValue, FieldTable};

use super::command::{MetaCommand, MetaEvent, MetaOutcome};
use super::equivalence;
use super::model::*;
use super::policy::{self, PolicyKind, PolicyRecord, Target};

#[derive(Debug, Clone, PartialEq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum MetaError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Locked(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Storage(String),
}

type Key = (String, String);

#[derive(Debug, Default, Clone)]
pub struct MetaState {
    pub vhosts: BTreeMap<String, VhostRecord>,
    pub users: BTreeMap<String, UserRecord>,
    /// Keyed by (vhost, user).
    pub permissions: BTreeMap<Key, PermissionRecord>,
    pub exchanges: BTreeMap<Key, ExchangeRecord>,
    pub queues: BTreeMap<Key, QueueRecord>,
    pub bindings: BTreeMap<u64, BindingRecord>,
    binding_ids: HashMap<String, u64>,
    next_binding_id: u64,
    /// Set by `set_cluster_name`, or seeded when the cluster's first node starts.
    pub cluster_name: Option<String>,
    /// Keyed by (vhost, name).
    pub policies: BTreeMap<Key, PolicyRecord>,
    pub operator_policies: BTreeMap<Key, PolicyRecord>,
    /// Keyed by (vhost, user, exchange).
    pub topic_permissions: BTreeMap<(String, String, String), TopicPermissionRecord>,
}

/// The whole state as plain lists: what a Raft snapshot carries between nodes.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetaSnapshot {
    pub vhosts: Vec<VhostRecord>,
    pub users: Vec<UserRecord>,
    pub permissions: Vec<PermissionRecord>,
    pub exchanges: Vec<ExchangeRecord>,
    pub queues: Vec<QueueRecord>,
    pub bindings: Vec<(u64, BindingRecord)>,
    pub next_binding_id: u64,
    /// Absent in snapshots written before cluster names were kept.
    #[serde(default)]
    pub cluster_name: Option<String>,
    /// Absent in snapshots written before policies existed (see `absent_at_end`).
    #[serde(default, deserialize_with = "absent_at_end")]
    pub policies: Vec<PolicyRecord>,
    #[serde(default, deserialize_with = "absent_at_end")]
    pub operator_policies: Vec<PolicyRecord>,
    #[serde(default, deserialize_with = "absent_at_end")]
    pub topic_permissions: Vec<TopicPermissionRecord>,
}

/// A field added at the end of a snapshot: a snapshot written before it simply ends where
/// the field would start. JSON (the oldest snapshots) says so with `serde(default)`;
/// postcard has no field names and fails at the end of its input, which reads as "absent".
fn absent_at_end<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de> + Default,
{
    Ok(T::deserialize(d).unwrap_or_default())
}

impl MetaState {
    pub fn to_snapshot(&self) -> MetaSnapshot {
        MetaSnapshot {
            vhosts: self.vhosts.values().cloned().collect(),
            users: self.users.values().cloned().collect(),
            permissions: self.permissions.values().cloned().collect(),
            exchanges: self.exchanges.values().cloned().collect(),
            queues: self.queues.values().cloned().collect(),
            bindings: self
                .bindings
                .iter()
                .map(|(id, b)| (*id, b.clone()))
                .collect(),
            next_binding_id: self.next_binding_id,
            cluster_name: self.cluster_name.clone(),
            policies: self.policies.values().cloned().collect(),
            operator_policies: self.operator_policies.values().cloned().collect(),
            topic_permissions: self.topic_permissions.values().cloned().collect(),
        }
    }

    pub fn from_snapshot(s: MetaSnapshot) -> MetaState {
        let mut st = MetaState::default();
        for v in s.vhosts {
            st.vhosts.insert(v.name.clone(), v);
        }
        for u in s.users {
            st.users.insert(u.name.clone(), u);
        }
        for p in s.permissions {
            st.permissions.insert(key(&p.vhost, &p.user), p);
        }
        for x in s.exchanges {
            st.exchanges.insert(key(&x.vhost, &x.name), x);
        }
        for q in s.queues {
            st.queues.insert(key(&q.vhost, &q.name), q);
        }
        for (id, b) in s.bindings {
            st.binding_ids.insert(b.identity(), id);
            st.bindings.insert(id, b);
        }
        st.next_binding_id = s.next_binding_id;
        st.cluster_name = s.cluster_name;
        for p in s.policies {
            st.policies.insert(key(&p.vhost, &p.name), p);
        }
        for p in s.operator_policies {
            st.operator_policies.insert(key(&p.vhost, &p.name), p);
        }
        for t in s.topic_permissions {
            st.topic_permissions.insert(topic_key(&t), t);
        }
        st
    }

    /// The events that turn a runtime following `old` into one following
    /// `new` (a node installing a snapshot): removals first, then additions.
    pub fn diff_events(old: &MetaState, new: &MetaState) -> Vec<MetaEvent> {
        let mut ev = Vec::new();
        for (id, b) in &old.bindings {
            if new.bindings.get(id) != Some(b) {
                ev.push(MetaEvent::BindingRemoved {
                    id: *id,
                    binding: b.clone(),
                });
            }
        }
        for (k, q) in &old.queues {
            if new.queues.get(k) != Some(q) {
                ev.push(MetaEvent::QueueDeleted {
                    vhost: q.vhost.clone(),
                    name: q.name.clone(),
                    uid: q.uid,
                });
            }
        }
        for (k, x) in &old.exchanges {
            if new.exchanges.get(k) != Some(x) {
                ev.push(MetaEvent::ExchangeDeleted {
                    vhost: x.vhost.clone(),
                    name: x.name.clone(),
                });
            }
        }
        for (k, v) in &old.vhosts {
            if new.vhosts.get(k) != Some(v) {
                ev.push(MetaEvent::VhostDeleted(k.clone()));
            }
        }
        for (k, v) in &new.vhosts {
            if old.vhosts.get(k) != Some(v) {
                ev.push(MetaEvent::VhostAdded(v.clone()));
            }
        }
        if old.users != new.users
            || old.permissions != new.permissions
            || old.topic_permissions != new.topic_permissions
        {
            ev.push(MetaEvent::UsersChanged);
        }
        for (k, x) in &new.exchanges {
            if old.exchanges.get(k) != Some(x) {
                ev.push(MetaEvent::ExchangeAdded(x.clone()));
            }
        }
        for (k, q) in &new.queues {
            if old.queues.get(k) != Some(q) {
                ev.push(MetaEvent::QueueAdded(q.clone()));
            }
        }
        for (id, b) in &new.bindings {
            if old.bindings.get(id) != Some(b) {
                ev.push(MetaEvent::BindingAdded {
                    id: *id,
                    binding: b.clone(),
                });
            }
        }
        let mut changed: Vec<&String> = Vec::new();
        for (a, b) in [
            (&old.policies, &new.policies),
            (&new.policies, &old.policies),
            (&old.operator_policies, &new.operator_policies),
            (&new.operator_policies, &old.operator_policies),
        ] {
            for (k, p) in a {
                if b.get(k) != Some(p) && !changed.contains(&&k.0) {
                    changed.push(&k.0);
                }
            }
        }
        ev.extend(changed.into_iter().map(|vhost| MetaEvent::PoliciesChanged {
            vhost: vhost.clone(),
        }));
        ev
    }

    /// Every event that rebuilding this state from nothing would produce, in
    /// dependency order: how a node's runtime follows an installed snapshot.
    pub fn creation_events(&self) -> Vec<MetaEvent> {
        let mut ev = Vec::new();
        ev.extend(self.vhosts.values().cloned().map(MetaEvent::VhostAdded));
        ev.push(MetaEvent::UsersChanged);
        ev.extend(
            self.exchanges
                .values()
                .cloned()
                .map(MetaEvent::ExchangeAdded),
        );
        ev.extend(self.queues.values().cloned().map(MetaEvent::QueueAdded));
        ev.extend(self.bindings.iter().map(|(id, b)| MetaEvent::BindingAdded {
            id: *id,
            binding: b.clone(),
        }));
        ev
    }
}

/// The exchanges every vhost has, as RabbitMQ declares them.
pub fn standard_exchanges(vhost: &str) -> Vec<ExchangeRecord> {
    [
        ("", "direct", false),
        ("amq.direct", "direct", false),
        ("amq.fanout", "fanout", false),
        ("amq.topic", "topic", false),
        ("amq.headers", "headers", false),
        ("amq.match", "headers", false),
        ("amq.rabbitmq.trace", "topic", true),
    ]
    .into_iter()
    .map(|(name, kind, internal)| ExchangeRecord {
        vhost: vhost.to_string(),
        name: name.to_string(),
        kind: kind.to_string(),
        durable: true,
        auto_delete: false,
        internal,
        arguments: FieldTable::default(),
    })
    .collect()
}

fn key(vhost: &str, name: &str) -> Key {
    (vhost.to_string(), name.to_string())
}

fn topic_key(t: &TopicPermissionRecord) -> (String, String, String) {
    (t.vhost.clone(), t.user.clone(), t.exchange.clone())
}

fn no_vhost(name: &str) -> MetaError {
    MetaError::NotFound(format!("no vhost '{name}'"))
}

impl MetaState {
    pub fn apply(&mut self, cmd: &MetaCommand) -> Result<(MetaOutcome, Vec<MetaEvent>), MetaError> {
        let mut events = Vec::new();
        let outcome = self.apply_inner(cmd, &mut events)?;
        Ok((outcome, events))
    }

    fn apply_inner(
        &mut self,
        cmd: &MetaCommand,
        ev: &mut Vec<MetaEvent>,
    ) -> Result<MetaOutcome, MetaError> {
        match cmd {
            MetaCommand::AddVhost(v) => {
                if self.vhosts.contains_key(&v.name) {
                    return Err(MetaError::AlreadyExists(format!(
                        "vhost '{}' already exists",
                        v.name
                    )));
                }
                self.vhosts.insert(v.name.clone(), v.clone());
                ev.push(MetaEvent::VhostAdded(v.clone()));
                for x in standard_exchanges(&v.name) {
                    self.exchanges.insert(key(&x.vhost, &x.name), x.clone());
                    ev.push(MetaEvent::ExchangeAdded(x));
                }
            }
            MetaCommand::DeleteVhost { name } => {
                if self.vhosts.remove(name).is_none() {
                    return Err(no_vhost(name));
                }
                let queues: Vec<Key> = self
                    .queues
                    .keys()
                    .filter(|k| &k.0 == name)
                    .cloned()
                    .collect();
                for (v, q) in queues {
                    self.remove_queue(&v, &q, ev);
                }
                let exchanges: Vec<Key> = self
                    .exchanges
                    .keys()
                    .filter(|k| &k.0 == name)
                    .cloned()
                    .collect();
                for (v, x) in exchanges {
                    self.remove_exchange(&v, &x, ev);
                }
                self.permissions.retain(|k, _| &k.0 != name);
                self.policies.retain(|k, _| &k.0 != name);
                self.operator_policies.retain(|k, _| &k.0 != name);
                self.topic_permissions.retain(|k, _| &k.0 != name);
                ev.push(MetaEvent::VhostDeleted(name.clone()));
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::AddUser(u) => {
                if self.users.contains_key(&u.name) {
                    return Err(MetaError::AlreadyExists(format!(
                        "user '{}' already exists",
                        u.name
                    )));
                }
                self.users.insert(u.name.clone(), u.clone());
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::ChangePassword {
                name,
                password_hash,
            } => {
                let user = self.user_mut(name)?;
                user.password_hash = password_hash.clone();
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::SetUserTags { name, tags } => {
                let user = self.user_mut(name)?;
                user.tags = tags.clone();
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::DeleteUser { name } => {
                if self.users.remove(name).is_none() {
                    return Err(MetaError::NotFound(format!("no user '{name}'")));
                }
                self.permissions.retain(|k, _| &k.1 != name);
                self.topic_permissions.retain(|k, _| &k.1 != name);
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::SetPermissions(p) => {
                if !self.users.contains_key(&p.user) {
                    return Err(MetaError::NotFound(format!("no user '{}'", p.user)));
                }
                if !self.vhosts.contains_key(&p.vhost) {
                    return Err(no_vhost(&p.vhost));
                }
                self.permissions.insert(key(&p.vhost, &p.user), p.clone());
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::ClearPermissions { user, vhost } => {
                if !self.users.contains_key(user) {
                    return Err(MetaError::NotFound(format!("no user '{user}'")));
                }
                if !self.vhosts.contains_key(vhost) {
                    return Err(no_vhost(vhost));
                }
                self.permissions.remove(&key(vhost, user));
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::DeclareExchange(x) => {
                if !self.vhosts.contains_key(&x.vhost) {
                    return Err(no_vhost(&x.vhost));
                }
                if let Some(current) = self.exchanges.get(&key(&x.vhost, &x.name)) {
                    equivalence::check_exchange(current, x).map_err(MetaError::Precondition)?;
                    return Ok(MetaOutcome::AlreadyExists);
                }
                self.exchanges.insert(key(&x.vhost, &x.name), x.clone());
                ev.push(MetaEvent::ExchangeAdded(x.clone()));
            }
            MetaCommand::DeleteExchange {
                vhost,
                name,
                if_unused,
            } => {
                if !self.exchanges.contains_key(&key(vhost, name)) {
                    return Err(MetaError::NotFound(format!(
                        "no exchange '{name}' in vhost '{vhost}'"
                    )));
                }
                if *if_unused && self.has_bindings_from(vhost, name) {
                    return Err(MetaError::Precondition(format!(
                        "exchange '{name}' in vhost '{vhost}' in use"
                    )));
                }
                self.remove_exchange(vhost, name, ev);
            }
            MetaCommand::DeclareQueue(q) => {
                if !self.vhosts.contains_key(&q.vhost) {
                    return Err(no_vhost(&q.vhost));
                }
                if let Some(current) = self.queues.get(&key(&q.vhost, &q.name)) {
                    // RabbitMQ's strict check: the exclusive flag (and owner) of a re-declare
                    // must match the original declaration's.
                    if current.exclusive_owner != q.exclusive_owner {
                        return Err(MetaError::Locked(format!(
                            "cannot obtain exclusive access to locked queue '{}' in vhost '{}'. It could be originally declared on another connection or the exclusive property value does not match that of the original declaration.",
                            q.name, q.vhost
                        )));
                    }
                    equivalence::check_queue(current, q).map_err(MetaError::Precondition)?;
                    return Ok(MetaOutcome::AlreadyExists);
                }
                self.queues.insert(key(&q.vhost, &q.name), q.clone());
                ev.push(MetaEvent::QueueAdded(q.clone()));
            }
            MetaCommand::DeleteQueue { vhost, name } => {
                if !self.queues.contains_key(&key(vhost, name)) {
                    return Err(MetaError::NotFound(format!(
                        "no queue '{name}' in vhost '{vhost}'"
                    )));
                }
                self.remove_queue(vhost, name, ev);
            }
            MetaCommand::SetQueueMembers {
                vhost,
                name,
                uid,
                members,
            } => {
                let Some(q) = self
                    .queues
                    .get_mut(&key(vhost, name))
                    .filter(|q| q.uid == *uid)
                else {
                    return Err(MetaError::NotFound(format!(
                        "no queue '{name}' in vhost '{vhost}'"
                    )));
                };
                q.members = members.clone();
                ev.push(MetaEvent::QueueAdded(q.clone()));
            }
            MetaCommand::Bind(b) => {
                self.check_binding_ends(b)?;
                let identity = b.identity();
                if self.binding_ids.contains_key(&identity) {
                    return Ok(MetaOutcome::AlreadyExists);
                }
                self.next_binding_id += 1;
                let id = self.next_binding_id;
                self.binding_ids.insert(identity, id);
                self.bindings.insert(id, b.clone());
                ev.push(MetaEvent::BindingAdded {
                    id,
                    binding: b.clone(),
                });
            }
            MetaCommand::Unbind(b) => {
                self.check_binding_ends(b)?;
                if let Some(id) = self.binding_ids.get(&b.identity()).copied() {
                    self.remove_binding(id, ev);
                    self.auto_delete_exchange(&b.vhost, &b.source, ev);
                }
            }
            MetaCommand::Batch(cmds) => {
                let mut answers = Vec::with_capacity(cmds.len());
                for cmd in cmds {
                    let answer = self.apply_inner(cmd, ev);
                    let failed = answer.is_err();
                    answers.push(answer);
                    if failed {
                        break;
                    }
                }
                return Ok(MetaOutcome::Batch(answers));
            }
            MetaCommand::SetClusterName { name } => {
                if name.trim().is_empty() {
                    return Err(MetaError::Precondition(
                        "the cluster name must not be empty".into(),
                    ));
                }
                self.cluster_name = Some(name.clone());
            }
            MetaCommand::SetTopicPermissions(t) => {
                if !self.users.contains_key(&t.user) {
                    return Err(MetaError::NotFound(format!("no user '{}'", t.user)));
                }
                if !self.vhosts.contains_key(&t.vhost) {
                    return Err(no_vhost(&t.vhost));
                }
                self.topic_permissions.insert(topic_key(t), t.clone());
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::ClearTopicPermissions {
                user,
                vhost,
                exchange,
            } => {
                if !self.users.contains_key(user) {
                    return Err(MetaError::NotFound(format!("no user '{user}'")));
                }
                if !self.vhosts.contains_key(vhost) {
                    return Err(no_vhost(vhost));
                }
                self.topic_permissions.retain(|(v, u, x), _| {
                    !(v == vhost && u == user && exchange.as_ref().is_none_or(|e| e == x))
                });
                ev.push(MetaEvent::UsersChanged);
            }
            MetaCommand::SetPolicy { kind, policy } => {
                if !self.vhosts.contains_key(&policy.vhost) {
                    return Err(no_vhost(&policy.vhost));
                }
                policy
                    .validate(*kind)
                    .map_err(|e| MetaError::Precondition(format!("Validation failed\n\n{e}")))?;
                self.policies_mut(*kind)
                    .insert(key(&policy.vhost, &policy.name), policy.clone());
                ev.push(MetaEvent::PoliciesChanged {
                    vhost: policy.vhost.clone(),
                });
            }
            MetaCommand::ClearPolicy { kind, vhost, name } => {
                if self.policies_mut(*kind).remove(&key(vhost, name)).is_none() {
                    return Err(MetaError::NotFound(format!(
                        "no {} '{name}' in vhost '{vhost}'",
                        match kind {
                            PolicyKind::User => "policy",
                            PolicyKind::Operator => "operator policy",
                        }
                    )));
                }
                ev.push(MetaEvent::PoliciesChanged {
                    vhost: vhost.clone(),
                });
            }
            MetaCommand::NodeRestarted {
                node,
                whole_cluster,
            } => {
                let gone: Vec<(String, String)> = self
                    .queues
                    .values()
                    .filter(|q| &q.node == node && (!q.durable || q.exclusive_owner.is_some()))
                    .map(|q| (q.vhost.clone(), q.name.clone()))
                    .collect();
                for (vhost, name) in gone {
                    self.remove_queue(&vhost, &name, ev);
                }
                if *whole_cluster {
                    let gone: Vec<(String, String)> = self
                        .exchanges
                        .values()
                        .filter(|x| !x.durable)
                        .map(|x| (x.vhost.clone(), x.name.clone()))
                        .collect();
                    for (vhost, name) in gone {
                        if self.exchanges.contains_key(&key(&vhost, &name)) {
                            self.remove_exchange(&vhost, &name, ev);
                        }
                    }
                }
            }
        }
        Ok(MetaOutcome::Done)
    }

    fn policies_mut(&mut self, kind: PolicyKind) -> &mut BTreeMap<Key, PolicyRecord> {
        match kind {
            PolicyKind::User => &mut self.policies,
            PolicyKind::Operator => &mut self.operator_policies,
        }
    }

    /// The policy and operator policy that apply to a queue, if any.
    pub fn queue_policies(
        &self,
        q: &QueueRecord,
    ) -> (Option<&PolicyRecord>, Option<&PolicyRecord>) {
        let target = if q.is_quorum() {
            Target::QuorumQueue
        } else {
            Target::ClassicQueue
        };
        self.policies_for(&q.vhost, &q.name, target)
    }

    /// The policy and operator policy that apply to an exchange, if any. The default
    /// exchange takes none (it is a protocol rule, not an object one can configure).
    pub fn exchange_policies(
        &self,
        x: &ExchangeRecord,
    ) -> (Option<&PolicyRecord>, Option<&PolicyRecord>) {
        if x.name.is_empty() {
            return (None, None);
        }
        self.policies_for(&x.vhost, &x.name, Target::Exchange)
    }

    fn policies_for(
        &self,
        vhost: &str,
        name: &str,
        target: Target,
    ) -> (Option<&PolicyRecord>, Option<&PolicyRecord>) {
        fn of_vhost<'a>(
            m: &'a BTreeMap<Key, PolicyRecord>,
            vhost: &str,
        ) -> impl Iterator<Item = &'a PolicyRecord> {
            m.range((vhost.to_string(), String::new())..)
                .take_while(move |(k, _)| k.0 == vhost)
                .map(|(_, p)| p)
        }
        (
            policy::applicable(of_vhost(&self.policies, vhost), vhost, name, target),
            policy::applicable(
                of_vhost(&self.operator_policies, vhost),
                vhost,
                name,
                target,
            ),
        )
    }

    fn user_mut(&mut self, name: &str) -> Result<&mut UserRecord, MetaError> {
        self.users
            .get_mut(name)
            .ok_or_else(|| MetaError::NotFound(format!("no user '{name}'")))
    }

    fn check_binding_ends(&self, b: &BindingRecord) -> Result<(), MetaError> {
        if !self.exchanges.contains_key(&key(&b.vhost, &b.source)) {
            return Err(MetaError::NotFound(format!(
                "no exchange '{}' in vhost '{}'",
                b.source, b.vhost
            )));
        }
        let exists = match b.destination_kind {
            DestinationKind::Queue => self.queues.contains_key(&key(&b.vhost, &b.destination)),
            DestinationKind::Exchange => {
                self.exchanges.contains_key(&key(&b.vhost, &b.destination))
            }
        };
        if !exists {
            return Err(MetaError::NotFound(format!(
                "no {} '{}' in vhost '{}'",
                b.destination_kind.as_str(),
                b.destination,
                b.vhost
            )));
        }
        Ok(())
    }

    fn has_bindings_from(&self, vhost: &str, exchange: &str) -> bool {
        self.bindings
            .values()
            .any(|b| b.vhost == vhost && b.source == exchange)
    }

    fn remove_binding(&mut self, id: u64, ev: &mut Vec<MetaEvent>) {
        if let Some(b) = self.bindings.remove(&id) {
            self.binding_ids.remove(&b.identity());
            ev.push(MetaEvent::BindingRemoved { id, binding: b });
        }
    }

    /// Removes every binding matching `pred`, then auto-deletes exchanges left with none.
    fn remove_bindings_where(
        &mut self,
        pred: impl Fn(&BindingRecord) -> bool,
        ev: &mut Vec<MetaEvent>,
    ) {
        let ids: Vec<u64> = self
            .bindings
            .iter()
            .filter(|(_, b)| pred(b))
            .map(|(id, _)| *id)
            .collect();
        let mut sources = Vec::new();
        for id in ids {
            if let Some(b) = self.bindings.get(&id) {
                sources.push((b.vhost.clone(), b.source.clone()));
            }
            self.remove_binding(id, ev);
        }
        sources.sort();
        sources.dedup();
        for (vhost, source) in sources {
            self.auto_delete_exchange(&vhost, &source, ev);
        }
    }

    fn auto_delete_exchange(&mut self, vhost: &str, name: &str, ev: &mut Vec<MetaEvent>) {
        let auto = self
            .exchanges
            .get(&key(vhost, name))
            .is_some_and(|x| x.auto_delete);
        if auto && !self.has_bindings_from(vhost, name) {
            self.remove_exchange(vhost, name, ev);
        }
    }

    fn remove_exchange(&mut self, vhost: &str, name: &str, ev: &mut Vec<MetaEvent>) {
        if self.exchanges.remove(&key(vhost, name)).is_none() {
            return;
        }
        ev.push(MetaEvent::ExchangeDeleted {
            vhost: vhost.to_string(),
            name: name.to_string(),
        });
        self.remove_bindings_where(
            |b| {
                b.vhost == vhost
                    && (b.source == name
                        || (b.destination_kind == DestinationKind::Exchange
                            && b.destination == name))
            },
            ev,
        );
    }

    fn remove_queue(&mut self, vhost: &str, name: &str, ev: &mut Vec<MetaEvent>) {
        let Some(q) = self.queues.remove(&key(vhost, name)) else {
            return;
        };
        ev.push(MetaEvent::QueueDeleted {
            vhost: vhost.to_string(),
            name: name.to_string(),
            uid: q.uid,
        });
        self.remove_bindings_where(
            |b| {
                b.vhost == vhost
                    && b.destination_kind == DestinationKind::Queue
                    && b.destination == name
            },
            ev,
        );
    }

    pub fn exchange(&self, vhost: &str, name: &str) -> Option<&ExchangeRecord> {
        self.exchanges.get(&key(vhost, name))
    }

    pub fn queue(&self, vhost: &str, name: &str) -> Option<&QueueRecord> {
        self.queues.get(&key(vhost, name))
    }

    pub fn permission(&self, vhost: &str, user: &str) -> Option<&PermissionRecord> {
        self.permissions.get(&key(vhost, user))
    }

    /// Whether a binding should survive a restart: RabbitMQ keeps it when both ends are durable.
    pub fn binding_is_durable(&self, b: &BindingRecord) -> bool {
        let source = self
            .exchange(&b.vhost, &b.source)
            .is_some_and(|x| x.durable);
        let dest = match b.destination_kind {
            DestinationKind::Queue => self
                .queue(&b.vhost, &b.destination)
                .is_some_and(|q| q.durable),
            DestinationKind::Exchange => self
                .exchange(&b.vhost, &b.destination)
                .is_some_and(|x| x.durable),
        };
        source && dest
    }
}

/// Reads a string-valued argument (long or short string).
pub fn string_arg(args: &FieldTable, name: &str) -> Option<String> {
    match args.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a_policy(vhost: &str, name: &str) -> PolicyRecord {
        PolicyRecord {
            vhost: vhost.into(),
            name: name.into(),
            pattern: "^q".into(),
            apply_to: policy::ApplyTo::Queues,
            priority: 1,
            definition: [("max-length".to_string(), policy::PolicyValue::Int(3))].into(),
        }
    }

    #[test]
    fn policies_are_snapshotted_and_a_snapshot_from_before_policies_still_reads() {
        let mut st = state_with_vhost();
        st.apply(&MetaCommand::SetPolicy {
            kind: PolicyKind::Operator,
            policy: a_policy("/", "cap"),
        })
        .unwrap();
        let snap = st.to_snapshot();
        let bytes = crate::raft::codec::encode(&snap).unwrap();
        let back: MetaSnapshot = crate::raft::codec::decode(&bytes).unwrap();
        assert_eq!(back, snap);
        assert_eq!(back.operator_policies, vec![a_policy("/", "cap")]);
        assert_eq!(
            MetaState::diff_events(&state_with_vhost(), &MetaState::from_snapshot(back)),
            vec![MetaEvent::PoliciesChanged { vhost: "/".into() }]
        );

        // The snapshot as written before policies: the same fields, fewer of them.
        #[derive(serde::Serialize)]
        struct Before {
            vhosts: Vec<VhostRecord>,
            users: Vec<UserRecord>,
            permissions: Vec<PermissionRecord>,
            exchanges: Vec<ExchangeRecord>,
            queues: Vec<QueueRecord>,
            bindings: Vec<(u64, BindingRecord)>,
            next_binding_id: u64,
            cluster_name: Option<String>,
        }
        let before = Before {
            vhosts: snap.vhosts.clone(),
            users: Vec::new(),
            permissions: Vec::new(),
            exchanges: snap.exchanges.clone(),
            queues: Vec::new(),
            bindings: Vec::new(),
            next_binding_id: 7,
            cluster_name: Some("c".into()),
        };
        let old: MetaSnapshot =
            crate::raft::codec::decode(&crate::raft::codec::encode(&before).unwrap()).unwrap();
        assert_eq!(old.next_binding_id, 7);
        assert_eq!(old.cluster_name.as_deref(), Some("c"));
        assert!(old.policies.is_empty() && old.operator_policies.is_empty());
    }

    #[test]
    fn a_policy_needs_its_vhost_is_checked_again_when_applied_and_goes_with_the_vhost() {
        let mut st = state_with_vhost();
        let err = st
            .apply(&MetaCommand::SetPolicy {
                kind: PolicyKind::User,
                policy: a_policy("nowhere", "p"),
            })
            .unwrap_err();
        assert_eq!(err, MetaError::NotFound("no vhost 'nowhere'".into()));
        let mut bad = a_policy("/", "p");
        bad.pattern = "(".into();
        assert!(matches!(
            st.apply(&MetaCommand::SetPolicy {
                kind: PolicyKind::User,
                policy: bad,
            }),
            Err(MetaError::Precondition(_))
        ));
        st.apply(&MetaCommand::SetPolicy {
            kind: PolicyKind::User,
            policy: a_policy("/", "p"),
        })
        .unwrap();
        st.apply(&MetaCommand::DeleteVhost { name: "/".into() })
            .unwrap();
        assert!(st.policies.is_empty());
    }

    fn state_with_vhost() -> MetaState {
        let mut s = MetaState::default();
        s.apply(&MetaCommand::AddVhost(VhostRecord {
            name: "/".into(),
            description: String::new(),
        }))
        .unwrap();
        s
    }

    fn queue(name: &str, durable: bool) -> QueueRecord {
        QueueRecord {
            vhost: "/".into(),
            name: name.into(),
            durable,
            auto_delete: false,
            exclusive_owner: None,
            arguments: FieldTable::default(),
            uid: 1,
            node: "n".into(),
            members: Vec::new(),
        }
    }

    #[test]
    fn new_vhost_has_the_standard_exchanges() {
        let s = state_with_vhost();
        assert!(s.exchange("/", "amq.topic").is_some());
        assert!(s.exchange("/", "").is_some());
    }

    #[test]
    fn redeclare_with_different_durability_is_a_precondition_failure() {
        let mut s = state_with_vhost();
        s.apply(&MetaCommand::DeclareQueue(queue("q", true)))
            .unwrap();
        let err = s
            .apply(&MetaCommand::DeclareQueue(queue("q", false)))
            .unwrap_err();
        assert_eq!(
            err,
            MetaError::Precondition(
                "inequivalent arg 'durable' for queue 'q' in vhost '/': received 'false' but current is 'true'".into()
            )
        );
    }

    #[test]
    fn deleting_a_queue_removes_its_bindings_and_auto_deletes_the_exchange() {
        let mut s = state_with_vhost();
        s.apply(&MetaCommand::DeclareQueue(queue("q", false)))
            .unwrap();
        s.apply(&MetaCommand::DeclareExchange(ExchangeRecord {
            vhost: "/".into(),
            name: "x".into(),
            kind: "fanout".into(),
            durable: false,
            auto_delete: true,
            internal: false,
            arguments: FieldTable::default(),
        }))
        .unwrap();
        let b = BindingRecord {
            vhost: "/".into(),
            source: "x".into(),
            destination: "q".into(),
            destination_kind: DestinationKind::Queue,
            routing_key: "k".into(),
            arguments: FieldTable::default(),
        };
        s.apply(&MetaCommand::Bind(b.clone())).unwrap();
        let (_, events) = s
            .apply(&MetaCommand::DeleteQueue {
                vhost: "/".into(),
                name: "q".into(),
            })
            .unwrap();
        assert!(s.bindings.is_empty());
        assert!(s.exchange("/", "x").is_none());
        assert!(events.contains(&MetaEvent::ExchangeDeleted {
            vhost: "/".into(),
            name: "x".into()
        }));
    }

    #[test]
    fn bind_to_missing_queue_is_not_found() {
        let mut s = state_with_vhost();
        let err = s
            .apply(&MetaCommand::Bind(BindingRecord {
                vhost: "/".into(),
                source: "amq.direct".into(),
                destination: "nope".into(),
                destination_kind: DestinationKind::Queue,
                routing_key: "".into(),
                arguments: FieldTable::default(),
            }))
            .unwrap_err();
        assert_eq!(
            err,
            MetaError::NotFound("no queue 'nope' in vhost '/'".into())
        );
    }

    #[test]
    fn batch_applies_in_order_and_stops_at_the_first_failure() {
        let mut s = state_with_vhost();
        s.apply(&MetaCommand::DeclareQueue(queue("q", false)))
            .unwrap();
        let bind = |source: &str, key: &str| {
            MetaCommand::Bind(BindingRecord {
                vhost: "/".into(),
                source: source.into(),
                destination: "q".into(),
                destination_kind: DestinationKind::Queue,
                routing_key: key.into(),
                arguments: FieldTable::default(),
            })
        };
        let (outcome, events) = s
            .apply(&MetaCommand::Batch(vec![
                bind("amq.direct", "a"),
                bind("amq.direct", "b"),
                bind("missing", "c"),
                bind("amq.direct", "d"),
            ]))
            .unwrap();
        let MetaOutcome::Batch(answers) = outcome else {
            panic!("a batch answers with a batch: {outcome:?}");
        };
        assert_eq!(answers.len(), 3);
        assert!(answers[0].is_ok() && answers[1].is_ok());
        assert_eq!(
            answers[2],
            Err(MetaError::NotFound(
                "no exchange 'missing' in vhost '/'".into()
            ))
        );
        let keys: Vec<&str> = s
            .bindings
            .values()
            .map(|b| b.routing_key.as_str())
            .collect();
        assert_eq!(keys.len(), 2);
        assert!(keys.contains(&"a") && keys.contains(&"b"));
        assert_eq!(events.len(), 2);
    }
}
