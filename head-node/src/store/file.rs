//! The file store (the default): a log in front of a redb database, both in the data
//! directory.
//!
//! A write appends the batch to the log ([`Log`]) and returns: that is the durability point
//! the journal waits for, one `write(2)` (plus an `fdatasync` with `--fsync always`) instead
//! of a database commit, which syncs the disk more than once. A checkpointer thread puts
//! what the log gathered into `head.redb` in one transaction every
//! [`CHECKPOINT_EVERY`] and removes the segments it covered. On open, the segments left by
//! a crash are put into the database before anything is read, so [`Store::load`] sees all
//! that was acknowledged.
//!
//! Replaying a segment part of which is in the database already is harmless: every record
//! sets or removes whole keys, so applying a prefix again and then the rest gives the same
//! tables.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tracing::{error, info};

use super::log::{self, Fsync, Log};
use super::redb::RedbStore;
use super::{Batch, Snapshot, Store, StoreError};

/// How long records may wait in the log before a checkpoint puts them into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// Bytes logged and not yet checkpointed beyond which writes wait for the checkpointer.
const MAX_PENDING: usize = 256 << 20;
/// How long a failed checkpoint waits before it is tried again.
const RETRY: Duration = Duration::from_millis(500);

/// A batch for the checkpointer: the batch, the segment that holds it, its frame's number
/// and its size.
type Logged = (Batch, u64, u64, usize);

struct Shared {
    db: Mutex<RedbStore>,
    /// Bytes sent to the checkpointer and not yet in the database.
    pending: std::sync::Mutex<usize>,
    drained: Condvar,
    /// Why the last checkpoint failed, until one succeeds.
    failure: Mutex<Option<StoreError>>,
}

pub struct FileStore {
    dir: PathBuf,
    describe: String,
    log: Log,
    shared: Arc<Shared>,
    checkpoints: Option<mpsc::Sender<Logged>>,
    checkpointer: Option<std::thread::JoinHandle<bool>>,
}

impl FileStore {
    /// Opens (or creates) the store in `dir`: the database first (its lock keeps a second
    /// head out), then what a crash left in the log and the database lacks goes into it.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<Self, StoreError> {
        let mut db = RedbStore::open(dir)?;
        let applied = db.applied()?;
        let replay = Log::read(dir)?;
        let last = replay.batches.iter().map(|(number, _)| *number).max().unwrap_or(0);
        let missing: Vec<&Batch> =
            replay.batches.iter().filter(|(number, _)| *number > applied).map(|(_, b)| b).collect();
        if !missing.is_empty() {
            db.write_batches(&missing, last)?;
            info!(batches = missing.len(), "the store took back what its log held");
        }
        let next = replay.segments.last().map_or(0, |last| last + 1);
        if let Some(&first) = replay.segments.first() {
            // Left ones are harmless: their frames are at or below `applied` from now on.
            log::remove(dir, first..next);
        }
        let log = Log::create(dir, next, applied.max(last) + 1, fsync)?;
        let describe = db.describe();
        let shared = Arc::new(Shared {
            db: Mutex::new(db),
            pending: std::sync::Mutex::new(0),
            drained: Condvar::new(),
            failure: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel();
        let checkpointer = {
            let (shared, dir) = (shared.clone(), dir.to_owned());
            std::thread::Builder::new()
                .name("fleet-checkpoint".into())
                .spawn(move || checkpoint(&rx, &shared, &dir, next))
                .map_err(|e| StoreError {
                    what: describe.clone(),
                    message: format!("cannot start the checkpoint thread: {e}"),
                    fenced: false,
                })?
        };
        Ok(Self {
            dir: dir.to_owned(),
            describe,
            log,
            shared,
            checkpoints: Some(tx),
            checkpointer: Some(checkpointer),
        })
    }
}

impl Store for FileStore {
    fn load(&mut self) -> Result<Snapshot, StoreError> {
        self.shared.db.lock().load()
    }

