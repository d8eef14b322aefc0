//! The file store's log: each group commit is appended to a segment file
//! (`head-NNNNNNNNNNNNNNNN.wal` in the data directory) before anyone hears of it, and stays
//! there until a checkpoint has put it into `head.redb` (see `super::file`).
//!
//! An append is one `write(2)`: the OS has it once it returns, so it survives the head
//! crashing or being killed. With [`Fsync::Always`] each append is also `fdatasync`ed, so it
//! survives the machine losing power; otherwise the log reaches the disk with each
//! checkpoint. Frames are prost's length-delimited [`pb::LogFrame`]s, numbered, with a
//! CRC-32, so a torn or zeroed tail reads as the log's end; `head.redb` keeps the number of
//! the last frame it holds, so a segment left behind (a power cut before the segment's
//! sync, a removal that failed) is never applied over newer state.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use fleet_proto::pb;
use prost::Message;
use tracing::warn;

use super::{Batch, StoreError};

/// A segment is closed and the next begun past this size, so that checkpointed segments
/// can be removed while the head runs.
const SEGMENT_BYTES: u64 = 16 << 20;

/// When the file store makes what it stores reach the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fsync {
    /// With each checkpoint (every 250 ms at most while records arrive): a record is
    /// acknowledged once the OS has it, which survives the head crashing; a power cut loses
    /// at most the last checkpoint interval.
    #[default]
    Periodic,
    /// Before each group of records is acknowledged: survives a power cut.
    Always,
}

impl std::str::FromStr for Fsync {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "periodic" => Ok(Self::Periodic),
            "always" => Ok(Self::Always),
            other => Err(format!("unknown fsync policy {other:?}: give periodic or always")),
        }
    }
}

/// The segment being appended to.
pub struct Log {
    dir: PathBuf,
    file: File,
    segment: u64,
    len: u64,
    /// The next frame's number.
    number: u64,
    fsync: Fsync,
    /// A failed append may have left part of a frame: the next append begins a segment.
    torn: bool,
    frame: Vec<u8>,
}

/// What the log held when it was opened: the numbered batches of every segment, in order.
pub struct Replay {
    pub batches: Vec<(u64, Batch)>,
    pub segments: Vec<u64>,
}

impl Log {
    /// The segments in `dir` and what they hold; a segment whose frames pass their checksum
    /// but do not decode is an error naming it (the log is damaged, not torn).
    pub fn read(dir: &Path) -> Result<Replay, StoreError> {
        let mut segments = Vec::new();
        let entries = std::fs::read_dir(dir).map_err(|e| fail(dir, format!("cannot list: {e}")))?;
        for entry in entries {
            let entry = entry.map_err(|e| fail(dir, format!("cannot list: {e}")))?;
            if let Some(number) = segment_number(&entry.file_name().to_string_lossy()) {
                segments.push(number);
            }
        }
        segments.sort_unstable();
        let mut batches = Vec::new();
        for &number in &segments {
            let path = segment_path(dir, number);
            let bytes =
                std::fs::read(&path).map_err(|e| fail(&path, format!("cannot read: {e}")))?;
            read_frames(&path, &bytes, &mut batches)?;
        }
        Ok(Replay { batches, segments })
    }

    /// Begins segment `segment` (after those `read` found), its first frame numbered
    /// `number` (after every frame stored before).
    pub fn create(dir: &Path, segment: u64, number: u64, fsync: Fsync) -> Result<Self, StoreError> {
        let file = new_segment(dir, segment)?;
        Ok(Self {
            dir: dir.to_owned(),
            file,
            segment,
            len: 0,
            number,
            fsync,
            torn: false,
            frame: Vec::new(),
        })
    }

