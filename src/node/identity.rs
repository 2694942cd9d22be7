//! The node's identity on disk: which node a data dir belongs to, the cluster it was
//! bootstrapped with, the data dir's incarnation and whether the node has bootstrapped,
//! so a restart resumes them, contradicting flags are refused, and a data dir that lost
//! its log is told apart from a new one. A node that joined a running cluster records the
//! cluster it joined; a node the cluster removed records that, and never starts again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::raft::{Member, NodeId, Replica};

/// What the data dir records about the node, so a restart resumes the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub initial_cluster: BTreeMap<NodeId, Member>,
    /// Drawn at random when the data dir was created (never 0).
    pub incarnation: u64,
    /// The Raft log has been bootstrapped (initialized or joined): from then on an empty
    /// log means lost data, not a new member.
    #[serde(default)]
    pub bootstrapped: bool,
    /// While this member is rebuilt from its peers: what it must reach before it may vote
    /// again (see `bootstrap`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rebuild: Option<crate::raft::RebuildGate>,
    /// This node joined a running cluster (`--join`): the cluster added it as a learner,
    /// and `initial_cluster` is the membership it answered with. It is never asked again.
    #[serde(default)]
    pub joined: bool,
    /// Why this node stopped for good: a membership change removed it (it refuses to start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
}

const IDENTITY_FILE: &str = "identity.json";

pub(super) fn cluster_id_of(members: &BTreeMap<NodeId, Member>) -> String {
    cluster_id_from("", members)
}

/// The id of a cluster restored from the backup whose checksum is `sha256`: never the id
/// of the cluster the backup came from, even with the same members, and the same on every
/// member restored from the same file with the same members.
pub(super) fn restored_cluster_id(sha256: &str, members: &BTreeMap<NodeId, Member>) -> String {
    cluster_id_from(&format!("restored:{sha256};"), members)
}

fn cluster_id_from(prefix: &str, members: &BTreeMap<NodeId, Member>) -> String {
    // FNV-1a over the sorted member list: stable across builds and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    let mut feed = |text: &str| {
        for b in text.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    };
    feed(prefix);
    for (id, m) in members {
        feed(&format!("{id}={};", m.peer_url));
    }
    format!("{h:016x}")
}

/// The identity the data dir `dir` records, if it has one (a damaged file is the error).
pub(super) fn recorded(dir: &std::path::Path) -> anyhow::Result<Option<Identity>> {
    let path = dir.join(IDENTITY_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let found = serde_json::from_slice(&std::fs::read(&path)?)
        .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
    Ok(Some(found))
}

/// Deletes the identity file of a join that never finished (the data dir holds nothing else).
pub(super) fn forget(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::remove_file(dir.join(IDENTITY_FILE))?;
    Ok(())
}

/// Reads or creates the identity file, refusing settings that contradict it.
pub(super) fn resolve(cfg: &Config) -> anyhow::Result<Identity> {
    if let Some(found) = recorded(&cfg.data_dir)? {
        if found.node_id != cfg.node_id {
            anyhow::bail!(
                "the data dir {} belongs to node {}, but --node-id is {}; use the right data dir or node id",
                cfg.data_dir.display(),
                found.node_id,
                cfg.node_id
            );
        }
        if let Some(given) = &cfg.initial_members() {
            let same_peers = given.len() == found.initial_cluster.len()
                && given
                    .iter()
                    .zip(&found.initial_cluster)
                    .all(|((a, ma), (b, mb))| a == b && ma.peer_url == mb.peer_url);
            if !same_peers {
                anyhow::bail!(
                    "--initial-cluster {} contradicts the cluster recorded in {} ({}); the membership of a running cluster cannot be changed by a flag",
                    format_cluster(given),
                    cfg.data_dir.display(),
                    format_cluster(&found.initial_cluster)
                );
            }
        }
        return Ok(found);
    }
    let initial = match cfg.initial_members() {
        // Every member must bootstrap with the same membership, so this node's client URL
        // is not filled in here; it is published once a leader exists.
        Some(c) => c,
        None => BTreeMap::from([(cfg.node_id, cfg.advertise())]),
    };
    if !initial.contains_key(&cfg.node_id) {
        anyhow::bail!(
            "--initial-cluster {} does not include this node ({})",
            format_cluster(&initial),
            cfg.node_id
        );
    }
    let id = Identity {
        node_id: cfg.node_id,
        cluster_id: cluster_id_of(&initial),
        initial_cluster: initial,
        incarnation: rand::random::<u64>().max(1),
        bootstrapped: false,
        rebuild: None,
        joined: false,
        removed: None,
    };
    std::fs::create_dir_all(&cfg.data_dir)?;
    save(cfg, &id)?;
    Ok(id)
}

/// Held while the identity file is written (its temporary file has one name).
static WRITING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Writes the identity file durably.
pub(super) fn save(cfg: &Config, id: &Identity) -> anyhow::Result<()> {
    save_in(&cfg.data_dir, id)
}

/// Writes the identity file into the data dir `dir`, durably.
pub(super) fn save_in(dir: &std::path::Path, id: &Identity) -> anyhow::Result<()> {
    let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    crate::raft::state_machine::write_durably(dir, IDENTITY_FILE, &serde_json::to_vec_pretty(id)?)?;
    Ok(())
}

/// Changes the identity file as it is on disk now (not as this process first read it), so
/// two changes made at about the same time both stay.
pub(super) fn update(cfg: &Config, change: impl FnOnce(&mut Identity)) -> anyhow::Result<()> {
    let _one = WRITING.lock().unwrap_or_else(|e| e.into_inner());
    let path = cfg.data_dir.join(IDENTITY_FILE);
    let mut id: Identity = serde_json::from_slice(&std::fs::read(&path)?)
        .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
    change(&mut id);
    crate::raft::state_machine::write_durably(
        &cfg.data_dir,
        IDENTITY_FILE,
        &serde_json::to_vec_pretty(&id)?,
    )?;
    Ok(())
}

/// Refuses to run as a member whose peer URL differs from the one the cluster records for
/// it: the others would keep calling the old address while this node raised its term.
pub(super) fn check_recorded_address(replica: &Replica, cfg: &Config) -> anyhow::Result<()> {
    let advertised = cfg.advertise().peer_url;
    match replica.member(cfg.node_id) {
        Some(m) if m.peer_url != advertised => anyhow::bail!(
            "this node advertises the peer URL {advertised}, but the cluster records {} for node {}; \
             restart it with that address (--listen-peer / --advertise-peer), or move the member with a \
             membership change",
            m.peer_url,
            cfg.node_id
        ),
        _ => Ok(()),
    }
}

/// `1=http://a:7380,2=http://b:7380`.
pub fn format_cluster(c: &BTreeMap<NodeId, Member>) -> String {
    c.iter().map(|(id, m)| format!("{id}={}", m.peer_url)).collect::<Vec<_>>().join(",")
}