    fn write(&mut self, batch: &Batch) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
        }
        self.check()?;
        let size = batch_size(batch);
        {
            let mut pending = self.shared.pending.lock().map_err(|_| self.gone())?;
            while *pending > MAX_PENDING {
                pending =
                    self.shared.drained.wait_timeout(pending, RETRY).map_err(|_| self.gone())?.0;
                self.check()?;
            }
            *pending += size;
        }
        let (segment, number) = match self.log.append(batch) {
            Ok(appended) => appended,
            Err(e) => {
                if let Ok(mut pending) = self.shared.pending.lock() {
                    *pending -= size;
                }
                return Err(e);
            }
        };
        let sent = match &self.checkpoints {
            Some(tx) => tx.send((batch.clone(), segment, number, size)).is_ok(),
            None => false,
        };
        if sent { Ok(()) } else { Err(self.gone()) }
    }

    /// With `--fsync periodic`, unless the log begins a segment (it syncs the last) or the
    /// checkpoints are so far behind that the write would wait for them.
    fn quick(&self, batch: &Batch) -> bool {
        self.log.quick()
            && self
                .shared
                .pending
                .lock()
                .is_ok_and(|pending| *pending + batch_size(batch) <= MAX_PENDING)
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }
}

impl FileStore {
    /// A database that cannot take checkpoints (a full disk) refuses writes, so that the
    /// journal holds the records and the head refuses new work until it recovers; so does
    /// a checkpointer that has stopped.
    fn check(&self) -> Result<(), StoreError> {
        if self.checkpointer.as_ref().is_none_or(|t| t.is_finished()) {
            return Err(self.gone());
        }
        match self.shared.failure.lock().as_ref() {
            Some(failure) => Err(failure.clone()),
            None => Ok(()),
        }
    }

    fn gone(&self) -> StoreError {
        StoreError {
            what: self.describe.clone(),
            message: "the checkpoint thread has stopped".into(),
            fenced: false,
        }
    }
}

impl Drop for FileStore {
    /// Checkpoints what is left; once all of it is in the database the log goes too, so a
    /// head stopped cleanly leaves one file.
    fn drop(&mut self) {
        self.checkpoints = None;
        let all_in = self.checkpointer.take().is_some_and(|t| t.join().unwrap_or(false));
        if all_in {
            log::remove(&self.dir, self.log.segment()..self.log.segment() + 1);
        }
    }
}

/// The checkpointer's loop: gathers what arrives for [`CHECKPOINT_EVERY`] after the first
/// record, syncs the log's segment that holds it (so that the log on the disk never lags
/// what the database holds), writes it in one transaction and removes the segments wholly
/// covered. Returns whether everything it received is in the database.
fn checkpoint(rx: &mpsc::Receiver<Logged>, shared: &Shared, dir: &Path, first: u64) -> bool {
    // The oldest segment not yet removed.
    let mut live = first;
    let mut batches: Vec<Logged> = Vec::new();
    loop {
        let Ok(logged) = rx.recv() else { return true };
        let deadline = Instant::now() + CHECKPOINT_EVERY;
        batches.push(logged);
        let mut closing = false;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(logged) => batches.push(logged),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    closing = true;
                    break;
                }
            }
        }
        loop {
            match write_checkpoint(shared, dir, &batches) {
                Ok(()) => break,
                // Closing: the log keeps these; the next start puts them in.
                Err(_) if closing => return false,
                Err(e) => {
                    let mut failure = shared.failure.lock();
                    if failure.is_none() {
                        error!(error = %e, "checkpoints fail; new work is refused until they succeed");
                    }
                    *failure = Some(e);
                    drop(failure);
                    // Wait to try again, taking what arrives meanwhile into the checkpoint.
                    match rx.recv_timeout(RETRY) {
                        Ok(logged) => batches.push(logged),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => closing = true,
                    }
                }
            }
        }
        if shared.failure.lock().take().is_some() {
            info!("checkpoints succeed again");
        }
        // Batches come in log order: the segments before the last one's are all in.
        let last = batches.last().map_or(live, |(_, segment, _, _)| *segment);
        live = log::remove(dir, live..last.max(live));
        let bytes: usize = batches.iter().map(|(_, _, _, size)| size).sum();
        batches.clear();
        if let Ok(mut pending) = shared.pending.lock() {
            *pending = pending.saturating_sub(bytes);
        }
        shared.drained.notify_all();
        if closing {
            return true;
        }
    }
}

/// Syncs the log's segment holding the last of `batches` (earlier segments were synced when
/// the log left them), then writes them into the database with the last frame's number.
fn write_checkpoint(shared: &Shared, dir: &Path, batches: &[Logged]) -> Result<(), StoreError> {
    let Some((_, segment, number, _)) = batches.last() else { return Ok(()) };
    let path = log::segment_path(dir, *segment);
    std::fs::File::open(&path).and_then(|f| f.sync_data()).map_err(|e| StoreError {
        what: path.display().to_string(),
        message: format!("cannot sync: {e}"),
        fenced: false,
    })?;
    let records: Vec<&Batch> = batches.iter().map(|(batch, _, _, _)| batch).collect();
    shared.db.lock().write_batches(&records, *number)
}

