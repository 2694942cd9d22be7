//! The durable Raft log and vote store: a small write-ahead log of our own.
//!
//! [`LogStore`] owns the directory it is opened on, and in it the single file `raft.log`
//! (plus `raft.log.tmp` while a compaction is being written), on which it holds an advisory
//! exclusive lock so that no second store can open the same directory. It keeps the Raft
//! log entries, the vote, the last purged log id and the last committed log id, and
//! implements openraft's [`RaftLogStorage`] and [`RaftLogReader`] (storage-v2). Reads are
//! served from memory; the file is only read when the store is opened.
//!
//! # On-disk format
//!
//! `raft.log` is a sequence of records, each
//!
//! ```text
//! [u32 LE payload length][u32 LE crc32 of the payload][payload]
//! ```
//!
//! where the payload is the JSON of one `Record`: `{"Entry":{..}}` (one log entry),
//! `{"Truncate":{"since":n}}`, `{"Purge":{"upto":log_id}}`, `{"Vote":{..}}` or
//! `{"Committed":log_id|null}`. Replaying the records in order from an empty state gives
//! the state; the in-memory operations and the replay share one code path (`State`), so
//! they cannot disagree. An `Entry` record drops every entry at or above its index before it
//! is inserted (a re-append after a truncate is therefore idempotent).
//!
//! On open, the file is replayed up to the first record that is short, has length 0, or
//! whose crc does not match: that is a torn tail from a crash during a write that was never
//! acknowledged, so the file is truncated there and fsynced. A record whose crc matches but
//! whose JSON does not parse is not a torn write; opening fails with `InvalidData` instead
//! of silently dropping acknowledged data.
//!
//! # Writes
//!
//! Every mutation updates the in-memory state and is queued to one writer thread while the
//! state lock is held, so memory and disk see the mutations in the same order. The writer
//! drains everything queued, writes it, issues one `sync_data` (group commit) and only then
//! acknowledges: `LogFlushed` for appends, a reply for vote/truncate/purge (which do not
//! return before that). `save_committed` is queued but not awaited (see its doc).
//!
//! When the file is larger than the compaction threshold and more than half of it is dead
//! (purged or truncated entries, superseded votes and commits), the writer rewrites the live
//! state into `raft.log.tmp`, fsyncs it, renames it over `raft.log`, fsyncs the directory and
//! carries on appending to the new file. A crash at any step leaves either the old or the
//! new complete file as `raft.log`; a stale `raft.log.tmp` is deleted on open.
//!
//! # Invariants
//!
//! - Nothing is acknowledged (callback, reply) before its record is fsynced.
//! - No holes: records are only ever appended (a compaction swaps in a complete, fsynced
//!   file atomically) and replay stops at the first bad record, so what survives a crash is
//!   always a prefix of what was written, and includes everything acknowledged.
//! - After any I/O error the store is failed: the error is reported to the request that hit
//!   it and every later request fails too (after a failed write or fsync the file's content is
//!   unknown, so appending more could put acknowledged records behind a torn one). Reopening
//!   (a restart) recovers from whatever the file holds.

use std::collections::BTreeMap;
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

/// The log file's name inside the store directory.
const LOG_FILE: &str = "raft.log";
/// Where a compaction writes the new file before renaming it over [`LOG_FILE`].
const TMP_FILE: &str = "raft.log.tmp";
/// `[u32 len][u32 crc]`.
const HEADER_LEN: u64 = 8;
/// Compact the file once it is larger than this and more than half of it is dead.
pub(crate) const DEFAULT_COMPACT_THRESHOLD: u64 = 64 << 20;
/// Floor for the threshold, far above the size of the non-entry records, so a compacted
/// file can never immediately qualify for another compaction.
const MIN_COMPACT_THRESHOLD: u64 = 4 << 10;
/// Buffer size of the writer (larger writes bypass the buffer).
const WRITE_BUF: usize = 1 << 20;

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

/// The logical state: what replaying the file gives, and what reads are served from.
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
        if self.last_purged.is_none_or(|p| p.index < upto.index) {
            self.last_purged = Some(upto);
        }
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

/// Bytes on disk of each live entry's record, to tell how much of the file is dead.
#[derive(Default)]
struct SizeIndex {
    sizes: BTreeMap<u64, u64>,
    live: u64,
}

impl SizeIndex {
    fn append(&mut self, index: u64, size: u64) {
        self.truncate(index);
        self.sizes.insert(index, size);
        self.live += size;
    }

    fn truncate(&mut self, since: u64) {
        self.live -= split_tail(&mut self.sizes, since).values().sum::<u64>();
    }

