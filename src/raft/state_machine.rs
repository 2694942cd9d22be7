//! The openraft state machine adapter over the pure [`State`], and its snapshot files.
//!
//! Owns: the in-memory state, the last applied log id and membership, and the newest
//! snapshot on disk (`dir/snapshot.bin`, see `snapshot_file`). Invariants: a snapshot is
//! on disk (tmp file, fsync, rename, fsync of the directory) before `build_snapshot` or
//! `install_snapshot` returns, because openraft purges the log it covers right after; a
//! snapshot is written and read as a stream (the state is in memory, its encoding never
//! is whole), and openraft's snapshot data is a handle on the file ([`SnapshotData`]);
//! after every applied batch the applied index and revision are published on a `watch`
//! channel, which is how readers wait for a read index to be applied.
//!
//! [`SnapshotData`]: super::snapshot_data::SnapshotData

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot_data::{Received, SnapshotData};
use super::snapshot_file::{self, Summary};
use super::types::*;
use crate::store::{Outcome, State};

/// What is applied: the replicated state and the Raft bookkeeping that must travel with it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Applied {
    pub state: State,
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// Ids of members a membership change removed: never given to a member again.
    /// Replicated (derived from the membership entries, in log order) and in snapshots.
    #[serde(default)]
    pub retired: std::collections::BTreeSet<NodeId>,
    /// When the entry that moved the lease clock to its current reading reached this node
    /// (appended to its log; when it was applied if that is not known), on this node's
    /// monotonic clock: so not replicated, and not in snapshots (`None` after a restart or
    /// a snapshot install until the clock moves again). The entry was proposed, and its
    /// reading taken, before this moment: a new leader may count the clock on from here and
    /// never run it ahead of its predecessor's. (Not the moment it was applied: a follower
    /// may learn that the last entries of a leader that died were committed only when it
    /// has become leader itself.)
    #[serde(skip)]
    pub lease_clock_seen: Option<tokio::time::Instant>,
}

/// The applied position, published after every batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppliedPosition {
    /// Index of the last applied log entry (0 before any).
    pub index: u64,
    /// Store revision after it.
    pub revision: u64,
}

/// A snapshot file: its metadata and the applied state it captures.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotFile {
    pub meta: SnapshotMeta,
    pub applied: Applied,
}

/// The same, borrowed, for writing.
#[derive(Serialize)]
pub(crate) struct SnapshotFileRef<'a> {
    pub meta: &'a SnapshotMeta,
    pub applied: &'a Applied,
}

struct Shared {
    applied: RwLock<Applied>,
    position: watch::Sender<AppliedPosition>,
    dir: PathBuf,
    /// Metadata of the snapshot on disk, if any.
    current: Mutex<Option<SnapshotMeta>>,
    /// Serialises snapshot builds and installs (file writes).
    snapshot_lock: tokio::sync::Mutex<()>,
    /// Makes snapshot ids unique within a process.
    counter: std::sync::atomic::AtomicU64,
    /// When the log entry at an index reached this node, if known (see `Applied`).
    receipts: std::sync::OnceLock<Receipts>,
    /// Times each applied batch (metrics).
    apply_histogram: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

/// When the log entry at an index reached this node, if known.
pub type Receipts = Box<dyn Fn(u64) -> Option<tokio::time::Instant> + Send + Sync>;

/// The state machine handle; clones share the same state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<Shared>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// Writes `bytes` to `dir/name` atomically and durably.
pub(crate) fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

pub(crate) const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Names of files being received from a leader start with this.
const INCOMING_PREFIX: &str = "incoming-";

impl StateMachine {
    /// Opens the state machine under `dir`, restoring the newest snapshot if there is one.
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        Self::remove_leftovers(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let (applied, current) = if path.exists() {
            let (file, _) = snapshot_file::read::<SnapshotFile>(&path)?;
            (file.applied, Some(file.meta))
        } else {
            (Applied::default(), None)
        };
        let position = watch::Sender::new(Self::position_of(&applied));
        Ok(StateMachine {
            shared: Arc::new(Shared {
                applied: RwLock::new(applied),
                position,
                dir: dir.to_path_buf(),
                current: Mutex::new(current),
                snapshot_lock: tokio::sync::Mutex::new(()),
                counter: Default::default(),
                receipts: Default::default(),
                apply_histogram: Default::default(),
            }),
        })
    }

