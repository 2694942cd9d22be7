//! The one facade every front-end uses: typed writes and reads, cluster status, health,
//! and the serving of peer requests. Owns the [`Replica`] (consensus and the applied
//! state), the transport to the other members, and the node's identity on disk; knows no
//! openraft and no HTTP.
//!
//! Invariants: every request is checked against the node's policy (key rules, limits,
//! quota) before anything is proposed, the same way whether a client sent it here or a
//! follower forwarded it. A write is proposed only on the leader; a follower forwards it
//! once to the leader and never re-proposes it. A linearizable read is served only after
//! a read index confirmed by a quorum (one round shared by every read that arrived before
//! the round started) has been applied locally. Every call ends within the request
//! deadline: `Unavailable` when no leader or quorum answered (nothing took effect),
//! `Timeout` when a write may or may not have taken effect.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use serde::Serialize;
use tokio::time::Instant;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::peer::{
    HttpTransport, PeerError, PeerHandler, PeerKey, PeerRequest, PeerResponse, RaftOverPeers, Transport,
    TransportError,
};
use crate::raft::{
    Leadership, Member, NodeId, Replica, ReplicaConfig, ReplicaStatus, Role, Stall, StorageHealth,
};

mod backup;
mod bootstrap;
mod compactor;
mod identity;
mod leases;
mod lessor;
mod lock_hub;
mod locks;
mod membership;
mod ordinal;
mod peer;
mod policy;
mod reads;
mod restore;
mod shutdown;
mod watch;
mod watch_hub;
mod writes;

pub use backup::BackupStream;
pub use identity::{format_cluster, Identity};
pub use leases::MAX_LEASE_KEYS_SHOWN;
pub use locks::{AcquireRequest, Acquired, ElectionObserver, ElectionView};
pub use membership::PROMOTE_MAX_LAG;
pub use policy::{check_idempotency_key, check_lock_limit, check_lock_name, check_owner};
pub use reads::{Consistency, KvRead, KvReadResult};
pub use restore::{inspect, restore, BackupInfo, Restored};
pub use watch::{Watch, WatchFrame, WatchRequest, MAX_WAIT_MS};

use reads::ReadRounds;
use writes::Proposals;

/// A member's view of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster_id: String,
    pub node_id: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub revision: u64,
    pub compact_revision: u64,
    pub applied_index: u64,
    /// Bytes of keys and values held over all versions (what the quota counts).
    pub store_bytes: u64,
    pub quota_bytes: u64,
    /// Idempotency keys remembered.
    pub idempotency_keys: u64,
    /// Leases that exist now.
    pub leases_alive: u64,
    /// Leases granted, expired and revoked since the cluster began.
    pub lease_counters: crate::store::LeaseCounters,
    /// Locks and elections held or waited for, and their holders and waiters.
    pub locks_active: u64,
    pub lock_owners: u64,
    /// Bytes of their names, owners and values (the quota counts them).
    pub lock_bytes: u64,
    /// Grants, hand-offs, waits and lease ends since the cluster began.
    pub lock_counters: crate::store::LockCounters,
    pub members: Vec<MemberStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub id: NodeId,
    pub client_url: String,
    pub peer_url: String,
    /// `voter` or `learner`.
    pub role: &'static str,
    /// Whether this member is the leader, in this node's view.
    pub is_leader: bool,
}

