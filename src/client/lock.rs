//! Locks, elections and fencing: acquire, release, read and list locks; campaign,
//! proclaim, resign, read and observe elections; check a fencing token. And
//! [`LeaseKeeper`], which keeps a holder's (or a candidate's) lease alive and says when it
//! must be taken for lost.
//!
//! An acquire or a campaign is held by the server until it is granted or its `wait` runs
//! out (at most 600 s; 30 s when not given), so each of its attempts may take that wait
//! plus the client's own timeout. Both carry an idempotency key (one made up per call when
//! none is given), so an attempt whose outcome is unknown is sent again without ever
//! queueing the same request twice.
//!
//! Observing an election ([`Observer`]) reads `GET /v1/elections/{name}/observe` as
//! newline-delimited JSON. The stream says nothing while the election does not change, so
//! after `probe` of silence the observer asks the same node for the leader (a linearizable
//! read): a node that does not answer in time, or cannot reach a quorum, is left, and the
//! election is observed again on the next endpoint, round-robin. A reopened stream starts
//! with the current state, which is delivered only when it differs from the last state
//! delivered and is not older: an observer never repeats a state or goes back in time. Like
//! the server's stream, it gives the latest state, not every one: a leader that came and
//! went while it was reconnecting is not seen.

use std::fmt;
use std::sync::atomic::Ordering;
use std::time::Duration;

use percent_encoding::utf8_percent_encode;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::failover::{open_stream, Failover, Refusal};
use super::{
    api_error, chain, new_idempotency_key, num, query_string, root_cause, Client, Error, Reply, ENCODE,
};
use crate::wire::lease::KeepaliveResponse;
use crate::wire::lock::{
    encode_value, FenceValid, Leader, LockGrant, LockListResponse, LockResponse, NoLeader, ReleaseResponse,
};

/// How long the server waits for a grant when an acquire or a campaign does not say.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

/// The lease a lock holder (or a candidate) is bound to: its end releases the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerLease {
    /// A lease of this TTL made for the request. The server keeps it alive while the request
    /// waits; once granted, it is the caller's to keep alive (see [`LeaseKeeper`]).
    Ttl(Duration),
    /// An existing lease of the caller's, which the caller keeps alive.
    Id(u64),
}

/// Options of [`Client::lock_acquire`].
#[derive(Debug, Clone)]
pub struct AcquireOptions {
    pub lease: OwnerLease,
    /// How long the server may wait for the grant: `Some(ZERO)` tries once, `None` is the
    /// server's default (30 s).
    pub wait: Option<Duration>,
    /// How many may hold the lock at once (a semaphore); set by the first acquirer of an
    /// idle name, and a later acquirer asking for another limit is refused.
    pub limit: Option<u32>,
    /// Queue the request at most once under this key (default: a new one per call).
    pub idempotency_key: Option<String>,
}

impl AcquireOptions {
    /// Acquire under a lease of `ttl` made for the request, waiting the server's default.
    pub fn ttl(ttl: Duration) -> AcquireOptions {
        AcquireOptions { lease: OwnerLease::Ttl(ttl), wait: None, limit: None, idempotency_key: None }
    }

    /// Acquire under the existing lease `id`, waiting the server's default.
    pub fn lease(id: u64) -> AcquireOptions {
        AcquireOptions { lease: OwnerLease::Id(id), wait: None, limit: None, idempotency_key: None }
    }
}

/// Options of [`Client::campaign`].
#[derive(Debug, Clone)]
pub struct CampaignOptions {
    pub lease: OwnerLease,
    /// As [`AcquireOptions::wait`].
    pub wait: Option<Duration>,
    pub idempotency_key: Option<String>,
}

/// The outcome of a fencing check.
#[derive(Debug, Clone, PartialEq)]
pub enum Fence {
    /// The token is a current holder's (or the leader's) of the name.
    Valid(FenceValid),
    /// It is not: `current_token` is the newest current holder's, if anyone holds the
    /// name; `body` is the server's reply as it came.
    Stale { token: u64, current_token: Option<u64>, body: Value },
}

/// An observed change of an election, as the server sends it: `{"leader": {...}}` or
/// `{"no_leader": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElectionEvent {
    Leader(Leader),
    NoLeader(NoLeader),
}