    fn purge(&mut self, upto: u64) {
        self.live -= split_head(&mut self.sizes, upto).values().sum::<u64>();
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Append(sizes) => sizes.iter().for_each(|&(i, n)| self.append(i, n)),
            Op::Truncate(since) => self.truncate(*since),
            Op::Purge(upto) => self.purge(*upto),
            Op::Meta | Op::Hint => {}
        }
    }
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

/// What a queued record does to the live-bytes accounting.
enum Op {
    /// `(index, record size)` of each appended entry.
    Append(Vec<(u64, u64)>),
    Truncate(u64),
    Purge(u64),
    /// Vote: small, superseded by the next one.
    Meta,
    /// Committed: like `Meta`, but advisory, so it needs no fsync of its own; the next
    /// durable batch syncs it (losing it only means re-applying a little on restart).
    Hint,
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

impl LogStore {
    /// Opens (creating if needed) the store in `dir`, replaying `dir/raft.log` and cutting
    /// off a torn tail left by a crash.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        Self::open_with_threshold(dir, DEFAULT_COMPACT_THRESHOLD)
    }

    /// [`Self::open`] with another compaction threshold (floored at 4 KiB), for tests.
    pub(crate) fn open_with_threshold(dir: &Path, compact_threshold: u64) -> io::Result<LogStore> {
        fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path)?;
        // One store per directory: a second writer would interleave records. The lock lives
        // as long as the handle (and a compaction locks the new file before renaming it).
        lock_exclusive(&file, &path)?;
        // The file may have just been created: make its directory entry durable too.
        sync_dir(dir)?;
        match fs::remove_file(dir.join(TMP_FILE)) {
            Ok(()) => tracing::info!(dir = %dir.display(), "removed an unfinished log compaction"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }

        let file_len = file.metadata()?.len();
        let (state, sizes, valid_len) = replay(&file, file_len)?;
        if valid_len < file_len {
            tracing::warn!(
                file = %path.display(),
                offset = valid_len,
                dropped_bytes = file_len - valid_len,
                "raft log has a torn tail; truncating it"
            );
            file.set_len(valid_len)?;
            file.sync_all()?;
        }
        file.seek(SeekFrom::Start(valid_len))?;

        let state = Arc::new(Mutex::new(state));
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            file: BufWriter::with_capacity(WRITE_BUF, file),
            file_len: valid_len,
            sizes,
            state: Arc::clone(&state),
            rx,
            compact_threshold: compact_threshold.max(MIN_COMPACT_THRESHOLD),
            compact_after: 0,
            failed: None,
        };
        let handle =
            std::thread::Builder::new().name("raft-log-writer".into()).spawn(move || writer.run())?;
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
        let mut sizes = Vec::with_capacity(entries.len());
        for e in &entries {
            let n = encode_into(&mut bytes, &RecordRef::Entry(e))?;
            sizes.push((e.log_id.index, n));
        }
        // An empty append still goes through the queue so that acks stay in order.
        let req = Req { bytes, op: Op::Append(sizes), ack };
        self.submit(|st| entries.into_iter().for_each(|e| st.append(e)), req)
    }

    pub(crate) fn enqueue_truncate(&self, since: LogId, ack: Ack) -> io::Result<()> {
        let since = since.index;
        let bytes = encode(&RecordRef::Truncate { since })?;
        self.submit(|st| st.truncate(since), Req { bytes, op: Op::Truncate(since), ack })
    }

    pub(crate) fn enqueue_purge(&self, upto: LogId, ack: Ack) -> io::Result<()> {
        let bytes = encode(&RecordRef::Purge { upto: &upto })?;
        let req = Req { bytes, op: Op::Purge(upto.index), ack };
        self.submit(|st| st.purge(upto), req)
    }

    pub(crate) fn enqueue_vote(&self, vote: Vote, ack: Ack) -> io::Result<()> {
        let bytes = encode(&RecordRef::Vote(&vote))?;
        self.submit(|st| st.vote = Some(vote), Req { bytes, op: Op::Meta, ack })
    }

    pub(crate) fn enqueue_committed(&self, committed: Option<LogId>, ack: Ack) -> io::Result<()> {
        let bytes = encode(&RecordRef::Committed(committed.as_ref()))?;
        self.submit(|st| st.committed = committed, Req { bytes, op: Op::Hint, ack })
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
    /// can never get ahead of the entries: it sits behind them in the same file. An I/O
    /// error is still reported: it fails the store, so the next write returns it.
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

/// Replays the file from the start. Returns the state, the live-bytes index and the length
/// of the intact prefix.
fn replay(file: &File, file_len: u64) -> io::Result<(State, SizeIndex, u64)> {
    let mut reader = BufReader::with_capacity(WRITE_BUF, file);
    let mut state = State::default();
    let mut sizes = SizeIndex::default();
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
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("raft log record at offset {offset} has a valid crc but does not decode: {e}"),
            )
        })?;
        let size = HEADER_LEN + u64::from(len);
        match &record {
            Record::Entry(e) => sizes.append(e.log_id.index, size),
            Record::Truncate { since } => sizes.truncate(*since),
            Record::Purge { upto } => sizes.purge(upto.index),
            Record::Vote(_) | Record::Committed(_) => {}
        }
        state.apply(record);
        offset += size;
    }
    Ok((state, sizes, offset))
}

