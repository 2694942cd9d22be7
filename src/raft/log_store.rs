//! The durable Raft log and vote store: a small segmented write-ahead log of our own.
//!
//! [`LogStore`] owns the directory it is opened on. In it, it keeps the segment files
//! `raft-<seq>.log` (`seq` a zero-padded 20-digit number, increasing from 1) and a `LOCK`
//! file, on which it holds an advisory exclusive lock so that no second store can open the
//! same directory. It keeps the Raft log entries, the vote, the last purged log id and the
//! last committed log id, and implements openraft's [`RaftLogStorage`] and [`RaftLogReader`]
//! (storage-v2). Reads are served from memory; the files are only read when the store is
//! opened.
//!
//! # On-disk format
//!
//! Every segment is a sequence of records, each
//!
//! ```text
//! [u32 LE payload length][u32 LE crc32 of the payload][payload]
//! ```
//!
//! where the payload is the JSON of one `Record`: `{"Entry":{..}}` (one log entry),
//! `{"Truncate":{"since":n}}`, `{"Purge":{"upto":log_id}}`, `{"Vote":{..}}` or
//! `{"Committed":log_id|null}`. The segments in `seq` order form one stream of records;
//! replaying it from an empty state gives the state. The in-memory operations and the replay
//! share one code path (`State`), so they cannot disagree. An `Entry` record drops every
//! entry at or above its index before it is inserted (a re-append after a truncate is
//! therefore idempotent), and a `Truncate` record drops entries wherever they were written,
//! also in earlier segments.
//!
//! On open, the stream is replayed up to the first record that is short, has length 0, or
//! whose crc does not match. In the last segment that is a torn tail from a crash during a
//! write that was never acknowledged, so the segment is truncated there and fsynced. In any
//! earlier segment it is damage (those were complete and fsynced before the next segment was
//! created), and opening fails with `InvalidData`; so does a record whose crc matches but
//! whose JSON does not parse, instead of silently dropping acknowledged data.
//!
//! A legacy single-file log `raft.log` (the format before segments, the same records) is
//! renamed to the first segment on open, so existing directories keep working. A stale
//! `raft.log.tmp` (from that format's compaction) is deleted.
//!
//! # Writes
//!
//! Every mutation updates the in-memory state and is queued to one writer thread while the
//! state lock is held, so memory and disk see the mutations in the same order. The writer
//! drains everything queued, appends it to the current (newest) segment, issues one
//! `sync_data` (group commit) and only then acknowledges: `LogFlushed` for appends, a reply
//! for vote/truncate/purge (which do not return before that). `save_committed` is queued but
//! not awaited, and a batch of nothing but committed records is not fsynced (see its doc).
//!
//! # Rotation and deletion
//!
//! After a batch, once the current segment is larger than the segment size (64 MiB), the
//! writer fsyncs it, creates the next segment, writes into it the full meta state as written
//! so far (vote, last purged, committed; the header), fsyncs it and the directory, and
//! appends there from then on. That costs O(meta), never a rewrite of the live entries.
//! Opening the store does the same (reusing the last segment instead if it is empty), so the
//! segment appended to always starts with a complete, fsynced header.
//!
//! After a batch with a purge, and after a rotation, the writer deletes segments, oldest
//! first, as long as the oldest is not the current one and all its entry records (it tracks
//! the largest entry index of each segment) are at or below the last purged index (a segment
//! without entries qualifies at once); then it fsyncs the directory. A failed deletion is
//! only logged and retried later.
//!
//! # Invariants
//!
//! - Nothing is acknowledged (callback, reply) before its record is fsynced.
//! - No holes: records are only ever appended, a segment is fsynced before the next one is
//!   created, and replay stops at the first bad record (which is only legal in the last
//!   segment), so what survives a crash is always a prefix of the stream that was written,
//!   and includes everything acknowledged.
//! - Deleting segments never changes what the stream replays to, whatever subset of the
//!   deletable ones a crash leaves behind: each later segment's header restates every vote,
//!   commit and purge of the older ones; what else a deleted segment held are entries at or
//!   below the last purged index (purged anyway: openraft never appends there) and truncates,
//!   which only touch entries in segments at least as old. A segment whose header a crash cut
//!   short never gets entries (the next open starts a new segment), so it is deletable before
//!   anything depends on it.
//! - After any I/O error (a rotation's included) the store is failed: the error is reported
//!   to the request that hit it and every later request fails too (after a failed write or
//!   fsync the file's content is unknown, so appending more could put acknowledged records
//!   behind a torn one). Reopening (a restart) recovers from whatever the files hold.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};

/// The file holding the directory's lock.
const LOCK_FILE: &str = "LOCK";
/// The single log file of the format before segments; becomes segment 1 on open.
const LEGACY_FILE: &str = "raft.log";
/// Where that format's compaction wrote; a leftover is deleted on open.
const LEGACY_TMP_FILE: &str = "raft.log.tmp";
const SEGMENT_PREFIX: &str = "raft-";
const SEGMENT_SUFFIX: &str = ".log";
/// `[u32 len][u32 crc]`.
const HEADER_LEN: u64 = 8;
/// Start a new segment once the current one is larger than this.
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Floor for the segment size, far above the size of a segment header, so that a new
/// segment never qualifies for rotation by its header alone.
const MIN_SEGMENT_BYTES: u64 = 4 << 10;
/// Buffer size of the writer (larger writes bypass the buffer).
const WRITE_BUF: usize = 1 << 20;

fn segment_name(seq: u64) -> String {
    format!("{SEGMENT_PREFIX}{seq:020}{SEGMENT_SUFFIX}")
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(segment_name(seq))
}

/// The sequence number of a segment file name, or `None` for any other name.
fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(SEGMENT_PREFIX)?.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The sequence numbers of the segments in `dir`, ascending.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// One record as read back from disk.
#[derive(Deserialize)]
enum Record {
    Entry(Entry),
    Truncate { since: u64 },
    Purge { upto: LogId },
    Vote(Vote),
    Committed(Option<LogId>),
}