impl ElectionEvent {
    /// The revision the state was observed at.
    pub fn revision(&self) -> u64 {
        match self {
            ElectionEvent::Leader(l) => l.revision,
            ElectionEvent::NoLeader(n) => n.revision,
        }
    }

    /// What identifies the state: the leader's owner, token and value (`None`: nobody leads).
    fn state(&self) -> State {
        match self {
            ElectionEvent::Leader(l) => Some((l.owner.clone(), l.fencing_token, l.value_bytes())),
            ElectionEvent::NoLeader(_) => None,
        }
    }
}

/// An election's state as an observer tells states apart: the leader's owner, token and
/// value, or `None` when nobody leads.
type State = Option<(String, u64, Vec<u8>)>;

/// What [`Observer::next`] gives.
#[derive(Debug, Clone, PartialEq)]
pub enum ObserveUpdate {
    /// A change (the first one: the state when the observation started), and its JSON line
    /// as the server sent it.
    Event { event: ElectionEvent, json: String },
    /// What the observer did about a lost connection or a failed attempt, as one line of
    /// text (for a log).
    Notice(String),
}

/// A TTL or a wait as the wire takes it: whole milliseconds (`"1500ms"`).
fn millis(what: &str, d: Duration) -> Result<String, Error> {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return Err(Error::Other(format!("{what} is a whole number of milliseconds, not {d:?}")));
    }
    Ok(format!("{}ms", d.as_millis()))
}

/// `route/{name}{tail}`, the name percent-encoded. Refused here: an empty name (it would
/// address the listing), and `.` and `..`, which URL parsers fold away (escaped as `%2E`
/// too); every other rule is the server's to check.
fn name_path(route: &str, name: &str, tail: &str) -> Result<String, Error> {
    if name.is_empty() {
        return Err(Error::Other(
            "a lock or election name is 1 to 128 characters of A-Z a-z 0-9 . _ -".into(),
        ));
    }
    if name == "." || name == ".." {
        return Err(Error::Other(format!("a lock or election named {name:?} cannot be addressed in a URL")));
    }
    Ok(format!("{route}/{}{tail}", utf8_percent_encode(name, ENCODE)))
}

/// The lease part of an acquire or a campaign.
fn lease_fields(body: &mut Value, lease: OwnerLease) -> Result<(), Error> {
    match lease {
        OwnerLease::Ttl(ttl) => body["ttl"] = json!(millis("a lease TTL", ttl)?),
        OwnerLease::Id(id) => body["lease"] = json!(id),
    }
    Ok(())
}

impl Client {
    /// How long an attempt of a request the server may hold for `wait` may take.
    fn waiting(&self, wait: Option<Duration>) -> Duration {
        wait.unwrap_or(DEFAULT_WAIT) + self.timeout
    }

    /// `POST /v1/locks/{name}`: blocks until the lock is held (the grant carries the owner
    /// id, the lease and the fencing token) or the wait runs out (409 `lock_timeout`; the
    /// request left the queue). Other refusals: 409 `lease_expired` (the lease ended while
    /// waiting), 409 `limit_mismatch`, 404 `lease_not_found`, 400 `invalid_argument`.
    pub async fn lock_acquire(&self, name: &str, opts: AcquireOptions) -> Result<Reply<LockGrant>, Error> {
        let mut body = json!({});
        lease_fields(&mut body, opts.lease)?;
        if let Some(wait) = opts.wait {
            body["wait"] = json!(millis("the wait", wait)?);
        }
        if let Some(limit) = opts.limit {
            body["limit"] = json!(limit);
        }
        let key = opts.idempotency_key.unwrap_or_else(new_idempotency_key);
        let timeout = self.waiting(opts.wait);
        self.write_typed_within(
            Method::POST,
            &name_path("/v1/locks", name, "")?,
            Some(body),
            Some(&key),
            timeout,
        )
        .await
    }