    /// Appends `batch`; returns the segment that holds it and its frame's number.
    pub fn append(&mut self, batch: &Batch) -> Result<(u64, u64), StoreError> {
        if self.torn || self.len >= SEGMENT_BYTES {
            self.rotate()?;
        }
        let logged = encode(batch).encode_to_vec();
        let number = self.number;
        let frame = pb::LogFrame { crc32: checksum(number, &logged), batch: logged, number };
        self.frame.clear();
        self.frame.reserve(frame.encoded_len() + 10);
        frame
            .encode_length_delimited(&mut self.frame)
            .map_err(|e| self.fail(format!("cannot encode: {e}")))?;
        let written = self.file.write_all(&self.frame).and_then(|()| match self.fsync {
            Fsync::Always => self.file.sync_data(),
            Fsync::Periodic => Ok(()),
        });
        if let Err(e) = written {
            // Cut what part of the frame got in, or, failing that, leave this segment.
            self.torn = self.file.set_len(self.len).is_err();
            return Err(self.fail(format!(
                "cannot write ({e}): is the disk full or the directory read-only?"
            )));
        }
        self.len += self.frame.len() as u64;
        self.number += 1;
        Ok((self.segment, number))
    }

    /// Whether the next append is one `write(2)` into the OS's cache: no sync, no new
    /// segment.
    pub fn quick(&self) -> bool {
        self.fsync == Fsync::Periodic && !self.torn && self.len < SEGMENT_BYTES
    }

    /// The segment appended to now.
    pub fn segment(&self) -> u64 {
        self.segment
    }

    /// Closes this segment on the disk and begins the next: the closed one is whole when
    /// read again, whatever happens to the next.
    fn rotate(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(|e| self.fail(format!("cannot sync: {e}")))?;
        let next = new_segment(&self.dir, self.segment + 1)?;
        self.file = next;
        self.segment += 1;
        self.len = 0;
        self.torn = false;
        Ok(())
    }

    fn fail(&self, message: String) -> StoreError {
        fail(&segment_path(&self.dir, self.segment), message)
    }
}

/// Removes the segments numbered `range` (those a checkpoint has put into the database), in
/// order; returns the first it could not remove (`range.end` when all are gone), so that
/// what is left stays a run of segments the next removal begins with.
pub fn remove(dir: &Path, range: std::ops::Range<u64>) -> u64 {
    for number in range.clone() {
        let path = segment_path(dir, number);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %path.display(), error = %e, "cannot remove a checkpointed log segment");
            return number;
        }
    }
    range.end
}

/// The CRC-32 of a frame's number and batch.
fn checksum(number: u64, batch: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(&number.to_le_bytes());
    crc.update(batch);
    crc.finalize()
}

/// A whole frame at the start of `bytes` whose checksum holds, and the bytes it takes.
fn valid_frame(bytes: &[u8]) -> Option<(pb::LogFrame, usize)> {
    let mut rest = bytes;
    pb::LogFrame::decode_length_delimited(&mut rest)
        .ok()
        .filter(|f| !f.batch.is_empty() && checksum(f.number, &f.batch) == f.crc32)
        .map(|f| (f, bytes.len() - rest.len()))
}

pub fn segment_path(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("head-{number:016}.wal"))
}

fn segment_number(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("head-")?.strip_suffix(".wal")?;
    (digits.len() == 16).then(|| digits.parse().ok()).flatten()
}

/// Creates segment `number` and makes its name durable in `dir`.
fn new_segment(dir: &Path, number: u64) -> Result<File, StoreError> {
    let path = segment_path(dir, number);
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    // Records hold task data and agents' options: this user's only.
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(&path).map_err(|e| fail(&path, format!("cannot create: {e}")))?;
    // A file's name is in its directory: sync that too, or a power cut may lose the file.
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail(dir, format!("cannot sync the directory: {e}")))?;
    Ok(file)
}

/// Decodes the frames of one segment into `batches`, up to its end or its torn last frame.
fn read_frames(
    path: &Path,
    bytes: &[u8],
    batches: &mut Vec<(u64, Batch)>,
) -> Result<(), StoreError> {
    let mut rest = bytes;
    while !rest.is_empty() {
        let at = bytes.len() - rest.len();
        let Some((frame, taken)) = valid_frame(rest) else {
            // A frame cut short by a crash, a zeroed tail after a power cut, or a frame a
            // failed append left is the segment's end: nothing after it was acknowledged. A
            // whole frame that fails its checksum with a good one after it is damage.
            let mut after = rest;
            if let Ok(length) = prost::encoding::decode_varint(&mut after)
                && let Some(next) = usize::try_from(length).ok().and_then(|l| after.get(l..))
                && valid_frame(next).is_some()
            {
                return Err(fail(
                    path,
                    format!("the record at byte {at} fails its checksum: the log is damaged"),
                ));
            }
            warn!(
                path = %path.display(),
                offset = at,
                bytes = rest.len(),
                "the log segment ends in a torn record (never acknowledged): left out"
            );
            return Ok(());
        };
        rest = rest.get(taken..).unwrap_or_default();
        let logged = pb::LoggedBatch::decode(frame.batch.as_slice()).map_err(|e| {
            fail(path, format!("the record at byte {at} does not decode ({e}): the log is damaged"))
        })?;
        batches.push((frame.number, decode(logged)));
    }
    Ok(())
}

