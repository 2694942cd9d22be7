//! Watches: `GET /v1/watch/{key}` read as newline-delimited JSON, resumed across
//! connections and endpoints by a [`Watcher`].
//!
//! A watcher delivers every revision once, in order, with no gap: it remembers the last
//! revision it delivered or that a progress message confirmed, and when its connection is
//! lost (the stream ends or breaks, or nothing arrives for [`SILENT_INTERVALS`] progress
//! intervals) it opens the watch again on the next endpoint, round-robin, at the revision
//! after that one. Starting (or resuming) is retried after a transport error, 429, 503 or
//! 504, after a short backoff that grows while attempts keep failing; any other error
//! reply is final. Before a watch was first established, retries stop once the client's
//! request timeout has passed and every endpoint was tried, or at once when no endpoint
//! accepts a connection.
//!
//! Streams are read without the client's total request timeout (a watch lasts as long as
//! it is read), but the connection, the reply's head and the silence between messages are
//! each bounded.

use std::time::Duration;

use super::failover::{open_stream, Failover, Refusal};
use super::{api_error, flag, key_path, num, query_string, root_cause, Client, Error};
use crate::wire::watch::WatchMessage;

/// The progress interval a watcher asks for when none is given.
pub const DEFAULT_PROGRESS: Duration = Duration::from_secs(5);

/// Progress intervals of silence after which a connection is taken for dead (the server
/// sends a progress message after every interval without a change).
pub const SILENT_INTERVALS: u32 = 3;

/// Options of [`Client::watch`].
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Watch the key and everything below it.
    pub recursive: bool,
    /// The first revision to deliver (the history from there, then live changes); `None`:
    /// from now (the stream then starts with a progress message at the current revision).
    pub start_revision: Option<u64>,
    /// Add each key's previous value to its events.
    pub prev_kv: bool,
    /// How long the server may stay silent before it sends a progress message (whole
    /// milliseconds; the server takes 100 ms to 1 h).
    pub progress: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions { recursive: false, start_revision: None, prev_kv: false, progress: DEFAULT_PROGRESS }
    }
}

/// What [`Watcher::next`] gives.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchUpdate {
    /// A message of the server, and its JSON line as received. A change's revision is
    /// always above every revision delivered before. A `Compacted` message is the last.
    Message { message: WatchMessage, json: String },
    /// What the watcher did about a lost connection or a failed attempt, as one line of
    /// text (for a log).
    Notice(String),
}

/// Why a connection stopped giving messages.
enum ConnError {
    /// The connection broke, ended or went silent: the watch resumes elsewhere.
    Lost(String),
    /// The server sent something that is not a watch message: nothing sensible follows.
    Invalid(String),
}

/// One open watch stream.
struct Conn {
    resp: reqwest::Response,
    endpoint: String,
    buf: Vec<u8>,
    /// How much of `buf` holds no newline.
    scanned: usize,
    silence: Duration,
}

impl Conn {
    /// The next message and its JSON line.
    async fn next(&mut self) -> Result<(WatchMessage, String), ConnError> {
        loop {
            if let Some(at) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + at;
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                self.scanned = 0;
                let text = String::from_utf8(line).map_err(|_| {
                    ConnError::Invalid(format!("{} sent a watch line that is not UTF-8", self.endpoint))
                })?;
                let text = text.trim();
                if text.is_empty() {
                    continue;
                }
                let message = serde_json::from_str(text).map_err(|e| {
                    let shown: String = text.chars().take(200).collect();
                    ConnError::Invalid(format!(
                        "{} sent a line that is not a watch message ({e}): {shown}",
                        self.endpoint
                    ))
                })?;
                return Ok((message, text.to_string()));
            }
            self.scanned = self.buf.len();
            match tokio::time::timeout(self.silence, self.resp.chunk()).await {
                Err(_) => return Err(ConnError::Lost(format!("nothing received for {:?}", self.silence))),
                Ok(Err(e)) => return Err(ConnError::Lost(root_cause(&e))),
                Ok(Ok(None)) => return Err(ConnError::Lost("the server ended the stream".into())),
                Ok(Ok(Some(bytes))) => self.buf.extend_from_slice(&bytes),
            }
        }
    }
}

/// A watch that resumes by itself; see the module documentation.
pub struct Watcher {
    http: reqwest::Client,
    /// The URL path, without the query.
    path: String,
    opts: WatchOptions,
    /// How long the reply's head may take, and how long a watch never established is
    /// retried.
    patience: Duration,
    /// Which endpoint, and when.
    failover: Failover,
    conn: Option<Conn>,
    /// The revision to open the watch at (`None`: from now, until a first message).
    next_start: Option<u64>,
    ended: bool,
}

