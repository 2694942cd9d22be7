//! A durable, segmented write-ahead log of opaque records, with no consensus in it.
//!
//! [`Wal`] owns one directory. Callers build [`Records`] (entries with an index, truncates,
//! purges, the vote, the committed position; payloads are bytes it never interprets),
//! [`Wal::submit`] them with an [`Ack`], and get the ack once the records are durable. On
//! [`Wal::open`] it replays the directory into a [`Recovered`] state (live entries by index,
//! the last purge, vote and committed payloads) or refuses to open, naming the file and
//! offset, when what is there is not a log it could have written plus at most one
//! unfinished write.
//!
//! # Why our own WAL, not a crate
//! ARCHITECTURE.md suggested the `raft-log` crate. We need exact control of three things it
//! decides for us: acknowledgement strictly after the fsync of a group commit, wired to
//! openraft's `LogFlushed` callbacks (one fsync per batch, whatever mix of appends, votes
//! and purges is queued); the recovery rules below, which must tell a torn final write
//! (cut it) from damage (refuse) and must never cut something that may have been
//! acknowledged; and a full-disk policy, because openraft turns any storage error into a
//! permanent stop of the node, so a full disk must stall, not fail. The whole thing is a
//! few hundred lines over `std`, `crc32fast` and `rustix`.
//!
//! # Files
//! `wal-<seq>.log` segments (seq from 1, contiguous), a `LOCK` file (exclusively locked while
//! open; once a segment exists it says so, so a directory that lost every segment is not
//! taken for a fresh one) and, briefly, `wal-<seq>.log.tmp` while a segment is created.
//! Layout of a record: `record.rs`. A segment is preallocated (`fallocate`) to its size
//! (64 MiB by default, larger for a record that does not fit) and starts with a `Begin`
//! record (format version, seq, size) followed by the meta records (vote, purge,
//! committed) restating what older segments said, so older segments can be deleted once
//! every entry in them is purged. A segment that has a successor ends with a `Seal`
//! record naming it. Preallocation means appends change neither the file size nor its
//! block map, so `fdatasync` does not have to write the inode for a size change (the
//! file system still records the first write into each preallocated extent), a full disk
//! shows up at segment creation rather than mid-batch, and a truncated file is detectable.
//!
//! # Writing (`writer.rs`)
//! One writer thread drains the queue, writes the batch with one positioned vectored
//! write, issues one `fdatasync`, and only then acknowledges, in order. Every record
//! carries its batch number (epoch), and the last record before each fsync is flagged
//! `SYNCED`; epoch k+1 is written only after epoch k is fsynced. `Committed` records are
//! advisory: a batch of nothing else is written but not fsynced (it rides on the next
//! fsync, and keeps the epoch open). Rotation: create the next segment (tmp, preallocate,
//! header, fsync, rename, fsync dir), then seal the current one (fsync), then write there.
//!
//! Open continues appending to the newest segment (after cutting a torn write and fsyncing
//! what survived) rather than starting a new one: a new preallocated segment per open would
//! leave a 64 MiB file per restart (a crash loop would fill the disk). And the successor is
//! created before the current segment is sealed, not after: the other order makes a crash
//! between the two look exactly like a deleted newest segment.
//!
//! # Recovery (`replay.rs`)
//! - Segment numbers must be contiguous; every segment must begin with a valid `Begin`
//!   naming its own seq and a known version, and be exactly its recorded size.
//! - Every segment but the newest must be intact and end with a `Seal` naming its
//!   successor. The one exception is an interrupted rotation: the newest segment holds
//!   only its header and the one before is not sealed; the newest is removed (a warning
//!   names it) and the one before is treated as the newest.
//! - The newest must not be sealed (its successor was deleted). Its records are read up to
//!   the first invalid record X. If everything from X on is zero, the log simply ends
//!   there. Otherwise X is cut (zeroed, with a warning naming file, offset and bytes
//!   dropped) only if it is a torn final write: X shows a sign of an unfinished write
//!   (part of it still reads as preallocated zeros) and every valid record after X belongs
//!   to X's epoch (the previous record's epoch, or the next one if that record was
//!   flagged `SYNCED`). A complete record with a bad checksum, or a valid record of a later
//!   epoch after X, means damage to something that may have been acknowledged: open fails.
//! - Then: entries must be contiguous and start right after the purge point (at 0 if
//!   nothing was purged): a gap is a missing segment or damage, and open fails.
//!
//! Every error names the file, and the offset where there is one. An empty directory, or
//! one with only a `LOCK` that never recorded a segment (a crash during the very first
//! open), is a fresh log; one with other files but no segment is refused.
//!
//! # Full disk, file descriptors, failed fsync ([`Health`])
//! ENOSPC/EDQUOT and EMFILE/ENFILE while writing, preallocating or creating a segment are
//! transient: the batch stays unacknowledged, the writer retries (from the batch's start
//! offset, positioned, so a partial write is simply overwritten) with a backoff from
//! [`Options::retry_min`] to [`Options::retry_max`], and [`Wal::health`] reports `Stalled`
//! until it succeeds. Every other error and every failed fsync (after which the page
//! cache's state is unknown) is fatal: health says `Failed`, [`Options::on_fatal`] is
//! called, every queued and later request fails; recovery is a restart.

