//! Serving peer requests: Raft calls (checked by the replica), forwarded writes (checked
//! here exactly like a client's), read-index calls, member records, probes, membership
//! changes, and the joins and removal checks of nodes that are not members. The sender
//! has been proven by the transport; a sender that is not a member is refused outright.

use std::sync::Arc;

use super::Node;
use crate::error::Error;
use crate::peer::{PeerError, PeerRequest, PeerResponse};
use crate::raft::{NodeId, RaftReply};

impl Node {
    /// Serves a request from member `from` (the peer listener or a test network).
    pub async fn handle_peer(self: Arc<Self>, from: NodeId, req: PeerRequest) -> PeerResponse {
        let not_member = || format!("node {from} is not a member of this cluster");
        match req {
            PeerRequest::Raft(rpc) => PeerResponse::Raft(self.replica.handle(from, rpc).await),
            // From a node that is not a member (yet, or any more): the peer route for
            // joins proved it holds the cluster's secret or certificate.
            PeerRequest::Join(j) => PeerResponse::Join(self.serve_join(from, j).await),
            PeerRequest::MemberCheck => PeerResponse::MemberCheck(self.member_check(from)),
            _ if from != self.id && !self.is_member(from) => match req {
                PeerRequest::Forward(_) => PeerResponse::Forward(Err(PeerError::Unavailable(not_member()))),
                PeerRequest::ReadIndex => PeerResponse::ReadIndex(Err(PeerError::Unavailable(not_member()))),
                PeerRequest::PublishMember { .. } => {
                    PeerResponse::PublishMember(Err(PeerError::Unavailable(not_member())))
                }
                PeerRequest::Probe => PeerResponse::Probe(self.probe_reply(from)),
                PeerRequest::Raft(_) => PeerResponse::Raft(RaftReply::Refused(not_member())),
                PeerRequest::LeaseKeepalive { .. } => {
                    PeerResponse::LeaseKeepalive(Err(PeerError::Unavailable(not_member())))
                }
                PeerRequest::LeaseRead(_) => {
                    PeerResponse::LeaseRead(Err(PeerError::Unavailable(not_member())))
                }
                PeerRequest::MemberChange(_) => {
                    PeerResponse::MemberChange(Err(PeerError::Unavailable(not_member())))
                }
                PeerRequest::Join(_) | PeerRequest::MemberCheck => unreachable!("served above"),
                PeerRequest::TakeOver => PeerResponse::TakeOver(Err(PeerError::Unavailable(not_member()))),
            },
            PeerRequest::MemberChange(change) => {
                PeerResponse::MemberChange(self.change_locally(change).await)
            }
            PeerRequest::Forward(cmd) => {
                if self.replica.leadership().borrow().leader != Some(self.id) {
                    let leader = self.replica.leadership().borrow().leader;
                    return PeerResponse::Forward(Err(PeerError::NotLeader { leader }));
                }
                // The leader checks a forwarded write as it would a client's.
                if let Err(e) = self.check_write(&cmd) {
                    return PeerResponse::Forward(Err(PeerError::Refused(e)));
                }
                if let Err(why) = self.check_storage() {
                    return PeerResponse::Forward(Err(PeerError::Unavailable(why)));
                }
                let r = match tokio::time::timeout(self.cfg.request_timeout(), self.propose(cmd)).await {
                    Ok(r) => r,
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::Forward(r)
            }
            PeerRequest::Probe => PeerResponse::Probe(self.probe_reply(from)),
            PeerRequest::PublishMember { .. } if self.is_handing_over() => PeerResponse::PublishMember(Err(
                PeerError::Unavailable("this leader is handing its leadership over; retry".into()),
            )),
            PeerRequest::PublishMember { client_url, incarnation } => {
                // A member sets only its own record, and only to a URL.
                let client_url = match crate::config::normalize_url(&client_url) {
                    Ok(u) => u,
                    Err(e) => {
                        return PeerResponse::PublishMember(Err(PeerError::Refused(Error::InvalidArgument(
                            e,
                        ))))
                    }
                };
                // One membership change at a time (see `membership`), and the record read
                // under it: read before, a move made meanwhile would be undone.
                let publish = async {
                    let _one = self.member_change.lock().await;
                    let Some(mut member) = self.replica.member(from) else {
                        return Err(not_member());
                    };
                    if member.client_url == client_url && member.incarnation == incarnation {
                        // Recorded already (a member that lags behind its own record asks
                        // again): a membership change would restart replication to every
                        // member, and cut off a snapshot that is on its way to this one.
                        return Ok(());
                    }
                    member.client_url = client_url;
                    member.incarnation = incarnation;
                    self.replica.set_member_addr(from, member).await
                };
                let r = match tokio::time::timeout(self.cfg.request_timeout(), publish).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(PeerError::Unavailable(e)),
                    Err(_) => Err(PeerError::Timeout),
                };
                PeerResponse::PublishMember(r)
            }
            PeerRequest::LeaseKeepalive { id, subject } => {
                if let Err(e) = self.check_lease_id(id) {
                    return PeerResponse::LeaseKeepalive(Err(PeerError::Refused(e)));
                }
                PeerResponse::LeaseKeepalive(
                    self.local_keepalive(id, subject.as_deref(), self.deadline()).await,
                )
            }
            PeerRequest::LeaseRead(q) => {
                if let Err(e) = self.check_lease_query(&q) {
                    return PeerResponse::LeaseRead(Err(PeerError::Refused(e)));
                }
                PeerResponse::LeaseRead(self.local_lease_read(q).await)
            }
            PeerRequest::TakeOver => PeerResponse::TakeOver(self.take_over(from).await),
            PeerRequest::ReadIndex => {
                let r = match tokio::time::timeout(self.cfg.request_timeout(), self.local_read_index()).await
                {
                    Ok(r) => r,
                    Err(_) => {
                        Err(PeerError::Unavailable("no quorum confirmed the read within the deadline".into()))
                    }
                };
                PeerResponse::ReadIndex(r)
            }
        }
    }
}
