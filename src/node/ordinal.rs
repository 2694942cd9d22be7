//! The node id of a StatefulSet's pod (`node_id_from_hostname`): its ordinal plus 1, or,
//! for a pod joining where that id was used before and removed (a member scaled away and
//! its ordinal scaled back), the next free id of its ordinal's series (ordinal + 1 +
//! 1000 x k). Node ids are never reused, so a pod cannot simply take its ordinal's id again.
//!
//! Invariants: a data dir keeps the id it was given (a restart never picks again); an id
//! is taken only after a member of the cluster answered that it is neither retired nor
//! recorded at another peer URL; two pods never compete for an id (each ordinal has its own
//! series). The id picked is then asked for as any join is, so a race with an operator's
//! `member add` is still refused by the leader, never applied twice.

use std::time::Duration;

use tokio::time::Instant;

use super::identity;
use crate::config::Config;
use crate::peer::{HttpTransport, MemberCheckReply, PeerKey, PeerRequest, PeerResponse, Transport};
use crate::raft::{Member, NodeId};

/// How long one member is given to answer a check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets `cfg.node_id` for a pod named by its ordinal: the id its data dir records, or,
/// on an empty data dir that joins, the first id of the series the cluster will take.
/// Does nothing without node_id_from_hostname.
pub(super) async fn resolve(cfg: &mut Config, key: &PeerKey) -> anyhow::Result<()> {
    let Some(series) = cfg.ordinal_ids() else { return Ok(()) };
    let series: Vec<NodeId> = series.collect();
    if let Some(found) = identity::recorded(&cfg.data_dir)? {
        if series.contains(&found.node_id) {
            cfg.node_id = found.node_id;
        }
        // Another id: `identity::resolve` refuses it, naming both.
        return Ok(());
    }
    let Some(urls) = cfg.join_urls() else { return Ok(()) };
    let own = cfg.advertise().peer_url;
    let tls = crate::tls::ClientFiles::peer_transport(cfg);
    let mut last_log: Option<Instant> = None;
    let mut backoff = Duration::from_millis(200);
    let mut candidates = series.into_iter();
    let mut candidate = candidates.next().expect("a series is never empty");
    loop {
        let transport = HttpTransport::new(candidate, key.clone(), cfg.max_peer_message_bytes, tls.clone())
            .map_err(|e| anyhow::anyhow!("cannot set up peer TLS: {e}"))?;
        match check(&transport, &urls).await {
            Ok(reply) => {
                let taken = reply.removed || reply.peer_url.as_ref().is_some_and(|u| *u != own);
                if !taken {
                    if candidate != cfg.node_id {
                        tracing::info!(
                            node_id = candidate,
                            ordinal_id = cfg.node_id,
                            "this pod's ordinal id was used before; joining as node {candidate}"
                        );
                    }
                    cfg.node_id = candidate;
                    return Ok(());
                }
                candidate = candidates.next().ok_or_else(|| {
                    anyhow::anyhow!("every id of this pod's series up to {candidate} was used before")
                })?;
                backoff = Duration::from_millis(200);
            }
            Err(failures) => {
                if last_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
                    tracing::warn!("waiting for a member to tell which node id to join as: {failures}");
                    last_log = Some(Instant::now());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Asks the members at `urls`, in turn, whether the transport's id was removed or is
/// recorded: the first answer, or why none came.
async fn check(transport: &HttpTransport, urls: &[String]) -> Result<MemberCheckReply, String> {
    let mut failures = Vec::new();
    for url in urls {
        let target = Member { peer_url: url.clone(), client_url: String::new(), incarnation: 0 };
        match transport.call(0, &target, PeerRequest::MemberCheck, CHECK_TIMEOUT).await {
            Ok(PeerResponse::MemberCheck(reply)) => return Ok(reply),
            Ok(other) => failures.push(format!("{url}: {other:?}")),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    Err(failures.join("; "))
}