/// A running member.
pub struct Node {
    /// This member's id.
    id: NodeId,
    /// What the data dir records: the cluster id and the initial members.
    identity: Identity,
    /// Consensus and the applied state: the only way to propose, read or see leadership.
    replica: Replica,
    /// How forwarded writes, read-index calls and Raft RPCs reach the other members.
    transport: Arc<dyn Transport>,
    /// The proof peer requests to this node must carry (checked by the peer listener).
    peer_key: PeerKey,
    /// The settings this node runs with (validated).
    cfg: Config,
    /// Checks client tokens; `None` when client auth is off.
    auth: Option<Arc<crate::auth::Verifier>>,
    /// Read-index requests waiting for the next quorum round.
    reads: Mutex<ReadRounds>,
    /// Writes waiting to be proposed, and the proposers running (on the leader).
    proposals: Mutex<Proposals>,
    /// The leader's lease clock, and keepalives waiting for a renewal.
    lessor: lessor::Lessor,
    /// Who watches which keys (streams and long-polls).
    watches: Arc<watch_hub::WatchHub>,
    /// Who waits on which lock owners and observes which elections.
    lock_hub: Arc<lock_hub::LockHub>,
    /// While a new data dir waits to bootstrap: why (see `bootstrap`).
    bootstrap_wait: Mutex<Option<String>>,
    /// Places for snapshot downloads running at once (see `backup`).
    backups: Arc<tokio::sync::Semaphore>,
    /// Set once the node cannot go on (a replaced disk refused, a storage failure); the
    /// process serving it should stop (see [`Node::failed`]).
    fatal: tokio::sync::watch::Sender<Option<String>>,
    /// Held while this node, as leader, makes a membership change (one at a time).
    member_change: tokio::sync::Mutex<()>,
    /// Set while a membership change someone asked for is under way here (a second one
    /// is refused rather than queued).
    asked_change: std::sync::atomic::AtomicBool,
    /// What this node counts and times (`GET /metrics`).
    metrics: Arc<crate::metrics::Metrics>,
    /// Set when the process was told to stop (see `shutdown`).
    shutting_down: std::sync::atomic::AtomicBool,
    /// Set while this leader hands its leadership over: it proposes nothing more.
    handing_over: std::sync::atomic::AtomicBool,
}

impl Node {
    /// Starts a node with the HTTP peer transport its config describes.
    pub async fn start(mut cfg: Config) -> anyhow::Result<Arc<Node>> {
        let key = match &cfg.peer_secret_file {
            Some(path) => PeerKey::load(path).map_err(anyhow::Error::msg)?,
            None => PeerKey::insecure(),
        };
        // A changed file is used within a second or so, by the transport and the peer
        // route alike (they share the key's secrets): a rotation needs no restart.
        key.watch_file(Duration::from_secs(1));
        ordinal::resolve(&mut cfg, &key).await?;
        let tls = crate::tls::ClientFiles::peer_transport(&cfg);
        let transport = HttpTransport::new(cfg.node_id, key.clone(), cfg.max_peer_message_bytes, tls)
            .map_err(|e| anyhow::anyhow!("cannot set up peer TLS: {e}"))?;
        let transport = Arc::new(transport);
        Self::start_with(cfg, transport, key).await
    }

