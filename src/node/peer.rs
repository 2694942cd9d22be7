//! Serving peer requests: Raft RPCs, forwarded writes, read-index and membership calls.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Node;
use crate::raft::network::{PeerError, PeerRequest, PeerResponse};

impl Node {
    /// Serves a peer request (from the peer listener or the simulated network).
    pub async fn handle_peer(self: Arc<Self>, req: PeerRequest) -> PeerResponse {
        match req {
            PeerRequest::Append(r) => PeerResponse::Append(self.raft.append_entries(r).await),
            PeerRequest::Vote(r) => PeerResponse::Vote(self.raft.vote(r).await),
            PeerRequest::Snapshot { vote, meta, data } => {
                let snapshot = openraft::Snapshot { meta, snapshot: Box::new(std::io::Cursor::new(data)) };
                PeerResponse::Snapshot(self.raft.install_full_snapshot(vote, snapshot).await)
            }
            PeerRequest::Forward(cmd) => {
                let (leader, _) = self.leader_and_term();
                if leader != Some(self.id) {
                    return PeerResponse::Forward(Err(PeerError::NotLeader { leader }));
                }
                let r = match tokio::time::timeout(self.cfg.request_timeout, self.propose(cmd)).await {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::Forward(r)
            }
            PeerRequest::SetClientUrl { id, client_url } => {
                let Some(mut member) = self.member(id) else {
                    return PeerResponse::SetClientUrl(Err(PeerError::Internal(format!(
                        "{id} is not a member"
                    ))));
                };
                member.client_url = client_url;
                // Only the client URL changes; peer addresses, voters and learners stay.
                let change = openraft::ChangeMembers::SetNodes(BTreeMap::from([(id, member)]));
                let r = match tokio::time::timeout(
                    self.cfg.request_timeout,
                    self.raft.change_membership(change, false),
                )
                .await
                {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(PeerError::Unavailable(e.to_string())),
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::SetClientUrl(r)
            }
            PeerRequest::ReadIndex => {
                let r = match tokio::time::timeout(self.cfg.request_timeout, self.local_read_index()).await {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::ReadIndex(r)
            }
        }
    }
}
