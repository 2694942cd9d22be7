//! The openraft state machine adapter over the pure [`State`], and its snapshot files.
//!
//! Owns: the in-memory state, the last applied log id and membership, and the newest
//! snapshot on disk (`dir/snapshot.bin`). Invariants: a snapshot is on disk (tmp file,
//! fsync, rename, fsync of the directory) before `build_snapshot` or `install_snapshot`
//! returns, because openraft purges the log it covers right after; after every applied
//! batch the applied index and revision are published on a `watch` channel, which is how
//! readers wait for a read index to be applied.

use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::snapshot_file;
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
struct SnapshotFile {
    meta: SnapshotMeta,
    applied: Applied,
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

const SNAPSHOT_FILE: &str = "snapshot.bin";

impl StateMachine {
    /// Opens the state machine under `dir`, restoring the newest snapshot if there is one.
    pub fn open(dir: &Path) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(SNAPSHOT_FILE);
        let (applied, current) = if path.exists() {
            let bytes = snapshot_file::read(&path)?;
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(io_err)?;
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

    /// Checks that `bytes` are a snapshot this binary can install,
    /// and whose state is exactly what `meta` says it is. A state that holds more (or
    /// less) than its metadata claims would make this node apply entries twice (or skip
    /// them) after installing it, and diverge.
    pub(crate) fn validate_snapshot(bytes: &[u8], meta: &SnapshotMeta) -> Result<(), String> {
        let file = serde_json::from_slice::<SnapshotFile>(bytes).map_err(|e| e.to_string())?;
        Self::check_matches(&file, meta)
    }

    fn check_matches(file: &SnapshotFile, meta: &SnapshotMeta) -> Result<(), String> {
        if file.meta.last_log_id != meta.last_log_id || file.applied.last_applied != meta.last_log_id {
            return Err(format!(
                "the snapshot's data is of log id {:?} (applied {:?}), but it is sent as of {:?}",
                file.meta.last_log_id, file.applied.last_applied, meta.last_log_id
            ));
        }
        if file.meta.last_membership != meta.last_membership {
            return Err("the snapshot's data carries another membership than it is sent with".into());
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

    fn encode(applied: &Applied, meta: &SnapshotMeta) -> Vec<u8> {
        #[derive(Serialize)]
        struct SnapshotFileRef<'a> {
            meta: &'a SnapshotMeta,
            applied: &'a Applied,
        }
        serde_json::to_vec(&SnapshotFileRef { meta, applied }).expect("serialisable")
    }

    /// The snapshot on disk and its metadata, read together: under the snapshot lock, so a
    /// build or install cannot replace the file between reading the metadata and the data
    /// (which would send a state under the metadata of an older one).
    async fn load_current(&self) -> std::io::Result<Option<Snapshot<TypeConfig>>> {
        let _guard = self.shared.snapshot_lock.lock().await;
        let meta = self.shared.current.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let Some(meta) = meta else { return Ok(None) };
        let bytes = snapshot_file::read(&self.shared.dir.join(SNAPSHOT_FILE))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) }))
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
        let bytes = tokio::task::spawn_blocking(move || {
            let t0 = std::time::Instant::now();
            let bytes = Self::encode(&applied, &meta2);
            let t1 = t0.elapsed();
            snapshot_file::write(&dir, SNAPSHOT_FILE, &bytes)?;
            tracing::info!(
                bytes = bytes.len(),
                encode_ms = t1.as_millis() as u64,
                write_ms = (t0.elapsed() - t1).as_millis() as u64,
                "snapshot built"
            );
            Ok::<_, std::io::Error>(bytes)
        })
        .await
        .map_err(io_err)
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        *self.shared.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(meta.clone());
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let _guard = self.shared.snapshot_lock.lock().await;
        let bytes = snapshot.into_inner();
        // Decoding, re-encoding and writing the whole state is slow: off the async runtime.
        let (dir, meta2) = (self.shared.dir.clone(), meta.clone());
        let file = tokio::task::spawn_blocking(move || {
            let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(io_err)?;
            Self::check_matches(&file, &meta2).map_err(io_err)?;
            // Store the snapshot under the metadata openraft gave us.
            let bytes = Self::encode(&file.applied, &meta2);
            snapshot_file::write(&dir, SNAPSHOT_FILE, &bytes)?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(io_err)
        .and_then(|r| r)
        .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e))?;
        let position = {
            let mut a = self.shared.applied.write().unwrap_or_else(|e| e.into_inner());
            *a = file.applied;
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

    #[test]
    fn a_snapshot_is_installed_only_as_what_it_is() {
        let applied = Applied { last_applied: meta(40).last_log_id, ..Applied::default() };
        let bytes = StateMachine::encode(&applied, &meta(40));
        StateMachine::validate_snapshot(&bytes, &meta(40)).unwrap();
        // The state of entry 40 sent as the snapshot of entry 30: the receiver would apply
        // entries 31..40 a second time.
        let e = StateMachine::validate_snapshot(&bytes, &meta(30)).unwrap_err();
        assert!(e.contains("sent as of"), "{e}");
        // Data whose own metadata disagrees with its state.
        let lying = StateMachine::encode(
            &Applied { last_applied: meta(20).last_log_id, ..Applied::default() },
            &meta(40),
        );
        assert!(StateMachine::validate_snapshot(&lying, &meta(40)).is_err());
        assert!(StateMachine::validate_snapshot(b"{}", &meta(40)).is_err());
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
                let bytes = snap.snapshot.into_inner();
                StateMachine::validate_snapshot(&bytes, &snap.meta).unwrap();
            }
            tokio::task::yield_now().await;
        }
        builds.await.unwrap();
    }
}
