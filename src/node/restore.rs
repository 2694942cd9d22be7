//! Restoring a backup into the data dir of a member of a new cluster
//! (`palisade snapshot restore`).
//!
//! The data dir gets the backed-up state as its snapshot, applied at the first log id and
//! with the given initial members as the membership (see `raft::backup::seed`), an empty
//! Raft log, and an identity file that records the node, the members, a fresh incarnation,
//! that it has bootstrapped, and a new cluster id: one derived from the members and the
//! backup's checksum, so it is the same on every member restored from the same file with
//! the same members and never the id of the cluster the backup came from. Each member of
//! the new cluster is restored from the same file with the same `--initial-cluster`; they
//! then start like members that bootstrapped together, and their first leader's log goes on
//! from the restored revision (the next write gets the revision after it).
//!
//! Invariants: nothing is written unless the backup decoded and checked whole; the data
//! dir appears complete or not at all (it is built in a sibling `DIR.tmp-*` directory,
//! synced and renamed into place); a data dir with anything in it is never touched.

use std::path::{Path, PathBuf};

use super::identity::{self, Identity};
use crate::raft::backup;
use crate::raft::NodeId;

/// What a backup file holds, in numbers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BackupInfo {
    /// The store revision it captures.
    pub revision: u64,
    /// Its history floor: revisions below it are compacted.
    pub compact_revision: u64,
    /// Live keys.
    pub keys: u64,
    pub leases: u64,
    /// Locks and elections with a holder or a waiter.
    pub locks: u64,
    /// The snapshot format version.
    pub format_version: u32,
    /// The size of the file.
    pub bytes: u64,
    /// The SHA-256 of the file's header and payload, as its trailer holds it (hex).
    pub sha256: String,
}

impl BackupInfo {
    fn of(contents: &backup::Contents) -> BackupInfo {
        let state = &contents.state;
        BackupInfo {
            revision: state.revision(),
            compact_revision: state.kv().compact_revision(),
            keys: state.kv().live_keys(),
            leases: state.leases().len() as u64,
            locks: state.locks().len() as u64,
            format_version: contents.summary.version,
            bytes: contents.summary.file_bytes,
            sha256: contents.summary.sha256_hex(),
        }
    }
}

/// Reads and checks the backup file `file` whole (streaming): what it holds, or why it
/// is unusable (truncated, extended, damaged, not a backup).
pub fn inspect(file: &Path) -> std::io::Result<BackupInfo> {
    backup::read(file).map(|c| BackupInfo::of(&c))
}

/// What a restore wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    /// The new cluster's id.
    pub cluster_id: String,
    /// The backup it was restored from.
    pub backup: BackupInfo,
}