/// The live state to write into a compacted file.
struct LiveState {
    vote: Option<Vote>,
    committed: Option<LogId>,
    last_purged: Option<LogId>,
    entries: Vec<Arc<Entry>>,
}

/// The writer thread: sole owner of the file handle.
struct Writer {
    dir: PathBuf,
    file: BufWriter<File>,
    /// Bytes in the file (all written and flushed by the end of each batch).
    file_len: u64,
    sizes: SizeIndex,
    state: Arc<Mutex<State>>,
    rx: mpsc::Receiver<Req>,
    compact_threshold: u64,
    /// After a failed compaction, do not retry before the file reaches this length.
    compact_after: u64,
    /// `(kind, message)` of the first I/O error; once set, everything fails.
    failed: Option<(io::ErrorKind, String)>,
}

impl Writer {
    fn run(mut self) {
        // Ends once every sender is dropped and the queue is empty.
        while let Ok(first) = self.rx.recv() {
            let mut batch = vec![first];
            batch.extend(self.rx.try_iter());
            self.commit(batch);
            if self.should_compact() {
                self.compact();
            }
        }
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
            self.file_len += r.bytes.len() as u64;
            self.sizes.apply(&r.op);
        }
        self.file.flush()?;
        if batch.iter().all(|r| matches!(r.op, Op::Hint)) {
            // Nothing here must be durable before it is acknowledged.
            return Ok(());
        }
        self.file.get_ref().sync_data()
    }

    fn should_compact(&self) -> bool {
        let dead = self.file_len.saturating_sub(self.sizes.live);
        self.failed.is_none()
            && self.file_len > self.compact_threshold
            && self.file_len >= self.compact_after
            && dead > self.file_len / 2
    }

    /// Rewrites the live state into a new file and switches to it. Requests queued at the
    /// moment the state is captured are already in it: they are taken off the queue and
    /// acknowledged once the new file is durable.
    fn compact(&mut self) {
        let (live, covered) = {
            let st = lock(&self.state);
            // Every mutation visible in `st` was queued under this lock: it has been written
            // already or is in the queue now.
            let covered: Vec<Req> = self.rx.try_iter().collect();
            let live = LiveState {
                vote: st.vote,
                committed: st.committed,
                last_purged: st.last_purged,
                entries: st.entries.values().cloned().collect(),
            };
            (live, covered)
        };
        let before = self.file_len;
        let tmp_path = self.dir.join(TMP_FILE);
        let (file, len, sizes) = match write_live(&tmp_path, &live) {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(error = %e, "raft log compaction failed; keeping the old file");
                if let Err(e) = fs::remove_file(&tmp_path) {
                    tracing::warn!(error = %e, "could not remove {}", tmp_path.display());
                }
                self.compact_after = self.file_len.saturating_add(self.compact_threshold);
                // The covered requests are not in the old file yet: write them there.
                if !covered.is_empty() {
                    self.commit(covered);
                }
                return;
            }
        };
        // From the rename on, the old handle may no longer be `raft.log`: any error is fatal.
        let switched = fs::rename(&tmp_path, self.dir.join(LOG_FILE)).and_then(|()| sync_dir(&self.dir));
        if let Err(e) = switched {
            self.fail(&e);
            for r in covered {
                r.ack.complete(Err(io::Error::new(e.kind(), e.to_string())));
            }
            return;
        }
        self.file = BufWriter::with_capacity(WRITE_BUF, file);
        self.file_len = len;
        self.sizes = sizes;
        tracing::info!(before, after = len, "compacted the raft log");
        covered.into_iter().for_each(|r| r.ack.complete(Ok(())));
    }
}