    /// `DELETE /v1/locks/{name}?owner=O`: releases the lock (or takes a waiter out of the
    /// queue: `released: false`). An owner that neither holds nor waits is 404
    /// `owner_not_found` (so a retried release is harmless).
    pub async fn lock_release(
        &self,
        name: &str,
        owner: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<ReleaseResponse>, Error> {
        let q = query_string(&[("owner", Some(owner.to_string()))]);
        self.write_typed(Method::DELETE, &name_path("/v1/locks", name, &q)?, None, idempotency_key).await
    }

    /// `GET /v1/locks/{name}`: its holders (with their tokens) and its waiters in queue
    /// order; `limit` is `None` when nobody holds or waits.
    pub async fn lock_get(&self, name: &str, serializable: bool) -> Result<Reply<LockResponse>, Error> {
        let q = query_string(&[("consistency", serializable.then(|| "serializable".to_string()))]);
        self.call_typed(Method::GET, &name_path("/v1/locks", name, &q)?, None).await
    }

    /// `GET /v1/locks`: one page of the locks held or awaited, in name order, after
    /// `after`, at most `limit` (server default and maximum apply).
    pub async fn lock_list(
        &self,
        after: Option<&str>,
        limit: Option<u64>,
    ) -> Result<Reply<LockListResponse>, Error> {
        let q = query_string(&[("limit", num(limit)), ("after", after.map(str::to_string))]);
        self.call_typed(Method::GET, &format!("/v1/locks{q}"), None).await
    }

    /// Every page of the lock listing, merged (`limit` is the page size).
    pub async fn lock_list_all(&self, limit: Option<u64>) -> Result<Reply<LockListResponse>, Error> {
        let mut all = self.lock_list(None, limit).await?;
        while all.more {
            let Some(next) = all.next.take() else {
                return Err(Error::Other("the server said more locks follow but gave no page token".into()));
            };
            let Reply { body, meta } = self.lock_list(Some(&next), limit).await?;
            all.locks.extend(body.locks);
            all.more = body.more;
            all.next = body.next;
            all.revision = body.revision;
            all.meta = meta;
        }
        all.count = all.locks.len() as u64;
        Ok(all)
    }

    /// `POST /v1/elections/{name}/campaign`: blocks until this candidate leads (with
    /// `value`) or the wait runs out; fails as [`Client::lock_acquire`] does.
    pub async fn campaign(
        &self,
        name: &str,
        value: &[u8],
        opts: CampaignOptions,
    ) -> Result<Reply<Leader>, Error> {
        let mut body = value_body(value);
        lease_fields(&mut body, opts.lease)?;
        if let Some(wait) = opts.wait {
            body["wait"] = json!(millis("the wait", wait)?);
        }
        let key = opts.idempotency_key.unwrap_or_else(new_idempotency_key);
        let path = name_path("/v1/elections", name, "/campaign")?;
        self.write_typed_within(Method::POST, &path, Some(body), Some(&key), self.waiting(opts.wait)).await
    }

    /// `PUT /v1/elections/{name}/leader`: the leader `owner` announces a new value; 409
    /// `not_leader` when it does not lead.
    pub async fn proclaim(
        &self,
        name: &str,
        owner: &str,
        value: &[u8],
        idempotency_key: Option<&str>,
    ) -> Result<Reply<Leader>, Error> {
        let mut body = value_body(value);
        body["owner"] = json!(owner);
        let path = name_path("/v1/elections", name, "/leader")?;
        self.write_typed(Method::PUT, &path, Some(body), idempotency_key).await
    }

    /// `DELETE /v1/elections/{name}/leader?owner=O`: the leader steps down (a waiting
    /// candidate leaves the queue: `released: false`); 409 `not_leader` for an owner that
    /// neither leads nor waits.
    pub async fn resign(
        &self,
        name: &str,
        owner: &str,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<ReleaseResponse>, Error> {
        let q = query_string(&[("owner", Some(owner.to_string()))]);
        let path = name_path("/v1/elections", name, &format!("/leader{q}"))?;
        self.write_typed(Method::DELETE, &path, None, idempotency_key).await
    }

    /// `GET /v1/elections/{name}`: the leader; 404 `no_leader` when nobody leads.
    pub async fn leader(&self, name: &str) -> Result<Reply<Leader>, Error> {
        self.call_typed(Method::GET, &name_path("/v1/elections", name, "")?, None).await
    }

    /// `POST /v1/fence/check`: whether `token` is a current holder's of the lock (or the
    /// election) `name`. A stale token is `Ok(Fence::Stale)`, not an error.
    pub async fn fence_check(&self, name: &str, token: u64) -> Result<Fence, Error> {
        let body = json!({"name": name, "token": token});
        match self.call_typed::<FenceValid>(Method::POST, "/v1/fence/check", Some(body)).await {
            Ok(r) => Ok(Fence::Valid(r.body)),
            Err(Error::Api { status: 409, code, body, .. }) if code == "stale_token" => {
                let current_token = body.get("current_token").and_then(Value::as_u64);
                Ok(Fence::Stale { token, current_token, body })
            }
            Err(e) => Err(e),
        }
    }

    /// An observation of the election `name`, opened at the first call to
    /// [`Observer::next`] on the endpoint that answered last; see the module doc.
    pub fn observe(&self, name: &str, probe: Duration) -> Result<Observer, Error> {
        let http = self
            .http_builder()
            .build()
            .map_err(|e| Error::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Observer {
            failover: Failover::new(
                self.endpoints.clone(),
                self.current.load(Ordering::Relaxed),
                self.timeout,
            ),
            http,
            stream_path: name_path("/v1/elections", name, "/observe")?,
            leader_path: name_path("/v1/elections", name, "")?,
            probe,
            patience: self.timeout,
            conn: None,
            last: None,
            ended: false,
        })
    }
}

/// `{"value": ...}` or `{"value_base64": ...}`.
fn value_body(value: &[u8]) -> Value {
    match encode_value(value) {
        (Some(v), _) => json!({ "value": v }),
        (None, b64) => json!({ "value_base64": b64 }),
    }
}

/// Why a lease kept by a [`LeaseKeeper`] is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseLost {
    pub lease: u64,
    /// True when the cluster said the lease does not exist (it expired or was revoked);
    /// false when no renewal was acknowledged in time (or one was refused for good), so the
    /// lease must be assumed to have ended.
    pub gone: bool,
    pub reason: String,
}

impl fmt::Display for LeaseLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Keeps a lease alive: a renewal about every third of its TTL, and a failed renewal (no
/// connection, no reply within a third of the TTL, 429, 503, 504) tried again on the next
/// endpoint, for as long as the lease is sure to live: its TTL after the last acknowledged
/// renewal was sent. After that, or when the cluster answers 404, the lease is lost.
#[derive(Debug)]
pub struct LeaseKeeper {
    client: Client,
    id: u64,
    ttl: Duration,
    sure_until: Instant,
}

/// Whether a failed renewal may succeed when tried again: nothing says the lease is gone.
fn transient(e: &Error) -> bool {
    match e {
        Error::Api { status, .. } => matches!(status, 429 | 503 | 504),
        Error::Connect(_) | Error::Other(_) => true,
    }
}

impl LeaseKeeper {
    /// Keeps lease `id` of `ttl` alive; `renewed` is a moment at or before its last
    /// renewal (or its grant): the moment that request was sent.
    pub fn new(client: Client, id: u64, ttl: Duration, renewed: Instant) -> LeaseKeeper {
        LeaseKeeper { client, id, ttl, sure_until: renewed + ttl }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The lease's TTL (as the last renewal gave it).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Until when the lease is sure to live, as far as the client knows.
    pub fn sure_until(&self) -> Instant {
        self.sure_until
    }

    fn lost(&self, gone: bool, reason: String) -> LeaseLost {
        LeaseLost { lease: self.id, gone, reason }
    }

    /// Renews the lease once, trying again after a failure while the lease is sure to live
    /// (one attempt is always made). `notice` hears of each failed attempt.
    pub async fn renew(&mut self, notice: &mut impl FnMut(String)) -> Result<KeepaliveResponse, LeaseLost> {
        let id = self.id;
        let mut failures = 0u32;
        loop {
            let sent = Instant::now();
            // An attempt may take a third of the TTL (what is left of the sure time at
            // most), so an endpoint that hangs leaves time to try another.
            let left = self.sure_until.saturating_duration_since(sent);
            let patience = if left.is_zero() { self.ttl / 3 } else { (self.ttl / 3).min(left) };
            let e = match tokio::time::timeout(patience, self.client.lease_keepalive(id)).await {
                Ok(Ok(r)) => {
                    self.ttl = Duration::from_millis(r.ttl_ms);
                    self.sure_until = sent + self.ttl;
                    return Ok(r.body);
                }
                Ok(Err(e)) if e.is_lease_not_found() => {
                    return Err(self.lost(
                        true,
                        format!(
                            "lease {id} is gone: the cluster does not have it (it expired or was revoked)"
                        ),
                    ))
                }
                Ok(Err(e)) if !transient(&e) => {
                    return Err(self.lost(false, format!("lease {id} cannot be renewed: {e}")));
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no reply within {patience:.1?}"),
            };
            let left = self.sure_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.lost(
                    false,
                    format!(
                        "lease {id} may have ended: no renewal was acknowledged within its TTL ({:?}) of sending \
                         the last acknowledged one (the last attempt: {e})",
                        self.ttl
                    ),
                ));
            }
            notice(format!("renewing lease {id} failed ({e}); retrying for up to {left:.1?}"));
            self.client.next_endpoint();
            tokio::time::sleep(Duration::from_millis(100 << failures.min(3)).min(left)).await;
            failures += 1;
        }
    }

    /// Renews about every third of the TTL until the lease is lost, and says why.
    pub async fn keep(&mut self, notice: &mut impl FnMut(String)) -> LeaseLost {
        loop {
            tokio::time::sleep(self.ttl / 3).await;
            if let Err(lost) = self.renew(notice).await {
                return lost;
            }
        }
    }
}

/// Why a connection stopped giving events.
enum ConnError {
    /// It broke or ended: observe elsewhere.
    Lost(String),
    /// Nothing came for the probe interval.
    Silent,
    /// The server sent something that is not an election event.
    Invalid(String),
}

/// One open observation stream.
struct Conn {
    resp: reqwest::Response,
    endpoint: String,
    buf: Vec<u8>,
}

impl Conn {
    /// The next event and its JSON line.
    async fn next(&mut self, silence: Duration) -> Result<(ElectionEvent, String), ConnError> {
        loop {
            if let Some(at) = self.buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=at).collect();
                let text = String::from_utf8_lossy(&line).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                let event = serde_json::from_str(&text).map_err(|e| {
                    let shown: String = text.chars().take(200).collect();
                    ConnError::Invalid(format!(
                        "{} sent a line that is not an election event ({e}): {shown}",
                        self.endpoint
                    ))
                })?;
                return Ok((event, text));
            }
            match tokio::time::timeout(silence, self.resp.chunk()).await {
                Err(_) => return Err(ConnError::Silent),
                Ok(Err(e)) => return Err(ConnError::Lost(root_cause(&e))),
                Ok(Ok(None)) => return Err(ConnError::Lost("the server ended the stream".into())),
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
            }
        }
    }
}