/// One record to write; serialises exactly like [`Record`], without owning the data.
#[derive(Serialize)]
enum RecordRef<'a> {
    Entry(&'a Entry),
    Truncate { since: u64 },
    Purge { upto: &'a LogId },
    Vote(&'a Vote),
    Committed(Option<&'a LogId>),
}

/// Appends one framed record to `buf`; returns its size on disk, header included.
fn encode_into(buf: &mut Vec<u8>, rec: &RecordRef<'_>) -> io::Result<u64> {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_LEN as usize]);
    let body = start + HEADER_LEN as usize;
    if let Err(e) = serde_json::to_writer(&mut *buf, rec) {
        buf.truncate(start);
        return Err(e.into());
    }
    let Ok(len) = u32::try_from(buf.len() - body) else {
        buf.truncate(start);
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "log record larger than 4 GiB"));
    };
    let crc = crc32fast::hash(&buf[body..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..body].copy_from_slice(&crc.to_le_bytes());
    Ok((buf.len() - start) as u64)
}

fn encode(rec: &RecordRef<'_>) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    encode_into(&mut buf, rec)?;
    Ok(buf)
}

/// Removes and returns the entries of `map` at or above `since`.
fn split_tail<V>(map: &mut BTreeMap<u64, V>, since: u64) -> BTreeMap<u64, V> {
    match map.last_key_value() {
        Some((&last, _)) if last >= since => map.split_off(&since),
        _ => BTreeMap::new(),
    }
}

/// Removes and returns the entries of `map` at or below `upto`.
fn split_head<V>(map: &mut BTreeMap<u64, V>, upto: u64) -> BTreeMap<u64, V> {
    match map.first_key_value() {
        Some((&first, _)) if first <= upto => match upto.checked_add(1) {
            Some(next) => {
                let keep = map.split_off(&next);
                std::mem::replace(map, keep)
            }
            None => std::mem::take(map),
        },
        _ => BTreeMap::new(),
    }
}

/// The later of two purge points: purging never moves back.
fn max_purged(cur: Option<LogId>, upto: LogId) -> Option<LogId> {
    match cur {
        Some(p) if p.index >= upto.index => Some(p),
        _ => Some(upto),
    }
}

/// The logical state: what replaying the segments gives, and what reads are served from.
#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Arc<Entry>>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
    /// Set by the writer after an I/O error; every later request fails with it.
    failed: Option<String>,
}

impl State {
    fn append(&mut self, entry: Arc<Entry>) {
        let index = entry.log_id.index;
        split_tail(&mut self.entries, index);
        self.entries.insert(index, entry);
    }

    fn truncate(&mut self, since: u64) {
        split_tail(&mut self.entries, since);
    }

    fn purge(&mut self, upto: LogId) {
        split_head(&mut self.entries, upto.index);
        self.last_purged = max_purged(self.last_purged, upto);
    }

    fn apply(&mut self, rec: Record) {
        match rec {
            Record::Entry(e) => self.append(Arc::new(e)),
            Record::Truncate { since } => self.truncate(since),
            Record::Purge { upto } => self.purge(upto),
            Record::Vote(v) => self.vote = Some(v),
            Record::Committed(c) => self.committed = c,
        }
    }

    fn log_state(&self) -> LogState<TypeConfig> {
        let last_entry = self.entries.last_key_value().map(|(_, e)| e.log_id);
        let last_log_id = match (last_entry, self.last_purged) {
            (Some(e), Some(p)) if p.index > e.index => Some(p),
            (Some(e), _) => Some(e),
            (None, p) => p,
        };
        LogState { last_purged_log_id: self.last_purged, last_log_id }
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The non-entry state as written to disk so far: what a new segment's header restates.
#[derive(Clone, Copy, Default)]
struct Meta {
    vote: Option<Vote>,
    last_purged: Option<LogId>,
    committed: Option<LogId>,
}

impl Meta {
    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append { .. } | Op::Truncate => {}
            Op::Purge(upto) => self.last_purged = max_purged(self.last_purged, *upto),
            Op::Vote(v) => self.vote = Some(*v),
            Op::Hint(c) => self.committed = *c,
        }
    }
}

/// Writes the header of a new segment (every meta record, `Committed` even when `None`, so
/// that it overrides whatever an older segment says) to `file` and fsyncs it. Returns the
/// header's size.
fn write_header(file: &mut File, meta: &Meta) -> io::Result<u64> {
    let mut buf = Vec::new();
    if let Some(vote) = &meta.vote {
        encode_into(&mut buf, &RecordRef::Vote(vote))?;
    }
    if let Some(upto) = &meta.last_purged {
        encode_into(&mut buf, &RecordRef::Purge { upto })?;
    }
    encode_into(&mut buf, &RecordRef::Committed(meta.committed.as_ref()))?;
    file.write_all(&buf)?;
    file.sync_all()?;
    Ok(buf.len() as u64)
}

/// Creates segment `seq` in `dir` with the header for `meta`, durably (file and directory
/// entry). Returns the file, positioned at its end, and its length.
fn create_segment(dir: &Path, seq: u64, meta: &Meta) -> io::Result<(File, u64)> {
    let mut file = OpenOptions::new().write(true).create_new(true).open(segment_path(dir, seq))?;
    let len = write_header(&mut file, meta)?;
    sync_dir(dir)?;
    Ok((file, len))
}

/// How a queued write is acknowledged once it is durable (or failed).
pub(crate) enum Ack {
    /// openraft's append callback.
    Flushed(LogFlushed<TypeConfig>),
    /// A waiting caller.
    Reply(oneshot::Sender<io::Result<()>>),
    /// Nobody waits; an error is logged (and the store is failed, so it resurfaces).
    Nothing,
}

impl Ack {
    fn complete(self, res: io::Result<()>) {
        match self {
            Ack::Flushed(cb) => cb.log_io_completed(res),
            Ack::Reply(tx) => {
                // The caller may have gone away (cancelled); nothing to tell then.
                let _ = tx.send(res);
            }
            Ack::Nothing => {
                if let Err(e) = res {
                    tracing::error!(error = %e, "raft log write failed");
                }
            }
        }
    }
}

/// What a queued record changes in the writer's bookkeeping.
enum Op {
    /// Entries; `max_index` is the largest index among them.
    Append {
        max_index: Option<u64>,
    },
    Truncate,
    Purge(LogId),
    Vote(Vote),
    /// Committed: advisory, so it needs no fsync of its own; the next durable batch syncs
    /// it (losing it only means re-applying a little on restart).
    Hint(Option<LogId>),
}

/// One request to the writer thread: framed bytes to write, then an acknowledgement.
struct Req {
    bytes: Vec<u8>,
    op: Op,
    ack: Ack,
}

/// The durable Raft log + vote store. Cheap to clone; all clones share one state and one
/// writer thread, which ends (after finishing every queued write) when the last clone is
/// dropped. That drop blocks until the writer is done.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    state: Arc<Mutex<State>>,
    /// Only sent on while `state` is locked, so queue order is mutation order.
    tx: Option<mpsc::Sender<Req>>,
    writer: Option<JoinHandle<()>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(writer) = self.writer.take() {
            if writer.join().is_err() {
                tracing::error!("raft log writer thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("LogStore")
            .field("entries", &st.entries.len())
            .field("last_purged", &st.last_purged)
            .field("vote", &st.vote)
            .field("committed", &st.committed)
            .finish()
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the advisory exclusive lock on `file`, failing at once if someone else holds it.
fn lock_exclusive(file: &File, path: &Path) -> io::Result<()> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!("{} is in use by another log store", path.display()),
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// The log store is failed (after an earlier I/O error) or its writer is gone.
fn unavailable(why: &str) -> io::Error {
    io::Error::other(format!("raft log store unavailable: {why}"))
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Renames a legacy `raft.log` to segment 1, if there is one. `seqs` are the segments found.
fn migrate_legacy(dir: &Path, seqs: &mut Vec<u64>) -> io::Result<()> {
    let legacy = dir.join(LEGACY_FILE);
    let file = match OpenOptions::new().read(true).write(true).open(&legacy) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !seqs.is_empty() {
        return Err(invalid_data(format!(
            "{} exists next to log segments; refusing to guess which one holds the log",
            legacy.display()
        )));
    }
    // A store of the old format locks this file: do not move it from under one.
    lock_exclusive(&file, &legacy)?;
    fs::rename(&legacy, segment_path(dir, 1))?;
    sync_dir(dir)?;
    tracing::info!(dir = %dir.display(), "migrated the single-file raft log to segments");
    seqs.push(1);
    Ok(())
}

/// Where replay of one segment ended.
struct Replayed {
    /// Length of the intact prefix.
    valid_len: u64,
    /// The largest index of an entry record in that prefix.
    max_index: Option<u64>,
}

/// Replays the records of one segment (`path`, for messages) into `state`.
fn replay(file: &File, file_len: u64, path: &Path, state: &mut State) -> io::Result<Replayed> {
    let mut reader = BufReader::with_capacity(WRITE_BUF, file);
    let mut max_index = None;
    let mut offset = 0u64;
    let mut payload = Vec::new();
    while file_len - offset >= HEADER_LEN {
        let mut header = [0u8; HEADER_LEN as usize];
        reader.read_exact(&mut header)?;
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if len == 0 || u64::from(len) > file_len - offset - HEADER_LEN {
            break;
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload)?;
        if crc32fast::hash(&payload) != crc {
            break;
        }
        let record: Record = serde_json::from_slice(&payload).map_err(|e| {
            invalid_data(format!(
                "raft log record at offset {offset} of {} has a valid crc but does not decode: {e}",
                path.display()
            ))
        })?;
        if let Record::Entry(e) = &record {
            max_index = max_index.max(Some(e.log_id.index));
        }
        state.apply(record);
        offset += HEADER_LEN + u64::from(len);
    }
    Ok(Replayed { valid_len: offset, max_index })
}

impl LogStore {
    /// Opens (creating if needed) the store in `dir`, replaying its segments (cutting off a
    /// torn tail left by a crash) and starting a new segment to append to.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        Self::open_with_segment_bytes(dir, DEFAULT_SEGMENT_BYTES)
    }

    /// [`Self::open`] with another segment size (floored at 4 KiB), for tests.
    pub(crate) fn open_with_segment_bytes(dir: &Path, segment_bytes: u64) -> io::Result<LogStore> {
        Self::start(Writer::open(dir, segment_bytes)?)
    }

    /// Runs `writer` on its own thread and serves from its state.
    fn start(writer: Writer) -> io::Result<LogStore> {
        let state = Arc::clone(&writer.state);
        let (tx, rx) = mpsc::channel();
        let handle =
            std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || writer.run(rx))?;
        Ok(LogStore { shared: Arc::new(Shared { state, tx: Some(tx), writer: Some(handle) }) })
    }

    /// Applies `mutate` to the in-memory state and queues `req`, atomically with respect to
    /// every other mutation.
    fn submit(&self, mutate: impl FnOnce(&mut State), req: Req) -> io::Result<()> {
        let mut st = lock(&self.shared.state);
        if let Some(why) = &st.failed {
            return Err(unavailable(why));
        }
        mutate(&mut st);
        let tx = self.shared.tx.as_ref().expect("sender lives as long as the store");
        tx.send(req).map_err(|_| unavailable("the writer thread is gone"))
    }

    /// Makes `entries` readable at once and queues them; `ack` fires once they are durable.
    pub(crate) fn enqueue_append<I>(&self, entries: I, ack: Ack) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry>,
    {
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        let mut bytes = Vec::new();
        for e in &entries {
            encode_into(&mut bytes, &RecordRef::Entry(e))?;
        }
        let max_index = entries.iter().map(|e| e.log_id.index).max();
        // An empty append still goes through the queue so that acks stay in order.
        let req = Req { bytes, op: Op::Append { max_index }, ack };
        self.submit(|st| entries.into_iter().for_each(|e| st.append(e)), req)
    }

    pub(crate) fn enqueue_truncate(&self, since: LogId, ack: Ack) -> io::Result<()> {
        let since = since.index;
        let bytes = encode(&RecordRef::Truncate { since })?;
        self.submit(|st| st.truncate(since), Req { bytes, op: Op::Truncate, ack })
    }

    pub(crate) fn enqueue_purge(&self, upto: LogId, ack: Ack) -> io::Result<()> {
        let bytes = encode(&RecordRef::Purge { upto: &upto })?;
        let req = Req { bytes, op: Op::Purge(upto), ack };
        self.submit(|st| st.purge(upto), req)
    }

    pub(crate) fn enqueue_vote(&self, vote: Vote, ack: Ack) -> io::Result<()> {
        let bytes = encode(&RecordRef::Vote(&vote))?;
        self.submit(|st| st.vote = Some(vote), Req { bytes, op: Op::Vote(vote), ack })
    }

    pub(crate) fn enqueue_committed(&self, committed: Option<LogId>, ack: Ack) -> io::Result<()> {
        let bytes = encode(&RecordRef::Committed(committed.as_ref()))?;
        self.submit(|st| st.committed = committed, Req { bytes, op: Op::Hint(committed), ack })
    }

    /// Runs `enqueue` with a reply ack and waits until the write is durable.
    async fn durably(&self, enqueue: impl FnOnce(Ack) -> io::Result<()>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        enqueue(Ack::Reply(tx))?;
        rx.await.map_err(|_| unavailable("the writer thread is gone"))?
    }

    /// The entries with index in `range` that exist (purged or missing ones are skipped).
    fn read_range(&self, range: &impl RangeBounds<u64>) -> Vec<Entry> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Vec::new(),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) if e < start => return Vec::new(),
            Bound::Excluded(&e) if e <= start => return Vec::new(),
            b => b.cloned(),
        };
        let found: Vec<Arc<Entry>> = {
            let st = lock(&self.shared.state);
            st.entries.range((Bound::Included(start), end)).map(|(_, e)| Arc::clone(e)).collect()
        };
        // Deep copies are made outside the lock.
        found.iter().map(|e| Entry::clone(e)).collect()
    }

    #[cfg(test)]
    fn state_weak(&self) -> std::sync::Weak<Mutex<State>> {
        Arc::downgrade(&self.shared.state)
    }
}

