//! [`Metrics`]: what a node counts and times, exported at `GET /metrics` in the Prometheus
//! (OpenMetrics) text format.
//!
//! Two kinds of figures:
//! - events, counted where they happen: HTTP requests by route and status with latency
//!   histograms, proposals and their failures, leader changes, WAL fsync and apply
//!   durations. Their handles are cheap clones (atomics behind an `Arc`), so the hot paths
//!   pay an atomic add, never a lock or an allocation;
//! - the state, read at scrape time from what the node already keeps ([`Gauges`]): term,
//!   leader, log and applied indexes, store size, keys, revisions, leases, locks, watchers.
//!
//! Invariants: label values come from fixed sets (a route pattern, never a key; a status
//! code; a method), so the number of series is bounded whatever clients send; nothing
//! here ever holds a key, a value or a token.

use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The labels of an HTTP request count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: &'static str,
    /// The route pattern (`/v1/kv/{*key}`), never the path itself.
    pub route: &'static str,
    pub status: u16,
}

/// The labels of an HTTP latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: &'static str,
}

/// Durations from 100 µs to about 30 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0001, 2.5, 14)
}

/// Storage durations from 50 µs to about 3 s.
fn storage_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.00005, 2.5, 13)
}

/// The event metrics of one node, and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: Family<RouteLabels, Histogram, fn() -> Histogram>,
    slow_requests: Family<RouteLabels, Counter>,
    proposals: Counter,
    proposal_failures: Counter,
    leader_changes: Counter,
    lease_reads: Counter,
    read_rounds: Counter,
    fsync: Histogram,
    apply: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("palisade");
        let http_requests = Family::<RequestLabels, Counter>::default();
        let http_duration: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(latency_buckets()));
        let slow_requests = Family::<RouteLabels, Counter>::default();
        let proposals = Counter::default();
        let proposal_failures = Counter::default();
        let leader_changes = Counter::default();
        let lease_reads = Counter::default();
        let read_rounds = Counter::default();
        let fsync = Histogram::new(storage_buckets());
        let apply = Histogram::new(storage_buckets());
        registry.register(
            "http_requests",
            "HTTP requests answered, by route and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request (to its response head, for a stream), by route",
            http_duration.clone(),
        );
        registry.register(
            "http_slow_requests",
            "HTTP requests slower than --slow-request-ms (each also logged), by route",
            slow_requests.clone(),
        );
        registry.register(
            "raft_proposals",
            "Log entries this node proposed as leader (a batch is one)",
            proposals.clone(),
        );
        registry.register(
            "raft_proposal_failures",
            "Proposals that were not decided here (leadership lost, Raft stopped)",
            proposal_failures.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Changes of leader this node has seen",
            leader_changes.clone(),
        );
        registry.register(
            "raft_lease_read_indexes",
            "Read indexes this node answered as leader from its read lease, without a quorum round",
            lease_reads.clone(),
        );
        registry.register(
            "raft_read_index_rounds",
            "Read-index quorum rounds that confirmed this node as leader",
            read_rounds.clone(),
        );
        registry.register("wal_fsync_duration_seconds", "Time of one fsync of the Raft log", fsync.clone());
        registry.register(
            "raft_apply_duration_seconds",
            "Time to apply one batch of committed entries to the state",
            apply.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_duration,
            slow_requests,
            proposals,
            proposal_failures,
            leader_changes,
            lease_reads,
            read_rounds,
            fsync,
            apply,
        }
    }

    /// Counts an answered HTTP request.
    pub fn request(&self, method: &'static str, route: &'static str, status: u16, took: Duration) {
        self.http_requests.get_or_create(&RequestLabels { method, route, status }).inc();
        self.http_duration.get_or_create(&RouteLabels { method, route }).observe(took.as_secs_f64());
    }

    /// Counts a request slower than the slow-request threshold.
    pub fn slow_request(&self, method: &'static str, route: &'static str) {
        self.slow_requests.get_or_create(&RouteLabels { method, route }).inc();
    }

    /// Counts a proposal and whether it was decided.
    pub fn proposal(&self, decided: bool) {
        self.proposals.inc();
        if !decided {
            self.proposal_failures.inc();
        }
    }

    /// Counts a read index answered from the read lease (`true`) or by a quorum round.
    pub fn read_index(&self, lease: bool) {
        if lease {
            self.lease_reads.inc();
        } else {
            self.read_rounds.inc();
        }
    }

    pub fn leader_changed(&self) {
        self.leader_changes.inc();
    }

    /// The fsync histogram, for the log's writer thread.
    pub fn fsync_histogram(&self) -> Histogram {
        self.fsync.clone()
    }

    /// The apply histogram, for the state machine.
    pub fn apply_histogram(&self) -> Histogram {
        self.apply.clone()
    }

    /// The exposition: the event metrics, then `gauges`.
    pub fn render(&self, gauges: Gauges) -> String {
        let mut out = String::with_capacity(16 * 1024);
        let mut state = Registry::with_prefix("palisade");
        state.register_collector(Box::new(gauges));
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &self.registry);
        let _ = prometheus_client::encoding::text::encode_registry(&mut out, &state);
        let _ = prometheus_client::encoding::text::encode_eof(&mut out);
        out
    }
}