mod record;
mod replay;
mod segment;
mod writer;

#[cfg(test)]
mod replay_tests;
#[cfg(test)]
mod writer_tests;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use record::Kind;
#[cfg(test)]
pub(crate) use replay::{max_entry_index, segment_paths};
pub(crate) use segment::Disk;
#[cfg(test)]
pub(crate) use writer::Point;

/// Segment size unless told otherwise.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Floor of the segment size (far above a segment header).
const MIN_SEGMENT_BYTES: u64 = 4 << 10;

/// Called with the reason when the WAL fails for good.
pub type OnFatal = Arc<dyn Fn(&str) + Send + Sync>;

/// Called with the duration of each fsync.
pub type OnFsync = Arc<dyn Fn(Duration) + Send + Sync>;

/// How to open a [`Wal`].
#[derive(Clone)]
pub struct Options {
    /// Preallocated size of a segment; a record larger than that gets a segment sized to
    /// fit. Floored at 4 KiB.
    pub segment_bytes: u64,
    /// First wait before retrying after a transient error (disk full, no fds).
    pub retry_min: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
    /// Called once, on the writer thread, when the WAL fails for good. The node should
    /// exit: nothing is written from then on.
    pub on_fatal: Option<OnFatal>,
    /// Called on the writer thread with the time each fsync of a segment took (metrics).
    pub on_fsync: Option<OnFsync>,
    /// The file operations (tests inject faults here).
    pub(crate) disk: Option<Arc<dyn Disk>>,
    /// Called at each step of the writer (tests take crash images here).
    #[cfg(test)]
    pub(crate) hook: Option<writer::Hook>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            retry_min: Duration::from_millis(50),
            retry_max: Duration::from_secs(1),
            on_fatal: None,
            on_fsync: None,
            disk: None,
            #[cfg(test)]
            hook: None,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("segment_bytes", &self.segment_bytes)
            .field("retry_min", &self.retry_min)
            .field("retry_max", &self.retry_max)
            .finish_non_exhaustive()
    }
}

/// What a record is, without its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record {
    /// A log entry at `index`. Replay drops every entry at or above `index` first.
    Entry { index: u64 },
    /// Drops every entry at or above `since`; no payload.
    Truncate { since: u64 },
    /// Drops every entry at or below `upto` and makes the payload the last purge, unless an
    /// earlier purge went further.
    Purge { upto: u64 },
    /// The vote.
    Vote,
    /// The committed position: advisory, acknowledged when written and made durable by the
    /// next fsync (losing the newest one in a crash must be harmless to the caller).
    Committed,
}

impl Record {
    fn kind_arg(self) -> (Kind, u64) {
        match self {
            Record::Entry { index } => (Kind::Entry, index),
            Record::Truncate { since } => (Kind::Truncate, since),
            Record::Purge { upto } => (Kind::Purge, upto),
            Record::Vote => (Kind::Vote, 0),
            Record::Committed => (Kind::Committed, 0),
        }
    }
}

/// Where a record of a given kind starts in [`Records::buf`].
#[derive(Clone, Copy, Debug)]
struct FrameRef {
    at: usize,
    kind: Kind,
    arg: u64,
}

/// Framed records, built by the caller (payloads serialised straight into the frame
/// buffer) and written by one [`Wal::submit`] as a unit, in order.
#[derive(Debug, Default)]
pub struct Records {
    buf: Vec<u8>,
    frames: Vec<FrameRef>,
}