/// An observation of an election that resumes by itself; see the module doc.
pub struct Observer {
    http: reqwest::Client,
    stream_path: String,
    leader_path: String,
    /// Silence after which the node is asked whether it is still there.
    probe: Duration,
    /// How long a reply's head (and a probe) may take, and how long an observation never
    /// established is retried.
    patience: Duration,
    /// Which endpoint, and when.
    failover: Failover,
    conn: Option<Conn>,
    /// The last state delivered and its revision.
    last: Option<(State, u64)>,
    ended: bool,
}

impl Observer {
    /// The endpoint in use (or to be tried next).
    pub fn endpoint(&self) -> &str {
        self.failover.endpoint()
    }

    /// Leaves the current connection; the next attempt goes to the next endpoint.
    fn drop_conn(&mut self) {
        self.conn = None;
        self.failover.lost();
    }

    /// The next change or notice. An `Err` is final: the observation was refused (a bad
    /// name), no endpoint could be reached before it was established, or a server sent
    /// garbage.
    pub async fn next(&mut self) -> Result<ObserveUpdate, Error> {
        loop {
            if self.ended {
                return Err(Error::Other("the observation has ended".into()));
            }
            let Some(conn) = &mut self.conn else {
                self.failover.before_attempt().await;
                match self.open().await {
                    Ok(conn) => {
                        let resumed = self.failover.connected();
                        let notice = format!("observing again via {}", conn.endpoint);
                        self.conn = Some(conn);
                        if resumed {
                            return Ok(ObserveUpdate::Notice(notice));
                        }
                        continue;
                    }
                    Err((e, transient)) => {
                        let endpoint = self.endpoint().to_string();
                        let e =
                            self.failover.attempt_failed(e, transient).inspect_err(|_| self.ended = true)?;
                        let what = if self.failover.established() {
                            "observing again"
                        } else {
                            "starting to observe"
                        };
                        return Ok(ObserveUpdate::Notice(format!(
                            "{what} via {endpoint} failed: {e}; trying {} in {:?}",
                            self.endpoint(),
                            self.failover.pending_wait()
                        )));
                    }
                }
            };
            match conn.next(self.probe).await {
                Ok((event, json)) => {
                    self.failover.delivered();
                    let endpoint = conn.endpoint.clone();
                    let (state, revision) = (event.state(), event.revision());
                    if let Some((last_state, last_revision)) = &self.last {
                        if *last_state == state {
                            continue;
                        }
                        if revision < *last_revision {
                            return Ok(ObserveUpdate::Notice(format!(
                                "ignored a state at revision {revision} from {endpoint}: one at revision \
                                 {last_revision} was delivered already"
                            )));
                        }
                    }
                    self.last = Some((state, revision));
                    return Ok(ObserveUpdate::Event { event, json });
                }
                Err(ConnError::Silent) => {
                    let endpoint = conn.endpoint.clone();
                    if let Err(e) = self.probe_endpoint(&endpoint).await {
                        self.drop_conn();
                        return Ok(ObserveUpdate::Notice(format!(
                            "{endpoint} was silent for {:?} and does not answer ({e}); observing via {}",
                            self.probe,
                            self.endpoint()
                        )));
                    }
                }
                Err(ConnError::Lost(reason)) => {
                    let endpoint = conn.endpoint.clone();
                    self.drop_conn();
                    return Ok(ObserveUpdate::Notice(format!(
                        "connection to {endpoint} lost ({reason}); observing via {}",
                        self.endpoint()
                    )));
                }
                Err(ConnError::Invalid(m)) => {
                    self.ended = true;
                    self.conn = None;
                    return Err(Error::Other(m));
                }
            }
        }
    }

