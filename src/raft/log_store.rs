//! The Raft log and vote store: openraft's [`RaftLogStorage`] and [`RaftLogReader`]
//! (storage-v2) over our [`Wal`].
//!
//! Owns the openraft side only: what each openraft call writes to the WAL (entries, vote,
//! purge point and committed log id, serialised with serde_json) and the decoded entries
//! that reads are served from. Durability, recovery and the full-disk policy are the WAL's.
//!
//! The decoded entries live here, not in the WAL: openraft reads entries all the time
//! (replication, apply), so they are kept decoded as `Arc<Entry>`, once; the WAL keeps
//! only what it must (meta for segment headers, the largest index per segment), and hands
//! back raw payloads only when it is opened.
//!
//! Invariants:
//! - every mutation updates memory and is submitted to the WAL under one lock, so memory
//!   and disk see mutations in the same order;
//! - `append` reports through `LogFlushed` only after the fsync; `save_vote`, `truncate`
//!   and `purge` return only after it; `save_committed` does not wait (see its doc);
//! - on open, what the WAL replays must decode, and the durable committed log id must not
//!   be beyond the last log id, else open fails naming the directory;
//! - a read never skips an entry: a range that should hold an entry the store does not
//!   have is an error, not a shorter answer.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use serde::de::DeserializeOwned;
use tokio::sync::oneshot;

use super::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::wal::{self, Ack, Health, Payload, Record, Records, Recovered, Wal};

/// What reads are served from.
#[derive(Default)]
struct State {
    entries: BTreeMap<u64, Arc<Entry>>,
    /// When each entry appended since this process started reached this node (its
    /// monotonic clock; entries recovered from disk have none). The lease clock of a new
    /// leader counts on from these (see `StateMachine`).
    received: BTreeMap<u64, tokio::time::Instant>,
    last_purged: Option<LogId>,
    vote: Option<Vote>,
    committed: Option<LogId>,
}

impl State {
    fn append(&mut self, entry: Arc<Entry>) {
        let index = entry.log_id.index;
        drop(self.entries.split_off(&index));
        drop(self.received.split_off(&index));
        self.entries.insert(index, entry);
        self.received.insert(index, tokio::time::Instant::now());
    }

    fn truncate(&mut self, since: u64) {
        drop(self.entries.split_off(&since));
        drop(self.received.split_off(&since));
    }