/// The bytes a batch's records take (for the bound on what waits for a checkpoint).
fn batch_size(batch: &Batch) -> usize {
    let values =
        |records: &[(u64, Vec<u8>)]| records.iter().map(|(_, v)| v.len() + 8).sum::<usize>();
    values(&batch.tasks)
        + batch.events.iter().map(|(_, v)| v.len() + 16).sum::<usize>()
        + batch.agents.iter().map(|(name, v)| name.len() + v.len()).sum::<usize>()
        + values(&batch.push)
        + batch.workers.iter().map(|(id, _)| id.len() + 16).sum::<usize>()
        + batch.removed.len() * 8
        + batch
            .conversations
            .iter()
            .chain(&batch.actors)
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum::<usize>()
        + batch.topic_messages.iter().map(|((t, _), v)| t.len() + v.len() + 8).sum::<usize>()
        + batch.topic_trims.iter().map(|(t, _)| t.len() + 8).sum::<usize>()
        + batch.topic_groups.iter().map(|((t, g), _)| t.len() + g.len() + 8).sum::<usize>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The log's checksum of a frame (the same as `log`'s).
    fn checksum(number: u64, batch: &[u8]) -> u32 {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&number.to_le_bytes());
        crc.update(batch);
        crc.finalize()
    }

    fn batch(number: u64) -> Batch {
        Batch {
            tasks: vec![(number, format!("task {number}").into_bytes())],
            events: vec![((number, 1), vec![number as u8; 3])],
            workers: vec![("w".into(), (1, number))],
            // Two actors' states, each written again and again: the last write wins.
            actors: vec![(format!("a{}", number % 2), Some(format!("state {number}").into()))],
            // A message a batch; the third lets the first go; a group's place moves on.
            topic_messages: vec![(("news".into(), number - 1), vec![number as u8])],
            topic_trims: if number == 3 { vec![("news".into(), 1)] } else { Vec::new() },
            topic_groups: vec![(("news".into(), "g".into()), number)],
            ..Batch::default()
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("fleet-file-store-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn segments(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|name| name.ends_with(".wal"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// What a crash left in the log (written, never checkpointed) is in the store when it
    /// opens again; a torn frame after it (a crash during a write) is left out.
    #[test]
    fn what_the_log_holds_after_a_crash_is_loaded() -> Result<(), StoreError> {
        let dir = temp_dir("crash");
        // A store that has the database's tables, then a log of a head that crashed.
        drop(FileStore::open(&dir, Fsync::Periodic)?);
        let mut log = Log::create(&dir, 7, 1, Fsync::Always)?;
        for number in 1..=3 {
            log.append(&batch(number))?;
        }
        drop(log);
        let torn = log::segment_path(&dir, 7);
        let mut bytes = std::fs::read(&torn).map_err(|e| StoreError {
            what: torn.display().to_string(),
            message: e.to_string(),
            fenced: false,
        })?;
        bytes.extend_from_slice(&[0x90, 0x03, 0x0d, 0x01]);
        std::fs::write(&torn, &bytes).ok();

        let mut store = FileStore::open(&dir, Fsync::Periodic)?;
        let snapshot = store.load()?;
        let numbers: Vec<u64> = snapshot.tasks.iter().map(|(n, _)| *n).collect();
        assert_eq!(numbers, [1, 2, 3], "the logged tasks were not loaded");
        assert_eq!(snapshot.events.len(), 3);
        assert_eq!(snapshot.workers, [("w".to_owned(), (1, 3))], "the last mark wins");
        assert_eq!(snapshot.actors, [b"state 2".to_vec(), b"state 3".to_vec()]);
        let offsets: Vec<u64> = snapshot.topic_messages.iter().map(|((_, o), _)| *o).collect();
        assert_eq!(offsets, [1, 2], "the message trimmed is gone, the others kept");
        assert_eq!(snapshot.topic_trims, [("news".to_owned(), 1)]);
        assert_eq!(snapshot.topic_groups, [(("news".to_owned(), "g".to_owned()), 3)]);
        // The old segment went into the database and is gone; appends go to the next.
        assert_eq!(segments(&dir), ["head-0000000000000008.wal"]);
        drop(store);
        assert!(segments(&dir).is_empty(), "a clean stop left its log: {:?}", segments(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// A new data directory is this user's only (0700), and so are its files (0600): they
    /// hold every task's data and agents' options, keys among them. A directory made
    /// world-readable by hand is tightened at the next start.
    #[cfg(unix)]
    #[test]
    fn the_data_directory_and_its_files_are_private() -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).map(|m| m.permissions().mode() & 0o777).ok();
        let parent = temp_dir("modes");
        let dir = parent.join("nested").join("data");
        let mut store = FileStore::open(&dir, Fsync::Periodic)?;
        store.write(&batch(1))?;
        assert_eq!(mode(&dir), Some(0o700));
        assert_eq!(mode(&dir.join(crate::store::StoreConfig::FILE)), Some(0o600));
        let wal = segments(&dir);
        assert!(!wal.is_empty(), "no log segment");
        for name in wal {
            assert_eq!(mode(&dir.join(&name)), Some(0o600), "{name}");
        }
        drop(store);
        let open = std::fs::Permissions::from_mode(0o755);
        let file = dir.join(crate::store::StoreConfig::FILE);
        std::fs::set_permissions(&dir, open.clone()).ok();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).ok();
        drop(FileStore::open(&dir, Fsync::Periodic)?);
        assert_eq!((mode(&dir), mode(&file)), (Some(0o700), Some(0o600)));
        let _ = std::fs::remove_dir_all(&parent);
        Ok(())
    }

    /// Writes are in the log at once and in the database after a checkpoint, which removes
    /// the segments it covered; a clean stop leaves no log.
    #[test]
    fn checkpoints_move_the_log_into_the_database() -> Result<(), StoreError> {
        let dir = temp_dir("checkpoint");
        let mut store = FileStore::open(&dir, Fsync::Periodic)?;
        for number in 1..=100 {
            store.write(&batch(number))?;
        }
        assert_eq!(segments(&dir), ["head-0000000000000000.wal"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while *store.shared.pending.lock().map_err(|_| store.gone())? > 0 {
            assert!(Instant::now() < deadline, "no checkpoint within 10 s");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(store.load()?.tasks.len(), 100, "the checkpoint lost tasks");
        drop(store);
        assert!(segments(&dir).is_empty(), "a clean stop left its log: {:?}", segments(&dir));
        let mut store = FileStore::open(&dir, Fsync::Periodic)?;
        assert_eq!(store.load()?.tasks.len(), 100);
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// A segment left behind (a power cut before its sync, a removal that failed) holds
    /// frames the database has already: they are not applied again over newer state.
    #[test]
    fn a_segment_the_database_is_past_is_not_applied_again() -> Result<(), StoreError> {
        let dir = temp_dir("stale");
        let mut store = FileStore::open(&dir, Fsync::Periodic)?;
        store.write(&batch(1))?;
        let newer = Batch { tasks: vec![(1, b"newer".to_vec())], ..Batch::default() };
        store.write(&newer)?;
        drop(store);
        // An old copy of the first frame, as a segment the log once had.
        let mut stale = Log::create(&dir, 0, 1, Fsync::Always)?;
        stale.append(&batch(1))?;
        drop(stale);
        let mut store = FileStore::open(&dir, Fsync::Periodic)?;
        let tasks = store.load()?.tasks;
        assert_eq!(tasks, [(1, b"newer".to_vec())], "an old frame was applied again");
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    /// A whole frame that fails its checksum with good frames after it is damage, not a
    /// torn tail; so is one whose checksum holds but which does not decode: the store
    /// refuses to open, naming the segment.
    #[test]
    fn a_damaged_log_is_refused_naming_the_segment() -> Result<(), StoreError> {
        let dir = temp_dir("damaged");
        drop(FileStore::open(&dir, Fsync::Periodic)?);
        let path = log::segment_path(&dir, 3);
        let junk = vec![0xff; 12];
        let frame = fleet_proto::pb::LogFrame { crc32: checksum(1, &junk), batch: junk, number: 1 };
        std::fs::write(&path, prost::Message::encode_length_delimited_to_vec(&frame)).ok();
        let refused = FileStore::open(&dir, Fsync::Periodic).err().expect("a damaged log opened");
        assert_eq!(refused.what, path.display().to_string());
        assert!(refused.message.contains("does not decode"), "{}", refused.message);

        let mut log = Log::create(&dir, 3, 1, Fsync::Always)?;
        for number in 1..=3 {
            log.append(&batch(number))?;
        }
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap_or_default();
        // A byte of the first frame's batch flipped.
        bytes[12] ^= 0x40;
        std::fs::write(&path, &bytes).ok();
        let refused = FileStore::open(&dir, Fsync::Periodic).err().expect("a damaged log opened");
        assert_eq!(refused.what, path.display().to_string());
        assert!(refused.message.contains("fails its checksum"), "{}", refused.message);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
