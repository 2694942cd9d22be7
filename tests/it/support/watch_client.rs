//! A watch reader for tests: one logical watch (`GET /v1/watch/{key}`), read over one or
//! more HTTP connections, every message recorded in arrival order for
//! `jepsen::watch::check_watches`.
//!
//! Each message is parsed with the server's own wire type
//! (`palisade::wire::watch::WatchMessage`), so a message the API does not define is a
//! protocol error, then converted to the checker's [`WatchMessage`]. The framing is checked
//! as it is read: SSE `id:` is the revision of a change or progress message and absent on
//! `compacted`, `event:` names the message's kind; a watch "from now" starts with a
//! progress message carrying the `X-Palisade-Revision` of the response. Protocol errors are
//! collected ([`Recording::protocol_errors`]); a test asserts there are none.
//!
//! Resuming: a connection that ends (reset, EOF, no byte for [`WatchSpec::idle`]) can be
//! followed by another one, on the same node or another, that starts at the revision after
//! the last one the stream covered (a delivered change or a progress), named either by
//! `Last-Event-ID: N` or by `?start_revision=N+1` ([`ResumeBy`]). The connections together
//! form ONE logical stream: [`Recording::stream`] is a [`WatchStream`] from the first
//! connection's start, so the checker verifies that the resumes lost and repeated nothing.
//! A watch "from now" whose first connection fails before its first progress message has
//! recorded nothing, and simply starts from now again.
//!
//! Two modes: [`WatchClient::connect`] reads one connection (the test decides what happens
//! when it ends: [`WatchClient::resume`]); [`WatchClient::follow`] resumes by itself after
//! every error, on another node of an [`Endpoints`] list when there is one, until stopped or
//! compacted.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

use crate::jepsen::recorder::Endpoints;
use crate::jepsen::watch::{WatchMessage, WatchStream};

/// How the stream is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream` (the default of the API).
    Sse,
    /// `Accept: application/x-ndjson`.
    Ndjson,
}

/// How a reconnection names where to resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeBy {
    /// `Last-Event-ID: <last revision covered>`.
    LastEventId,
    /// `?start_revision=<last revision covered + 1>`.
    StartRevision,
}

/// What to watch and how.
#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub key: String,
    pub recursive: bool,
    /// `None`: from now.
    pub start_revision: Option<u64>,
    pub framing: Framing,
    /// `?progress=` in milliseconds.
    pub progress_ms: u64,
    /// `?consistency=serializable` (default: linearizable).
    pub serializable: bool,
    /// `?prev_kv`.
    pub prev_kv: bool,
    /// How a resumed connection names its start.
    pub resume_by: ResumeBy,
    /// A connection that brings no byte for this long is taken for dead and dropped.
    pub idle: Duration,
}

impl WatchSpec {
    /// A watch of `key` from now, SSE, progress every 300 ms, resumed by `Last-Event-ID`.
    pub fn new(key: &str) -> WatchSpec {
        WatchSpec {
            key: key.to_string(),
            recursive: false,
            start_revision: None,
            framing: Framing::Sse,
            progress_ms: 300,
            serializable: false,
            prev_kv: false,
            resume_by: ResumeBy::LastEventId,
            idle: Duration::from_secs(4),
        }
    }

    pub fn recursive(mut self) -> WatchSpec {
        self.recursive = true;
        self
    }

    pub fn starting_at(mut self, start: u64) -> WatchSpec {
        self.start_revision = Some(start);
        self
    }

    pub fn ndjson(mut self) -> WatchSpec {
        self.framing = Framing::Ndjson;
        self
    }

    pub fn resume_by(mut self, by: ResumeBy) -> WatchSpec {
        self.resume_by = by;
        self
    }

    pub fn prev_kv(mut self) -> WatchSpec {
        self.prev_kv = true;
        self
    }