impl Records {
    pub fn new() -> Records {
        Records::default()
    }

    /// Appends a record whose payload `write` appends to the given buffer.
    pub fn push(
        &mut self,
        rec: Record,
        write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>,
    ) -> io::Result<()> {
        let (kind, arg) = rec.kind_arg();
        let at = record::push(&mut self.buf, kind, arg, write)?;
        self.frames.push(FrameRef { at, kind, arg });
        Ok(())
    }

    /// Appends a record with `payload`.
    pub fn push_bytes(&mut self, rec: Record, payload: &[u8]) -> io::Result<()> {
        self.push(rec, |buf| {
            buf.extend_from_slice(payload);
            Ok(())
        })
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Bytes on disk.
    fn len_bytes(&self) -> u64 {
        self.buf.len() as u64
    }

    /// Whether anything here must be fsynced before it is acknowledged.
    fn needs_sync(&self) -> bool {
        self.frames.iter().any(|f| f.kind != Kind::Committed)
    }

    /// The payload of frame `f`.
    fn payload(&self, f: &FrameRef) -> &[u8] {
        let len = u32::from_le_bytes(self.buf[f.at + 8..f.at + 12].try_into().expect("4 bytes")) as usize;
        let body = f.at + record::HEADER_LEN;
        &self.buf[body..body + len]
    }
}

/// What to do once submitted records are durable (or failed).
pub struct Ack(Option<Box<dyn FnOnce(io::Result<()>) + Send>>);

impl Ack {
    pub fn new(f: impl FnOnce(io::Result<()>) + Send + 'static) -> Ack {
        Ack(Some(Box::new(f)))
    }

    /// Nobody waits (an error is still logged, and fails the WAL).
    pub fn none() -> Ack {
        Ack(None)
    }

    fn complete(self, res: io::Result<()>) {
        match self.0 {
            Some(f) => f(res),
            None => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, "WAL write failed (nobody waiting)");
                }
            }
        }
    }
}

/// Where a record was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loc {
    pub file: Arc<Path>,
    pub offset: u64,
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at offset {}", self.file.display(), self.offset)
    }
}

/// A replayed payload and where it came from (for error messages).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    pub bytes: Vec<u8>,
    pub at: Loc,
}

/// The state the segments replay to.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Live entries, contiguous.
    pub entries: BTreeMap<u64, Payload>,
    /// The furthest purge: its index and payload.
    pub purged: Option<(u64, Payload)>,
    pub vote: Option<Payload>,
    pub committed: Option<Payload>,
}

/// Why the writer is waiting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// ENOSPC or EDQUOT: the data disk (or quota) is full.
    DiskFull,
    /// EMFILE or ENFILE: no file descriptors left.
    OutOfFileDescriptors,
}

/// The WAL's condition, for readiness checks and for refusing writes early.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Writes are queued, unacknowledged, and retried until the condition clears.
    Stalled {
        reason: Stall,
        detail: String,
        since: Instant,
    },
    /// Nothing more will be written; the process should restart.
    Failed(String),
}

/// [`Health`], readable without a lock while it is `Ok`.
#[derive(Debug)]
struct HealthCell {
    code: AtomicU8,
    detail: Mutex<Health>,
}

const HEALTH_OK: u8 = 0;
const HEALTH_STALLED: u8 = 1;
const HEALTH_FAILED: u8 = 2;

impl HealthCell {
    fn new() -> HealthCell {
        HealthCell { code: AtomicU8::new(HEALTH_OK), detail: Mutex::new(Health::Ok) }
    }

    fn get(&self) -> Health {
        if self.code.load(Ordering::Acquire) == HEALTH_OK {
            return Health::Ok;
        }
        self.detail.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Sets `h`, unless the WAL has failed already (that is final).
    fn set(&self, h: Health) {
        let mut detail = self.detail.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*detail, Health::Failed(_)) {
            return;
        }
        let code = match h {
            Health::Ok => HEALTH_OK,
            Health::Stalled { .. } => HEALTH_STALLED,
            Health::Failed(_) => HEALTH_FAILED,
        };
        *detail = h;
        self.code.store(code, Ordering::Release);
    }