    fn position_of(a: &Applied) -> AppliedPosition {
        AppliedPosition { index: a.last_applied.map_or(0, |l| l.index), revision: a.state.revision() }
    }

    /// Tells the state machine when log entries reached this node (set once, by the
    /// replica that owns both).
    pub fn set_receipts(&self, receipts: Receipts) {
        let _ = self.shared.receipts.set(receipts);
    }

    /// Where the time of each applied batch is counted (set once, by the replica).
    pub fn set_apply_histogram(&self, h: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.shared.apply_histogram.set(h);
    }

    /// Read access to the applied state. Never hold it across an await.
    pub fn read(&self) -> RwLockReadGuard<'_, Applied> {
        self.shared.applied.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to the applied position.
    pub fn position(&self) -> watch::Receiver<AppliedPosition> {
        self.shared.position.subscribe()
    }

    /// Removes what an interrupted write or transfer left in `dir`.
    fn remove_leftovers(dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(INCOMING_PREFIX) || name.ends_with(".tmp") {
                std::fs::remove_file(dir.join(&*name))?;
            }
        }
        Ok(())
    }

    /// Bytes free for an unprivileged writer on the snapshot dir's file system, if known.
    pub(crate) fn free_bytes(&self) -> Option<u64> {
        let st = rustix::fs::statvfs(&self.shared.dir).ok()?;
        Some(st.f_bavail.saturating_mul(st.f_frsize))
    }

    /// A new file in the snapshot dir to receive a snapshot into (removed at the next
    /// start if it is left behind).
    pub(crate) fn incoming_path(&self, from: NodeId) -> PathBuf {
        let n = self.shared.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.shared.dir.join(format!("{INCOMING_PREFIX}{from}-{n}"))
    }