/// Seeds `data_dir` for node `node_id` of a new cluster whose initial members are
/// `initial_cluster` (as `palisade serve --initial-cluster` takes them) from the backup
/// file `file`.
pub fn restore(
    file: &Path,
    data_dir: &Path,
    node_id: NodeId,
    initial_cluster: &str,
) -> anyhow::Result<Restored> {
    let members = crate::config::parse_cluster(initial_cluster)
        .map_err(|e| anyhow::anyhow!("--initial-cluster {initial_cluster:?} {e}"))?;
    if !members.contains_key(&node_id) {
        anyhow::bail!(
            "--initial-cluster {} does not include this node ({node_id})",
            identity::format_cluster(&members)
        );
    }
    match std::fs::read_dir(data_dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                anyhow::bail!(
                    "the data dir {} is not empty: a restore only seeds a new, empty data dir (move the old one aside)",
                    data_dir.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read the data dir {}: {e}", data_dir.display()),
    }
    let contents = backup::read(file)?;
    let info = BackupInfo::of(&contents);
    let cluster_id = identity::restored_cluster_id(&info.sha256, &members);

    let name = data_dir
        .file_name()
        .ok_or_else(|| anyhow::anyhow!("the data dir {} has no name", data_dir.display()))?
        .to_string_lossy()
        .into_owned();
    let parent = match data_dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let tmp = parent.join(format!("{name}.tmp-{:016x}", rand::random::<u64>()));
    let built = (|| -> anyhow::Result<()> {
        std::fs::create_dir(&tmp)?;
        backup::seed(&tmp.join("snapshot"), contents.state, &members)?;
        let id = Identity {
            node_id,
            cluster_id: cluster_id.clone(),
            initial_cluster: members.clone(),
            incarnation: rand::random::<u64>().max(1),
            bootstrapped: true,
            rebuild: None,
            joined: false,
            removed: None,
        };
        identity::save_in(&tmp, &id)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        // An empty data dir (checked above) is replaced whole.
        if data_dir.exists() {
            std::fs::remove_dir(data_dir)?;
        }
        std::fs::rename(&tmp, data_dir)?;
        std::fs::File::open(&parent)?.sync_all()?;
        Ok(())
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e.context(format!("restoring into {}", data_dir.display())));
    }
    Ok(Restored { data_dir: data_dir.to_path_buf(), node_id, cluster_id, backup: info })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::{Applied, Backup};
    use crate::store::{Command, Proposal, State};

    const CLUSTER: &str = "1=http://127.0.0.1:17001,2=http://127.0.0.1:17002,3=http://127.0.0.1:17003";

    fn backup_file(dir: &Path) -> PathBuf {
        let mut state = State::default();
        for i in 0..3 {
            let put = Command::Put {
                key: format!("/k{i}"),
                value: vec![i, 0, 255],
                lease: None,
                sequential: false,
                cond: Default::default(),
                prev_kv: false,
            };
            state.apply(&Proposal::new(put, 0));
        }
        let path = dir.join("backup.snap");
        let applied = Applied { state, ..Applied::default() };
        Backup::of(&applied).write_to(std::fs::File::create(&path).unwrap()).unwrap();
        path
    }

    /// Names in `dir` (to see that a refused restore left nothing behind).
    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_restore_seeds_a_new_cluster_id_the_same_on_every_member() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup_file(dir.path());
        let one = restore(&file, &dir.path().join("n1"), 1, CLUSTER).unwrap();
        let two = restore(&file, &dir.path().join("n2"), 2, CLUSTER).unwrap();
        assert_eq!(one.cluster_id, two.cluster_id);
        let members = crate::config::parse_cluster(CLUSTER).unwrap();
        assert_ne!(one.cluster_id, identity::cluster_id_of(&members), "not the id a fresh cluster would get");
        assert_eq!((one.backup.revision, one.backup.keys), (3, 3));
        assert_eq!(names(&dir.path().join("n1")), ["identity.json", "snapshot"]);
        let id: Identity =
            serde_json::from_slice(&std::fs::read(dir.path().join("n1/identity.json")).unwrap()).unwrap();
        assert!(id.bootstrapped && id.node_id == 1 && id.incarnation != 0);
        // An empty dir is fine too.
        std::fs::create_dir(dir.path().join("n3")).unwrap();
        restore(&file, &dir.path().join("n3"), 3, CLUSTER).unwrap();
        assert_eq!(names(dir.path()), ["backup.snap", "n1", "n2", "n3"]);
    }

    #[test]
    fn a_restore_refuses_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = backup_file(dir.path());
        let target = dir.path().join("data");
        let err = |file: &Path, node: u64, cluster: &str| {
            let e = format!("{:#}", restore(file, &target, node, cluster).unwrap_err());
            assert_eq!(names(dir.path()).iter().filter(|n| n.starts_with("data")).count(), 0, "{e}");
            e
        };
        assert!(err(&file, 4, CLUSTER).contains("does not include this node (4)"));
        assert!(err(&file, 1, "one=http://127.0.0.1:1").contains("--initial-cluster"));
        let good = std::fs::read(&file).unwrap();
        let bad = dir.path().join("bad.snap");
        std::fs::write(&bad, &good[..good.len() - 1]).unwrap();
        assert!(err(&bad, 1, CLUSTER).contains("truncated"));
        let mut flipped = good.clone();
        flipped[good.len() / 2] ^= 1;
        std::fs::write(&bad, &flipped).unwrap();
        assert!(err(&bad, 1, CLUSTER).contains("checksum mismatch"));
        let mut wrong = good.clone();
        wrong[0] = b'X';
        std::fs::write(&bad, &wrong).unwrap();
        assert!(err(&bad, 1, CLUSTER).contains("not a snapshot file"));
        let mut version = good.clone();
        version[8] = 9;
        std::fs::write(&bad, &version).unwrap();
        assert!(err(&bad, 1, CLUSTER).contains("unknown format version 9"));
        let mut longer = good;
        longer.extend_from_slice(b"more");
        std::fs::write(&bad, &longer).unwrap();
        assert!(err(&bad, 1, CLUSTER).contains("extended"));
        assert!(err(&dir.path().join("missing.snap"), 1, CLUSTER).contains("missing.snap"));
        // A data dir that holds anything is left alone.
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("keep"), b"x").unwrap();
        let e = format!("{:#}", restore(&file, &target, 1, CLUSTER).unwrap_err());
        assert!(e.contains("is not empty"), "{e}");
        assert_eq!(names(&target), ["keep"]);
    }
}