    /// The request path and query for a connection starting at `start` (`None`: now).
    fn path(&self, start: Option<u64>) -> String {
        let mut q = vec![format!("progress={}ms", self.progress_ms)];
        if self.recursive {
            q.push("recursive".into());
        }
        if let Some(s) = start {
            q.push(format!("start_revision={s}"));
        }
        if self.serializable {
            q.push("consistency=serializable".into());
        }
        if self.prev_kv {
            q.push("prev_kv".into());
        }
        let key = if self.key == "/" { "/".to_string() } else { super::process::encode_key(&self.key) };
        format!("/v1/watch{key}?{}", q.join("&"))
    }
}

/// The arrival order shared by several watches: a sequence number and a clock.
#[derive(Debug)]
pub struct WatchClock {
    start: Instant,
    seq: AtomicU64,
}

impl WatchClock {
    pub fn new() -> Arc<WatchClock> {
        Arc::new(WatchClock { start: Instant::now(), seq: AtomicU64::new(0) })
    }

    fn next(&self) -> (u64, u64) {
        (self.seq.fetch_add(1, Ordering::Relaxed), self.start.elapsed().as_nanos() as u64)
    }
}

/// One recorded message.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// Arrival order among every watch sharing the clock.
    pub seq: u64,
    pub at_ns: u64,
    /// The index of the connection it came on ([`Recording::connections`]).
    pub conn: usize,
}

/// One HTTP connection of a watch.
#[derive(Clone, Debug)]
pub struct Connection {
    pub url: String,
    /// The start it asked for (`None`: from now).
    pub start: Option<u64>,
    pub by: Option<ResumeBy>,
    /// The status, when a response came.
    pub status: Option<u16>,
    /// `X-Palisade-Revision` of the response.
    pub head: Option<u64>,
    /// Messages recorded on it: `first..first + count`.
    pub first: usize,
    pub count: usize,
    /// Why it ended (`None`: still open).
    pub end: Option<String>,
}

/// How a connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Not established (refused, an error status, ...): try elsewhere.
    Failed(String),
    /// Established, then broken, closed or silent.
    Broken(String),
    /// The stream ended with `compacted`: nothing more to read, ever.
    Compacted,
    /// A reply the test cannot go on from (recorded as a protocol error).
    Fatal(String),
}

#[derive(Default)]
struct State {
    /// The logical stream's first revision, once known.
    start: Option<u64>,
    /// The last revision covered (delivered change or progress); `start - 1` at first.
    covered: u64,
    messages: Vec<WatchMessage>,
    arrivals: Vec<Arrival>,
    connections: Vec<Connection>,
    compacted: bool,
    protocol_errors: Vec<String>,
    /// The reading task is done (stopped, compacted or, in `connect` mode, disconnected).
    idle: bool,
    /// Which reading task is the current one (an aborted one must not mark it idle).
    task: u64,
}

struct Inner {
    id: String,
    spec: WatchSpec,
    clock: Arc<WatchClock>,
    http: reqwest::Client,
    state: Mutex<State>,
    /// Breaks the connection being read ([`WatchClient::kick`]).
    kick: tokio::sync::Notify,
}

/// What a watch recorded.
#[derive(Clone, Debug)]
pub struct Recording {
    pub stream: WatchStream,
    pub arrivals: Vec<Arrival>,
    pub connections: Vec<Connection>,
    pub protocol_errors: Vec<String>,
    /// The last revision covered.
    pub covered: u64,
    pub compacted: bool,
}

impl Recording {
    /// The connections, one line each, for a failure message.
    pub fn describe(&self) -> String {
        let mut out = format!(
            "watch {} ({}{}, start {}): {} messages over {} connection(s), covered through {}{}\n",
            self.stream.id,
            self.stream.key_or_prefix,
            if self.stream.recursive { " recursive" } else { "" },
            self.stream.start_revision,
            self.stream.messages.len(),
            self.connections.len(),
            self.covered,
            if self.compacted { ", ended compacted" } else { "" }
        );
        for (i, c) in self.connections.iter().enumerate() {
            let _ = writeln!(
                out,
                "  conn {i}: {} start {} ({}) status {:?} head {:?}: messages [{}..{}), end: {}",
                c.url,
                c.start.map_or("now".to_string(), |s| s.to_string()),
                match c.by {
                    None => "first",
                    Some(ResumeBy::LastEventId) => "resumed by Last-Event-ID",
                    Some(ResumeBy::StartRevision) => "resumed by start_revision",
                },
                c.status,
                c.head,
                c.first,
                c.first + c.count,
                c.end.as_deref().unwrap_or("open")
            );
        }
        for e in &self.protocol_errors {
            let _ = writeln!(out, "  protocol error: {e}");
        }
        out
    }

