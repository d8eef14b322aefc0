//! The database of the file store (`super::file`): one redb file, `head.redb`, in the data
//! directory. No server to run; redb is pure Rust, crash-safe (copy-on-write pages, checksummed commits) and holds
//! a lock on the file so that two heads cannot share it.

use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Batch, Snapshot, StoreConfig, StoreError};

const TASKS: TableDefinition<u64, &[u8]> = TableDefinition::new("tasks");
const EVENTS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("events");
const AGENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("agents");
const WORKERS: TableDefinition<&str, (u64, u64)> = TableDefinition::new("workers");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const PUSH: TableDefinition<u64, &[u8]> = TableDefinition::new("push");
const CONVERSATIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("conversations");
const ACTORS: TableDefinition<&str, &[u8]> = TableDefinition::new("actors");
const TOPIC_MESSAGES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("topic_messages");
const TOPIC_TRIMS: TableDefinition<&str, u64> = TableDefinition::new("topic_trims");
const TOPIC_GROUPS: TableDefinition<(&str, &str), u64> = TableDefinition::new("topic_groups");

/// The layout this head writes; a file with another refuses to load.
const FORMAT: u64 = 1;
/// The key in `META` of the number of the last log frame the database holds.
const APPLIED: &str = "log_applied";

pub struct RedbStore {
    db: Database,
    path: PathBuf,
}

/// Creates `dir` (and its parents) if missing, and makes it readable by this user only
/// (0700): the store's files hold task data and agents' credentials.
pub(crate) fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Makes `path` readable and writable by this user only (0600).
pub(crate) fn private_file(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(())
    }
}

impl RedbStore {
    /// Opens (or creates) `dir/head.redb`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let path = dir.join(StoreConfig::FILE);
        let fail = |message: String| StoreError {
            what: path.display().to_string(),
            message,
            fenced: false,
        };
        private_dir(dir).map_err(|e| StoreError {
            what: dir.display().to_string(),
            message: format!("cannot create the data directory: {e}"),
            fenced: false,
        })?;
        let db = Database::create(&path).map_err(|e| {
            fail(match e {
                redb::DatabaseError::DatabaseAlreadyOpen => {
                    "another head has this store open (one data directory per head)".into()
                }
                redb::DatabaseError::Storage(redb::StorageError::Io(io))
                    if io.kind() != std::io::ErrorKind::InvalidData =>
                {
                    format!("cannot open: {io}")
                }
                e => format!("not a readable store ({e}): move it away or give another --data-dir"),
            })
        })?;
        // The file holds agents' options (keys among them) and every task's data.
        private_file(&path).map_err(|e| fail(format!("cannot make it private (0600): {e}")))?;
        let store = Self { db, path: path.clone() };
        store.check_format().map_err(fail)?;
        Ok(store)
    }

    /// Creates the tables in a new file; refuses a file of another layout.
    fn check_format(&self) -> Result<(), String> {
        let txn = self.db.begin_write().map_err(|e| e.to_string())?;
        {
            let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
            let format = meta.get("format").map_err(|e| e.to_string())?.map(|v| v.value());
            match format {
                Some(FORMAT) => {}
                Some(other) => {
                    return Err(super::unknown_format(other.into(), FORMAT.into()));
                }
                None => {
                    meta.insert("format", FORMAT).map_err(|e| e.to_string())?;
                }
            }
            txn.open_table(TASKS).map_err(|e| e.to_string())?;
            txn.open_table(EVENTS).map_err(|e| e.to_string())?;
            txn.open_table(AGENTS).map_err(|e| e.to_string())?;
            txn.open_table(WORKERS).map_err(|e| e.to_string())?;
            txn.open_table(PUSH).map_err(|e| e.to_string())?;
            // Added after format 1 was: a file from before gets the table on its first open.
            txn.open_table(CONVERSATIONS).map_err(|e| e.to_string())?;
            txn.open_table(ACTORS).map_err(|e| e.to_string())?;
            txn.open_table(TOPIC_MESSAGES).map_err(|e| e.to_string())?;
            txn.open_table(TOPIC_TRIMS).map_err(|e| e.to_string())?;
            txn.open_table(TOPIC_GROUPS).map_err(|e| e.to_string())?;
        }
        txn.commit().map_err(|e| cannot_write(&e))
    }

    fn fail(&self, message: impl std::fmt::Display) -> StoreError {
        StoreError {
            what: self.path.display().to_string(),
            message: message.to_string(),
            fenced: false,
        }
    }
}

