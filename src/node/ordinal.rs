//! The node id of a StatefulSet's pod (`node_id_from_hostname`): its ordinal plus 1, or,
//! for a pod joining where that id was used before and removed (a member scaled away and
//! its ordinal scaled back), the next free id of its ordinal's series (ordinal + 1 +
//! 1000 x k). Node ids are never reused, so a pod cannot simply take its ordinal's id again.
//!
//! What a pod's data dir says decides, before the node starts:
//! - a member's data (bootstrapped, joined or rebuilding): that id, whatever the series,
//!   and the initial cluster given is set aside (it only matters on a first start, and a
//!   chart renders it from the replica count of the day);
//! - a member the cluster removed (scaled away with its volume kept): the data is moved
//!   aside (`<data_dir>.removed-<id>`, never deleted) and the pod joins afresh;
//! - a join that never finished (refused, or cut short; the dir holds only its identity):
//!   the id is picked again, as on an empty data dir;
//! - empty: the first id of the series the members say is neither retired nor recorded at
//!   another peer URL. One recorded at this pod's own peer URL is this pod's member, whose
//!   volume was lost: it is rebuilt from its peers (`rebuild_from_peers`), as an operator
//!   would do by hand.
//!
//! Invariants: every member reached is asked, and an id any of them knows as taken is
//! skipped (a lagging member cannot hand out a retired id alone); two pods never compete
//! for an id (each ordinal has its own series); the id picked is then asked for as any join
//! is, so the leader still refuses a taken id, and the pod, restarted, picks again.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use super::identity;
use crate::config::Config;
use crate::peer::{HttpTransport, PeerKey, PeerRequest, PeerResponse, Transport};
use crate::raft::{Member, NodeId};

/// How long one member is given to answer a check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Sets `cfg.node_id` (and `cfg.rebuild_from_peers` for a member that lost its volume) for
/// a pod named by its ordinal, as the module says. Does nothing without
/// node_id_from_hostname.
pub(super) async fn resolve(cfg: &mut Config, key: &PeerKey) -> anyhow::Result<()> {
    let Some(series) = cfg.ordinal_ids() else { return Ok(()) };
    let series: Vec<NodeId> = series.collect();
    let join = cfg.join_urls();
    let mut unfinished = None;
    if let Some(found) = identity::recorded(&cfg.data_dir)? {
        if !series.contains(&found.node_id) {
            // Not this pod's: `identity::resolve` refuses it, naming both ids.
            return Ok(());
        }
        if found.removed.is_some() {
            set_aside(&cfg.data_dir, found.node_id)?;
        } else if found.bootstrapped || found.joined || found.rebuild.is_some() {
            cfg.node_id = found.node_id;
            // The initial cluster only matters on a first start; the one rendered today (from
            // today's replica count, by a reinstall say) is no contradiction of the member's.
            cfg.initial_cluster = None;
            return Ok(());
        } else if join.is_none() {
            cfg.node_id = found.node_id;
            return Ok(());
        } else {
            unfinished = Some(found.node_id);
        }
    }
    let Some(urls) = join else { return Ok(()) };
    let own = cfg.advertise().peer_url;
    let tls = crate::tls::ClientFiles::peer_transport(cfg);
    let mut last_log: Option<Instant> = None;
    let mut backoff = Duration::from_millis(200);
    let mut candidates = series.into_iter();
    let mut candidate = candidates.next().expect("a series is never empty");
    let own_member = loop {
        let transport = HttpTransport::new(candidate, key.clone(), cfg.max_peer_message_bytes, tls.clone())
            .map_err(|e| anyhow::anyhow!("cannot set up peer TLS: {e}"))?;
        match check(&transport, &urls, &own).await {
            Ok(Answer::Free) => break false,
            Ok(Answer::Mine) => break true,
            Ok(Answer::Taken) => {
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
    };
    match unfinished {
        // The same id: the join is asked again with the same identity (and incarnation),
        // which the leader takes as a retry (a learner it added is this pod's, not lost).
        Some(old) if old == candidate => {}
        Some(old) => {
            tracing::info!(
                node_id = candidate,
                "the join as node {old} never finished; joining as node {candidate}"
            );
            identity::forget(&cfg.data_dir)?;
        }
        None if candidate != cfg.node_id && !own_member => {
            tracing::info!(
                node_id = candidate,
                ordinal_id = cfg.node_id,
                "this pod's ordinal id was used before; joining as node {candidate}"
            );
        }
        None => {}
    }
    if own_member && unfinished != Some(candidate) {
        tracing::warn!(
            node_id = candidate,
            "this pod's member (node {candidate}) has lost its data: rebuilding it from its peers"
        );
        cfg.rebuild_from_peers = true;
    }
    cfg.node_id = candidate;
    Ok(())
}

/// What the members say of an id.
enum Answer {
    /// No member knows it: it may be asked for.
    Free,
    /// Recorded at this pod's own peer URL: its member.
    Mine,
    /// Retired, or recorded at another peer URL.
    Taken,
}

/// Asks every member at `urls` about the transport's id; `Taken` if any says so. An error
/// when none answered, saying why.
async fn check(transport: &HttpTransport, urls: &[String], own: &str) -> Result<Answer, String> {
    let calls = urls.iter().map(|url| async move {
        let target = Member { peer_url: url.clone(), client_url: String::new(), incarnation: 0 };
        (url, transport.call(0, &target, PeerRequest::MemberCheck, CHECK_TIMEOUT).await)
    });
    let mut failures = Vec::new();
    let mut answer = None;
    for (url, reply) in futures::future::join_all(calls).await {
        match reply {
            Ok(PeerResponse::MemberCheck(r)) => {
                let this = match r.peer_url {
                    _ if r.removed => Answer::Taken,
                    Some(u) if u == own => Answer::Mine,
                    Some(_) => Answer::Taken,
                    None => Answer::Free,
                };
                answer = Some(match (answer, this) {
                    (Some(Answer::Taken), _) | (_, Answer::Taken) => Answer::Taken,
                    (Some(Answer::Mine), _) | (_, Answer::Mine) => Answer::Mine,
                    _ => Answer::Free,
                });
            }
            Ok(other) => failures.push(format!("{url}: {other:?}")),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
    }
    answer.ok_or_else(|| failures.join("; "))
}

/// Moves the data dir of a removed member aside (`<dir>.removed-<id>`, or `...-<id>.N` when
/// that exists), so the pod can join afresh and the old data stays for a post-mortem.
fn set_aside(dir: &Path, id: NodeId) -> anyhow::Result<()> {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "data".into());
    let base = dir.with_file_name(format!("{name}.removed-{id}"));
    let target = (0..)
        .map(|n| if n == 0 { base.clone() } else { PathBuf::from(format!("{}.{n}", base.display())) })
        .find(|p| !p.exists())
        .expect("some name is free");
    std::fs::rename(dir, &target).map_err(|e| {
        anyhow::anyhow!("cannot move the removed member's data dir {} aside: {e}", dir.display())
    })?;
    tracing::warn!(
        node_id = id,
        moved_to = %target.display(),
        "this pod's member (node {id}) was removed from the cluster; its data was moved aside and the pod joins afresh"
    );
    Ok(())
}
