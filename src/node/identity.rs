//! The node's identity on disk: which node a data dir belongs to and the cluster it was
//! bootstrapped with, so a restart resumes them and contradicting flags are refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::NodeConfig;
use crate::raft::{Member, NodeId};

/// What the data dir records about the node, so a restart resumes the same identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub node_id: NodeId,
    pub cluster_id: String,
    pub initial_cluster: BTreeMap<NodeId, Member>,
}

const IDENTITY_FILE: &str = "identity.json";

fn cluster_id_of(members: &BTreeMap<NodeId, Member>) -> String {
    // FNV-1a over the sorted member list: stable across builds and platforms.
    let mut h: u64 = 0xcbf29ce484222325;
    for (id, m) in members {
        for b in format!("{id}={};", m.peer_url).bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{h:016x}")
}

/// Reads or creates the identity file, refusing flags that contradict it.
pub(super) fn resolve_identity(cfg: &NodeConfig) -> anyhow::Result<Identity> {
    let path = cfg.data_dir.join(IDENTITY_FILE);
    if path.exists() {
        let found: Identity = serde_json::from_slice(&std::fs::read(&path)?)
            .map_err(|e| anyhow::anyhow!("{} is damaged: {e}", path.display()))?;
        if found.node_id != cfg.id {
            anyhow::bail!(
                "the data dir {} belongs to node {}, but --node-id is {}; use the right data dir or node id",
                cfg.data_dir.display(),
                found.node_id,
                cfg.id
            );
        }
        if let Some(given) = &cfg.initial_cluster {
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
    let initial = match &cfg.initial_cluster {
        Some(c) => c.clone(),
        None => BTreeMap::from([(cfg.id, cfg.advertise.clone())]),
    };
    if !initial.contains_key(&cfg.id) {
        anyhow::bail!(
            "--initial-cluster {} does not include this node ({})",
            format_cluster(&initial),
            cfg.id
        );
    }
    let id = Identity { node_id: cfg.id, cluster_id: cluster_id_of(&initial), initial_cluster: initial };
    std::fs::create_dir_all(&cfg.data_dir)?;
    crate::raft::state_machine::write_durably(
        &cfg.data_dir,
        IDENTITY_FILE,
        &serde_json::to_vec_pretty(&id)?,
    )?;
    Ok(id)
}

/// `1=http://a:7380,2=http://b:7380`.
pub fn format_cluster(c: &BTreeMap<NodeId, Member>) -> String {
    c.iter().map(|(id, m)| format!("{id}={}", m.peer_url)).collect::<Vec<_>>().join(",")
}
