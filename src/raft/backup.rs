//! Backups: a live node's applied state as a snapshot file, and a new member's data dir
//! seeded from one.
//!
//! A backup is a snapshot file (see `snapshot_file`) of the same kind as the one in a
//! data dir, so one reader checks both. [`Backup`] holds a copy of the applied state (an
//! O(1) clone: the store's maps are persistent) and encodes it as a stream onto any
//! writer. [`read`] decodes and checks a backup file. [`seed`] writes the snapshot a
//! restored member starts from: the backed-up state as applied at the very first log id
//! (the one openraft gives the entry that bootstraps a cluster), under a membership of the
//! new cluster's initial members. On start, openraft takes that snapshot as the applied
//! state and its log as purged up to it, so the member counts as bootstrapped; every
//! initial member is seeded with the same state, so they agree on everything applied
//! before the first entry of the new log, and a member that joins later receives the
//! seed in a snapshot (the log it would need is purged), never an empty state.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Write};
use std::path::Path;

use super::snapshot_file::{self, Summary};
use super::state_machine::{Applied, SnapshotFile, SnapshotFileRef, SNAPSHOT_FILE};
use super::types::*;
use crate::store::State;

/// A copy of a node's applied state, to be written as a backup.
pub struct Backup {
    applied: Applied,
}

impl Backup {
    /// A backup of `applied` (cheap: the state's maps are shared until either changes).
    pub fn of(applied: &Applied) -> Backup {
        Backup { applied: applied.clone() }
    }

    /// The store revision it captures.
    pub fn revision(&self) -> u64 {
        self.applied.state.revision()
    }

    /// Writes it as a snapshot file onto `w`, streaming (blocking: call it off the async
    /// runtime). Returns `w` flushed, and what was written.
    pub fn write_to<W: Write>(&self, w: W) -> io::Result<(W, Summary)> {
        let meta = SnapshotMeta {
            last_log_id: self.applied.last_applied,
            last_membership: self.applied.membership.clone(),
            snapshot_id: format!("backup-{}", self.applied.last_applied.map_or(0, |l| l.index)),
        };
        snapshot_file::encode(&SnapshotFileRef { meta: &meta, applied: &self.applied }, w)
    }
}

/// What a backup file holds.
pub struct Contents {
    pub state: State,
    pub summary: Summary,
}

/// Reads the backup file at `path` (streaming), checking everything the snapshot reader
/// checks; a file in the format of an earlier build (version 1) is refused, since a
/// backup is only ever written in the current one.
pub fn read(path: &Path) -> io::Result<Contents> {
    let (file, summary) = snapshot_file::read::<SnapshotFile>(path)?;
    if summary.version != snapshot_file::VERSION {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "snapshot file {}: is a format version {} data-dir snapshot of an earlier build, not a backup \
                 (format version {})",
                path.display(),
                summary.version,
                snapshot_file::VERSION
            ),
        ));
    }
    Ok(Contents { state: file.applied.state, summary })
}

/// The log id of the entry that bootstraps a cluster (openraft's first log id).
fn first_log_id() -> LogId {
    LogId::default()
}

/// Writes into `snapshot_dir` (created if missing) the snapshot a restored member starts
/// from: `state` applied at the first log id, with `members` as the voters.
pub fn seed(snapshot_dir: &Path, state: State, members: &BTreeMap<NodeId, Member>) -> io::Result<Summary> {
    std::fs::create_dir_all(snapshot_dir)?;
    let at = Some(first_log_id());
    let voters: BTreeSet<NodeId> = members.keys().copied().collect();
    let membership = StoredMembership::new(at, openraft::Membership::new(vec![voters], members.clone()));
    // A new cluster: no node id of it was ever removed (the backed-up cluster's removed ids
    // are its own).
    let applied = Applied {
        state,
        last_applied: at,
        membership: membership.clone(),
        lease_clock_seen: None,
        retired: Default::default(),
    };
    let meta = SnapshotMeta { last_log_id: at, last_membership: membership, snapshot_id: "restored".into() };
    snapshot_file::write(snapshot_dir, SNAPSHOT_FILE, &SnapshotFileRef { meta: &meta, applied: &applied })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Command, Proposal};

    fn member(id: NodeId) -> Member {
        Member {
            client_url: String::new(),
            peer_url: format!("http://127.0.0.1:{}", 8000 + id),
            incarnation: 0,
        }
    }

    #[test]
    fn a_backup_reads_back_and_a_seed_is_a_snapshot_at_the_first_log_id() {
        let mut state = State::default();
        let put = Command::Put {
            key: "/k".into(),
            value: vec![0, 159, 146, 150],
            lease: None,
            sequential: false,
            cond: Default::default(),
            prev_kv: false,
        };
        state.apply(&Proposal::new(put, 0));
        let applied = Applied { state: state.clone(), ..Applied::default() };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backup.snap");
        let backup = Backup::of(&applied);
        assert_eq!(backup.revision(), 1);
        let (_, summary) = backup.write_to(std::fs::File::create(&path).unwrap()).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.state, state);
        assert_eq!(back.summary, summary);

        let members: BTreeMap<_, _> = (1..=3).map(|id| (id, member(id))).collect();
        let snap = dir.path().join("snapshot");
        seed(&snap, back.state, &members).unwrap();
        let (file, _) = snapshot_file::read::<SnapshotFile>(&snap.join(SNAPSHOT_FILE)).unwrap();
        assert_eq!(file.applied.state, state);
        assert_eq!(file.meta.last_log_id, Some(first_log_id()));
        assert_eq!(file.applied.last_applied, Some(first_log_id()));
        let voters: Vec<_> = file.meta.last_membership.membership().voter_ids().collect();
        assert_eq!(voters, vec![1, 2, 3]);
    }

    #[test]
    fn a_version_1_file_is_not_a_backup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.snap");
        let payload = serde_json::to_vec(&SnapshotFileRef {
            meta: &SnapshotMeta::default(),
            applied: &Applied::default(),
        })
        .unwrap();
        let mut h = [0u8; 32];
        h[0..8].copy_from_slice(b"PALSNAP\0");
        h[8..12].copy_from_slice(&1u32.to_le_bytes());
        h[16..24].copy_from_slice(&(payload.len() as u64).to_le_bytes());
        h[24..28].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        let crc = crc32fast::hash(&h[..28]);
        h[28..32].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&path, [&h[..], &payload].concat()).unwrap();
        let e = read(&path).err().unwrap().to_string();
        assert!(e.contains("format version 1") && e.contains("not a backup"), "{e}");
    }
}