    fn failed(&self) -> Option<String> {
        if self.code.load(Ordering::Acquire) != HEALTH_FAILED {
            return None;
        }
        match &*self.detail.lock().unwrap_or_else(PoisonError::into_inner) {
            Health::Failed(why) => Some(why.clone()),
            _ => None,
        }
    }
}

/// The meta state as written so far: what a new segment's header restates.
#[derive(Clone, Debug, Default)]
struct Meta {
    vote: Option<Vec<u8>>,
    purged: Option<(u64, Vec<u8>)>,
    committed: Option<Vec<u8>>,
}

impl Meta {
    fn records(&self) -> Vec<(Kind, u64, &[u8])> {
        let mut out = Vec::new();
        if let Some(v) = &self.vote {
            out.push((Kind::Vote, 0, &v[..]));
        }
        if let Some((upto, p)) = &self.purged {
            out.push((Kind::Purge, *upto, &p[..]));
        }
        if let Some(c) = &self.committed {
            out.push((Kind::Committed, 0, &c[..]));
        }
        out
    }

    fn purge(&mut self, upto: u64, payload: &[u8]) {
        if self.purged.as_ref().is_none_or(|(p, _)| upto > *p) {
            self.purged = Some((upto, payload.to_vec()));
        }
    }
}

/// A request to the writer.
struct Req {
    records: Records,
    ack: Ack,
}

/// A durable log in one directory. Cheap to clone; all clones share one writer thread,
/// which finishes every queued write and ends when the last clone is dropped (that drop
/// waits for it; a writer stalled on a full disk then gives up and fails what it holds).
#[derive(Clone)]
pub struct Wal {
    shared: Arc<Shared>,
}

struct Shared {
    dir: PathBuf,
    tx: Option<mpsc::Sender<Req>>,
    writer: Option<JoinHandle<()>>,
    health: Arc<HealthCell>,
    closing: Arc<AtomicBool>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Release);
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
            if writer.join().is_err() {
                tracing::error!(dir = %self.dir.display(), "WAL writer thread panicked");
            }
        }
    }
}

impl fmt::Debug for Wal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal").field("dir", &self.shared.dir).field("health", &self.health()).finish()
    }
}

impl Wal {
    /// Opens (creating if needed) the WAL in `dir`: locks it, replays it (cutting a torn
    /// final write, refusing anything else that is wrong) and starts the writer, which
    /// appends to the newest segment.
    pub fn open(dir: &Path, opts: Options) -> io::Result<(Wal, Recovered)> {
        std::fs::create_dir_all(dir).map_err(|e| segment::with_path(e, "cannot create", dir))?;
        let lock = segment::lock_dir(dir)?;
        let disk = opts.disk.clone().unwrap_or_else(|| Arc::new(segment::RealDisk));
        let segment_bytes = opts.segment_bytes.max(MIN_SEGMENT_BYTES);
        let (opened, recovered) = replay::recover(dir, &lock, &*disk, segment_bytes)?;
        let health = Arc::new(HealthCell::new());
        let closing = Arc::new(AtomicBool::new(false));
        let writer = writer::Writer::new(
            opened,
            writer::Setup {
                dir: dir.to_path_buf(),
                lock,
                disk,
                segment_bytes,
                health: Arc::clone(&health),
                closing: Arc::clone(&closing),
                opts,
            },
        );
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new().name("wal-writer".into()).spawn(move || writer.run(rx))?;
        let shared = Shared { dir: dir.to_path_buf(), tx: Some(tx), writer: Some(handle), health, closing };
        Ok((Wal { shared: Arc::new(shared) }, recovered))
    }

    /// Queues `records`; `ack` is called once they are durable (or have failed). Requests
    /// are written in the order they are submitted; callers that keep a state in memory
    /// submit while holding its lock so both see one order. Fails at once if the WAL has
    /// failed.
    pub fn submit(&self, records: Records, ack: Ack) -> io::Result<()> {
        if let Some(why) = self.shared.health.failed() {
            return Err(io::Error::other(format!("WAL in {} has failed: {why}", self.shared.dir.display())));
        }
        let tx = self.shared.tx.as_ref().expect("the sender lives as long as the WAL");
        tx.send(Req { records, ack }).map_err(|_| io::Error::other("the WAL writer thread is gone"))
    }

    /// The WAL's condition. Lock-free while `Ok`.
    pub fn health(&self) -> Health {
        self.shared.health.get()
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}
