//! The PostgreSQL store (`--store postgres://...`), for heads that share their state: one
//! leads, the others wait as standbys (see [`lease`] and `crate::leader`). The tables hold
//! the same records as the embedded store. Every write checks, in its transaction, that
//! this head still holds the leader lease it was started with (its epoch): a head that lost
//! the lease cannot write, so it cannot make anything visible either (events go out only
//! once stored).

mod conn;
pub mod lease;
pub mod tls;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Batch, Fsync, Snapshot, Store, StoreError};
pub use conn::Conn;

/// The layout this head writes; a database with another refuses to load.
const FORMAT: i64 = 1;
/// Taken while the tables are created, so that two heads starting at once do not race.
const SCHEMA_LOCK: i64 = 0x666c_6565_7473;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS fleet_meta (key text PRIMARY KEY, value bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_tasks (number bigint PRIMARY KEY, record bytea NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_events (
        number bigint NOT NULL, first_seq bigint NOT NULL, events bytea NOT NULL,
        PRIMARY KEY (number, first_seq));
    CREATE TABLE IF NOT EXISTS fleet_agents (name text PRIMARY KEY, spec bytea NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_workers (
        id text PRIMARY KEY, incarnation bigint NOT NULL, up_to bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_push (number bigint PRIMARY KEY, configs bytea NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_conversations (key text PRIMARY KEY, record bytea NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_actors (key text PRIMARY KEY, record bytea NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_topic_messages (
        topic text NOT NULL, msg_offset bigint NOT NULL, record bytea NOT NULL,
        PRIMARY KEY (topic, msg_offset));
    CREATE TABLE IF NOT EXISTS fleet_topic_trims (topic text PRIMARY KEY, first bigint NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_topic_groups (
        topic text NOT NULL, grp text NOT NULL, committed bigint NOT NULL,
        PRIMARY KEY (topic, grp));
    CREATE TABLE IF NOT EXISTS fleet_lease (
        id int PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL, holder text NOT NULL,
        expires_at timestamptz NOT NULL);
    CREATE TABLE IF NOT EXISTS fleet_epoch (id int PRIMARY KEY CHECK (id = 1), epoch bigint NOT NULL);
    INSERT INTO fleet_epoch (id, epoch) VALUES (1, 0) ON CONFLICT DO NOTHING;
";

/// A whole write in one statement. The epoch row is locked (shared) until the commit: a
/// head taking over waits for this write, and every later one of this head sees the new
/// epoch and changes nothing (the lease's own row is another, so renewals never wait for
/// writes). Rows of tasks removed are deleted after nothing else in the write names them.
const WRITE: &str = "
    WITH fence AS (SELECT epoch FROM fleet_epoch WHERE id = 1 FOR SHARE),
    ok AS (SELECT 1 FROM fence WHERE epoch = $1),
    t AS (INSERT INTO fleet_tasks (number, record)
          SELECT * FROM unnest($2::int8[], $3::bytea[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (number) DO UPDATE SET record = EXCLUDED.record),
    e AS (INSERT INTO fleet_events (number, first_seq, events)
          SELECT * FROM unnest($4::int8[], $5::int8[], $6::bytea[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (number, first_seq) DO UPDATE SET events = EXCLUDED.events),
    dp AS (DELETE FROM fleet_push WHERE number = ANY($7) AND EXISTS (SELECT 1 FROM ok)),
    de AS (DELETE FROM fleet_events WHERE number = ANY($7) AND EXISTS (SELECT 1 FROM ok)),
    dt AS (DELETE FROM fleet_tasks WHERE number = ANY($7) AND EXISTS (SELECT 1 FROM ok)),
    a AS (INSERT INTO fleet_agents (name, spec)
          SELECT * FROM unnest($8::text[], $9::bytea[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec),
    w AS (INSERT INTO fleet_workers (id, incarnation, up_to)
          SELECT * FROM unnest($10::text[], $11::int8[], $12::int8[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (id) DO UPDATE
          SET incarnation = EXCLUDED.incarnation, up_to = EXCLUDED.up_to),
    p AS (INSERT INTO fleet_push (number, configs)
          SELECT * FROM unnest($13::int8[], $14::bytea[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (number) DO UPDATE SET configs = EXCLUDED.configs),
    c AS (INSERT INTO fleet_conversations (key, record)
          SELECT * FROM unnest($15::text[], $16::bytea[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record),
    dc AS (DELETE FROM fleet_conversations WHERE key = ANY($17) AND EXISTS (SELECT 1 FROM ok)),
    s AS (INSERT INTO fleet_actors (key, record)
          SELECT * FROM unnest($18::text[], $19::bytea[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (key) DO UPDATE SET record = EXCLUDED.record),
    ds AS (DELETE FROM fleet_actors WHERE key = ANY($20) AND EXISTS (SELECT 1 FROM ok)),
    tm AS (INSERT INTO fleet_topic_messages (topic, msg_offset, record)
          SELECT * FROM unnest($21::text[], $22::int8[], $23::bytea[])
          WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (topic, msg_offset) DO UPDATE SET record = EXCLUDED.record),
    tt AS (INSERT INTO fleet_topic_trims (topic, first)
          SELECT * FROM unnest($24::text[], $25::int8[]) WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (topic) DO UPDATE SET first = EXCLUDED.first),
    dtm AS (DELETE FROM fleet_topic_messages m USING unnest($24::text[], $25::int8[]) AS d(topic, first)
          WHERE m.topic = d.topic AND m.msg_offset < d.first AND EXISTS (SELECT 1 FROM ok)),
    tg AS (INSERT INTO fleet_topic_groups (topic, grp, committed)
          SELECT * FROM unnest($26::text[], $27::text[], $28::int8[])
          WHERE EXISTS (SELECT 1 FROM ok)
          ON CONFLICT (topic, grp) DO UPDATE SET committed = EXCLUDED.committed)
    SELECT epoch FROM fence
";

/// The lease epoch a head's writes are made under; a write that finds another cancels
/// `lost` (another head took over) and fails.
#[derive(Debug, Clone)]
pub struct Fence {
    pub epoch: i64,
    pub lost: CancellationToken,
}

pub use tls::{SslMode, Target};

/// Parses a `postgres://` URL, its `sslmode` and `sslrootcert` included ([`tls`]); the
/// error says what to fix.
pub fn parse(url: &str) -> Result<Target, StoreError> {
    tls::target(url).map_err(|message| StoreError {
        what: "--store".into(),
        message,
        fenced: false,
    })
}

/// Checks the layout and creates the tables if missing, under a lock. A database of
/// another layout is left as it is: the check comes first, and its transaction is rolled
/// back (dropped) without creating anything.
pub fn ensure_schema(conn: &Conn) -> Result<(), String> {
    let format = conn.run(|client| {
        let mut txn = client.transaction()?;
        txn.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
        // Two statements: one naming a table that does not exist fails to parse.
        let made: bool = txn.query_one("SELECT to_regclass('fleet_meta') IS NOT NULL", &[])?.get(0);
        if made {
            let stamped =
                txn.query_opt("SELECT value FROM fleet_meta WHERE key = 'format'", &[])?;
            if let Some(format) = stamped.map(|row| row.get::<_, i64>(0)).filter(|f| *f != FORMAT) {
                return Ok(format);
            }
        }
        txn.batch_execute(SCHEMA)?;
        txn.execute(
            "INSERT INTO fleet_meta (key, value) VALUES ('format', $1) ON CONFLICT DO NOTHING",
            &[&FORMAT],
        )?;
        txn.commit()?;
        Ok(FORMAT)
    })?;
    if format != FORMAT {
        return Err(super::unknown_format(format.into(), FORMAT.into()));
    }
    Ok(())
}

pub struct PostgresStore {
    conn: Conn,
    server: String,
    fence: Fence,
}

impl PostgresStore {
    /// Connects to the database `config` names and creates its tables if missing. `lease`
    /// is the leader lease's term: a transaction of this head left idle for half of it (the
    /// process frozen) is ended by the server, so that its lock on the lease row does not
    /// hold off the head taking over. With [`Fsync::Periodic`] its transactions commit
    /// asynchronously (`synchronous_commit = off`): a commit is acknowledged once the
    /// server has it, before its WAL reaches the disk, which survives this head crashing
    /// (a standby reads it) and loses at most the server's last ~0.6 s (three
    /// `wal_writer_delay`s) if the database server itself crashes, as the file store loses
    /// its last checkpoint interval on a power cut.
    pub fn open(
        target: &Target,
        fence: Fence,
        lease: Duration,
        fsync: Fsync,
    ) -> Result<Self, StoreError> {
        let server = conn::display(target);
        let fail = |message: String| StoreError { what: server.clone(), message, fenced: false };
        let idle = (lease / 2).max(Duration::from_millis(100));
        let mut target = target.clone();
        if fsync == Fsync::Periodic {
            let options = match target.config.get_options() {
                Some(given) => format!("{given} -c synchronous_commit=off"),
                None => "-c synchronous_commit=off".to_owned(),
            };
            target.config.options(&options);
        }
        let conn = Conn::open(&target, "fleet-postgres", Duration::from_secs(60), idle)
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        ensure_schema(&conn).map_err(fail)?;
        Ok(Self { conn, server, fence })
    }

    fn fail(&self, message: String) -> StoreError {
        StoreError { what: self.server.clone(), message, fenced: false }
    }
}

/// Splits keyed records into parallel arrays (what `unnest` takes).
fn columns<K: Copy, V: Clone>(rows: &[(K, V)]) -> (Vec<K>, Vec<V>) {
    rows.iter().map(|(k, v)| (*k, v.clone())).unzip()
}

/// Records by key as columns: the keys and records kept, and the keys deleted.
fn keyed(rows: &[(String, Option<Vec<u8>>)]) -> (Vec<String>, Vec<Vec<u8>>, Vec<String>) {
    let (mut keys, mut records, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for (key, record) in rows {
        match record {
            Some(record) => {
                keys.push(key.clone());
                records.push(record.clone());
            }
            None => deleted.push(key.clone()),
        }
    }
    (keys, records, deleted)
}

impl Store for PostgresStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.conn
            .run(|client| {
                // One snapshot of the whole database.
                let mut txn = client
                    .build_transaction()
                    .isolation_level(postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()?;
                let mut snapshot = Snapshot::default();
                for row in
                    txn.query("SELECT number, record FROM fleet_tasks ORDER BY number", &[])?
                {
                    snapshot.tasks.push((row.get::<_, i64>(0) as u64, row.get(1)));
                }
                for row in txn.query(
                    "SELECT number, first_seq, events FROM fleet_events ORDER BY number, first_seq",
                    &[],
                )? {
                    let key = (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64);
                    snapshot.events.push((key, row.get(2)));
                }
                for row in txn.query("SELECT spec FROM fleet_agents ORDER BY name", &[])? {
                    snapshot.agents.push(row.get(0));
                }
                for row in
                    txn.query("SELECT number, configs FROM fleet_push ORDER BY number", &[])?
                {
                    snapshot.push.push((row.get::<_, i64>(0) as u64, row.get(1)));
                }
                for row in txn.query("SELECT record FROM fleet_conversations", &[])? {
                    snapshot.conversations.push(row.get(0));
                }
                for row in txn.query("SELECT record FROM fleet_actors", &[])? {
                    snapshot.actors.push(row.get(0));
                }
                for row in txn.query(
                    "SELECT topic, msg_offset, record FROM fleet_topic_messages \
                     ORDER BY topic, msg_offset",
                    &[],
                )? {
                    let key = (row.get::<_, String>(0), row.get::<_, i64>(1) as u64);
                    snapshot.topic_messages.push((key, row.get(2)));
                }
                for row in txn.query("SELECT topic, first FROM fleet_topic_trims", &[])? {
                    snapshot.topic_trims.push((row.get(0), row.get::<_, i64>(1) as u64));
                }
                for row in txn.query("SELECT topic, grp, committed FROM fleet_topic_groups", &[])? {
                    let key = (row.get::<_, String>(0), row.get::<_, String>(1));
                    snapshot.topic_groups.push((key, row.get::<_, i64>(2) as u64));
                }
                for row in txn.query("SELECT id, incarnation, up_to FROM fleet_workers", &[])? {
                    let mark = (row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64);
                    snapshot.workers.push((row.get(0), mark));
                }
                txn.commit()?;
                Ok(snapshot)
            })
            .map_err(|e| self.fail(format!("cannot read: {e}")))
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        // Owned copies: the statements run on the connection's thread.
        let (task_numbers, task_records) = columns(&batch.tasks);
        let task_numbers: Vec<i64> = task_numbers.into_iter().map(|n| n as i64).collect();
        let (event_keys, event_values) = columns(&batch.events);
        let event_numbers: Vec<i64> = event_keys.iter().map(|k| k.0 as i64).collect();
        let event_seqs: Vec<i64> = event_keys.iter().map(|k| k.1 as i64).collect();
        let removed: Vec<i64> = batch.removed.iter().map(|&n| n as i64).collect();
        let agent_names: Vec<String> = batch.agents.iter().map(|(n, _)| n.clone()).collect();
        let agent_specs: Vec<Vec<u8>> = batch.agents.iter().map(|(_, s)| s.clone()).collect();
        let worker_ids: Vec<String> = batch.workers.iter().map(|(id, _)| id.clone()).collect();
        let incarnations: Vec<i64> = batch.workers.iter().map(|(_, m)| m.0 as i64).collect();
        let marks: Vec<i64> = batch.workers.iter().map(|(_, m)| m.1 as i64).collect();
        let push_numbers: Vec<i64> = batch.push.iter().map(|(n, _)| *n as i64).collect();
        let push_configs: Vec<Vec<u8>> = batch.push.iter().map(|(_, c)| c.clone()).collect();
        // A key is in one of the two: the journal keeps a record's last change.
        let (kept_keys, kept_records, deleted) = keyed(&batch.conversations);
        let (actor_keys, actor_records, actors_deleted) = keyed(&batch.actors);
        let message_topics: Vec<String> =
            batch.topic_messages.iter().map(|((t, _), _)| t.clone()).collect();
        let message_offsets: Vec<i64> =
            batch.topic_messages.iter().map(|((_, o), _)| *o as i64).collect();
        let message_records: Vec<Vec<u8>> =
            batch.topic_messages.iter().map(|(_, r)| r.clone()).collect();
        let trim_topics: Vec<String> = batch.topic_trims.iter().map(|(t, _)| t.clone()).collect();
        let trim_firsts: Vec<i64> = batch.topic_trims.iter().map(|(_, f)| *f as i64).collect();
        let group_topics: Vec<String> =
            batch.topic_groups.iter().map(|((t, _), _)| t.clone()).collect();
        let group_names: Vec<String> =
            batch.topic_groups.iter().map(|((_, g), _)| g.clone()).collect();
        let group_offsets: Vec<i64> = batch.topic_groups.iter().map(|(_, o)| *o as i64).collect();
        let epoch = self.fence.epoch;
        let held = self.conn.run_prepared(WRITE, move |client, write| {
            // One prepared statement (its own transaction): one round trip and one commit
            // per write, where a statement per table took a dozen.
            let row = client.query_opt(
                write,
                &[
                    &epoch,
                    &task_numbers,
                    &task_records,
                    &event_numbers,
                    &event_seqs,
                    &event_values,
                    &removed,
                    &agent_names,
                    &agent_specs,
                    &worker_ids,
                    &incarnations,
                    &marks,
                    &push_numbers,
                    &push_configs,
                    &kept_keys,
                    &kept_records,
                    &deleted,
                    &actor_keys,
                    &actor_records,
                    &actors_deleted,
                    &message_topics,
                    &message_offsets,
                    &message_records,
                    &trim_topics,
                    &trim_firsts,
                    &group_topics,
                    &group_names,
                    &group_offsets,
                ],
            )?;
            Ok(row.map(|r| r.get::<_, i64>(0)))
        });
        match held {
            Ok(Some(current)) if current == epoch => Ok(()),
            Ok(current) => {
                self.fence.lost.cancel();
                Err(StoreError {
                    what: self.server.clone(),
                    message: format!(
                        "this head no longer leads (its lease epoch is {epoch}, the store's {}): \
                         another head took over",
                        current.map_or("none".into(), |c| c.to_string())
                    ),
                    fenced: true,
                })
            }
            Err(e) => Err(self.fail(format!("cannot write: {e}"))),
        }
    }

    fn describe(&self) -> String {
        self.server.clone()
    }
}