    /// Copies the snapshot `data` to `path` (a chunk at a time), syncs it and checks it
    /// against `meta`: a received file like one that came from a leader.
    fn copy_in(data: &SnapshotData, path: PathBuf, meta: &SnapshotMeta) -> std::io::Result<Received> {
        let copied = (|| {
            let mut f = std::fs::File::create(&path)?;
            let mut buf = vec![0; 1 << 20];
            let mut at = 0;
            while at < data.len() {
                let n = data.read_at(&mut buf, at)?;
                if n == 0 {
                    return Err(std::io::Error::other(format!(
                        "the snapshot ends at {at} of {} bytes",
                        data.len()
                    )));
                }
                f.write_all(&buf[..n])?;
                at += n as u64;
            }
            f.sync_all()?;
            let applied = Self::check_received(&path, meta).map_err(std::io::Error::other)?;
            SnapshotData::received(path.clone(), applied)
        })();
        match copied {
            Ok(mut data) => Ok(data.take_received().expect("a received handle")),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Decodes the snapshot file at `path` (streaming, checking its checksum) and checks
    /// that its state is exactly what `meta` says it is: a state that holds more (or less)
    /// than its metadata claims would make this node apply entries twice (or skip them)
    /// after installing it, and diverge. Returns the state.
    pub(crate) fn check_received(path: &Path, meta: &SnapshotMeta) -> Result<Applied, String> {
        let (file, _) = snapshot_file::read::<SnapshotFile>(path).map_err(|e| e.to_string())?;
        Self::check_matches(&file, meta)?;
        Ok(file.applied)
    }

    fn check_matches(file: &SnapshotFile, meta: &SnapshotMeta) -> Result<(), String> {
        if file.meta.last_log_id != meta.last_log_id || file.applied.last_applied != meta.last_log_id {
            return Err(format!(
                "the snapshot's data is of log id {:?} (applied {:?}), but it is sent as of {:?}",
                file.meta.last_log_id, file.applied.last_applied, meta.last_log_id
            ));
        }
        if file.meta.last_membership != meta.last_membership
            || file.applied.membership != meta.last_membership
        {
            return Err("the snapshot's data carries another membership than it is sent with".into());
        }
        if file.meta.snapshot_id != meta.snapshot_id {
            return Err(format!(
                "the snapshot's data is snapshot {}, but it is sent as snapshot {}",
                file.meta.snapshot_id, meta.snapshot_id
            ));
        }
        Ok(())
    }

    /// The index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        self.shared.position.borrow().index
    }

    /// Waits until the entry at `index` is applied.
    pub async fn wait_applied(&self, index: u64) -> AppliedPosition {
        let mut rx = self.position();
        let pos = *rx.wait_for(|p| p.index >= index).await.expect("sender lives in self");
        pos
    }

    /// Writes `applied` under `meta` as the snapshot file (blocking: call it off the runtime).
    fn write_file(dir: &Path, applied: &Applied, meta: &SnapshotMeta) -> std::io::Result<Summary> {
        snapshot_file::write(dir, SNAPSHOT_FILE, &SnapshotFileRef { meta, applied })
    }

    /// The snapshot on disk and its metadata, read together: under the snapshot lock, so a
    /// build or install cannot replace the file between reading the metadata and the data
    /// (which would send a state under the metadata of an older one).
    async fn load_current(&self) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
        let _guard = self.shared.snapshot_lock.lock().await;
        let meta = self.shared.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(meta) = meta else { return Ok(None) };
        let data = SnapshotData::open(&self.shared.dir.join(SNAPSHOT_FILE))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(data) }))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let _guard = self.shared.snapshot_lock.lock().await;
        // An O(1) clone (the store's map is persistent) taken under the lock; the slow
        // part, serialising, happens off the lock and off the async runtime, so applying
        // writes never waits for a snapshot.
        let (applied, meta) = {
            let a = self.read();
            let n = self.shared.counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let snapshot_id = match a.last_applied {
                Some(l) => format!("{}-{}-{}-{n}", l.leader_id.term, l.leader_id.node_id, l.index),
                None => format!("0-0-0-{n}"),
            };
            let meta = SnapshotMeta {
                last_log_id: a.last_applied,
                last_membership: a.membership.clone(),
                snapshot_id,
            };
            (a.clone(), meta)
        };
        let (meta2, dir) = (meta.clone(), self.shared.dir.clone());
        let data = tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let summary = Self::write_file(&dir, &applied, &meta2)?;
            let elapsed = t0.elapsed();
            tracing::info!(
                bytes = summary.file_bytes,
                ms = elapsed.as_millis() as u64,
                mib_per_s =
                    (summary.file_bytes as f64 / (1 << 20) as f64 / elapsed.as_secs_f64().max(1e-6)) as u64,
                "snapshot built"
            );
            SnapshotData::open(&dir.join(SNAPSHOT_FILE))
        })
        .await
        .map_err(io_err)
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.shared.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(meta.clone());
        Ok(Snapshot { meta, snapshot: Box::new(data) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let a = self.read();
        Ok((a.last_applied, a.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Outcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        let t0 = std::time::Instant::now();
        let position = {
            let mut a = self.shared.applied.write().unwrap_or_else(|e| e.into_inner());
            for entry in entries {
                a.last_applied = Some(entry.log_id);
                let outcome = match entry.payload {
                    EntryPayload::Blank => a.state.nothing(),
                    EntryPayload::Normal(p) => {
                        let outcome = a.state.apply(&p);
                        // The entry carries the clock's reading now (an equal reading of a later
                        // entry too: its later date is the safer one).
                        if p.cmd.lease_clock().is_some_and(|k| k == a.state.leases().clock_ms()) {
                            let received = self.shared.receipts.get().and_then(|r| r(entry.log_id.index));
                            a.lease_clock_seen = Some(received.unwrap_or_else(tokio::time::Instant::now));
                        }
                        outcome
                    }
                    EntryPayload::Membership(m) => {
                        // A member the new membership leaves out is retired for good.
                        let gone: Vec<NodeId> = a
                            .membership
                            .membership()
                            .nodes()
                            .map(|(id, _)| *id)
                            .filter(|id| m.get_node(id).is_none())
                            .collect();
                        a.retired.extend(gone);
                        a.membership = StoredMembership::new(Some(entry.log_id), m);
                        a.state.nothing()
                    }
                };
                out.push(outcome);
            }
            Self::position_of(&a)
        };
        if let Some(h) = self.shared.apply_histogram.get() {
            h.observe(t0.elapsed().as_secs_f64());
        }
        self.shared.position.send_replace(position);
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    /// Never called: snapshots arrive through the peer layer, chunk by chunk, into a file
    /// (`Replica::handle`), and are handed to openraft whole.
    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Err(StorageIOError::read_snapshot(
            None,
            &std::io::Error::other("snapshots are received by the peer layer, not through openraft's chunks"),
        )
        .into())
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let _guard = self.shared.snapshot_lock.lock().await;
        let fail = |e: std::io::Error| {
            StorageError::from(StorageIOError::write_snapshot(Some(meta.signature()), &e))
        };
        // A file received from a leader was checked against `meta` when it arrived; any
        // other handle (a snapshot file open elsewhere) is copied in and checked first.
        let received = match snapshot.take_received() {
            Some(r) => r,
            None => {
                // (Named as from node 0, which no member is: a local copy.)
                let (path, meta2) = (self.incoming_path(0), meta.clone());
                let data = std::sync::Arc::new(*snapshot);
                tokio::task::spawn_blocking(move || Self::copy_in(&data, path, &meta2))
                    .await
                    .map_err(io_err)
                    .and_then(|r| r)
                    .map_err(fail)?
            }
        };
        let (from, dir) = (received.path().to_path_buf(), self.shared.dir.clone());
        tokio::task::spawn_blocking(move || snapshot_file::install(&from, &dir, SNAPSHOT_FILE))
            .await
            .map_err(io_err)
            .and_then(|r| r)
            .map_err(fail)?;
        let applied = received.moved();
        let position = {
            let mut a = self.shared.applied.write().unwrap_or_else(|e| e.into_inner());
            *a = *applied;
            a.last_applied = meta.last_log_id;
            a.membership = meta.last_membership.clone();
            Self::position_of(&a)
        };
        *self.shared.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(meta.clone());
        self.shared.position.send_replace(position);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        self.load_current().await.map_err(|e| StorageIOError::read_snapshot(None, &e).into())
    }
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, LogId};

    use super::*;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), index)),
            last_membership: StoredMembership::default(),
            snapshot_id: format!("s{index}"),
        }
    }

    /// Writes `applied` under `meta` as a file in `dir` named `name`.
    fn file(dir: &Path, name: &str, applied: &Applied, meta: &SnapshotMeta) -> PathBuf {
        snapshot_file::write(dir, name, &SnapshotFileRef { meta, applied }).unwrap();
        dir.join(name)
    }

    #[test]
    fn a_snapshot_is_installed_only_as_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let applied = Applied { last_applied: meta(40).last_log_id, ..Applied::default() };
        let path = file(dir.path(), "a", &applied, &meta(40));
        StateMachine::check_received(&path, &meta(40)).unwrap();
        // The state of entry 40 sent as the snapshot of entry 30: the receiver would apply
        // entries 31..40 a second time.
        let e = StateMachine::check_received(&path, &meta(30)).unwrap_err();
        assert!(e.contains("sent as of"), "{e}");
        // Another snapshot of the same entry.
        let other = SnapshotMeta { snapshot_id: "other".into(), ..meta(40) };
        let e = StateMachine::check_received(&path, &other).unwrap_err();
        assert!(e.contains("sent as snapshot other"), "{e}");
        // Data whose own metadata disagrees with its state.
        let lying = Applied { last_applied: meta(20).last_log_id, ..Applied::default() };
        let lying = file(dir.path(), "b", &lying, &meta(40));
        assert!(StateMachine::check_received(&lying, &meta(40)).is_err());
        std::fs::write(dir.path().join("c"), b"{}").unwrap();
        let e = StateMachine::check_received(&dir.path().join("c"), &meta(40)).unwrap_err();
        assert!(e.contains("snapshot file") && e.contains("/c"), "{e}");
    }

    /// Everything the state holds survives the binary encoding: values that are not UTF-8,
    /// leases, locks with their fencing tokens, the history floor, idempotency outcomes
    /// (internally tagged, with bytes inside), and `try_from` checks.
    #[test]
    fn a_full_state_round_trips_through_a_snapshot_file() {
        use crate::store::{dedup, Command, Condition, Kind, Proposal, Retention};
        let mut state = State::default();
        let put = |key: &str, value: Vec<u8>, lease: Option<u64>| Command::Put {
            key: key.into(),
            value,
            lease,
            sequential: false,
            cond: Condition { if_value: None, if_version: None, if_mod_revision: None },
            prev_kv: true,
        };
        let once = |key: &str, cmd: Command| Command::Idempotent {
            key: key.into(),
            fingerprint: dedup::fingerprint(&cmd),
            retain: Retention { window_ms: 60_000, max_entries: 100, max_bytes: u64::MAX },
            cmd: Box::new(cmd),
        };
        let lock = Command::LockAcquire {
            kind: Kind::Lock,
            name: "l".into(),
            lease: Some(7),
            ttl_ms: 0,
            clock_ms: 0,
            limit: None,
            wait: false,
            value: vec![0xff, 0],
        };
        for cmd in [
            Command::LeaseGrant { id: Some(7), ttl_ms: 60_000, clock_ms: 10 },
            once("k1", put("/bin", vec![0, 255, 128, 10, 13, 0], None)),
            put("/leased", b"v".to_vec(), Some(7)),
            once("k2", put("/bin", vec![1, 2, 3], None)),
            lock,
            Command::Compact { revision: 3 },
        ] {
            state.apply(&Proposal::new(cmd, 1_000));
        }
        assert_eq!(state.dedup().len(), 2);
        assert_eq!(state.locks().len(), 1);
        let applied = Applied { state, last_applied: meta(9).last_log_id, ..Applied::default() };
        let dir = tempfile::tempdir().unwrap();
        let path = file(dir.path(), "s", &applied, &meta(9));
        let back = StateMachine::check_received(&path, &meta(9)).unwrap();
        assert_eq!(back.state, applied.state);
        assert_eq!(back.state.kv().compact_revision(), 3);
    }

    /// The lease clock's reading is dated by when its entry reached this node, not by when
    /// it was applied (a follower may apply a dead leader's last entries only once it leads).
    /// A member a membership entry leaves out is retired for good, on every node alike, and
    /// the retired ids travel in snapshots; a member added later is not.
    #[tokio::test]
    async fn members_left_out_by_a_membership_are_retired() {
        use std::collections::{BTreeMap, BTreeSet};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let node = || Member::default();
        let config = |voters: &[u64], learners: &[u64]| {
            let nodes: BTreeMap<NodeId, Member> =
                voters.iter().chain(learners).map(|id| (*id, node())).collect();
            openraft::Membership::new(vec![voters.iter().copied().collect::<BTreeSet<_>>()], nodes)
        };
        let entry = |index: u64, m: openraft::Membership<NodeId, Member>| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Membership(m),
        };
        sm.apply(vec![entry(1, config(&[1, 2, 3], &[]))]).await.unwrap();
        sm.apply(vec![entry(2, config(&[1, 2, 3], &[4]))]).await.unwrap();
        assert!(sm.read().retired.is_empty(), "a learner added retires nobody");
        sm.apply(vec![entry(3, config(&[1, 2, 4], &[]))]).await.unwrap();
        sm.apply(vec![entry(4, config(&[1, 4], &[]))]).await.unwrap();
        assert_eq!(sm.read().retired, BTreeSet::from([2, 3]));
        let copy: Applied = serde_json::from_slice(&serde_json::to_vec(&*sm.read()).unwrap()).unwrap();
        assert_eq!(copy.retired, BTreeSet::from([2, 3]), "in snapshots");
    }

    #[tokio::test]
    async fn the_lease_clock_is_dated_by_when_its_entry_arrived() {
        use crate::store::{Command, Proposal};
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let arrived = tokio::time::Instant::now() - std::time::Duration::from_secs(3);
        sm.set_receipts(Box::new(move |index| (index == 2).then_some(arrived)));
        let entry = |index: u64, cmd: Command| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Proposal::new(cmd, 0)),
        };
        let grant = Command::LeaseGrant { id: Some(1), ttl_ms: 5_000, clock_ms: 100 };
        sm.apply(vec![entry(1, grant)]).await.unwrap();
        // Arrival unknown (e.g. recovered from disk): dated when applied.
        let applied_at = sm.read().lease_clock_seen.unwrap();
        assert!(applied_at > arrived + std::time::Duration::from_secs(2));
        sm.apply(vec![entry(2, Command::LeaseClock { clock_ms: 200, renew: vec![1] })]).await.unwrap();
        assert_eq!(sm.read().lease_clock_seen, Some(arrived));
        // An entry that does not move the clock changes nothing.
        sm.apply(vec![entry(3, Command::LeaseClock { clock_ms: 150, renew: vec![] })]).await.unwrap();
        assert_eq!(sm.read().lease_clock_seen, Some(arrived));
    }

    /// A snapshot handed over as another node's open file (as openraft's own storage tests
    /// do) is copied in, checked and installed; a damaged one changes nothing.
    #[tokio::test]
    async fn a_snapshot_from_another_state_machine_installs() {
        use crate::store::{Command, Proposal};
        let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut a = StateMachine::open(a_dir.path()).unwrap();
        let mut b = StateMachine::open(b_dir.path()).unwrap();
        let put = Command::Put {
            key: "/k".into(),
            value: vec![1, 2, 255],
            lease: None,
            sequential: false,
            cond: Default::default(),
            prev_kv: false,
        };
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), 1),
            payload: EntryPayload::Normal(Proposal::new(put, 0)),
        };
        a.apply(vec![entry]).await.unwrap();
        let snap = a.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let meta = snap.meta.clone();
        // Damaged on the way: refused, and nothing changes.
        let mut bytes = vec![0; snap.snapshot.len() as usize];
        snap.snapshot.read_at(&mut bytes, 0).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&bytes).unwrap();
        let bad = SnapshotData::from_file(f).unwrap();
        assert!(b.install_snapshot(&meta, Box::new(bad)).await.is_err());
        assert_eq!(b.read().state.revision(), 0);
        assert!(b.get_current_snapshot().await.unwrap().is_none());
        b.install_snapshot(&meta, snap.snapshot).await.unwrap();
        assert_eq!(b.read().state, a.read().state);
        assert_eq!(b.get_current_snapshot().await.unwrap().unwrap().meta, meta);
        let left: Vec<_> = std::fs::read_dir(b_dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, [SNAPSHOT_FILE]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_current_snapshot_is_always_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = StateMachine::open(dir.path()).unwrap();
        let mut builder = sm.clone();
        let builds = tokio::spawn(async move {
            for i in 1..=30u64 {
                builder.shared.applied.write().unwrap().last_applied = meta(i).last_log_id;
                builder.build_snapshot().await.unwrap();
            }
        });
        while !builds.is_finished() {
            if let Some(snap) = sm.get_current_snapshot().await.unwrap() {
                // Read through the handle (the file may be replaced meanwhile).
                let mut bytes = vec![0; snap.snapshot.len() as usize];
                assert_eq!(snap.snapshot.read_at(&mut bytes, 0).unwrap(), bytes.len());
                let copy = dir.path().join("copy");
                std::fs::write(&copy, &bytes).unwrap();
                StateMachine::check_received(&copy, &snap.meta).unwrap();
            }
            tokio::task::yield_now().await;
        }
        builds.await.unwrap();
    }
}