fn logs_error(e: io::Error) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn vote_error(e: io::Error) -> StorageError {
    StorageIOError::write_vote(&e).into()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.read_range(&range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(lock(&self.shared.state).log_state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    /// Returns once the vote is fsynced.
    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.durably(|ack| self.enqueue_vote(vote, ack)).await.map_err(vote_error)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(lock(&self.shared.state).vote)
    }

    /// Queues the committed log id and returns without waiting for the fsync: it is
    /// durable with the next group commit, i.e. at once unless the disk is busy. openraft
    /// awaits this on every commit, right before applying; waiting for an fsync here would
    /// put one on the critical path of every write. Losing the newest value in a crash is
    /// harmless (a smaller committed id only means less is re-applied on restart), and it
    /// can never get ahead of the entries: it sits behind them in the same record stream.
    /// An I/O error is still reported: it fails the store, so the next write returns it.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.enqueue_committed(committed, Ack::Nothing).map_err(logs_error)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(lock(&self.shared.state).committed)
    }

    /// The entries are readable when this returns; `callback` fires once they are fsynced.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.enqueue_append(entries, Ack::Flushed(callback)).map_err(logs_error)
    }

    /// Deletes the entries at and after `log_id.index`; returns once that is fsynced.
    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.durably(|ack| self.enqueue_truncate(log_id, ack)).await.map_err(logs_error)
    }

    /// Deletes the entries up to and including `log_id.index` (which may be beyond the last
    /// entry) and records `log_id` as last purged; returns once that is fsynced.
    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.durably(|ack| self.enqueue_purge(log_id, ack)).await.map_err(logs_error)
    }
}