    /// The revisions of the change messages, in arrival order.
    pub fn change_revisions(&self) -> Vec<u64> {
        self.stream
            .messages
            .iter()
            .filter_map(|m| match m {
                WatchMessage::Change { revision, .. } => Some(*revision),
                _ => None,
            })
            .collect()
    }
}

/// One logical watch; see the module documentation.
pub struct WatchClient {
    inner: Arc<Inner>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for WatchClient {
    fn drop(&mut self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
    }
}

/// A reqwest client for streams: no overall timeout (a watch lasts), a short connect one.
/// With the test run's credentials (see `super::credentials`).
pub fn stream_client() -> reqwest::Client {
    super::credentials::client_builder()
        .connect_timeout(Duration::from_secs(1))
        .pool_max_idle_per_host(0)
        .build()
        .expect("a reqwest client")
}

impl WatchClient {
    /// A watch named `id` (not connected yet).
    pub fn new(id: &str, spec: WatchSpec, clock: Arc<WatchClock>) -> WatchClient {
        let state = State {
            start: spec.start_revision,
            covered: spec.start_revision.map_or(0, |s| s.saturating_sub(1)),
            idle: true,
            ..State::default()
        };
        let inner = Inner {
            id: id.to_string(),
            spec,
            clock,
            http: stream_client(),
            state: Mutex::new(state),
            kick: tokio::sync::Notify::new(),
        };
        WatchClient { inner: Arc::new(inner), task: Mutex::new(None) }
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&self, fut: impl std::future::Future<Output = ()> + Send + 'static) {
        let mut task = self.task.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = task.take() {
            t.abort();
        }
        let generation = {
            let mut s = self.lock();
            s.idle = false;
            s.task += 1;
            s.task
        };
        let inner = self.inner.clone();
        *task = Some(tokio::spawn(async move {
            fut.await;
            let mut s = inner.state.lock().unwrap_or_else(|e| e.into_inner());
            if s.task == generation {
                s.idle = true;
            }
        }));
    }

    /// Reads one connection to `url` (the first one: from the spec's start). Returns at
    /// once; the connection is read in a task until it ends.
    pub fn connect(&self, url: &str) {
        let (inner, url) = (self.inner.clone(), url.to_string());
        self.spawn(async move {
            inner.connection(&url, None).await;
        });
    }

    /// Drops the current connection, if any, as a client that goes away does (the TCP
    /// connection is closed); what was recorded stays.
    pub fn disconnect(&self) {
        if let Some(t) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            t.abort();
        }
        let mut s = self.lock();
        s.idle = true;
        s.task += 1;
        if let Some(c) = s.connections.last_mut() {
            if c.end.is_none() {
                c.end = Some("dropped by the client".into());
            }
        }
    }

    /// Drops the connection being read, if any, as a client that goes away does; with
    /// [`WatchClient::follow`], the watch then resumes (on another node).
    pub fn kick(&self) {
        self.inner.kick.notify_waiters();
    }

    /// Resumes on `url` after the last revision covered, named as `by` says (drops the
    /// current connection first, if any). Returns at once.
    pub fn resume(&self, url: &str, by: ResumeBy) {
        self.disconnect();
        let (inner, url) = (self.inner.clone(), url.to_string());
        self.spawn(async move {
            inner.connection(&url, Some(by)).await;
        });
    }