fn fail(path: &Path, message: String) -> StoreError {
    StoreError { what: path.display().to_string(), message, fenced: false }
}

fn encode(batch: &Batch) -> pb::LoggedBatch {
    let numbered = |records: &[(u64, Vec<u8>)]| {
        records
            .iter()
            .map(|(number, value)| pb::NumberedRecord { number: *number, value: value.clone() })
            .collect()
    };
    pb::LoggedBatch {
        tasks: numbered(&batch.tasks),
        events: batch
            .events
            .iter()
            .map(|((number, first_seq), value)| pb::EventsRecord {
                number: *number,
                first_seq: *first_seq,
                value: value.clone(),
            })
            .collect(),
        removed: batch.removed.clone(),
        agents: batch
            .agents
            .iter()
            .map(|(name, value)| pb::NamedRecord { name: name.clone(), value: value.clone() })
            .collect(),
        workers: batch
            .workers
            .iter()
            .map(|(id, (incarnation, applied))| pb::WorkerMark {
                worker_id: id.clone(),
                incarnation: *incarnation,
                applied: *applied,
            })
            .collect(),
        push: numbered(&batch.push),
        conversations: batch
            .conversations
            .iter()
            .map(|(key, value)| pb::NamedRecord {
                name: key.clone(),
                value: value.clone().unwrap_or_default(),
            })
            .collect(),
        actors: batch
            .actors
            .iter()
            .map(|(key, value)| pb::NamedRecord {
                name: key.clone(),
                value: value.clone().unwrap_or_default(),
            })
            .collect(),
        topic_messages: batch
            .topic_messages
            .iter()
            .map(|((topic, offset), value)| pb::TopicMessageRecord {
                topic: topic.clone(),
                offset: *offset,
                value: value.clone(),
            })
            .collect(),
        topic_trims: batch
            .topic_trims
            .iter()
            .map(|(topic, offset)| pb::TopicMark {
                topic: topic.clone(),
                group: String::new(),
                offset: *offset,
            })
            .collect(),
        topic_groups: batch
            .topic_groups
            .iter()
            .map(|((topic, group), offset)| pb::TopicMark {
                topic: topic.clone(),
                group: group.clone(),
                offset: *offset,
            })
            .collect(),
    }
}

fn decode(logged: pb::LoggedBatch) -> Batch {
    let numbered = |records: Vec<pb::NumberedRecord>| {
        records.into_iter().map(|r| (r.number, r.value)).collect()
    };
    Batch {
        tasks: numbered(logged.tasks),
        events: logged.events.into_iter().map(|r| ((r.number, r.first_seq), r.value)).collect(),
        removed: logged.removed,
        agents: logged.agents.into_iter().map(|r| (r.name, r.value)).collect(),
        workers: logged
            .workers
            .into_iter()
            .map(|w| (w.worker_id, (w.incarnation, w.applied)))
            .collect(),
        push: numbered(logged.push),
        // A stored conversation is never empty: it names its agent at least.
        conversations: logged
            .conversations
            .into_iter()
            .map(|r| (r.name, (!r.value.is_empty()).then_some(r.value)))
            .collect(),
        // Nor is a stored actor state: it names its agent.
        actors: logged
            .actors
            .into_iter()
            .map(|r| (r.name, (!r.value.is_empty()).then_some(r.value)))
            .collect(),
        topic_messages: logged
            .topic_messages
            .into_iter()
            .map(|r| ((r.topic, r.offset), r.value))
            .collect(),
        topic_trims: logged.topic_trims.into_iter().map(|m| (m.topic, m.offset)).collect(),
        topic_groups: logged
            .topic_groups
            .into_iter()
            .map(|m| ((m.topic, m.group), m.offset))
            .collect(),
    }
}