impl Client {
    /// A watch on `key`, opened at the first call to [`Watcher::next`], on the endpoint
    /// that answered last.
    pub fn watch(&self, key: &str, opts: WatchOptions) -> Result<Watcher, Error> {
        let path = key_path("/v1/watch", key)?;
        let http = self
            .http_builder()
            .build()
            .map_err(|e| Error::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(Watcher {
            failover: Failover::new(
                self.endpoints.clone(),
                self.current.load(std::sync::atomic::Ordering::Relaxed),
                self.timeout,
            ),
            http,
            path,
            next_start: opts.start_revision,
            opts,
            patience: self.timeout,
            conn: None,
            ended: false,
        })
    }
}

impl Watcher {
    /// The revision the watch would resume at: one above the last revision delivered or
    /// confirmed by progress (`None`: from now, nothing was delivered yet).
    pub fn resume_revision(&self) -> Option<u64> {
        self.next_start
    }

    /// The endpoint in use (or to be tried next).
    pub fn endpoint(&self) -> &str {
        self.failover.endpoint()
    }

    fn at(&self) -> String {
        match self.next_start {
            Some(r) => format!("at revision {r}"),
            None => "from the current revision".into(),
        }
    }

    /// The next message or notice; `Ok(None)` after a `Compacted` message. An `Err` is
    /// final: the start was refused (a bad key, a future revision, ...), no endpoint could
    /// be reached before the watch was established, or a server sent garbage.
    pub async fn next(&mut self) -> Result<Option<WatchUpdate>, Error> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(conn) = &mut self.conn else {
                self.failover.before_attempt().await;
                match self.open().await {
                    Ok(conn) => {
                        let resumed = self.failover.connected();
                        let notice = format!("resumed {} via {}", self.at(), conn.endpoint);
                        self.conn = Some(conn);
                        if resumed {
                            return Ok(Some(WatchUpdate::Notice(notice)));
                        }
                        continue;
                    }
                    Err((e, transient)) => {
                        let endpoint = self.endpoint().to_string();
                        let e =
                            self.failover.attempt_failed(e, transient).inspect_err(|_| self.ended = true)?;
                        let what =
                            if self.failover.established() { "resuming" } else { "starting the watch" };
                        return Ok(Some(WatchUpdate::Notice(format!(
                            "{what} via {endpoint} failed: {e}; trying {} in {:?}",
                            self.endpoint(),
                            self.failover.pending_wait()
                        ))));
                    }
                }
            };
            match conn.next().await {
                Ok((message, json)) => {
                    self.failover.delivered();
                    match &message {
                        WatchMessage::Change { revision, .. } => {
                            if let Some(start) = self.next_start.filter(|&s| *revision < s) {
                                // Never deliver a revision twice, whatever a server sends.
                                return Ok(Some(WatchUpdate::Notice(format!(
                                    "ignored revision {revision} from {}: revisions up to {} were delivered already",
                                    conn.endpoint,
                                    start - 1
                                ))));
                            }
                            self.next_start = Some(revision + 1);
                        }
                        WatchMessage::Progress { progress } => {
                            self.next_start = Some(self.next_start.unwrap_or(0).max(progress.revision + 1));
                        }
                        WatchMessage::Compacted { .. } => {
                            self.ended = true;
                            self.conn = None;
                        }
                    }
                    return Ok(Some(WatchUpdate::Message { message, json }));
                }
                Err(ConnError::Lost(reason)) => {
                    let endpoint = conn.endpoint.clone();
                    self.conn = None;
                    self.failover.lost();
                    return Ok(Some(WatchUpdate::Notice(format!(
                        "connection to {endpoint} lost ({reason}); resuming {} via {}",
                        self.at(),
                        self.endpoint()
                    ))));
                }
                Err(ConnError::Invalid(m)) => {
                    self.ended = true;
                    self.conn = None;
                    return Err(Error::Other(m));
                }
            }
        }
    }

    /// Opens the watch on the current endpoint at `next_start`. The error says whether
    /// another attempt may do better.
    async fn open(&self) -> Result<Conn, (Error, bool)> {
        let endpoint = self.endpoint().to_string();
        let q = query_string(&[
            ("recursive", flag(self.opts.recursive)),
            ("start_revision", num(self.next_start)),
            ("prev_kv", flag(self.opts.prev_kv)),
            ("progress", Some(format!("{}ms", self.opts.progress.as_millis()))),
        ]);
        let url = format!("{endpoint}{}{q}", self.path);
        let (status, bytes) = match open_stream(&self.http, &endpoint, &url, self.patience).await {
            Ok(resp) => {
                let silence = self.opts.progress * SILENT_INTERVALS;
                return Ok(Conn { resp, endpoint, buf: Vec::new(), scanned: 0, silence });
            }
            Err(Refusal::Transport(e)) => return Err((e, true)),
            Err(Refusal::Status(status, bytes)) => (status, bytes),
        };
        let e = api_error(status, &bytes);
        // A resumed watch asks only for revisions a node delivered or confirmed: a node that
        // does not have them yet may be behind, and another one may not be.
        let transient = matches!(status, 429 | 503 | 504)
            || (self.failover.established() && e.code() == Some("future_revision"));
        Err((e, transient))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\nconnection: close\r\n\r\n";

    /// Reads a request's head; returns its first line.
    async fn request_line(s: &mut TcpStream) -> String {
        let mut buf = Vec::new();
        let mut b = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "the request ended early");
            buf.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&buf).lines().next().unwrap().to_string()
    }

    async fn error_reply(s: &mut TcpStream, status: &str, code: &str) {
        let body = format!(r#"{{"error":{{"code":"{code}","message":"m"}}}}"#);
        let head = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        s.write_all(body.as_bytes()).await.unwrap();
    }

    /// A server that plays one script per connection: a stream cut in the middle of a
    /// line, a 503, a stream that repeats a revision, one that goes silent, then a 400.
    #[tokio::test]
    async fn resumes_after_the_last_revision_delivered_or_confirmed() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            for n in 0.. {
                let (mut s, _) = listener.accept().await.unwrap();
                let line = request_line(&mut s).await;
                seen.lock().unwrap().push(line);
                match n {
                    0 => {
                        s.write_all(HEAD).await.unwrap();
                        s.write_all(b"{\"progress\":{\"revision\":4}}\n{\"revision\":5,").await.unwrap();
                        s.flush().await.unwrap();
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        s.write_all(b"\"events\":[]}\n{\"revision\":6,\"ev").await.unwrap();
                    }
                    1 => error_reply(&mut s, "503 Service Unavailable", "unavailable").await,
                    2 => {
                        s.write_all(HEAD).await.unwrap();
                        s.write_all(b"{\"revision\":5,\"events\":[]}\n{\"revision\":6,\"events\":[]}\n")
                            .await
                            .unwrap();
                        s.write_all(b"{\"progress\":{\"revision\":9}}\n").await.unwrap();
                    }
                    3 => {
                        s.write_all(HEAD).await.unwrap();
                        held.push(s);
                        continue;
                    }
                    _ => error_reply(&mut s, "400 Bad Request", "invalid_argument").await,
                }
                let _ = s.shutdown().await;
            }
        });
        let client = Client::new(vec![addr.to_string(), format!("localhost:{}", addr.port())]).unwrap();
        let opts =
            WatchOptions { recursive: true, progress: Duration::from_millis(100), ..Default::default() };
        let mut w = client.watch("/app", opts).unwrap();
        let mut got = Vec::new();
        let end = loop {
            match w.next().await {
                Ok(Some(WatchUpdate::Message { message, .. })) => got.push(format!("{message:?}")),
                Ok(Some(WatchUpdate::Notice(n))) => got.push(n),
                Ok(None) => panic!("ended without an error: {got:#?}"),
                Err(e) => break e,
            }
        };
        assert_eq!(end.code(), Some("invalid_argument"), "{end:?}");
        let (a, b) = (format!("http://{addr}"), format!("http://localhost:{}", addr.port()));
        let expected = vec![
            "Progress { progress: ProgressBody { revision: 4 } }".to_string(),
            "Change { revision: 5, events: [] }".into(),
            format!("connection to {a} lost (the server ended the stream); resuming at revision 6 via {b}"),
            format!("resuming via {b} failed: unavailable: m (HTTP 503); trying {a} in 200ms"),
            format!("resumed at revision 6 via {a}"),
            format!("ignored revision 5 from {a}: revisions up to 5 were delivered already"),
            "Change { revision: 6, events: [] }".into(),
            "Progress { progress: ProgressBody { revision: 9 } }".into(),
            format!("connection to {a} lost (the server ended the stream); resuming at revision 10 via {b}"),
            format!("connection to {b} lost (nothing received for 300ms); resuming at revision 10 via {a}"),
        ];
        assert_eq!(got, expected);
        let requests = requests.lock().unwrap().clone();
        let starts: Vec<Option<&str>> = requests
            .iter()
            .map(|r| r.split(['?', '&', ' ']).find_map(|p| p.strip_prefix("start_revision=")))
            .collect();
        assert_eq!(starts, vec![None, Some("6"), Some("6"), Some("10"), Some("10")], "{requests:?}");
        assert!(requests[0].starts_with("GET /v1/watch/app?recursive&progress=100ms "), "{requests:?}");
    }

    /// Before the watch starts, an endpoint that never answers does not use up the time
    /// the others get; one that refuses connections is skipped at once.
    #[tokio::test]
    async fn every_endpoint_gets_a_chance_to_start_the_watch() {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = live.accept().await.unwrap();
            request_line(&mut s).await;
            s.write_all(HEAD).await.unwrap();
            s.write_all(b"{\"progress\":{\"revision\":3}}\n").await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let eps = vec![silent_addr.to_string(), refused.to_string(), live_addr.to_string()];
        let client = Client::with_timeout(eps, Duration::from_millis(300)).unwrap();
        let mut w = client.watch("/", WatchOptions::default()).unwrap();
        let mut notices = Vec::new();
        loop {
            match w.next().await.unwrap().unwrap() {
                WatchUpdate::Notice(n) => notices.push(n),
                WatchUpdate::Message { message, .. } => {
                    assert!(matches!(message, WatchMessage::Progress { .. }), "{message:?}");
                    break;
                }
            }
        }
        assert_eq!(notices.len(), 2, "{notices:?}");
        assert!(notices[0].contains("no reply within 300ms"), "{notices:?}");
        assert!(
            notices[1].starts_with(&format!("starting the watch via http://{refused} failed")),
            "{notices:?}"
        );
        assert_eq!(w.resume_revision(), Some(4));
    }
}