/// The state of a node at scrape time.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub node_id: u64,
    pub term: u64,
    /// The leader's id (0: none known).
    pub leader: u64,
    pub is_leader: bool,
    pub last_log_index: u64,
    pub applied_index: u64,
    /// Voters and learners in the membership.
    pub voters: u64,
    pub learners: u64,
    pub revision: u64,
    pub compact_revision: u64,
    pub keys: u64,
    pub store_bytes: u64,
    pub quota_bytes: u64,
    pub idempotency_keys: u64,
    pub leases_alive: u64,
    pub leases_granted: u64,
    pub leases_expired: u64,
    pub leases_revoked: u64,
    pub locks_active: u64,
    pub lock_owners: u64,
    pub lock_grants: u64,
    pub lock_handoffs: u64,
    pub lock_waits: u64,
    pub lock_lease_ended: u64,
    pub watchers: u64,
    pub storage_stalled: bool,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl Collector for Gauges {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        gauge(e, "node_id", "This node's id", int(self.node_id))?;
        gauge(e, "raft_term", "The current Raft term", int(self.term))?;
        gauge(e, "raft_leader", "The leader's node id as this node sees it (0: none)", int(self.leader))?;
        gauge(e, "raft_is_leader", "1 when this node leads", self.is_leader as i64)?;
        gauge(
            e,
            "raft_last_log_index",
            "Index of the last entry in this node's log",
            int(self.last_log_index),
        )?;
        gauge(e, "raft_applied_index", "Index of the last entry applied here", int(self.applied_index))?;
        gauge(e, "raft_voters", "Voting members in the membership", int(self.voters))?;
        gauge(e, "raft_learners", "Learners in the membership", int(self.learners))?;
        gauge(
            e,
            "storage_stalled",
            "1 while the Raft log cannot be written (disk full)",
            self.storage_stalled as i64,
        )?;
        gauge(e, "store_revision", "The store revision applied here", int(self.revision))?;
        gauge(
            e,
            "store_compact_revision",
            "History below this revision is compacted",
            int(self.compact_revision),
        )?;
        gauge(e, "store_keys", "Keys that exist now", int(self.keys))?;
        gauge(
            e,
            "store_bytes",
            "Bytes of keys and values over all versions (what the quota counts)",
            int(self.store_bytes),
        )?;
        gauge(e, "store_quota_bytes", "The store quota", int(self.quota_bytes))?;
        gauge(e, "idempotency_keys", "Idempotency keys remembered", int(self.idempotency_keys))?;
        gauge(e, "leases", "Leases that exist now", int(self.leases_alive))?;
        counter(e, "leases_granted", "Leases granted since the cluster began", self.leases_granted)?;
        counter(e, "leases_expired", "Leases expired since the cluster began", self.leases_expired)?;
        counter(e, "leases_revoked", "Leases revoked since the cluster began", self.leases_revoked)?;
        gauge(e, "locks", "Locks and elections held or waited for", int(self.locks_active))?;
        gauge(e, "lock_owners", "Lock holders, waiters and election candidates", int(self.lock_owners))?;
        counter(e, "lock_grants", "Lock and election grants since the cluster began", self.lock_grants)?;
        counter(e, "lock_handoffs", "Grants to a waiter as the holder left", self.lock_handoffs)?;
        counter(e, "lock_waits", "Acquires and campaigns that queued", self.lock_waits)?;
        counter(
            e,
            "lock_lease_ended",
            "Holders and waiters removed because their lease ended",
            self.lock_lease_ended,
        )?;
        gauge(
            e,
            "watchers",
            "Watch streams, long-polls and observers open on this node",
            int(self.watchers),
        )?;
        Ok(())
    }
}