/// One segment file, as the writer knows it.
struct Segment {
    seq: u64,
    /// The largest index of any entry record in it (truncated ones included).
    max_index: Option<u64>,
}

/// Where the writer is, for the crash-consistency tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    /// A batch was written (and acknowledged).
    Batch,
    /// A new segment was started.
    Rotated,
    /// One old segment was deleted.
    Deleted,
}

/// The writer thread: sole owner of the segment files.
struct Writer {
    dir: PathBuf,
    /// Holds the directory's lock as long as the writer lives.
    _lock: File,
    /// The current segment: the last of `segments`.
    file: BufWriter<File>,
    /// Bytes in the current segment (all written and flushed by the end of each batch).
    seg_len: u64,
    /// Every segment on disk, oldest first.
    segments: VecDeque<Segment>,
    /// The meta state as written so far (queued mutations are not in it).
    meta: Meta,
    state: Arc<Mutex<State>>,
    segment_bytes: u64,
    /// `(kind, message)` of the first I/O error; once set, everything fails.
    failed: Option<(io::ErrorKind, String)>,
    #[cfg(test)]
    hook: Option<Box<dyn FnMut(Point) + Send>>,
}

impl Writer {
    /// Locks `dir`, replays its segments into a fresh state and starts the segment to
    /// append to.
    fn open(dir: &Path, segment_bytes: u64) -> io::Result<Writer> {
        fs::create_dir_all(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&lock_path)?;
        // One store per directory: a second writer would interleave records.
        lock_exclusive(&lock_file, &lock_path)?;
        match fs::remove_file(dir.join(LEGACY_TMP_FILE)) {
            Ok(()) => tracing::info!(dir = %dir.display(), "removed an unfinished log compaction"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut seqs = list_segments(dir)?;
        migrate_legacy(dir, &mut seqs)?;

        let mut state = State::default();
        let mut segments = VecDeque::with_capacity(seqs.len() + 1);
        let mut last = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let is_last = i + 1 == seqs.len();
            let file = OpenOptions::new().read(true).write(is_last).open(&path)?;
            let file_len = file.metadata()?.len();
            let replayed = replay(&file, file_len, &path, &mut state)?;
            if replayed.valid_len < file_len {
                if !is_last {
                    return Err(invalid_data(format!(
                        "raft log segment {} is damaged at offset {} (only the last segment may \
                         end in a torn record)",
                        path.display(),
                        replayed.valid_len
                    )));
                }
                tracing::warn!(
                    file = %path.display(),
                    offset = replayed.valid_len,
                    dropped_bytes = file_len - replayed.valid_len,
                    "raft log has a torn tail; truncating it"
                );
                file.set_len(replayed.valid_len)?;
                file.sync_all()?;
            }
            segments.push_back(Segment { seq, max_index: replayed.max_index });
            if is_last {
                last = Some((file, replayed.valid_len));
            }
        }

        // Append to a new segment with a complete header: the last one's header may have
        // been cut short by a crash during a rotation.
        let meta = Meta { vote: state.vote, last_purged: state.last_purged, committed: state.committed };
        let (file, seg_len) = match last {
            Some((mut file, 0)) => {
                // Empty (a crash right after creating it): it can take the header itself.
                file.seek(SeekFrom::Start(0))?;
                let len = write_header(&mut file, &meta)?;
                sync_dir(dir)?;
                (file, len)
            }
            _ => {
                let seq = segments.back().map_or(1, |s| s.seq + 1);
                let created = create_segment(dir, seq, &meta)?;
                segments.push_back(Segment { seq, max_index: None });
                created
            }
        };
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            _lock: lock_file,
            file: BufWriter::with_capacity(WRITE_BUF, file),
            seg_len,
            segments,
            meta,
            state: Arc::new(Mutex::new(state)),
            segment_bytes: segment_bytes.max(MIN_SEGMENT_BYTES),
            failed: None,
            #[cfg(test)]
            hook: None,
        };
        writer.delete_purged();
        Ok(writer)
    }