/// A failed commit, said so that the operator knows what to do.
fn cannot_write(e: &dyn std::fmt::Display) -> String {
    format!("cannot write ({e}): is the disk full or the directory read-only?")
}

impl RedbStore {
    /// Everything stored, read in one transaction.
    pub fn load(&mut self) -> Result<Snapshot, StoreError> {
        let read = |e: &dyn std::fmt::Display| self.fail(format!("cannot read: {e}"));
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let mut snapshot = Snapshot::default();
        let tasks = txn.open_table(TASKS).map_err(|e| read(&e))?;
        for row in tasks.iter().map_err(|e| read(&e))? {
            let (k, v) = row.map_err(|e| read(&e))?;
            snapshot.tasks.push((k.value(), v.value().to_vec()));
        }
        let events = txn.open_table(EVENTS).map_err(|e| read(&e))?;
        for row in events.iter().map_err(|e| read(&e))? {
            let (k, v) = row.map_err(|e| read(&e))?;
            snapshot.events.push((k.value(), v.value().to_vec()));
        }
        let agents = txn.open_table(AGENTS).map_err(|e| read(&e))?;
        for row in agents.iter().map_err(|e| read(&e))? {
            let (_, v) = row.map_err(|e| read(&e))?;
            snapshot.agents.push(v.value().to_vec());
        }
        let workers = txn.open_table(WORKERS).map_err(|e| read(&e))?;
        for row in workers.iter().map_err(|e| read(&e))? {
            let (k, v) = row.map_err(|e| read(&e))?;
            snapshot.workers.push((k.value().to_owned(), v.value()));
        }
        let push = txn.open_table(PUSH).map_err(|e| read(&e))?;
        for row in push.iter().map_err(|e| read(&e))? {
            let (k, v) = row.map_err(|e| read(&e))?;
            snapshot.push.push((k.value(), v.value().to_vec()));
        }
        let conversations = txn.open_table(CONVERSATIONS).map_err(|e| read(&e))?;
        for row in conversations.iter().map_err(|e| read(&e))? {
            let (_, v) = row.map_err(|e| read(&e))?;
            snapshot.conversations.push(v.value().to_vec());
        }
        let actors = txn.open_table(ACTORS).map_err(|e| read(&e))?;
        for row in actors.iter().map_err(|e| read(&e))? {
            let (_, v) = row.map_err(|e| read(&e))?;
            snapshot.actors.push(v.value().to_vec());
        }
        let messages = txn.open_table(TOPIC_MESSAGES).map_err(|e| read(&e))?;
        for row in messages.iter().map_err(|e| read(&e))? {
            let (k, v) = row.map_err(|e| read(&e))?;
            let (topic, offset) = k.value();
            snapshot.topic_messages.push(((topic.to_owned(), offset), v.value().to_vec()));
        }
        let trims = txn.open_table(TOPIC_TRIMS).map_err(|e| read(&e))?;
        for row in trims.iter().map_err(|e| read(&e))? {
            let (k, v) = row.map_err(|e| read(&e))?;
            snapshot.topic_trims.push((k.value().to_owned(), v.value()));
        }
        let groups = txn.open_table(TOPIC_GROUPS).map_err(|e| read(&e))?;
        for row in groups.iter().map_err(|e| read(&e))? {
            let (k, v) = row.map_err(|e| read(&e))?;
            let (topic, group) = k.value();
            snapshot.topic_groups.push(((topic.to_owned(), group.to_owned()), v.value()));
        }
        Ok(snapshot)
    }

    /// The number of the last log frame the database holds (0: none).
    pub fn applied(&self) -> Result<u64, StoreError> {
        let read = |e: &dyn std::fmt::Display| self.fail(format!("cannot read: {e}"));
        let txn = self.db.begin_read().map_err(|e| read(&e))?;
        let meta = txn.open_table(META).map_err(|e| read(&e))?;
        Ok(meta.get(APPLIED).map_err(|e| read(&e))?.map_or(0, |v| v.value()))
    }