/// The route pattern of `path` among `routes` (method, axum pattern), for a metric label;
/// `other` when none matches. A `{name}` segment matches one segment, a `{*rest}` the rest
/// of the path (also nothing: `/v1/kv` is `/v1/kv/{*key}`).
pub fn route_of(routes: &'static [(&'static str, &'static str)], path: &str) -> &'static str {
    'patterns: for (_, pattern) in routes {
        let mut got = path.trim_start_matches('/').split('/');
        for want in pattern.trim_start_matches('/').split('/') {
            if want.starts_with("{*") {
                return pattern;
            }
            match got.next() {
                Some(seg) if want.starts_with('{') && !seg.is_empty() => {}
                Some(seg) if seg == want => {}
                _ => continue 'patterns,
            }
        }
        if got.next().is_none() {
            return pattern;
        }
    }
    "other"
}

/// The method as a static label.
pub fn method_label(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "PUT" => "PUT",
        "POST" => "POST",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[(&str, &str)] = &[
        ("GET", "/v1/kv/{*key}"),
        ("GET", "/v1/leases"),
        ("GET", "/v1/leases/{id}"),
        ("POST", "/v1/leases/{id}/keepalive"),
        ("GET", "/v1/elections/{name}/observe"),
        ("GET", "/v1/elections/{name}"),
        ("GET", "/healthz"),
    ];

    #[test]
    fn routes_are_labelled_by_pattern_never_by_path() {
        assert_eq!(route_of(ROUTES, "/v1/kv"), "/v1/kv/{*key}");
        assert_eq!(route_of(ROUTES, "/v1/kv/"), "/v1/kv/{*key}");
        assert_eq!(route_of(ROUTES, "/v1/kv/a/b/secret-name"), "/v1/kv/{*key}");
        assert_eq!(route_of(ROUTES, "/v1/leases"), "/v1/leases");
        assert_eq!(route_of(ROUTES, "/v1/leases/42"), "/v1/leases/{id}");
        assert_eq!(route_of(ROUTES, "/v1/leases/42/keepalive"), "/v1/leases/{id}/keepalive");
        assert_eq!(route_of(ROUTES, "/v1/leases/42/other"), "other");
        assert_eq!(route_of(ROUTES, "/v1/elections/e/observe"), "/v1/elections/{name}/observe");
        assert_eq!(route_of(ROUTES, "/v1/elections/e"), "/v1/elections/{name}");
        assert_eq!(route_of(ROUTES, "/v1/elections//observe"), "other");
        assert_eq!(route_of(ROUTES, "/healthz"), "/healthz");
        assert_eq!(route_of(ROUTES, "/nope"), "other");
        assert_eq!(method_label("BREW"), "other");
    }

    #[test]
    fn the_exposition_holds_events_and_state() {
        let m = Metrics::new();
        m.request("GET", "/v1/kv/{*key}", 200, Duration::from_millis(3));
        m.request("GET", "/v1/kv/{*key}", 404, Duration::from_millis(1));
        m.proposal(true);
        m.proposal(false);
        m.fsync_histogram().observe(0.001);
        let text = m.render(Gauges { term: 7, leader: 2, revision: 99, keys: 5, ..Gauges::default() });
        for want in [
            "palisade_http_requests_total{method=\"GET\",route=\"/v1/kv/{*key}\",status=\"200\"} 1",
            "palisade_http_requests_total{method=\"GET\",route=\"/v1/kv/{*key}\",status=\"404\"} 1",
            "palisade_http_request_duration_seconds_count{method=\"GET\",route=\"/v1/kv/{*key}\"} 2",
            "palisade_raft_proposals_total 2",
            "palisade_raft_proposal_failures_total 1",
            "palisade_wal_fsync_duration_seconds_count 1",
            "palisade_raft_term 7",
            "palisade_raft_leader 2",
            "palisade_store_revision 99",
            "palisade_store_keys 5",
            "palisade_leases_granted_total 0",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