    fn purge(&mut self, upto: LogId) {
        (self.entries, self.received) = match upto.index.checked_add(1) {
            Some(next) => (self.entries.split_off(&next), self.received.split_off(&next)),
            None => (BTreeMap::new(), BTreeMap::new()),
        };
        if self.last_purged.is_none_or(|p| upto.index > p.index) {
            self.last_purged = Some(upto);
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

    /// Decodes what the WAL replayed and checks it against itself.
    fn recover(rec: Recovered, dir: &Path) -> io::Result<State> {
        let mut st = State {
            vote: rec.vote.as_ref().map(decode).transpose()?,
            committed: rec.committed.as_ref().map(decode).transpose()?.flatten(),
            ..State::default()
        };
        if let Some((upto, p)) = &rec.purged {
            let log_id: LogId = decode(p)?;
            if log_id.index != *upto {
                return Err(invalid(format!(
                    "purge record at {} is for index {upto} but holds {log_id}",
                    p.at
                )));
            }
            st.last_purged = Some(log_id);
        }
        for (index, p) in rec.entries {
            let entry: Entry = decode(&p)?;
            if entry.log_id.index != index {
                return Err(invalid(format!(
                    "entry record at {} is for index {index} but holds {}",
                    p.at, entry.log_id
                )));
            }
            st.entries.insert(index, Arc::new(entry));
        }
        if let Some(c) = st.committed {
            let last = st.log_state().last_log_id.map(|l| l.index);
            if last.is_none_or(|l| l < c.index) {
                let at = rec.committed.as_ref().map(|p| p.at.to_string()).unwrap_or_default();
                return Err(invalid(format!(
                    "raft log in {} ends at index {}, below the durable committed log id {c} (recorded at {at}): \
                     committed entries are missing",
                    dir.display(),
                    last.map_or_else(|| "none".into(), |l| l.to_string()),
                )));
            }
        }
        Ok(st)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn decode<T: DeserializeOwned>(p: &Payload) -> io::Result<T> {
    serde_json::from_slice(&p.bytes)
        .map_err(|e| invalid(format!("raft log record at {} does not decode: {e}", p.at)))
}

fn json(value: &impl serde::Serialize) -> impl FnOnce(&mut Vec<u8>) -> io::Result<()> + '_ {
    move |buf| serde_json::to_writer(buf, value).map_err(io::Error::from)
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The durable Raft log + vote store. Cheap to clone; all clones share one state and one
/// WAL, whose writer ends (after finishing every queued write) when the last clone is
/// dropped. That drop waits for it.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Only mutated together with a submit to `wal`, under this lock.
    state: Mutex<State>,
    wal: Wal,
    dir: PathBuf,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = lock(&self.shared.state);
        f.debug_struct("LogStore")
            .field("dir", &self.shared.dir)
            .field("entries", &st.entries.len())
            .field("last_purged", &st.last_purged)
            .field("vote", &st.vote)
            .field("committed", &st.committed)
            .finish()
    }
}

impl LogStore {
    /// When the entry at `index` reached this node, if it was appended since this process
    /// started (and not truncated or purged since).
    pub fn received_at(&self, index: u64) -> Option<tokio::time::Instant> {
        lock(&self.shared.state).received.get(&index).copied()
    }

    /// Opens (creating if needed) the store in `dir` with the default WAL options.
    pub fn open(dir: &Path) -> io::Result<LogStore> {
        Self::open_with(dir, wal::Options::default())
    }

    /// Opens the store with `opts` (segment size, retry backoff, a fatal-error callback).
    pub fn open_with(dir: &Path, opts: wal::Options) -> io::Result<LogStore> {
        let (wal, recovered) = Wal::open(dir, opts)?;
        let state = State::recover(recovered, dir)?;
        Ok(LogStore { shared: Arc::new(Shared { state: Mutex::new(state), wal, dir: dir.to_path_buf() }) })
    }

    /// The WAL's condition: `Stalled` while the data disk is full or fds ran out (writes
    /// wait, unacknowledged), `Failed` after a fatal error (the process should restart).
    pub fn health(&self) -> Health {
        self.shared.wal.health()
    }

    /// Applies `mutate` to the in-memory state and submits `records`, atomically with
    /// respect to every other mutation.
    fn submit(&self, records: Records, ack: Ack, mutate: impl FnOnce(&mut State)) -> io::Result<()> {
        let mut st = lock(&self.shared.state);
        self.shared.wal.submit(records, ack)?;
        mutate(&mut st);
        Ok(())
    }

    /// Makes `entries` readable at once and queues them; `ack` fires once they are durable.
    pub(crate) fn enqueue_append<I>(&self, entries: I, ack: Ack) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry>,
    {
        let entries: Vec<Arc<Entry>> = entries.into_iter().map(Arc::new).collect();
        let mut records = Records::new();
        for e in &entries {
            records.push(Record::Entry { index: e.log_id.index }, json(&**e))?;
        }
        // An empty append still goes through the queue so that acks stay in order.
        self.submit(records, ack, |st| entries.into_iter().for_each(|e| st.append(e)))
    }

    pub(crate) fn enqueue_truncate(&self, since: LogId, ack: Ack) -> io::Result<()> {
        let since = since.index;
        let mut records = Records::new();
        records.push_bytes(Record::Truncate { since }, &[])?;
        self.submit(records, ack, |st| st.truncate(since))
    }

    pub(crate) fn enqueue_purge(&self, upto: LogId, ack: Ack) -> io::Result<()> {
        let mut records = Records::new();
        records.push(Record::Purge { upto: upto.index }, json(&upto))?;
        self.submit(records, ack, |st| st.purge(upto))
    }

    pub(crate) fn enqueue_vote(&self, vote: Vote, ack: Ack) -> io::Result<()> {
        let mut records = Records::new();
        records.push(Record::Vote, json(&vote))?;
        self.submit(records, ack, |st| st.vote = Some(vote))
    }

    /// The index of the last committed log id openraft saved (0: none).
    pub(crate) fn committed_index(&self) -> u64 {
        lock(&self.shared.state).committed.map_or(0, |c| c.index)
    }

    pub(crate) fn enqueue_committed(&self, committed: Option<LogId>, ack: Ack) -> io::Result<()> {
        let mut records = Records::new();
        records.push(Record::Committed, json(&committed))?;
        self.submit(records, ack, |st| st.committed = committed)
    }

    /// Runs `enqueue` with a reply ack and waits until the write is durable.
    async fn durably(&self, enqueue: impl FnOnce(Ack) -> io::Result<()>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        enqueue(Ack::new(move |res| {
            // The caller may have gone away (cancelled); nothing to tell then.
            let _ = tx.send(res);
        }))?;
        rx.await.map_err(|_| io::Error::other("the WAL writer thread is gone"))?
    }

    /// The entries with index in `range` that the log holds: the range is clipped to
    /// `last purged + 1 ..= last`, and every index inside that must be there.
    fn read_range(&self, range: &impl RangeBounds<u64>) -> io::Result<Vec<Entry>> {
        // Deep copies are made outside the lock.
        Ok(self.read_shared(range)?.iter().map(|e| Entry::clone(e)).collect())
    }

    /// The entries of `range` that the log holds, shared (see [`Self::read_range`]).
    fn read_shared(&self, range: &impl RangeBounds<u64>) -> io::Result<Vec<Arc<Entry>>> {
        let start = match range.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => match s.checked_add(1) {
                Some(s) => s,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&e) => e,
            Bound::Excluded(&e) => match e.checked_sub(1) {
                Some(e) => e,
                None => return Ok(Vec::new()),
            },
            Bound::Unbounded => u64::MAX,
        };
        let found: Vec<Arc<Entry>> = {
            let st = lock(&self.shared.state);
            let (Some((&first, _)), Some((&last, _))) =
                (st.entries.first_key_value(), st.entries.last_key_value())
            else {
                return Ok(Vec::new());
            };
            let floor = st.last_purged.map_or(first, |p| p.index.saturating_add(1));
            let (lo, hi) = (start.max(floor), end.min(last));
            if lo > hi {
                return Ok(Vec::new());
            }
            let found: Vec<Arc<Entry>> = st.entries.range(lo..=hi).map(|(_, e)| Arc::clone(e)).collect();
            if found.len() as u64 != hi - lo + 1 {
                let missing = (lo..=hi).find(|i| !st.entries.contains_key(i)).expect("a missing index");
                return Err(io::Error::other(format!(
                    "raft log in {} has no entry {missing}, inside its range {floor}..={last}",
                    self.shared.dir.display()
                )));
            }
            found
        };
        Ok(found)
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
        self.read_range(&range).map_err(|e| StorageIOError::read_logs(&e).into())
    }

    /// What replication sends in one AppendEntries: the entries of `start..end` from the
    /// first, up to [`APPEND_BYTES`] on the wire (at least one). openraft 0.9 gives an
    /// AppendEntries one heartbeat interval to be sent, checked, written and answered, and
    /// retries the same batch after a timeout: a batch too big for that would be retried
    /// for ever, and a follower that fell behind by big entries would never catch up.
    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, StorageError> {
        let found = self.read_shared(&(start..end)).map_err(|e| StorageIOError::read_logs(&e))?;
        let fit = super::network::entries_that_fit(&found, APPEND_BYTES);
        Ok(found[..fit].iter().map(|e| Entry::clone(e)).collect())
    }
}

/// The most entry bytes (as sent) one AppendEntries carries, unless one entry alone is more.
pub const APPEND_BYTES: usize = 512 << 10;

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
    /// An I/O error is still reported: it fails the WAL, so the next write returns it.
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.enqueue_committed(committed, Ack::none()).map_err(logs_error)
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
        self.enqueue_append(entries, Ack::new(move |res| callback.log_io_completed(res))).map_err(logs_error)
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

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