    /// Reads `first` (if given, else a node from `endpoints`), and after every error
    /// resumes on another node of `endpoints` (or the same, when it is the only one), until
    /// stopped or compacted. Resumes as the spec says.
    pub fn follow(&self, endpoints: Endpoints, first: Option<String>) {
        let inner = self.inner.clone();
        self.spawn(async move {
            let mut url = first;
            let mut last: Option<String> = None;
            loop {
                let u = match url.take() {
                    Some(u) => u,
                    None => {
                        let urls = endpoints();
                        let others: Vec<&String> =
                            urls.iter().filter(|u| Some(*u) != last.as_ref()).collect();
                        let pick = if others.is_empty() {
                            urls.first()
                        } else {
                            Some(others[rand::thread_rng().gen_range(0..others.len())])
                        };
                        match pick {
                            Some(u) => u.clone(),
                            None => {
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        }
                    }
                };
                match inner.connection(&u, Some(inner.spec.resume_by)).await {
                    End::Compacted | End::Fatal(_) => return,
                    End::Failed(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                    End::Broken(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
                last = Some(u);
            }
        });
    }

    /// The last revision covered (a delivered change or a progress message).
    pub fn covered(&self) -> u64 {
        self.lock().covered
    }

    /// Whether the stream's start is known (a watch from now got its first progress).
    pub fn established(&self) -> bool {
        self.lock().start.is_some()
    }

    /// Whether no connection is being read (never connected, ended, stopped).
    pub fn is_idle(&self) -> bool {
        self.lock().idle
    }

    /// Messages recorded so far.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Change messages recorded so far.
    pub fn changes(&self) -> usize {
        self.lock().messages.iter().filter(|m| matches!(m, WatchMessage::Change { .. })).count()
    }

    /// Waits until `f(self)` holds, or fails after `within` with the recording.
    pub async fn wait_until(
        &self,
        within: Duration,
        what: &str,
        f: impl Fn(&WatchClient) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if f(self) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("{what}: not within {within:?}\n{}", self.recording().describe()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the stream has covered `revision`.
    pub async fn wait_covered(&self, revision: u64, within: Duration) -> Result<(), String> {
        self.wait_until(within, &format!("watch {} to cover revision {revision}", self.id()), |w| {
            w.established() && w.covered() >= revision
        })
        .await
    }

    /// What was recorded so far.
    pub fn recording(&self) -> Recording {
        let s = self.lock();
        let spec = &self.inner.spec;
        Recording {
            stream: WatchStream {
                id: self.inner.id.clone(),
                key_or_prefix: spec.key.clone(),
                recursive: spec.recursive,
                // Never established: it covers nothing.
                start_revision: s.start.unwrap_or(u64::MAX),
                messages: s.messages.clone(),
            },
            arrivals: s.arrivals.clone(),
            connections: s.connections.clone(),
            protocol_errors: s.protocol_errors.clone(),
            covered: s.covered,
            compacted: s.compacted,
        }
    }

    /// Stops reading (dropping the connection) and returns the recording.
    pub fn stop(&self) -> Recording {
        self.disconnect();
        self.recording()
    }
}

/// One SSE event or NDJSON line, before parsing its JSON.
struct Frame {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

/// Takes the complete frames off the front of `buf`; `scanned` bytes of it are known to
/// hold no frame end (so a big message arriving in many chunks is scanned once).
fn frames(buf: &mut Vec<u8>, scanned: &mut usize, framing: Framing) -> Result<Vec<Frame>, String> {
    let sep: &[u8] = match framing {
        Framing::Sse => b"\n\n",
        Framing::Ndjson => b"\n",
    };
    let mut out = Vec::new();
    loop {
        let from = scanned.saturating_sub(sep.len() - 1);
        let Some(at) = buf[from..].windows(sep.len()).position(|w| w == sep).map(|p| p + from) else {
            *scanned = buf.len();
            return Ok(out);
        };
        *scanned = 0;
        let raw: Vec<u8> = buf.drain(..at + sep.len()).take(at).collect();
        let text = String::from_utf8(raw).map_err(|e| format!("a frame that is not UTF-8: {e}"))?;
        match framing {
            Framing::Ndjson => {
                if !text.trim().is_empty() {
                    out.push(Frame { id: None, event: None, data: text });
                }
            }
            Framing::Sse => {
                let mut f = Frame { id: None, event: None, data: String::new() };
                let mut has_data = false;
                for line in text.split('\n') {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    let (field, value) = match line.split_once(':') {
                        Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
                        None => (line, ""),
                    };
                    match field {
                        "id" => f.id = Some(value.to_string()),
                        "event" => f.event = Some(value.to_string()),
                        "data" => {
                            if has_data {
                                f.data.push('\n');
                            }
                            f.data.push_str(value);
                            has_data = true;
                        }
                        other => {
                            return Err(format!("an SSE field the API does not send: {other:?} in {text:?}"))
                        }
                    }
                }
                if has_data {
                    out.push(f);
                } else if f.id.is_some() || f.event.is_some() {
                    return Err(format!("an SSE event without data: {text:?}"));
                }
            }
        }
    }
}

/// Parses one message with the server's wire type and converts it for the checker.
fn parse(frame: &Frame, framing: Framing) -> Result<WatchMessage, String> {
    let wire: palisade::wire::watch::WatchMessage = serde_json::from_str(&frame.data)
        .map_err(|e| format!("a message the API does not define ({e}): {}", frame.data))?;
    let value = serde_json::to_value(&wire).map_err(|e| e.to_string())?;
    let msg = WatchMessage::from_json(&value)?;
    if framing == Framing::Sse {
        let (event, id) = match &msg {
            WatchMessage::Change { revision, .. } => ("change", Some(*revision)),
            WatchMessage::Progress { revision } => ("progress", Some(*revision)),
            WatchMessage::Compacted { .. } => ("compacted", None),
        };
        if frame.event.as_deref() != Some(event) {
            return Err(format!("event: {:?} on a {event} message: {}", frame.event, frame.data));
        }
        if frame.id.as_deref().map(|s| s.parse::<u64>().ok()) != id.map(Some) {
            return Err(format!("id: {:?} on a {event} message: {}", frame.id, frame.data));
        }
    }
    Ok(msg)
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn end(&self, conn: usize, end: End) -> End {
        let mut s = self.lock();
        let why = match &end {
            End::Failed(w) => format!("failed: {w}"),
            End::Broken(w) => format!("broken: {w}"),
            End::Compacted => "compacted".to_string(),
            End::Fatal(w) => {
                s.protocol_errors.push(format!("connection {conn}: {w}"));
                format!("fatal: {w}")
            }
        };
        s.connections[conn].end = Some(why);
        end
    }

    /// One connection: opens it (resuming after the last revision covered when `by` is
    /// given, else from the spec's start), records what it reads, returns how it ended.
    async fn connection(&self, url: &str, by: Option<ResumeBy>) -> End {
        let spec = &self.spec;
        let (start, last_id, conn) = {
            let mut s = self.lock();
            let (start, last_id, by) = if s.start.is_none() {
                // A watch from now not established yet: from now, again.
                (None, None, None)
            } else if s.connections.is_empty() {
                (spec.start_revision, None, None)
            } else {
                match by.unwrap_or(ResumeBy::StartRevision) {
                    ResumeBy::StartRevision => (Some(s.covered + 1), None, Some(ResumeBy::StartRevision)),
                    ResumeBy::LastEventId => {
                        (Some(s.covered + 1), Some(s.covered), Some(ResumeBy::LastEventId))
                    }
                }
            };
            let first = s.messages.len();
            s.connections.push(Connection {
                url: url.to_string(),
                start,
                by,
                status: None,
                head: None,
                first,
                count: 0,
                end: None,
            });
            (start, last_id, s.connections.len() - 1)
        };
        let path = match last_id {
            Some(_) => spec.path(None),
            None => spec.path(start),
        };
        let mut req = self.http.get(format!("{}{path}", url.trim_end_matches('/')));
        if let Some(id) = last_id {
            req = req.header("last-event-id", id.to_string());
        }
        if spec.framing == Framing::Ndjson {
            req = req.header("accept", "application/x-ndjson");
        }
        let mut resp = match tokio::time::timeout(spec.idle, req.send()).await {
            Err(_) => return self.end(conn, End::Failed(format!("no response within {:?}", spec.idle))),
            Ok(Err(e)) => return self.end(conn, End::Failed(format!("request: {e}"))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status().as_u16();
        let head = resp
            .headers()
            .get("x-palisade-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        {
            let mut s = self.lock();
            s.connections[conn].status = Some(status);
            s.connections[conn].head = head;
        }
        if status != 200 {
            let body = tokio::time::timeout(spec.idle, resp.text()).await.ok().and_then(|r| r.ok());
            let body = body.unwrap_or_default();
            let code = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
            let why = format!("{status} {body}");
            return match (status, code.as_deref()) {
                // No quorum, too many watchers, shutting down: another node may serve it.
                (503 | 429 | 504, _) => self.end(conn, End::Failed(why)),
                // A node that is behind, asked for a serializable start past its head.
                (400, Some("future_revision")) if spec.serializable => self.end(conn, End::Failed(why)),
                _ => self.end(conn, End::Fatal(format!("a watch was refused: {why}"))),
            };
        }
        let ctype =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let want = match spec.framing {
            Framing::Sse => "text/event-stream",
            Framing::Ndjson => "application/x-ndjson",
        };
        if !ctype.starts_with(want) {
            return self.end(conn, End::Fatal(format!("content-type {ctype:?}, expected {want}")));
        }
        let Some(head) = head else {
            return self.end(conn, End::Fatal("a watch response without X-Palisade-Revision".into()));
        };
        let mut buf: Vec<u8> = Vec::new();
        let mut scanned = 0;
        let mut first = true;
        // After `compacted` the server must end the stream: read on until it does.
        let mut compacted = false;
        loop {
            let read = tokio::select! {
                r = tokio::time::timeout(spec.idle, resp.chunk()) => r,
                _ = self.kick.notified() => {
                    return self.end(conn, End::Broken("dropped by the client".into()));
                }
            };
            let chunk = match read {
                Err(_) if compacted => {
                    return self.end(
                        conn,
                        End::Fatal(format!("the stream stayed open for {:?} after compacted", spec.idle)),
                    )
                }
                Err(_) => return self.end(conn, End::Broken(format!("no byte for {:?}", spec.idle))),
                Ok(Err(e)) => return self.end(conn, End::Broken(format!("read: {e}"))),
                Ok(Ok(None)) => {
                    let rest = if buf.is_empty() {
                        String::new()
                    } else {
                        format!(" ({} bytes of an unfinished message dropped)", buf.len())
                    };
                    if compacted {
                        if !buf.is_empty() {
                            return self
                                .end(conn, End::Fatal(format!("the stream ended after compacted{rest}")));
                        }
                        return self.end(conn, End::Compacted);
                    }
                    return self.end(conn, End::Broken(format!("the server ended the stream{rest}")));
                }
                Ok(Ok(Some(c))) => c,
            };
            buf.extend_from_slice(&chunk);
            let frames = match frames(&mut buf, &mut scanned, spec.framing) {
                Ok(f) => f,
                Err(e) => return self.end(conn, End::Fatal(e)),
            };
            for f in frames {
                let msg = match parse(&f, spec.framing) {
                    Ok(m) => m,
                    Err(e) => return self.end(conn, End::Fatal(e)),
                };
                let (seq, at_ns) = self.clock.next();
                let mut s = self.lock();
                if first && start.is_none() {
                    // A watch from now: its first message says where it starts.
                    match msg {
                        WatchMessage::Progress { revision } if revision == head && s.start.is_none() => {
                            s.start = Some(revision + 1);
                            s.covered = revision;
                        }
                        ref m => {
                            drop(s);
                            return self.end(
                                conn,
                                End::Fatal(format!(
                                    "a watch from now began with {m}, not with progress at its head {head}"
                                )),
                            );
                        }
                    }
                }
                first = false;
                match &msg {
                    WatchMessage::Change { revision, .. } | WatchMessage::Progress { revision } => {
                        s.covered = s.covered.max(*revision);
                    }
                    WatchMessage::Compacted { .. } => {
                        s.compacted = true;
                        compacted = true;
                    }
                }
                s.messages.push(msg);
                s.arrivals.push(Arrival { seq, at_ns, conn });
                s.connections[conn].count += 1;
            }
        }
    }
}