    /// Asks `endpoint` for the leader, linearizably: an answer (a leader or `no_leader`)
    /// within the patience says the node is there and in touch with a quorum.
    async fn probe_endpoint(&self, endpoint: &str) -> Result<(), String> {
        let url = format!("{endpoint}{}", self.leader_path);
        let resp = match tokio::time::timeout(self.patience, self.http.get(&url).send()).await {
            Err(_) => return Err(format!("no reply within {:?}", self.patience)),
            Ok(Err(e)) => return Err(chain(&e)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = match tokio::time::timeout(self.patience, resp.bytes()).await {
            Ok(Ok(b)) => b,
            _ => return Err("the reply did not arrive".into()),
        };
        let e = api_error(status.as_u16(), &bytes);
        if e.code() == Some("no_leader") {
            return Ok(());
        }
        Err(e.to_string())
    }

    /// Opens the observation on the current endpoint. The error says whether another attempt
    /// may do better.
    async fn open(&self) -> Result<Conn, (Error, bool)> {
        let endpoint = self.endpoint().to_string();
        let url = format!("{endpoint}{}", self.stream_path);
        match open_stream(&self.http, &endpoint, &url, self.patience).await {
            Ok(resp) => Ok(Conn { resp, endpoint, buf: Vec::new() }),
            Err(Refusal::Transport(e)) => Err((e, true)),
            Err(Refusal::Status(status, bytes)) => {
                Err((api_error(status, &bytes), matches!(status, 429 | 503 | 504)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_travel_in_paths() {
        assert_eq!(name_path("/v1/locks", "db-migrations", "").unwrap(), "/v1/locks/db-migrations");
        assert_eq!(name_path("/v1/locks", "a.b_c", "?owner=1-2").unwrap(), "/v1/locks/a.b_c?owner=1-2");
        assert_eq!(name_path("/v1/elections", "...", "/observe").unwrap(), "/v1/elections/.../observe");
        // Left for the server to refuse, but sent as they are.
        assert_eq!(name_path("/v1/locks", "a/b", "").unwrap(), "/v1/locks/a%2Fb");
        for bad in ["", ".", ".."] {
            assert!(name_path("/v1/locks", bad, "").is_err(), "{bad:?}");
        }
        // (Escaping does not help: `%2E` is a dot segment to a URL parser too.)
        let url = reqwest::Url::parse("http://x/v1/locks/%2E%2E").unwrap();
        assert_eq!(url.path(), "/v1/");
    }

    #[test]
    fn durations_travel_as_whole_milliseconds() {
        assert_eq!(millis("t", Duration::from_secs(15)).unwrap(), "15000ms");
        assert_eq!(millis("t", Duration::ZERO).unwrap(), "0ms");
        assert!(millis("t", Duration::from_micros(1500)).is_err());
        let mut body = json!({});
        lease_fields(&mut body, OwnerLease::Ttl(Duration::from_secs(2))).unwrap();
        lease_fields(&mut body, OwnerLease::Id(7)).unwrap();
        assert_eq!(body, json!({"ttl": "2000ms", "lease": 7}));
        assert_eq!(value_body(b"node-a"), json!({"value": "node-a"}));
        assert_eq!(value_body(&[0xff]), json!({"value_base64": "/w=="}));
    }

    #[test]
    fn election_events_decode_and_reencode_faithfully() {
        let line =
            r#"{"leader":{"name":"e","value":"a:1","owner":"3-4","lease":3,"fencing_token":4,"revision":4}}"#;
        let event: ElectionEvent = serde_json::from_str(line).unwrap();
        assert_eq!(event.revision(), 4);
        assert_eq!(event.state(), Some(("3-4".into(), 4, b"a:1".to_vec())));
        assert_eq!(serde_json::to_string(&event).unwrap(), line);
        let line = r#"{"no_leader":{"name":"e","revision":9}}"#;
        let event: ElectionEvent = serde_json::from_str(line).unwrap();
        assert_eq!((event.revision(), event.state()), (9, None));
        assert_eq!(serde_json::to_string(&event).unwrap(), line);
        assert!(serde_json::from_str::<ElectionEvent>(r#"{"progress":{"revision":1}}"#).is_err());
    }

    /// A server that plays one script per connection: an observation that repeats its
    /// state and then ends, one that goes silent while its probe hangs, then one that
    /// starts at an older state before going on.
    #[tokio::test]
    async fn an_observer_resumes_without_repeating_or_going_back() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const HEAD: &[u8] =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";
        let leader = |owner: &str, token: u64, revision: u64| {
            format!(
                "{{\"leader\":{{\"name\":\"e\",\"value\":\"v\",\"owner\":\"{owner}\",\"lease\":1,\"fencing_token\":{token},\"revision\":{revision}}}}}\n"
            )
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (a, b) = (leader("1-4", 4, 4), leader("1-7", 7, 7));
        let script = vec![format!("{a}{a}"), "hang".to_string(), format!("{}{a}{b}", leader("1-2", 2, 2))];
        tokio::spawn(async move {
            let mut held = Vec::new();
            let mut streams = script.into_iter();
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 2048];
                let n = s.read(&mut buf).await.unwrap();
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                if !request.contains("/observe") {
                    // A probe: never answered.
                    held.push(s);
                    continue;
                }
                match streams.next() {
                    Some(body) if body == "hang" => {
                        s.write_all(HEAD).await.unwrap();
                        held.push(s);
                    }
                    Some(body) => {
                        s.write_all(HEAD).await.unwrap();
                        s.write_all(body.as_bytes()).await.unwrap();
                        let _ = s.shutdown().await;
                    }
                    None => held.push(s),
                }
            }
        });
        let client = Client::with_timeout(vec![addr.to_string()], Duration::from_millis(300)).unwrap();
        let mut o = client.observe("e", Duration::from_millis(200)).unwrap();
        let mut got = Vec::new();
        while got.len() < 5 {
            match o.next().await.unwrap() {
                ObserveUpdate::Event { event, .. } => got.push(format!("event {}", event.revision())),
                ObserveUpdate::Notice(n) => got.push(n.split(" (").next().unwrap().to_string()),
            }
        }
        let ep = format!("http://{addr}");
        assert_eq!(
            got,
            vec![
                "event 4".to_string(),
                format!("connection to {ep} lost"),
                format!("{ep} was silent for 200ms and does not answer"),
                "ignored a state at revision 2 from ".to_string()
                    + &ep
                    + ": one at revision 4 was delivered already",
                "event 7".to_string(),
            ]
        );
    }
}