    /// Opens the data dir, starts Raft over `transport`, and bootstraps the cluster on
    /// first start. `peer_key` is what incoming peer requests must prove.
    pub async fn start_with(
        cfg: Config,
        transport: Arc<dyn Transport>,
        peer_key: PeerKey,
    ) -> anyhow::Result<Arc<Node>> {
        cfg.validate()?;
        let auth = match crate::auth::AuthSettings::of(&cfg) {
            Some(s) => Some(Arc::new(crate::auth::Verifier::new(s).map_err(anyhow::Error::msg)?)),
            None => None,
        };
        let mut identity = identity::resolve(&cfg)?;
        if let Some(why) = &identity.removed {
            anyhow::bail!("{why}");
        }
        let fresh = !identity.bootstrapped && !identity.joined && identity.rebuild.is_none();
        if let (true, Some(urls)) = (fresh, cfg.join_urls()) {
            let answer = Self::join_cluster(&cfg, &transport, &identity, &urls).await?;
            let mut members = answer.members;
            members.entry(cfg.node_id).or_insert_with(|| cfg.advertise());
            // Rebuilding a member that lost its data: from here on, the usual rebuild
            // (probes, then catching up before it votes) with the members it learned.
            identity = Identity {
                cluster_id: answer.cluster_id,
                initial_cluster: members,
                joined: !cfg.rebuild_from_peers,
                ..identity
            };
            identity::save(&cfg, &identity)?;
        }
        let fatal = tokio::sync::watch::Sender::new(None);
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let replica_cfg = ReplicaConfig {
            id: cfg.node_id,
            cluster_name: format!("palisade-{}", identity.cluster_id),
            log_dir: cfg.data_dir.join("raft"),
            snapshot_dir: cfg.data_dir.join("snapshot"),
            heartbeat_ms: cfg.heartbeat_ms,
            election_timeout_ms: cfg.election_timeout_ms,
            snapshot_every: cfg.snapshot_every,
            max_message_bytes: cfg.max_peer_message_bytes,
            wal_segment_bytes: cfg.wal_segment_bytes,
            initial_members: identity.initial_cluster.clone(),
            joining: identity.joined,
            metrics: metrics.clone(),
            lease_reads: !cfg.read_index_only,
            on_fatal: Some({
                let fatal = fatal.clone();
                Arc::new(move |why: &str| {
                    tracing::error!("{why}; this node stops");
                    fatal.send_if_modified(|f| f.is_none() && f.replace(why.to_string()).is_none());
                })
            }),
        };
        let replica = Replica::open(&replica_cfg, Arc::new(RaftOverPeers(transport.clone()))).await.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}\nThe data dir {} cannot be used as it is. Nothing was changed; keep it for a post-mortem. \
                 To rebuild this member from its peers: stop it, move the data dir aside, and start it on an \
                 empty data dir with --rebuild-from-peers (see README, \"Replacing a failed member's disk\")",
                cfg.data_dir.display()
            )
        })?;
        let initialized = replica.is_initialized().await?;
        if !initialized && identity.bootstrapped && identity.rebuild.is_none() {
            anyhow::bail!(
                "the data dir {} belongs to node {} of cluster {}, but its raft log and snapshots are gone: \
                 starting from nothing could lose acknowledged writes. Restore the data dir, or rebuild this \
                 member from its peers: move the data dir aside and start it on an empty one with \
                 --rebuild-from-peers (see README, \"Replacing a failed member's disk\")",
                cfg.data_dir.display(),
                identity.node_id,
                identity.cluster_id,
            );
        }
        if let Some(gate) = identity.rebuild {
            // A rebuild that a restart interrupted: go on holding it.
            replica.hold_for_rebuild(Some(gate));
        } else if initialized && cfg.rebuild_from_peers {
            tracing::warn!(
                "--rebuild-from-peers has nothing to do: the data dir {} holds this member's data",
                cfg.data_dir.display()
            );
        }
        if initialized {
            membership::check_address(&cfg, &replica, &transport).await?;
            if !identity.bootstrapped {
                // Bootstrapped before a crash kept the identity file from saying so.
                identity::save(&cfg, &Identity { bootstrapped: true, ..identity.clone() })?;
            }
        }
        let max_backups = cfg.max_snapshot_downloads;
        let node = Arc::new(Node {
            id: cfg.node_id,
            identity,
            replica,
            transport,
            peer_key,
            cfg,
            auth,
            reads: Mutex::default(),
            proposals: Mutex::default(),
            lessor: lessor::Lessor::default(),
            watches: Arc::default(),
            lock_hub: Arc::default(),
            bootstrap_wait: Mutex::default(),
            backups: Arc::new(tokio::sync::Semaphore::new(max_backups)),
            fatal,
            member_change: tokio::sync::Mutex::new(()),
            asked_change: Default::default(),
            metrics,
            shutting_down: Default::default(),
            handing_over: Default::default(),
        });
        if let Some(gate) = node.identity.rebuild {
            tokio::spawn(Self::finish_rebuild(Arc::downgrade(&node), gate));
        } else if node.identity.joined {
            tokio::spawn(Self::finish_join(Arc::downgrade(&node)));
        } else if !initialized {
            tokio::spawn(Self::bootstrap(Arc::downgrade(&node)));
        }
        tokio::spawn(Self::watch_removal(Arc::downgrade(&node)));
        tokio::spawn(Self::publish_member(Arc::downgrade(&node)));
        tokio::spawn(Self::auto_compact(Arc::downgrade(&node)));
        tokio::spawn(Self::run_lessor(Arc::downgrade(&node)));
        tokio::spawn(watch_hub::WatchHub::run(Arc::downgrade(&node)));
        tokio::spawn(lock_hub::LockHub::run(Arc::downgrade(&node)));
        if let Some(auth) = &node.auth {
            auth.watch();
        }
        Ok(node)
    }

    /// Stops the node for good: health fails and [`Node::failed`] tells the process.
    pub(super) fn fail(&self, why: String) {
        tracing::error!("{why}");
        self.fatal.send_replace(Some(why));
    }

    /// Resolves with the reason once the node cannot go on; the process should then stop.
    pub async fn failed(&self) -> String {
        let mut rx = self.fatal.subscribe();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    }

    /// Makes sure the membership carries this node's client URL (the initial cluster flag
    /// names only peer URLs), so every member can list where clients go, and its data
    /// dir's incarnation, so the cluster knows it ran with data (see `bootstrap`).
    async fn publish_member(node: std::sync::Weak<Node>) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(node) = node.upgrade() else { return };
            let want = node.cfg.advertise().client_url;
            let incarnation = node.identity.incarnation;
            match node.replica.member(node.id) {
                Some(m) if m.client_url == want && m.incarnation == incarnation => return,
                None => continue,
                Some(_) => {}
            }
            let Some(leader) = node.replica.leadership().borrow().leader else { continue };
            let req = PeerRequest::PublishMember { client_url: want, incarnation };
            let r = if leader == node.id {
                Ok(node.clone().handle_peer(node.id, req).await)
            } else if let Some(member) = node.replica.member(leader) {
                node.transport.call(leader, &member, req, node.cfg.request_timeout()).await
            } else {
                continue;
            };
            tracing::debug!(?r, "published this node's client URL");
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The settings this node runs with.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The client token checker; `None` when client auth is off.
    pub fn auth(&self) -> Option<&crate::auth::Verifier> {
        self.auth.as_deref()
    }

    /// What incoming peer requests must prove.
    pub fn peer_key(&self) -> &PeerKey {
        &self.peer_key
    }

    /// The host (IP address or DNS name) of member `id`'s peer URL, as this node knows it:
    /// from the replicated membership (so members that joined later, and moved ones, too);
    /// before this node has a membership, the initial members' (for a node that joined,
    /// the membership the cluster answered its join with); for this node, its own.
    pub fn peer_host(&self, id: NodeId) -> Option<String> {
        let url = if id == self.id {
            self.cfg.advertise().peer_url
        } else if self.replica.has_membership() {
            self.replica.member(id)?.peer_url
        } else {
            self.identity.initial_cluster.get(&id)?.peer_url.clone()
        };
        let url = reqwest::Url::parse(&url).ok()?;
        // An IPv6 address comes in brackets.
        Some(url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string())
    }

    /// Whether `id` is a member (voter or learner) in this node's view (the replicated
    /// membership, members that joined later included); before this node has a membership,
    /// the initial members count (for a node that joined: those its join was answered with).
    pub fn is_member(&self, id: NodeId) -> bool {
        if self.replica.has_membership() {
            self.replica.member(id).is_some()
        } else {
            self.identity.initial_cluster.contains_key(&id)
        }
    }

    /// Whether this node has a membership (it bootstrapped, joined or was sent one).
    pub fn replica_has_membership(&self) -> bool {
        self.replica.has_membership()
    }

    /// Whether peer request `req` from `from`, whom this node's membership does not name,
    /// may be served: an append or a snapshot from a leader that joined after the
    /// membership this node has applied (Raft's own checks then decide).
    pub fn takes_from_unknown(&self, from: NodeId, req: &PeerRequest) -> bool {
        matches!(req, PeerRequest::Raft(rpc) if self.replica.takes_from_unknown(from, rpc))
    }

    /// Who leads; a change is published as it happens. `is_self` turns true only once
    /// this node leads and has applied an entry of its own term.
    pub fn leadership(&self) -> tokio::sync::watch::Receiver<Leadership> {
        self.replica.leadership()
    }

    /// The current term, for response headers.
    pub fn term(&self) -> u64 {
        self.replica.term()
    }

    /// The store revision applied here (no quorum round).
    pub fn applied_revision(&self) -> u64 {
        self.replica.applied().state.revision()
    }

    /// Waits (until `deadline`) for a known leader other than `not`.
    async fn wait_leader(&self, deadline: Instant, not: Option<NodeId>) -> Result<NodeId> {
        let mut rx = self.replica.leadership();
        loop {
            let leader = rx.borrow_and_update().leader;
            if let Some(l) = leader.filter(|l| Some(*l) != not) {
                return Ok(l);
            }
            let tick = Instant::now() + Duration::from_millis(50);
            match tokio::time::timeout_at(deadline.min(tick), rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(Error::Unavailable("this node is shutting down".into())),
                Err(_) if Instant::now() >= deadline => {
                    return Err(Error::Unavailable(
                        "no leader was elected within the request deadline".into(),
                    ))
                }
                Err(_) => {}
            }
        }
    }

    /// Runs a request on the leader, within the request deadline: `local` when this node
    /// leads, else forwarded once as `req` (and answered by `unwrap`) to the leader, trying
    /// again only when the call was never delivered or the leader had moved on. When no
    /// answer came (a forwarded call delivered but unanswered, a local one past the
    /// deadline), a request that changes something (`changes`: what may have taken effect)
    /// is a 504, outcome unknown; one that changes nothing is a 503.
    pub(super) async fn at_leader<T, F, Fut>(
        self: &Arc<Self>,
        req: impl Fn() -> PeerRequest,
        local: F,
        unwrap: fn(PeerResponse) -> Option<Result<T, PeerError>>,
        changes: Option<&'static str>,
    ) -> Result<T>
    where
        F: Fn(Arc<Node>, Instant) -> Fut,
        Fut: std::future::Future<Output = Result<T, PeerError>>,
    {
        let no_answer = |what: &str| match changes {
            Some(thing) => Error::Timeout(format!("{what}; {thing} may or may not take effect")),
            None => Error::Unavailable(what.to_string()),
        };
        let deadline = self.deadline();
        let mut not = None;
        loop {
            let leader = self.wait_leader(deadline, not).await?;
            if leader == self.id {
                // The local call shares the deadline, so it answers first when it runs out
                // (with what it knows: a keepalive or write never proposed is a 503).
                match tokio::time::timeout_at(deadline, local(self.clone(), deadline)).await {
                    Ok(Err(PeerError::NotLeader { .. })) => {
                        not = Some(self.id);
                        continue;
                    }
                    Ok(r) => return r.map_err(peer_error),
                    Err(_) => return Err(no_answer("no quorum decided it within the deadline")),
                }
            }
            let Some(member) = self.member(leader) else {
                not = Some(leader);
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            match self.transport.call(leader, &member, req(), left).await {
                Ok(resp) => match unwrap(resp) {
                    Some(Err(PeerError::NotLeader { .. })) => {
                        not = Some(leader);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Some(r) => return r.map_err(peer_error),
                    None => return Err(Error::Internal("the leader answered another request".into())),
                },
                Err(TransportError::Unreachable(_)) => {
                    not = Some(leader);
                    if Instant::now() >= deadline {
                        return Err(Error::Unavailable(
                            "the leader could not be reached within the deadline".into(),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(TransportError::Failed(e)) => {
                    return Err(no_answer(&format!("the leader did not answer ({e})")))
                }
                Err(TransportError::Timeout) => {
                    return Err(no_answer("the leader did not answer within the deadline"))
                }
            }
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout()
    }

    /// The replica's view: term, role, log and applied indexes, members.
    pub fn replica_status(&self) -> ReplicaStatus {
        self.replica.status()
    }

    /// This node's view of the cluster.
    pub fn status(&self) -> ClusterStatus {
        let s = self.replica.status();
        let members = s
            .members
            .iter()
            .map(|m| MemberStatus {
                id: m.id,
                client_url: m.addr.client_url.clone(),
                peer_url: m.addr.peer_url.clone(),
                role: if m.voter { "voter" } else { "learner" },
                is_leader: s.leader == Some(m.id),
            })
            .collect();
        let a = self.replica.applied();
        let (kv, leases, locks) = (a.state.kv(), a.state.leases(), a.state.locks());
        ClusterStatus {
            cluster_id: self.identity.cluster_id.clone(),
            node_id: self.id,
            leader: s.leader,
            term: s.term,
            revision: kv.revision(),
            compact_revision: kv.compact_revision(),
            applied_index: s.applied_index,
            store_bytes: kv.bytes(),
            quota_bytes: self.cfg.quota_bytes,
            idempotency_keys: a.state.dedup().len() as u64,
            leases_alive: leases.len() as u64,
            lease_counters: leases.counters(),
            locks_active: locks.len() as u64,
            lock_owners: locks.owners() as u64,
            lock_bytes: locks.bytes(),
            lock_counters: locks.counters(),
            members,
        }
    }

    /// What this node counts and times.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The Prometheus exposition of this node: its event metrics and its state now.
    pub fn metrics_text(&self) -> String {
        let s = self.replica.status();
        let voters = s.members.iter().filter(|m| m.voter).count() as u64;
        let gauges = {
            let a = self.replica.applied();
            let (kv, leases, locks) = (a.state.kv(), a.state.leases(), a.state.locks());
            let (lc, kc) = (leases.counters(), locks.counters());
            crate::metrics::Gauges {
                node_id: self.id,
                term: s.term,
                leader: s.leader.unwrap_or(0),
                is_leader: s.leader == Some(self.id),
                last_log_index: s.last_log_index,
                applied_index: s.applied_index,
                voters,
                learners: s.members.len() as u64 - voters,
                revision: kv.revision(),
                compact_revision: kv.compact_revision(),
                keys: kv.live_keys(),
                store_bytes: kv.bytes(),
                quota_bytes: self.cfg.quota_bytes,
                idempotency_keys: a.state.dedup().len() as u64,
                leases_alive: leases.len() as u64,
                leases_granted: lc.granted,
                leases_expired: lc.expired,
                leases_revoked: lc.revoked,
                locks_active: locks.len() as u64,
                lock_owners: locks.owners() as u64,
                lock_grants: kc.grants,
                lock_handoffs: kc.handoffs,
                lock_waits: kc.waits,
                lock_lease_ended: kc.lease_ended,
                watchers: self.watches.watchers() as u64,
                storage_stalled: matches!(
                    self.replica.storage_health(),
                    crate::raft::StorageHealth::Stalled { .. }
                ),
            }
        };
        self.metrics.render(gauges)
    }

    /// Alive: the Raft core and storage are running. Never depends on quorum.
    pub fn health(&self) -> std::result::Result<(), String> {
        if let Some(why) = self.fatal.borrow().clone() {
            return Err(why);
        }
        if let StorageHealth::Failed(why) = self.replica.storage_health() {
            return Err(format!("storage failed: {why}"));
        }
        let s = self.replica.status();
        if let Some(why) = s.failure {
            return Err(format!("the raft core stopped: {why}"));
        }
        if s.role == Role::Shutdown {
            return Err("the raft core is shut down".into());
        }
        Ok(())
    }

    /// Ready: alive, a leader is known and this node has applied what its log holds.
    pub fn readiness(&self) -> std::result::Result<(), String> {
        self.health()?;
        if self.is_shutting_down() {
            return Err("shutting down".into());
        }
        self.check_storage()?;
        if let Some(why) = self.bootstrap_wait.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            return Err(why);
        }
        if let Some(gate) = self.replica.rebuild_gate() {
            return Err(format!(
                "rebuilding from the peers: applied {} of {}",
                self.replica.applied_index(),
                gate.index
            ));
        }
        let s = self.replica.status();
        if s.leader.is_none() {
            return Err("no leader is known".into());
        }
        if s.role == Role::Learner && s.applied_index == 0 {
            return Err("this learner has not caught up".into());
        }
        if s.last_log_index > s.applied_index + 1000 {
            return Err(format!("catching up: applied {} of {}", s.applied_index, s.last_log_index));
        }
        Ok(())
    }

    /// Refuses while the log's storage is stalled (disk full, out of file descriptors):
    /// nothing new could be made durable here until the condition clears.
    pub(super) fn check_storage(&self) -> std::result::Result<(), String> {
        match self.replica.storage_health() {
            StorageHealth::Ok => Ok(()),
            StorageHealth::Stalled { reason, detail, since } => {
                let what = match reason {
                    Stall::DiskFull => "this node's data disk is full",
                    Stall::OutOfFileDescriptors => "this node is out of file descriptors",
                };
                Err(format!(
                    "{what} (for {} s: {detail}); it resumes by itself once {}",
                    since.elapsed().as_secs(),
                    match reason {
                        Stall::DiskFull => "space is freed",
                        Stall::OutOfFileDescriptors => "descriptors are freed",
                    }
                ))
            }
            StorageHealth::Failed(why) => Err(format!("storage failed: {why}")),
        }
    }

    /// Stops Raft; the data dir stays as it is.
    pub async fn shutdown(&self) {
        self.replica.shutdown().await;
    }

    /// The addresses of member `id`, if it is one.
    fn member(&self, id: NodeId) -> Option<Member> {
        self.replica.member(id)
    }
}

fn peer_error(e: PeerError) -> Error {
    match e {
        PeerError::NotLeader { .. } => Error::Unavailable("leadership changed; retry".into()),
        PeerError::Unavailable(m) => Error::Unavailable(m),
        PeerError::Timeout => Error::Timeout(
            "the leader did not finish within the deadline; a write may or may not take effect".into(),
        ),
        PeerError::Refused(e) => e,
        PeerError::Internal(m) => Error::Internal(m),
    }
}

impl PeerHandler for Arc<Node> {
    fn handle(&self, from: NodeId, req: PeerRequest) -> BoxFuture<'static, PeerResponse> {
        self.clone().handle_peer(from, req).boxed()
    }
}