/// Writes `live` to a fresh file at `path` and fsyncs it. Returns the file (positioned at
/// its end), its length and its live-bytes index.
fn write_live(path: &Path, live: &LiveState) -> io::Result<(File, u64, SizeIndex)> {
    let file = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    lock_exclusive(&file, path)?;
    let mut out = BufWriter::with_capacity(WRITE_BUF, file);
    let mut sizes = SizeIndex::default();
    let mut buf = Vec::new();
    let mut len = 0;
    if let Some(vote) = &live.vote {
        len += encode_into(&mut buf, &RecordRef::Vote(vote))?;
    }
    if let Some(upto) = &live.last_purged {
        len += encode_into(&mut buf, &RecordRef::Purge { upto })?;
    }
    if let Some(committed) = &live.committed {
        len += encode_into(&mut buf, &RecordRef::Committed(Some(committed)))?;
    }
    out.write_all(&buf)?;
    for e in &live.entries {
        buf.clear();
        let n = encode_into(&mut buf, &RecordRef::Entry(e))?;
        out.write_all(&buf)?;
        sizes.append(e.log_id.index, n);
        len += n;
    }
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok((file, len, sizes))
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
    use crate::store::{Command, Outcome};

    fn lid(term: u64, index: u64) -> LogId {
        openraft::LogId::new(CommittedLeaderId::new(term, 1), index)
    }

    fn blank(term: u64, index: u64) -> Entry {
        openraft::Entry { log_id: lid(term, index), payload: EntryPayload::Blank }
    }

    fn put(term: u64, index: u64, size: usize) -> Entry {
        openraft::Entry {
            log_id: lid(term, index),
            payload: EntryPayload::Normal(Command::Put {
                key: format!("/k/{index}"),
                value: (0..size).map(|i| (i as u64 ^ index) as u8).collect(),
                cond: Default::default(),
                prev_kv: false,
            }),
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

    fn log_len(dir: &Path) -> u64 {
        fs::metadata(dir.join(LOG_FILE)).unwrap().len()
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
        damage(&dir.path().join(LOG_FILE));

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
        append_bytes(&dir.path().join(LOG_FILE), &rec);
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
    async fn compaction_rewrites_the_file() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open_with_threshold(dir.path(), 8 << 10).unwrap();
        s.save_vote(&Vote::new(4, 1)).await.unwrap();
        for i in 0..200 {
            s.blocking_append([put(4, i, 1000)]).await.unwrap();
            s.save_committed(Some(lid(4, i))).await.unwrap();
        }
        let full = log_len(dir.path());
        s.purge(lid(4, 150)).await.unwrap();
        // Any durable write after the purge returns only after the compaction it triggered.
        s.save_vote(&Vote::new_committed(4, 1)).await.unwrap();
        let compacted = log_len(dir.path());
        assert!(compacted < full / 3, "file not compacted: {full} -> {compacted}");
        assert!(!dir.path().join(TMP_FILE).exists());
        // The new file is locked like the old one was.
        assert_eq!(LogStore::open(dir.path()).unwrap_err().kind(), io::ErrorKind::WouldBlock);

        // Appends go to the new file.
        s.blocking_append([put(4, 200, 1000)]).await.unwrap();
        assert!(log_len(dir.path()) > compacted);
        let before = dump(&mut s).await;
        assert_eq!(indexes(&before.3), (151..=200).collect::<Vec<_>>());
        assert_eq!(before.0.last_purged_log_id, Some(lid(4, 150)));
        assert_eq!(before.1, Some(Vote::new_committed(4, 1)));
        assert_eq!(before.2, Some(lid(4, 199)));
        drop(s);

        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);

        // Purging everything compacts down to the meta records alone.
        s.purge(lid(4, 300)).await.unwrap();
        drop(s);
        let mut s = LogStore::open_with_threshold(dir.path(), 8 << 10).unwrap();
        let (st, vote, committed, entries) = dump(&mut s).await;
        assert_eq!((st.last_purged_log_id, st.last_log_id), (Some(lid(4, 300)), Some(lid(4, 300))));
        assert_eq!((vote, committed), (before.1, before.2));
        assert!(entries.is_empty());
    }

    /// Many writes queued without waiting, with purges that keep triggering compactions while
    /// the queue is full: exercises group commit and the requests a compaction takes over.
    #[tokio::test]
    async fn queued_writes_across_compactions() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open_with_threshold(dir.path(), 16 << 10).unwrap();
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
        assert!(log_len(dir.path()) < 1 << 20, "never compacted: {}", log_len(dir.path()));
        drop(s);
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
    }

    #[tokio::test]
    async fn leftover_compaction_file_is_ignored() {
        let dir = TempDir::new().unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        s.blocking_append([blank(1, 0), blank(1, 1)]).await.unwrap();
        let before = dump(&mut s).await;
        drop(s);
        fs::write(dir.path().join(TMP_FILE), b"half a compaction").unwrap();
        let mut s = LogStore::open(dir.path()).unwrap();
        assert_eq!(dump(&mut s).await, before);
        assert!(!dir.path().join(TMP_FILE).exists());
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
        assert!(nested.join(LOG_FILE).exists());
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