    /// Writes `batches` in order in one transaction, with `applied`, the number of the last
    /// log frame they come from, durably (`head.redb` is synced once it returns).
    pub fn write_batches(&mut self, batches: &[&Batch], applied: u64) -> Result<(), StoreError> {
        let fail = |e: &dyn std::fmt::Display| self.fail(cannot_write(e));
        let txn = self.db.begin_write().map_err(|e| fail(&e))?;
        {
            txn.open_table(META)
                .map_err(|e| fail(&e))?
                .insert(APPLIED, applied)
                .map_err(|e| fail(&e))?;
            let mut tasks = txn.open_table(TASKS).map_err(|e| fail(&e))?;
            let mut events = txn.open_table(EVENTS).map_err(|e| fail(&e))?;
            let mut push = txn.open_table(PUSH).map_err(|e| fail(&e))?;
            let mut agents = txn.open_table(AGENTS).map_err(|e| fail(&e))?;
            let mut workers = txn.open_table(WORKERS).map_err(|e| fail(&e))?;
            let mut conversations = txn.open_table(CONVERSATIONS).map_err(|e| fail(&e))?;
            let mut actors = txn.open_table(ACTORS).map_err(|e| fail(&e))?;
            let mut topic_messages = txn.open_table(TOPIC_MESSAGES).map_err(|e| fail(&e))?;
            let mut topic_trims = txn.open_table(TOPIC_TRIMS).map_err(|e| fail(&e))?;
            let mut topic_groups = txn.open_table(TOPIC_GROUPS).map_err(|e| fail(&e))?;
            for batch in batches {
                for (number, bytes) in &batch.tasks {
                    tasks.insert(number, bytes.as_slice()).map_err(|e| fail(&e))?;
                }
                for (key, bytes) in &batch.events {
                    events.insert(key, bytes.as_slice()).map_err(|e| fail(&e))?;
                }
                for (number, bytes) in &batch.push {
                    push.insert(number, bytes.as_slice()).map_err(|e| fail(&e))?;
                }
                for &number in &batch.removed {
                    tasks.remove(number).map_err(|e| fail(&e))?;
                    push.remove(number).map_err(|e| fail(&e))?;
                    events
                        .retain_in((number, 0)..(number + 1, 0), |_, _| false)
                        .map_err(|e| fail(&e))?;
                }
                for (name, bytes) in &batch.agents {
                    agents.insert(name.as_str(), bytes.as_slice()).map_err(|e| fail(&e))?;
                }
                for (id, mark) in &batch.workers {
                    workers.insert(id.as_str(), mark).map_err(|e| fail(&e))?;
                }
                for (key, value) in &batch.conversations {
                    match value {
                        Some(bytes) => conversations.insert(key.as_str(), bytes.as_slice()),
                        None => conversations.remove(key.as_str()),
                    }
                    .map_err(|e| fail(&e))?;
                }
                for (key, value) in &batch.actors {
                    match value {
                        Some(bytes) => actors.insert(key.as_str(), bytes.as_slice()),
                        None => actors.remove(key.as_str()),
                    }
                    .map_err(|e| fail(&e))?;
                }
                for ((topic, offset), bytes) in &batch.topic_messages {
                    topic_messages
                        .insert((topic.as_str(), *offset), bytes.as_slice())
                        .map_err(|e| fail(&e))?;
                }
                // After the appends: a trim lets go what came before it, however written.
                for (topic, first) in &batch.topic_trims {
                    topic_trims.insert(topic.as_str(), first).map_err(|e| fail(&e))?;
                    topic_messages
                        .retain_in((topic.as_str(), 0)..(topic.as_str(), *first), |_, _| false)
                        .map_err(|e| fail(&e))?;
                }
                for ((topic, group), offset) in &batch.topic_groups {
                    topic_groups
                        .insert((topic.as_str(), group.as_str()), offset)
                        .map_err(|e| fail(&e))?;
                }
            }
        }
        txn.commit().map_err(|e| fail(&e))
    }

    /// The file, for messages.
    pub fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
