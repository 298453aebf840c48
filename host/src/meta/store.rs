//! The one door every metadata change goes through. On a single node `submit` applies the
//! command to the state machine, writes what became durable to redb and tells the node's
//! runtime; clustering puts Raft in front of the same `apply`.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::command::{MetaCommand, MetaEvent, MetaOutcome};
use super::model::*;
use super::state::{MetaError, MetaState};

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");

/// The node's runtime (routers, queues) follows applied changes through this.
pub trait MetaListener: Send + Sync {
    fn on_events(&self, state: &MetaState, events: &[MetaEvent]);
}

pub struct MetaStore {
    db: Database,
    state: RwLock<MetaState>,
    /// Serialises changes: apply, persist and notify happen in one order for everyone.
    writer: Mutex<()>,
    listener: OnceLock<Arc<dyn MetaListener>>,
    boot: Mutex<Vec<MetaCommand>>,
}

fn storage(e: impl std::fmt::Display) -> MetaError {
    MetaError::Storage(format!("metadata store: {e}"))
}

fn record_key(kind: &str, key: &str) -> String {
    format!("{kind}\u{0}{key}")
}

impl MetaStore {
    /// Opens the metadata database and reads what it holds; `boot` applies it.
    pub fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let db = Database::create(path).map_err(storage)?;
        let mut vhosts = Vec::new();
        let mut users = Vec::new();
        let mut perms = Vec::new();
        let mut exchanges = Vec::new();
        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        {
            let tx = db.begin_write().map_err(storage)?;
            tx.open_table(RECORDS).map_err(storage)?;
            tx.commit().map_err(storage)?;
        }
        let tx = db.begin_read().map_err(storage)?;
        let table = tx.open_table(RECORDS).map_err(storage)?;
        for row in table.iter().map_err(storage)? {
            let (k, v) = row.map_err(storage)?;
            let key = k.value();
            let bytes = v.value();
            let kind = key.split('\u{0}').next().unwrap_or_default();
            let bad = |e: serde_json::Error| storage(format!("record {key:?}: {e}"));
            match kind {
                "vhost" => vhosts.push(serde_json::from_slice::<VhostRecord>(bytes).map_err(bad)?),
                "user" => users.push(serde_json::from_slice::<UserRecord>(bytes).map_err(bad)?),
                "perm" => {
                    perms.push(serde_json::from_slice::<PermissionRecord>(bytes).map_err(bad)?)
                }
                "exchange" => {
                    exchanges.push(serde_json::from_slice::<ExchangeRecord>(bytes).map_err(bad)?)
                }
                "queue" => queues.push(serde_json::from_slice::<QueueRecord>(bytes).map_err(bad)?),
                "binding" => {
                    bindings.push(serde_json::from_slice::<BindingRecord>(bytes).map_err(bad)?)
                }
                _ => tracing::warn!(key, "ignoring unknown metadata record"),
            }
        }
        let mut boot: Vec<MetaCommand> = Vec::new();
        boot.extend(vhosts.into_iter().map(MetaCommand::AddVhost));
        boot.extend(users.into_iter().map(MetaCommand::AddUser));
        boot.extend(perms.into_iter().map(MetaCommand::SetPermissions));
        boot.extend(exchanges.into_iter().map(MetaCommand::DeclareExchange));
        boot.extend(queues.into_iter().map(MetaCommand::DeclareQueue));
        boot.extend(bindings.into_iter().map(MetaCommand::Bind));
        drop(table);
        drop(tx);
        Ok(MetaStore {
            db,
            state: RwLock::new(MetaState::default()),
            writer: Mutex::new(()),
            listener: OnceLock::new(),
            boot: Mutex::new(boot),
        })
    }

    /// True when the database held nothing (a fresh node): the caller seeds the defaults.
    pub fn is_fresh(&self) -> bool {
        self.boot.lock().is_empty() && self.state.read().vhosts.is_empty()
    }

    /// Attaches the runtime and replays the stored metadata into it.
    pub fn boot(&self, listener: Arc<dyn MetaListener>) -> Result<(), MetaError> {
        let _ = self.listener.set(listener);
        let commands = std::mem::take(&mut *self.boot.lock());
        let _w = self.writer.lock();
        for cmd in commands {
            let mut state = self.state.write();
            match state.apply(&cmd) {
                Ok((_, events)) => {
                    if let Some(l) = self.listener.get() {
                        l.on_events(&state, &events);
                    }
                }
                Err(e) => tracing::warn!(?cmd, error = %e, "stored metadata record not applied"),
            }
        }
        Ok(())
    }

    pub fn read(&self) -> RwLockReadGuard<'_, MetaState> {
        self.state.read()
    }

    /// Applies one change; returns once it is applied and durable.
    pub async fn submit(&self, cmd: MetaCommand) -> Result<MetaOutcome, MetaError> {
        self.submit_sync(cmd)
    }

    pub fn submit_sync(&self, cmd: MetaCommand) -> Result<MetaOutcome, MetaError> {
        let _w = self.writer.lock();
        let mut state = self.state.write();
        let (outcome, events) = state.apply(&cmd)?;
        if !events.is_empty() {
            self.persist(&state, &events)?;
            if let Some(l) = self.listener.get() {
                l.on_events(&state, &events);
            }
        }
        Ok(outcome)
    }

    fn persist(&self, state: &MetaState, events: &[MetaEvent]) -> Result<(), MetaError> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut table = tx.open_table(RECORDS).map_err(storage)?;
            let mut put = |k: String, v: Vec<u8>| -> Result<(), MetaError> {
                table.insert(k.as_str(), v.as_slice()).map_err(storage)?;
                Ok(())
            };
            let mut deletes: Vec<String> = Vec::new();
            let mut users_changed = false;
            for e in events {
                match e {
                    MetaEvent::VhostAdded(v) => put(record_key("vhost", &v.name), to_json(v))?,
                    MetaEvent::VhostDeleted(name) => deletes.push(record_key("vhost", name)),
                    MetaEvent::UsersChanged => users_changed = true,
                    MetaEvent::ExchangeAdded(x) if x.durable => put(
                        record_key("exchange", &format!("{}\u{0}{}", x.vhost, x.name)),
                        to_json(x),
                    )?,
                    MetaEvent::ExchangeAdded(_) => {}
                    MetaEvent::ExchangeDeleted { vhost, name } => {
                        deletes.push(record_key("exchange", &format!("{vhost}\u{0}{name}")))
                    }
                    MetaEvent::QueueAdded(q) if q.durable && q.exclusive_owner.is_none() => put(
                        record_key("queue", &format!("{}\u{0}{}", q.vhost, q.name)),
                        to_json(q),
                    )?,
                    MetaEvent::QueueAdded(_) => {}
                    MetaEvent::QueueDeleted { vhost, name, .. } => {
                        deletes.push(record_key("queue", &format!("{vhost}\u{0}{name}")))
                    }
                    MetaEvent::BindingAdded { binding, .. }
                        if state.binding_is_durable(binding) =>
                    {
                        put(record_key("binding", &binding.identity()), to_json(binding))?
                    }
                    MetaEvent::BindingAdded { .. } => {}
                    MetaEvent::BindingRemoved { binding, .. } => {
                        deletes.push(record_key("binding", &binding.identity()))
                    }
                }
            }
            if users_changed {
                let mut stale: Vec<String> = Vec::new();
                for row in table.iter().map_err(storage)? {
                    let (k, _) = row.map_err(storage)?;
                    let k = k.value().to_string();
                    if k.starts_with("user\u{0}") || k.starts_with("perm\u{0}") {
                        stale.push(k);
                    }
                }
                for k in stale {
                    table.remove(k.as_str()).map_err(storage)?;
                }
                for u in state.users.values() {
                    let v = to_json(u);
                    table
                        .insert(record_key("user", &u.name).as_str(), v.as_slice())
                        .map_err(storage)?;
                }
                for p in state.permissions.values() {
                    let v = to_json(p);
                    let k = record_key("perm", &format!("{}\u{0}{}", p.vhost, p.user));
                    table.insert(k.as_str(), v.as_slice()).map_err(storage)?;
                }
            }
            for k in deletes {
                table.remove(k.as_str()).map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)?;
        Ok(())
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Records are plain data; serialising them cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol::types::FieldTable;

    struct Nothing;
    impl MetaListener for Nothing {
        fn on_events(&self, _: &MetaState, _: &[MetaEvent]) {}
    }

    #[test]
    fn durable_entities_survive_reopen_and_transient_ones_do_not() {
        let dir = std::env::temp_dir().join(format!("warren-meta-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("meta.redb");
        {
            let store = MetaStore::open(&path).unwrap();
            store.boot(Arc::new(Nothing)).unwrap();
            store
                .submit_sync(MetaCommand::AddVhost(VhostRecord {
                    name: "/".into(),
                    description: String::new(),
                }))
                .unwrap();
            for (name, durable) in [("dq", true), ("tq", false)] {
                store
                    .submit_sync(MetaCommand::DeclareQueue(QueueRecord {
                        vhost: "/".into(),
                        name: name.into(),
                        durable,
                        auto_delete: false,
                        exclusive_owner: None,
                        arguments: FieldTable::default(),
                        uid: 7,
                        node: "n".into(),
                    }))
                    .unwrap();
            }
            store
                .submit_sync(MetaCommand::Bind(BindingRecord {
                    vhost: "/".into(),
                    source: "amq.direct".into(),
                    destination: "dq".into(),
                    destination_kind: DestinationKind::Queue,
                    routing_key: "k".into(),
                    arguments: FieldTable::default(),
                }))
                .unwrap();
        }
        let store = MetaStore::open(&path).unwrap();
        store.boot(Arc::new(Nothing)).unwrap();
        let state = store.read();
        assert!(state.queue("/", "dq").is_some());
        assert!(state.queue("/", "tq").is_none());
        assert_eq!(state.bindings.len(), 1);
        drop(state);
        let _ = std::fs::remove_dir_all(dir);
    }
}