    fn run(mut self, rx: mpsc::Receiver<Req>) {
        // Ends once every sender is dropped and the queue is empty.
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            batch.extend(rx.try_iter());
            let purged = batch.iter().any(|r| matches!(r.op, Op::Purge(_)));
            self.commit(batch);
            self.point_reached(Point::Batch);
            if self.failed.is_some() {
                continue;
            }
            let rotate = self.seg_len > self.segment_bytes;
            if rotate {
                if let Err(e) = self.rotate() {
                    self.fail(&e);
                    continue;
                }
                self.point_reached(Point::Rotated);
            }
            if purged || rotate {
                self.delete_purged();
            }
        }
    }

    /// Calls the test hook, if any.
    fn point_reached(&mut self, point: Point) {
        #[cfg(test)]
        if let Some(hook) = &mut self.hook {
            hook(point);
        }
        #[cfg(not(test))]
        let _ = point;
    }

    fn failed_error(&self) -> Option<io::Error> {
        self.failed.as_ref().map(|(kind, msg)| io::Error::new(*kind, msg.clone()))
    }

    /// Marks the store failed, here and for callers.
    fn fail(&mut self, e: &io::Error) {
        tracing::error!(error = %e, "raft log I/O failed; the log store refuses all further writes");
        self.failed = Some((e.kind(), e.to_string()));
        lock(&self.state).failed = Some(e.to_string());
    }

    /// Writes the batch, fsyncs once, then acknowledges every request in it.
    fn commit(&mut self, batch: Vec<Req>) {
        let res = match self.failed_error() {
            Some(e) => Err(e),
            None => self.write_batch(&batch),
        };
        match res {
            Ok(()) => batch.into_iter().for_each(|r| r.ack.complete(Ok(()))),
            Err(e) => {
                if self.failed.is_none() {
                    self.fail(&e);
                }
                for r in batch {
                    r.ack.complete(Err(io::Error::new(e.kind(), e.to_string())));
                }
            }
        }
    }

    fn write_batch(&mut self, batch: &[Req]) -> io::Result<()> {
        for r in batch {
            self.file.write_all(&r.bytes)?;
            self.seg_len += r.bytes.len() as u64;
            self.meta.apply(&r.op);
            if let Op::Append { max_index } = r.op {
                let current = self.segments.back_mut().expect("there is always a current segment");
                current.max_index = current.max_index.max(max_index);
            }
        }
        self.file.flush()?;
        if batch.iter().all(|r| matches!(r.op, Op::Hint(_))) {
            // Nothing here must be durable before it is acknowledged.
            return Ok(());
        }
        self.file.get_ref().sync_data()
    }

    /// Starts the next segment, with a header restating the meta state, and appends there
    /// from now on. Any error is fatal: the new segment may exist, partly written.
    fn rotate(&mut self) -> io::Result<()> {
        // The current segment must be complete and durable before a later one exists (only
        // the last segment may end in a torn record); this also syncs a trailing hint.
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        let seq = self.segments.back().expect("there is always a current segment").seq + 1;
        let (file, len) = create_segment(&self.dir, seq, &self.meta)?;
        self.segments.push_back(Segment { seq, max_index: None });
        self.file = BufWriter::with_capacity(WRITE_BUF, file);
        let previous_bytes = std::mem::replace(&mut self.seg_len, len);
        tracing::debug!(seq, previous_bytes, "started a new raft log segment");
        Ok(())
    }

    /// Deletes the oldest segments while they are older than the current one and hold no
    /// entry above the last purged index, then fsyncs the directory. Errors are only logged:
    /// the segments stay and are retried next time.
    fn delete_purged(&mut self) {
        let purged = self.meta.last_purged.map(|p| p.index);
        let mut deleted = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            if oldest.max_index.is_some_and(|max| purged.is_none_or(|p| max > p)) {
                break;
            }
            let path = segment_path(&self.dir, oldest.seq);
            match fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, file = %path.display(), "could not delete a raft log segment");
                    break;
                }
            }
            self.segments.pop_front();
            deleted += 1;
            self.point_reached(Point::Deleted);
        }
        if deleted > 0 {
            if let Err(e) = sync_dir(&self.dir) {
                tracing::warn!(error = %e, "could not fsync the raft log directory after deleting segments");
            }
            tracing::debug!(deleted, remaining = self.segments.len(), "deleted purged raft log segments");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use openraft::storage::{RaftLogStorageExt, RaftStateMachine};
    use openraft::testing::{StoreBuilder, Suite};
    use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};
    use tempfile::TempDir;

    use super::*;
    use crate::raft::types::{Snapshot, SnapshotMeta, StoredMembership};
    use crate::store::{Command, Outcome, Proposal};

    fn lid(term: u64, index: u64) -> LogId {
        openraft::LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        openraft::Entry { log_id: lid(term, index), payload: EntryPayload::Blank }
    }

    fn put(term: u64, index: u64, size: usize) -> Entry {
        openraft::Entry {
            log_id: lid(term, index),
            payload: EntryPayload::Normal(Proposal::new(
                Command::Put {
                    key: format!("/k/{index}"),
                    value: (0..size).map(|i| (i as u64 ^ index) as u8).collect(),
                    cond: Default::default(),
                    prev_kv: false,
                },
                0,
            )),
        }
    }

    type Dump = (LogState<TypeConfig>, Option<Vote>, Option<LogId>, Vec<Entry>);

    async fn dump(s: &mut LogStore) -> Dump {
        (
            s.get_log_state().await.unwrap(),
            s.read_vote().await.unwrap(),
            s.read_committed().await.unwrap(),
            s.try_get_log_entries(..).await.unwrap(),
        )
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    fn segment_paths(dir: &Path) -> Vec<PathBuf> {
        list_segments(dir).unwrap().into_iter().map(|seq| segment_path(dir, seq)).collect()
    }

    fn last_segment(dir: &Path) -> PathBuf {
        segment_paths(dir).pop().expect("a segment")
    }

    /// Bytes in all segments.
    fn log_len(dir: &Path) -> u64 {
        segment_paths(dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum()
    }

    /// The largest entry index in the segment at `path`, replayed on its own.
    fn max_index_in(path: &Path) -> Option<u64> {
        let file = File::open(path).unwrap();
        let len = file.metadata().unwrap().len();
        replay(&file, len, path, &mut State::default()).unwrap().max_index
    }

    async fn wait_all(rxs: Vec<oneshot::Receiver<io::Result<()>>>) {
        for rx in rxs {
            rx.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn round_trip_and_reopen() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, (LogState::default(), None, None, vec![]));

        s.blocking_append((0..10).map(|i| put(1, i, 100))).await.unwrap();
        s.save_vote(&Vote::new(3, 2)).await.unwrap();
        s.save_committed(Some(lid(1, 4))).await.unwrap();
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(3, 2)));
        assert_eq!(s.read_committed().await.unwrap(), Some(lid(1, 4)));
        let got = s.try_get_log_entries(3..6).await.unwrap();
        assert_eq!(got, vec![put(1, 3, 100), put(1, 4, 100), put(1, 5, 100)]);

        s.truncate(lid(1, 7)).await.unwrap();
        s.blocking_append([blank(2, 7)]).await.unwrap();
        s.purge(lid(1, 2)).await.unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_purged_log_id, Some(lid(1, 2)));
        assert_eq!(st.last_log_id, Some(lid(2, 7)));
        assert_eq!(indexes(&s.try_get_log_entries(0..100).await.unwrap()), vec![3, 4, 5, 6, 7]);

        let before = dump(&mut s).await;
        let mut reader = s.get_log_reader().await;
        assert_eq!(reader.try_get_log_entries(7..=7).await.unwrap(), vec![blank(2, 7)]);
        drop((s, reader));

        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
        s.save_committed(None).await.unwrap();
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.read_committed().await.unwrap(), None);
    }

    #[tokio::test]
    async fn ranges_return_only_what_exists() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append((5..10).map(|i| blank(1, i))).await.unwrap();
        s.purge(lid(1, 6)).await.unwrap();
        let idx = |v: Vec<Entry>| indexes(&v);
        assert_eq!(idx(s.try_get_log_entries(0..100).await.unwrap()), vec![7, 8, 9]);
        assert_eq!(idx(s.try_get_log_entries(..).await.unwrap()), vec![7, 8, 9]);
        assert_eq!(idx(s.try_get_log_entries(0..7).await.unwrap()), Vec::<u64>::new());
        assert_eq!(idx(s.try_get_log_entries(8..8).await.unwrap()), Vec::<u64>::new());
        assert_eq!(
            idx(s.try_get_log_entries((Bound::Included(9), Bound::Excluded(3))).await.unwrap()),
            Vec::<u64>::new()
        );
        assert_eq!(idx(s.try_get_log_entries(8..).await.unwrap()), vec![8, 9]);
        assert_eq!(idx(s.try_get_log_entries(..=7).await.unwrap()), vec![7]);
        assert_eq!(idx(s.try_get_log_entries(10..20).await.unwrap()), Vec::<u64>::new());
        let excluded_start = (Bound::Excluded(7), Bound::Unbounded);
        assert_eq!(idx(s.try_get_log_entries(excluded_start).await.unwrap()), vec![8, 9]);
        let at_max = (Bound::Excluded(u64::MAX), Bound::Unbounded);
        assert_eq!(idx(s.try_get_log_entries(at_max).await.unwrap()), Vec::<u64>::new());
        assert_eq!(idx(s.try_get_log_entries(u64::MAX..=u64::MAX).await.unwrap()), Vec::<u64>::new());
    }

    #[tokio::test]
    async fn purge_and_truncate_edge_cases() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append((0..=10).map(|i| blank(1, i))).await.unwrap();

        // Truncating beyond the last entry changes nothing.
        s.truncate(lid(1, 11)).await.unwrap();
        assert_eq!(s.get_log_state().await.unwrap().last_log_id, Some(lid(1, 10)));

        // Purging beyond the last entry: no entries, last log id is the purged one.
        s.purge(lid(2, 20)).await.unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(lid(2, 20)), Some(lid(2, 20))));
        assert!(s.try_get_log_entries(..).await.unwrap().is_empty());

        // A smaller purge does not move last_purged back.
        s.purge(lid(1, 5)).await.unwrap();
        assert_eq!(s.get_log_state().await.unwrap().last_purged_log_id, Some(lid(2, 20)));

        // Appending after the purge point continues the log.
        s.blocking_append([blank(2, 21), blank(2, 22)]).await.unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(lid(2, 20)), Some(lid(2, 22))));
        let before = dump(&mut s).await;
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);

        // Truncate everything on a store without purges.
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append((0..=10).map(|i| blank(1, i))).await.unwrap();
        s.truncate(lid(0, 0)).await.unwrap();
        assert_eq!(s.get_log_state().await.unwrap(), LogState::default());
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.get_log_state().await.unwrap(), LogState::default());
    }

    #[tokio::test]
    async fn writer_thread_ends_with_the_last_clone() {
        let dir = TempDir::new().unwrap();
        let s = LogStore::open(dir.path()).unwrap();
        let weak = s.state_weak();
        let reader = s.clone();
        drop(s);
        assert!(weak.upgrade().is_some(), "a clone is still alive");
        drop(reader);
        assert!(weak.upgrade().is_none(), "the writer thread still holds the state");
    }

    /// Appends 0..5, drops, damages the tail with `damage`, reopens: 0..keep must be there and
    /// the store must keep working across another reopen.
    async fn torn_tail_case(damage: impl FnOnce(&Path), keep: u64) {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.save_vote(&Vote::new(1, 1)).await.unwrap();
        for i in 0..5 {
            s.blocking_append([put(1, i, 300)]).await.unwrap();
        }
        drop(s);
        damage(&last_segment(dir.path()));

        let mut s = LogStore::open(dir.path()).unwrap();
        let got = s.try_get_log_entries(..).await.unwrap();
        assert_eq!(got, (0..keep).map(|i| put(1, i, 300)).collect::<Vec<_>>());
        assert_eq!(s.read_vote().await.unwrap(), Some(Vote::new(1, 1)));

        s.blocking_append((keep..keep + 3).map(|i| put(2, i, 50))).await.unwrap();
        let before = dump(&mut s).await;
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
        assert_eq!(before.3.len() as u64, keep + 3);
    }

    fn chop(path: &Path, n: u64) {
        let f = OpenOptions::new().write(true).open(path).unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len - n).unwrap();
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    #[tokio::test]
    async fn torn_tail_chopped_payload() {
        torn_tail_case(|p| chop(p, 3), 4).await;
    }

    #[tokio::test]
    async fn torn_tail_chopped_into_header() {
        // Leave 5 bytes of the last record: a short header.
        torn_tail_case(
            |p| {
                let rec_len = encode(&RecordRef::Entry(&put(1, 4, 300))).unwrap().len() as u64;
                chop(p, rec_len - 5);
            },
            4,
        )
        .await;
    }

    #[tokio::test]
    async fn torn_tail_garbage_appended() {
        torn_tail_case(|p| append_bytes(p, b"\x10\x00\x00\x00garbage garbage garbage"), 5).await;
    }

    #[tokio::test]
    async fn torn_tail_zeros_appended() {
        torn_tail_case(|p| append_bytes(p, &[0; 4096]), 5).await;
    }

    #[tokio::test]
    async fn torn_tail_bad_crc_in_last_record() {
        torn_tail_case(
            |p| {
                let mut bytes = fs::read(p).unwrap();
                let last = bytes.len() - 10;
                bytes[last] ^= 0xff;
                fs::write(p, bytes).unwrap();
            },
            4,
        )
        .await;
    }

    #[tokio::test]
    async fn undecodable_record_with_valid_crc_is_an_error() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append([blank(1, 0)]).await.unwrap();
        drop(s);
        let payload = b"{\"NoSuchRecord\":1}";
        let mut rec = Vec::new();
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
        rec.extend_from_slice(payload);
        append_bytes(&last_segment(dir.path()), &rec);
        let err = LogStore::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn large_entries() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        let big: Vec<Entry> = (1..=3).map(|i| put(1, i, 2 << 20)).collect();
        s.blocking_append(big.clone()).await.unwrap();
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(s.try_get_log_entries(..).await.unwrap(), big);
    }

    #[tokio::test]
    async fn rotation_and_deletion_of_purged_segments() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open_with_segment_bytes(dir.path(), 8 << 10).unwrap();
        s.save_vote(&Vote::new(4, 1)).await.unwrap();
        for i in 0..200 {
            s.blocking_append([put(4, i, 1000)]).await.unwrap();
            s.save_committed(Some(lid(4, i))).await.unwrap();
        }
        let full = log_len(dir.path());
        let many = segment_paths(dir.path()).len();
        assert!(many > 20, "segments not rotated: {many}");
        s.purge(lid(4, 150)).await.unwrap();
        // Any durable write after the purge returns only after the deletion it triggered.
        s.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        let left = segment_paths(dir.path());
        assert!(left.len() < many / 3, "segments not deleted: {many} -> {}", left.len());
        assert!(log_len(dir.path()) < full / 3, "{full} -> {}", log_len(dir.path()));
        // Exactly the fully purged ones went: the oldest left still holds a live entry.
        assert!(max_index_in(&left[0]).is_some_and(|m| m > 150));
        // The directory stays locked.
        assert_eq!(LogStore::open(dir.path()).unwrap_err().kind(), io::ErrorKind::WouldBlock);

        s.blocking_append([put(4, 200, 1000)]).await.unwrap();
        let before = dump(&mut s).await;
        assert_eq!(indexes(&before.3), (151..=200).collect::<Vec<_>>());
        assert_eq!(before.0.last_purged_log_id, Some(lid(4, 150)));
        assert_eq!(before.1, Some(Vote::new_committed(4, 1)));
        assert_eq!(before.2, Some(lid(4, 199)));
        drop(s);

        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);

        // Purging everything: once the segment appended to is not the current one any more
        // (the next open starts a new one), only the new one is left, with the header alone.
        s.purge(lid(4, 300)).await.unwrap();
        drop(s);
        let mut s = LogStore::open_with_segment_bytes(dir.path(), 8 << 10).unwrap();
        assert_eq!(segment_paths(dir.path()).len(), 1);
        assert_eq!(max_index_in(&last_segment(dir.path())), None);
        let (st, vote, committed, entries) = dump(&mut s).await;
        assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(lid(4, 300)), Some(lid(4, 300))));
        assert_eq!((vote, committed), (before.1, before.2));
        assert!(entries.is_empty());
    }

    /// Many writes queued without waiting, with purges that keep deleting segments while
    /// the queue is full: exercises group commit across rotations.
    #[tokio::test]
    async fn queued_writes_across_rotations() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open_with_segment_bytes(dir.path(), 16 << 10).unwrap();
        let mut rxs = Vec::new();
        let mut ack = || {
            let (tx, rx) = oneshot::channel();
            rxs.push(rx);
            Ack::Reply(tx)
        };
        for i in 0..3000u64 {
            s.enqueue_append([put(1, i, 2000)], ack()).unwrap();
            s.enqueue_committed(i.checked_sub(2).map(|c| lid(1, c)), ack()).unwrap();
            if i % 97 == 0 {
                s.enqueue_vote(Vote::new(1 + i / 97, 1), ack()).unwrap();
            }
            if i % 50 == 49 {
                s.enqueue_purge(lid(1, i - 20), ack()).unwrap();
            }
            if i % 333 == 332 {
                s.enqueue_truncate(lid(1, i - 1), ack()).unwrap();
                s.enqueue_append([put(2, i - 1, 10), put(2, i, 10)], ack()).unwrap();
            }
        }
        wait_all(rxs).await;
        let before = dump(&mut s).await;
        assert_eq!(before.0.last_log_id.map(|l| l.index), Some(2999));
        assert_eq!(before.0.last_purged_log_id, Some(lid(1, 2979)));
        assert_eq!(indexes(&before.3), (2980..3000).collect::<Vec<_>>());
        // Every segment left but the first and the current one is over 16 KiB and was written
        // after entry 2980: a handful, out of hundreds rotated through.
        let n = segment_paths(dir.path()).len();
        assert!(n <= 16, "purged segments not deleted: {n}");
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
    }

    #[tokio::test]
    async fn damage_in_an_earlier_segment_fails_open() {
        let flip: fn(&Path) = |p| {
            let mut bytes = fs::read(p).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid] ^= 0xff;
            fs::write(p, bytes).unwrap();
        };
        let cut: fn(&Path) = |p| chop(p, 3);
        for damage in [flip, cut] {
            let dir = TempDir::new().unwrap();
            let mut s = LogStore::open_with_segment_bytes(dir.path(), 4 << 10).unwrap();
            for i in 0..20 {
                s.blocking_append([put(1, i, 500)]).await.unwrap();
            }
            drop(s);
            let segs = segment_paths(dir.path());
            assert!(segs.len() >= 3, "{segs:?}");
            damage(&segs[segs.len() - 2]);
            let err = LogStore::open(dir.path()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
            // Nothing was cut off or deleted by the failed open.
            assert_eq!(segment_paths(dir.path()), segs);
        }
    }

    #[tokio::test]
    async fn truncate_reaches_into_earlier_segments() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open_with_segment_bytes(dir.path(), 4 << 10).unwrap();
        for i in 0..30 {
            s.blocking_append([put(1, i, 500)]).await.unwrap();
        }
        assert!(segment_paths(dir.path()).len() >= 4);
        s.truncate(lid(1, 5)).await.unwrap();
        s.blocking_append([blank(2, 5), blank(2, 6)]).await.unwrap();
        s.purge(lid(1, 2)).await.unwrap();
        let before = dump(&mut s).await;
        assert_eq!(indexes(&before.3), vec![3, 4, 5, 6]);
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);

        // The segments with the truncated entries stay until those indexes are purged too.
        s.blocking_append((7..40).map(|i| put(2, i, 500))).await.unwrap();
        s.purge(lid(2, 35)).await.unwrap();
        s.save_vote(&Vote::new(2, 1)).await.unwrap();
        let left = segment_paths(dir.path());
        assert!(max_index_in(&left[0]).is_some_and(|m| m > 35));
        let before = dump(&mut s).await;
        assert_eq!(indexes(&before.3), (36..40).collect::<Vec<_>>());
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
    }

    #[tokio::test]
    async fn legacy_single_file_log_is_migrated() {
        let dir = TempDir::new().unwrap();
        let mut bytes = Vec::new();
        encode_into(&mut bytes, &RecordRef::Vote(&Vote::new(2, 1))).unwrap();
        for i in 0..10 {
            encode_into(&mut bytes, &RecordRef::Entry(&put(2, i, 100))).unwrap();
        }
        encode_into(&mut bytes, &RecordRef::Purge { upto: &lid(2, 3) }).unwrap();
        encode_into(&mut bytes, &RecordRef::Truncate { since: 8 }).unwrap();
        encode_into(&mut bytes, &RecordRef::Committed(Some(&lid(2, 6)))).unwrap();
        // And a torn tail.
        bytes.extend_from_slice(b"\x40\x00\x00\x00\x01\x02\x03\x04torn");
        fs::write(dir.path().join(LEGACY_FILE), &bytes).unwrap();

        let mut s = LogStore::open(dir.path()).unwrap();
        let got = dump(&mut s).await;
        assert_eq!((got.1, got.2), (Some(Vote::new(2, 1)), Some(lid(2, 6))));
        assert_eq!(got.0.last_purged_log_id, Some(lid(2, 3)));
        assert_eq!(got.3, (4..8).map(|i| put(2, i, 100)).collect::<Vec<_>>());
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert_eq!(segment_paths(dir.path()), vec![segment_path(dir.path(), 1), segment_path(dir.path(), 2)]);

        s.truncate(lid(2, 6)).await.unwrap();
        s.blocking_append([put(3, 6, 100)]).await.unwrap();
        let before = dump(&mut s).await;
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
        drop(s);

        // A legacy file next to segments is refused rather than guessed about.
        fs::write(dir.path().join(LEGACY_FILE), b"").unwrap();
        assert_eq!(LogStore::open(dir.path()).unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    /// A crash during a rotation leaves a last segment that is empty or has a partial header.
    /// The next open must not append behind that header: once the older segments are purged
    /// and deleted, the meta records it lacks would be gone.
    #[tokio::test]
    async fn crash_during_rotation() {
        for partial in [false, true] {
            let dir = TempDir::new().unwrap();
            let mut s = LogStore::open(dir.path()).unwrap();
            s.save_vote(&Vote::new(7, 1)).await.unwrap();
            s.blocking_append((0..5).map(|i| put(7, i, 100))).await.unwrap();
            s.purge(lid(7, 1)).await.unwrap();
            s.save_committed(Some(lid(7, 3))).await.unwrap();
            let before = dump(&mut s).await;
            drop(s);

            let seq = list_segments(dir.path()).unwrap().last().unwrap() + 1;
            let mut header = Vec::new();
            if partial {
                // The vote made it, the rest did not.
                encode_into(&mut header, &RecordRef::Vote(&Vote::new(7, 1))).unwrap();
                let purge = encode(&RecordRef::Purge { upto: &lid(7, 1) }).unwrap();
                header.extend_from_slice(&purge[..purge.len() - 3]);
            }
            fs::write(segment_path(dir.path(), seq), &header).unwrap();

            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(dump(&mut s).await, before);
            // An empty segment is reused; one with a partial header is followed by a new one.
            let last = list_segments(dir.path()).unwrap().last().copied();
            assert_eq!(last, Some(if partial { seq + 1 } else { seq }));

            s.blocking_append([put(7, 5, 100)]).await.unwrap();
            s.purge(lid(7, 5)).await.unwrap();
            drop(s);
            // Everything before the segment written to last is deleted now (on this open).
            let mut s = LogStore::open(dir.path()).unwrap();
            assert_eq!(segment_paths(dir.path()).len(), 1);
            let (st, vote, committed, entries) = dump(&mut s).await;
            assert_eq!(st.last_purged_log_id, Some(lid(7, 5)));
            assert_eq!((vote, committed), (before.1, before.2));
            assert!(entries.is_empty());
        }
    }

    /// The segment files as they are: what a crash at this moment would leave.
    type Image = Vec<(std::ffi::OsString, Vec<u8>)>;

    /// Per batch: the images taken after it, each with where the writer was.
    type Images = Arc<Mutex<Vec<Vec<(Point, Image)>>>>;

    fn image(dir: &Path) -> Image {
        segment_paths(dir)
            .into_iter()
            .map(|p| (p.file_name().unwrap().to_owned(), fs::read(&p).unwrap()))
            .collect()
    }

    /// Copies the directory at every step of the writer (after each batch, after each
    /// rotation, after each single deletion), opens every copy and compares it with the
    /// state acknowledged at that point.
    #[tokio::test]
    async fn every_crash_point_replays_to_the_acknowledged_state() {
        let dir = TempDir::new().unwrap();
        let images: Images = Arc::default();
        let mut writer = Writer::open(dir.path(), 4 << 10).unwrap();
        let (path, sink) = (dir.path().to_path_buf(), Arc::clone(&images));
        writer.hook = Some(Box::new(move |point| {
            let mut sink = sink.lock().unwrap();
            if point == Point::Batch {
                sink.push(Vec::new());
            }
            sink.last_mut().expect("a batch comes first").push((point, image(&path)));
        }));
        let mut s = LogStore::start(writer).unwrap();

        // One operation at a time, each awaited: every batch is one operation, and `expected`
        // has the state after each.
        let mut expected = Vec::new();
        s.save_vote(&Vote::new(1, 1)).await.unwrap();
        expected.push(dump(&mut s).await);
        let mut term = 1;
        for i in 0..60u64 {
            s.blocking_append([put(term, i, 400)]).await.unwrap();
            expected.push(dump(&mut s).await);
            if i % 4 == 3 {
                let c = Some(lid(term, i - 1));
                s.durably(|ack| s.enqueue_committed(c, ack)).await.unwrap();
                expected.push(dump(&mut s).await);
            }
            if i % 10 == 9 {
                s.purge(lid(term, i - 3)).await.unwrap();
                expected.push(dump(&mut s).await);
            }
            if i == 33 {
                term = 2;
                s.save_vote(&Vote::new(2, 1)).await.unwrap();
                expected.push(dump(&mut s).await);
                s.truncate(lid(1, 31)).await.unwrap();
                expected.push(dump(&mut s).await);
                s.blocking_append((31..=33).map(|j| put(2, j, 400))).await.unwrap();
                expected.push(dump(&mut s).await);
            }
        }
        drop(s);

        let images = std::mem::take(&mut *images.lock().unwrap());
        assert_eq!(images.len(), expected.len());
        let (mut rotated, mut deleted) = (0, 0);
        for (step, (group, want)) in images.iter().zip(&expected).enumerate() {
            for (point, image) in group {
                rotated += usize::from(*point == Point::Rotated);
                deleted += usize::from(*point == Point::Deleted);
                let copy = TempDir::new().unwrap();
                for (name, bytes) in image {
                    fs::write(copy.path().join(name), bytes).unwrap();
                }
                let mut s = LogStore::open(copy.path()).unwrap();
                assert_eq!(&dump(&mut s).await, want, "step {step}, {point:?}");
            }
        }
        assert!(rotated >= 5 && deleted >= 5, "rotated {rotated}, deleted {deleted}");
    }

    #[tokio::test]
    async fn leftover_compaction_file_is_ignored() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append([blank(1, 0), blank(1, 1)]).await.unwrap();
        let before = dump(&mut s).await;
        drop(s);
        fs::write(dir.path().join(LEGACY_TMP_FILE), b"half a compaction").unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
        assert!(!dir.path().join(LEGACY_TMP_FILE).exists());
    }

    #[tokio::test]
    async fn second_open_of_the_same_dir_fails() {
        let dir = TempDir::new().unwrap();
        let s = LogStore::open(dir.path()).unwrap();
        let err = LogStore::open(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(s);
        LogStore::open(dir.path()).unwrap();
    }

    #[tokio::test]
    async fn open_creates_missing_dirs() {
        let dir = TempDir::new().unwrap();
        let nested = dir.path().join("a/b/raft");
        let mut s = LogStore::open(&nested).unwrap();
        s.save_vote(&Vote::new(1, 1)).await.unwrap();
        assert!(nested.join(LOCK_FILE).exists());
        assert_eq!(segment_paths(&nested), vec![segment_path(&nested, 1)]);
    }

    // --- openraft's conformance suite, with a throwaway in-memory state machine ---

    #[derive(Default)]
    struct SmInner {
        applied: Option<LogId>,
        membership: StoredMembership,
        current: Option<(SnapshotMeta, Vec<u8>)>,
        built: u64,
    }

    #[derive(Clone, Default)]
    struct MemSm(Arc<Mutex<SmInner>>);

    impl RaftSnapshotBuilder<TypeConfig> for MemSm {
        async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
            let mut g = self.0.lock().unwrap();
            g.built += 1;
            let data = serde_json::to_vec(&(g.applied, &g.membership)).unwrap();
            let meta = SnapshotMeta {
                last_log_id: g.applied,
                last_membership: g.membership.clone(),
                snapshot_id: format!("snap-{}", g.built),
            };
            g.current = Some((meta.clone(), data.clone()));
            Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
        }
    }

    impl RaftStateMachine<TypeConfig> for MemSm {
        type SnapshotBuilder = MemSm;

        async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
            let g = self.0.lock().unwrap();
            Ok((g.applied, g.membership.clone()))
        }

        async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
        where
            I: IntoIterator<Item = Entry> + OptionalSend,
            I::IntoIter: OptionalSend,
        {
            let mut g = self.0.lock().unwrap();
            let mut out = Vec::new();
            for e in entries {
                g.applied = Some(e.log_id);
                if let EntryPayload::Membership(m) = &e.payload {
                    g.membership = StoredMembership::new(Some(e.log_id), m.clone());
                }
                out.push(Outcome::Nothing { revision: 0 });
            }
            Ok(out)
        }

        async fn get_snapshot_builder(&mut self) -> MemSm {
            self.clone()
        }

        async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
            Ok(Box::new(Cursor::new(Vec::new())))
        }

        async fn install_snapshot(
            &mut self,
            meta: &SnapshotMeta,
            snapshot: Box<Cursor<Vec<u8>>>,
        ) -> Result<(), StorageError> {
            let data = snapshot.into_inner();
            let (applied, membership): (Option<LogId>, StoredMembership) =
                serde_json::from_slice(&data).unwrap();
            let mut g = self.0.lock().unwrap();
            g.applied = applied;
            g.membership = membership;
            g.current = Some((meta.clone(), data));
            Ok(())
        }

        async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
            let g = self.0.lock().unwrap();
            Ok(g.current.as_ref().map(|(meta, data)| Snapshot {
                meta: meta.clone(),
                snapshot: Box::new(Cursor::new(data.clone())),
            }))
        }
    }

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, MemSm, TempDir> for Builder {
        async fn build(&self) -> Result<(TempDir, LogStore, MemSm), StorageError> {
            let dir = TempDir::new().unwrap();
            let store = LogStore::open(dir.path()).unwrap();
            Ok((dir, store, MemSm::default()))
        }
    }

    #[test]
    fn openraft_conformance_suite() {
        Suite::<TypeConfig, LogStore, MemSm, Builder, TempDir>::test_all(Builder).unwrap();
    }
}
