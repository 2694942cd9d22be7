//! A typed async client for Palisade's HTTP/JSON API, used by the CLI and by tests.
//!
//! ```no_run
//! # async fn demo() -> Result<(), palisade::client::Error> {
//! use palisade::client::{Client, GetOptions, PutOptions};
//! let client = Client::new(vec!["http://127.0.0.1:7379".into()])?;
//! client.put("/app/db/leader", b"node-a", PutOptions::default()).await?;
//! let got = client.get("/app/db/leader", GetOptions::default()).await?;
//! assert_eq!(got.kv.value_bytes(), b"node-a");
//! # Ok(()) }
//! ```
//!
//! Failover: a request goes to the endpoint that answered last. Only when it cannot even
//! connect there (nothing was sent) does it try the next endpoint, round-robin. Any other
//! failure (a timeout, a reset mid-request) or any HTTP reply, error statuses included, is
//! final: a write that may have been delivered is never sent again, unless it carries an
//! idempotency key: then the server applies it at most once, and the client retries it
//! (on the next endpoint, a few times within a bounded time) after a timeout, a broken
//! connection, 429, 503 or 504, and reports `replayed` when the answer is the first one's.
//! Proxy variables (`HTTP_PROXY`, ...) are ignored: members are reached directly.
//!
//! TLS: `https://` endpoints need [`ClientTls::ca_file`], the CA that signed the cluster's
//! certificates, which is then the client's only trust root (there are no built-in or
//! system roots: a cluster's CA is its own, and trusting every public CA as well would let
//! any of them vouch for a member). [`ClientTls::cert_file`] and [`ClientTls::key_file`]
//! present a client certificate, for a client listener run with `--tls-client-ca-file`.
//!
//! ```no_run
//! # fn demo() -> Result<(), palisade::client::Error> {
//! use palisade::client::{Client, ClientTls};
//! let client = Client::builder(vec!["https://10.0.0.1:7379".into()])
//!     .timeout(std::time::Duration::from_secs(5))
//!     .tls(ClientTls { ca_file: Some("ca.pem".into()), ..ClientTls::default() })
//!     .build()?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::Method;
use serde::{Serialize, Serializer};
use serde_json::Value;

mod cluster;
mod failover;
mod kv;
mod lease;
mod lock;
mod snapshot;
mod txn;
mod watch;

pub use crate::wire::lease::{
    GrantResponse, KeepaliveResponse, LeaseListResponse, LeaseResponse, LeaseSummary, RevokeResponse,
};
pub use crate::wire::lock::{
    FenceValid, HolderInfo, Leader, LockGrant, LockInfo, LockListResponse, LockResponse, NoLeader,
    ReleaseResponse, WaiterInfo,
};
pub use crate::wire::txn::{CompactResponse, TxnRequest, TxnResponse};
pub use crate::wire::{
    decode_value, put_body, Child, ChildrenResponse, ClusterResponse, CountResponse, DeleteResponse,
    GetResponse, KeyValue, ListResponse, MemberResponse, PutResponse,
};
pub use kv::{ChildrenOptions, Conditions, DeleteOptions, GetOptions, ListOptions, PutOptions};
pub use lock::{
    AcquireOptions, CampaignOptions, ElectionEvent, Fence, LeaseKeeper, LeaseLost, ObserveUpdate, Observer,
    OwnerLease,
};
pub use snapshot::SnapshotDownload;
pub use watch::{WatchOptions, WatchUpdate, Watcher};

/// Attempts of an idempotent write before its last error is returned.
pub const WRITE_ATTEMPTS: u32 = 5;

/// A fresh idempotency key: 128 random bits, hex.
pub fn new_idempotency_key() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The request timeout when none is given.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything but RFC 3986 unreserved characters is percent-encoded, in path segments and
/// in query values alike (so `%`, `?`, `#`, `+`, `&`, `=`, spaces and non-ASCII are safe).
const ENCODE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Why a request failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Error {
    /// The server replied with an error status. `body` is the whole JSON body as received
    /// (`{"error": {"code", "message", ...}}`; for a reply that is not JSON, a string).
    Api { status: u16, code: String, message: String, body: Value },
    /// No endpoint could be reached (nothing was sent); the text names the endpoints tried.
    Connect(String),
    /// Anything else: a timeout, a broken connection, an unexpected reply, a bad argument.
    Other(String),
}

impl Error {
    /// The HTTP status of an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The `error.code` of an API error (`key_not_found`, `condition_failed`, ...).
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Whether this is the server's `key_not_found`.
    pub fn is_key_not_found(&self) -> bool {
        self.code() == Some("key_not_found")
    }

    /// Whether this is the server's `lease_not_found` (the lease expired, was revoked or
    /// never existed).
    pub fn is_lease_not_found(&self) -> bool {
        self.code() == Some("lease_not_found")
    }

    /// For a `condition_failed` error: `Some(current)`, the key as it is now (`None` inside
    /// when the key does not exist). `None` for any other error.
    pub fn current_kv(&self) -> Option<Option<KeyValue>> {
        match self {
            Error::Api { code, body, .. } if code == "condition_failed" => {
                let current =
                    body.get("error").and_then(|e| e.get("current")).cloned().unwrap_or(Value::Null);
                Some(serde_json::from_value::<Option<KeyValue>>(current).ok().flatten())
            }
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Api { status, code, message, .. } => write!(f, "{code}: {message} (HTTP {status})"),
            Error::Connect(m) | Error::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

/// A reply: its body (what the call returns, through `Deref`) and what its headers said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<T> {
    pub body: T,
    pub meta: ResponseMeta,
}

impl<T> std::ops::Deref for Reply<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.body
    }
}

impl<T> std::ops::DerefMut for Reply<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.body
    }
}

/// A reply serialises as its body (the server's JSON).
impl<T: Serialize> Serialize for Reply<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.body.serialize(s)
    }
}

/// What the reply's headers said: the state it reflects and who answered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseMeta {
    /// `X-Palisade-Revision`.
    pub revision: Option<u64>,
    /// `X-Palisade-Term`.
    pub term: Option<u64>,
    /// The endpoint that answered.
    pub endpoint: String,
    /// `Idempotent-Replayed: true`: the write was applied before, by an earlier attempt.
    pub replayed: bool,
}

/// Normalises an endpoint: adds `http://` when there is no scheme, drops a trailing `/`.
pub fn normalize_endpoint(endpoint: &str) -> Result<String, Error> {
    let e = endpoint.trim().trim_end_matches('/');
    if e.is_empty() {
        return Err(Error::Other("an endpoint is empty".into()));
    }
    let url = if e.contains("://") { e.to_string() } else { format!("http://{e}") };
    if !url.starts_with("http://") && !url.starts_with("https://") {
        return Err(Error::Other(format!("endpoint {url}: only http:// and https:// URLs are supported")));
    }
    reqwest::Url::parse(&url).map_err(|e| Error::Other(format!("endpoint {url} is not a valid URL: {e}")))?;
    Ok(url)
}

/// The URL path of a key: `/v1/kv` + the key, each segment percent-encoded.
///
/// Refuses (locally) what cannot travel in a URL as it is: a key that does not start with
/// `/`, and `.` / `..` segments (URL parsers fold them away). Other key rules are the
/// server's to check, so its `invalid_key` reply reaches the caller.
pub fn kv_path(key: &str) -> Result<String, Error> {
    key_path("/v1/kv", key)
}

/// The URL path of a key under `route` (`/v1/kv`, `/v1/watch`); see [`kv_path`].
pub fn key_path(route: &str, key: &str) -> Result<String, Error> {
    let Some(rest) = key.strip_prefix('/') else {
        return Err(Error::Other(format!("invalid key {key:?}: a key must start with '/'")));
    };
    let mut path = String::from(route);
    for seg in rest.split('/') {
        if seg == "." || seg == ".." {
            return Err(Error::Other(format!("invalid key {key:?}: a key must not have a '{seg}' segment")));
        }
        path.push('/');
        path.extend(utf8_percent_encode(seg, ENCODE));
    }
    Ok(path)
}

/// A query string (with its leading `?`, or empty): `None` values are left out, flags
/// (`Some("")`) are bare names, other values are percent-encoded.
pub fn query_string(params: &[(&str, Option<String>)]) -> String {
    let mut q = String::new();
    for (name, value) in params {
        let Some(value) = value else { continue };
        q.push(if q.is_empty() { '?' } else { '&' });
        q.extend(utf8_percent_encode(name, ENCODE));
        if !value.is_empty() {
            q.push('=');
            q.extend(utf8_percent_encode(value, ENCODE));
        }
    }
    q
}

pub(crate) fn flag(on: bool) -> Option<String> {
    on.then(String::new)
}

pub(crate) fn num(n: Option<u64>) -> Option<String> {
    n.map(|n| n.to_string())
}

/// The TLS files of a client (see the module docs). All PEM.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// The CA that signed the servers' certificates: the only trust root. Needed for
    /// `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain) to present, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
}

impl ClientTls {
    /// Whether any file is given.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The rustls config these files describe (`--cacert`, `--cert`, `--key` name them in
    /// errors).
    fn load(&self) -> Result<rustls::ClientConfig, Error> {
        let ca = self.ca_file.as_ref().ok_or_else(|| {
            Error::Other("a client certificate needs the CA of the servers too (--cacert)".into())
        })?;
        let identity = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                Some((crate::tls::PemFile::new("--cert", c), crate::tls::PemFile::new("--key", k)))
            }
            (Some(_), None) => return Err(Error::Other("--cert needs --key (its private key)".into())),
            (None, Some(_)) => return Err(Error::Other("--key needs --cert (its certificate)".into())),
        };
        crate::tls::ClientFiles { ca: crate::tls::PemFile::new("--cacert", ca), identity }
            .load()
            .map_err(|e| Error::Other(e.to_string()))
    }
}

/// Builds a [`Client`]: `Client::builder(endpoints).timeout(t).tls(files).build()`.
#[derive(Clone)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    timeout: Duration,
    tls: ClientTls,
    token: Option<String>,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .field("token", &self.token.as_ref().map(|_| ".."))
            .finish()
    }
}

impl ClientBuilder {
    /// How long one request (one attempt at one endpoint) may take; default
    /// [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> ClientBuilder {
        self.timeout = timeout;
        self
    }

    /// The TLS files (see [`ClientTls`]).
    pub fn tls(mut self, tls: ClientTls) -> ClientBuilder {
        self.tls = tls;
        self
    }

    /// A token (JWT) sent as `Authorization: Bearer <token>` with every request, for a
    /// cluster with client auth on.
    pub fn token(mut self, token: Option<String>) -> ClientBuilder {
        self.token = token;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let endpoints =
            self.endpoints.iter().map(|e| normalize_endpoint(e)).collect::<Result<Vec<_>, _>>()?;
        if endpoints.is_empty() {
            return Err(Error::Other("no endpoints given".into()));
        }
        let timeout = self.timeout;
        if timeout.is_zero() {
            return Err(Error::Other("the timeout must be above zero".into()));
        }
        let tls = if self.tls.is_set() { Some(Arc::new(self.tls.load()?)) } else { None };
        if tls.is_none() {
            if let Some(e) = endpoints.iter().find(|e| e.starts_with("https://")) {
                return Err(Error::Other(format!(
                    "endpoint {e}: https needs the CA that signed the cluster's certificates (--cacert, \
                     PALISADE_CACERT): this client trusts no other root"
                )));
            }
        }
        let authorization = match &self.token {
            None => None,
            Some(token) => {
                let mut value =
                    reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
                        .map_err(|_| Error::Other("the token is not printable ASCII (a JWT is)".into()))?;
                // Kept out of debug output.
                value.set_sensitive(true);
                Some(value)
            }
        };
        let mut client = Client {
            endpoints: Arc::new(endpoints),
            http: reqwest::Client::new(),
            current: Arc::default(),
            timeout,
            tls,
            authorization,
        };
        client.http = client
            .http_builder()
            .timeout(timeout)
            .build()
            .map_err(|e| Error::Other(format!("cannot build the HTTP client: {e}")))?;
        Ok(client)
    }
}

/// A Palisade client over one or more endpoints. Cheap to clone; clones share the
/// connection pool and the endpoint that answered last.
#[derive(Debug, Clone)]
pub struct Client {
    endpoints: Arc<Vec<String>>,
    http: reqwest::Client,
    current: Arc<AtomicUsize>,
    timeout: Duration,
    /// The TLS config of every HTTP client this client builds (`None`: plain HTTP only).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `Authorization` of every request (a bearer token), if any.
    authorization: Option<reqwest::header::HeaderValue>,
}

impl Client {
    /// A client with the default request timeout ([`DEFAULT_TIMEOUT`]).
    pub fn new(endpoints: Vec<String>) -> Result<Client, Error> {
        Client::with_timeout(endpoints, DEFAULT_TIMEOUT)
    }

    /// A client whose every request (one attempt at one endpoint) times out after `timeout`.
    pub fn with_timeout(endpoints: Vec<String>, timeout: Duration) -> Result<Client, Error> {
        Client::builder(endpoints).timeout(timeout).build()
    }

    /// A builder, for TLS and the other options.
    pub fn builder(endpoints: Vec<String>) -> ClientBuilder {
        ClientBuilder { endpoints, timeout: DEFAULT_TIMEOUT, tls: ClientTls::default(), token: None }
    }

    /// An HTTP client builder with what every connection of this client needs: the connect
    /// timeout, no proxy, the TLS config and the token.
    pub(crate) fn http_builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.timeout.min(Duration::from_secs(3)))
            // Endpoints are cluster members, reached directly: a proxy would turn "cannot
            // connect" into an HTTP reply and defeat the failover above.
            .no_proxy();
        if let Some(tls) = &self.tls {
            b = b.use_preconfigured_tls(rustls::ClientConfig::clone(tls));
        }
        if let Some(value) = &self.authorization {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value.clone());
            b = b.default_headers(headers);
        }
        b
    }

    /// The endpoints, normalised.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// How long one request may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends the next request to the next endpoint (round-robin), for a caller that retries
    /// a call itself after a 503, a 504 or a timeout of the endpoint that answered last.
    pub fn next_endpoint(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Any request: `path_and_query` starts with `/` and must already be encoded. Returns
    /// the JSON body of a 2xx reply (`Null` for an empty one) and the reply's headers.
    pub async fn request_json(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Value>,
    ) -> Result<(Value, ResponseMeta), Error> {
        self.call(method, path_and_query, body, None).await
    }

    /// One call, typed: the 2xx body parsed as `T`.
    pub(crate) async fn call_typed<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Reply<T>, Error> {
        let (body, meta) = self.call(method, path, body, None).await?;
        Ok(Reply { body: parse(body)?, meta })
    }

    /// A write under an idempotency key, typed; see [`Client::call_once`].
    pub(crate) async fn write_typed<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Reply<T>, Error> {
        self.write_typed_within(method, path, body, idempotency_key, self.timeout).await
    }

    /// [`Client::write_typed`] whose every attempt may take `timeout` (a request the
    /// server holds on purpose, such as a lock acquire that waits).
    pub(crate) async fn write_typed_within<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply<T>, Error> {
        let (body, meta) = match idempotency_key {
            Some(key) => self.call_once(method, path, body, key, timeout).await?,
            None => self.call_within(method, path, body, None, timeout).await?,
        };
        Ok(Reply { body: parse(body)?, meta })
    }

    /// A write that carries `Idempotency-Key: key`: the server applies it at most once, so
    /// an attempt whose outcome is unknown (timeout, broken connection, 503, 504) or that
    /// was shed (429) is sent again, to the next endpoint, up to [`WRITE_ATTEMPTS`] times.
    async fn call_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        key: &str,
        timeout: Duration,
    ) -> Result<(Value, ResponseMeta), Error> {
        let mut attempt = 1;
        loop {
            let r = self.call_within(method.clone(), path, body.clone(), Some(key), timeout).await;
            let retry = match &r {
                Err(Error::Api { status, .. }) => matches!(status, 429 | 503 | 504),
                Err(Error::Other(_)) | Err(Error::Connect(_)) => true,
                Ok(_) => false,
            };
            if !retry || attempt >= WRITE_ATTEMPTS {
                return r;
            }
            // The next attempt goes to the next endpoint.
            self.current.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(100 << attempt.min(4))).await;
            attempt += 1;
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
    ) -> Result<(Value, ResponseMeta), Error> {
        self.call_within(method, path, body, idempotency_key, self.timeout).await
    }

    /// One call whose attempt may take `timeout` (instead of the client's own timeout).
    async fn call_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        idempotency_key: Option<&str>,
        timeout: Duration,
    ) -> Result<(Value, ResponseMeta), Error> {
        let n = self.endpoints.len();
        let start = self.current.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let endpoint = &self.endpoints[idx];
            let url = format!("{endpoint}{path}");
            let mut req = self.http.request(method.clone(), &url);
            if timeout != self.timeout {
                req = req.timeout(timeout);
            }
            if let Some(key) = idempotency_key {
                req = req.header("idempotency-key", key);
            }
            if let Some(b) = &body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(resp) => {
                    self.current.store(idx, Ordering::Relaxed);
                    return reply(resp, endpoint, timeout).await;
                }
                // Nothing was sent: the next endpoint may take it.
                Err(e) if e.is_connect() => failures.push(format!("{endpoint}: {}", root_cause(&e))),
                Err(e) if e.is_timeout() => {
                    return Err(Error::Other(format!(
                    "{method} {url}: no reply within {timeout:?} (a write may or may not have taken effect)"
                )))
                }
                Err(e) => return Err(Error::Other(format!("{method} {url}: {}", chain(&e)))),
            }
        }
        Err(Error::Connect(format!("cannot connect to any endpoint ({})", failures.join("; "))))
    }
}

/// A reply's body and headers; `timeout` is what bounded the request (for the message).
async fn reply(
    resp: reqwest::Response,
    endpoint: &str,
    timeout: Duration,
) -> Result<(Value, ResponseMeta), Error> {
    let status = resp.status();
    let header =
        |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let meta = ResponseMeta {
        revision: header("x-palisade-revision"),
        term: header("x-palisade-term"),
        endpoint: endpoint.to_string(),
        replayed: resp.headers().get("idempotent-replayed").is_some_and(|v| v == "true"),
    };
    let bytes = resp.bytes().await.map_err(|e| {
        if e.is_timeout() {
            Error::Other(format!("{endpoint}: the reply did not arrive within {timeout:?}"))
        } else {
            Error::Other(format!("{endpoint}: reading the reply: {}", chain(&e)))
        }
    })?;
    if status.is_success() {
        if bytes.is_empty() {
            return Ok((Value::Null, meta));
        }
        let body = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Other(format!("{endpoint}: the reply (HTTP {}) is not JSON: {e}", status.as_u16()))
        })?;
        return Ok((body, meta));
    }
    Err(api_error(status.as_u16(), &bytes))
}

/// The error a non-2xx reply stands for.
fn api_error(status: u16, bytes: &[u8]) -> Error {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(body) => {
            let e = body.get("error");
            let field = |name: &str| e.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_string);
            let code = field("code").unwrap_or_else(|| format!("http_{status}"));
            let message = field("message").unwrap_or_else(|| body.to_string());
            Error::Api { status, code, message, body }
        }
        Err(_) => {
            let text = String::from_utf8_lossy(bytes).into_owned();
            let mut message: String = text.trim().chars().take(300).collect();
            if message.is_empty() {
                message = format!("HTTP {status} with no body");
            }
            Error::Api { status, code: format!("http_{status}"), message, body: Value::String(text) }
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: Value) -> Result<T, Error> {
    serde_json::from_value(body).map_err(|e| Error::Other(format!("unexpected reply from the server: {e}")))
}

/// The innermost cause of an error ("Connection refused (os error 111)").
fn root_cause(e: &dyn std::error::Error) -> String {
    let mut cur = e;
    while let Some(c) = cur.source() {
        cur = c;
    }
    cur.to_string()
}

/// An error with its causes (reqwest's own text is often just "error sending request").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_paths() {
        assert_eq!(kv_path("/").unwrap(), "/v1/kv/");
        assert_eq!(kv_path("/app/db/leader").unwrap(), "/v1/kv/app/db/leader");
        assert_eq!(kv_path("/a b/c%d").unwrap(), "/v1/kv/a%20b/c%25d");
        assert_eq!(kv_path("/q?x=1#frag").unwrap(), "/v1/kv/q%3Fx%3D1%23frag");
        assert_eq!(kv_path("/a+b&c").unwrap(), "/v1/kv/a%2Bb%26c");
        assert_eq!(kv_path("/ünï/日本").unwrap(), "/v1/kv/%C3%BCn%C3%AF/%E6%97%A5%E6%9C%AC");
        assert_eq!(kv_path("/a\\b").unwrap(), "/v1/kv/a%5Cb");
        // A literal `%2F` stays literal: the server decodes once and sees `%2F`, not `/`.
        assert_eq!(kv_path("/a%2Fb").unwrap(), "/v1/kv/a%252Fb");
        // Unreserved characters travel as they are; `.` inside a segment is fine.
        assert_eq!(kv_path("/v1.2/x-y_z~").unwrap(), "/v1/kv/v1.2/x-y_z~");
        // Left for the server to refuse with invalid_key.
        assert_eq!(kv_path("/a//b").unwrap(), "/v1/kv/a//b");
        assert_eq!(kv_path("/a/").unwrap(), "/v1/kv/a/");
        // Refused locally: they cannot be sent faithfully.
        assert!(kv_path("a/b").is_err());
        assert!(kv_path("").is_err());
        assert!(kv_path("/a/./b").is_err());
        assert!(kv_path("/a/..").is_err());
    }

    #[test]
    fn encoded_paths_survive_url_parsing() {
        for key in ["/a b/c%d", "/q?x#y", "/%2e%2e/x", "/ünï", "/a\\b", "/a%2Fb"] {
            let url = format!("http://127.0.0.1:7379{}", kv_path(key).unwrap());
            let parsed = reqwest::Url::parse(&url).unwrap();
            let path = parsed.path();
            assert_eq!(path, kv_path(key).unwrap(), "{key}");
            assert!(parsed.query().is_none() && parsed.fragment().is_none(), "{key}");
            let decoded = percent_encoding::percent_decode_str(path.strip_prefix("/v1/kv").unwrap())
                .decode_utf8()
                .unwrap();
            assert_eq!(decoded, key);
        }
    }

    #[test]
    fn query_strings() {
        assert_eq!(query_string(&[]), "");
        assert_eq!(query_string(&[("recursive", flag(false))]), "");
        assert_eq!(query_string(&[("recursive", flag(true)), ("limit", num(Some(5)))]), "?recursive&limit=5");
        assert_eq!(
            query_string(&[("if_value", Some("a b+c&d=e%f#g?".into())), ("prev_kv", flag(true))]),
            "?if_value=a%20b%2Bc%26d%3De%25f%23g%3F&prev_kv"
        );
        assert_eq!(query_string(&[("if_value", Some("é".into()))]), "?if_value=%C3%A9");
        assert_eq!(query_string(&[("after", Some("MTI6L2EvYg".into()))]), "?after=MTI6L2EvYg");
    }

    #[test]
    fn endpoints() {
        assert_eq!(normalize_endpoint("127.0.0.1:7379").unwrap(), "http://127.0.0.1:7379");
        assert_eq!(normalize_endpoint(" http://127.0.0.1:7379/ ").unwrap(), "http://127.0.0.1:7379");
        assert_eq!(normalize_endpoint("localhost:1").unwrap(), "http://localhost:1");
        assert_eq!(normalize_endpoint("https://x:1/").unwrap(), "https://x:1");
        let e = Client::new(vec!["https://x:1".into()]).unwrap_err().to_string();
        assert!(e.contains("--cacert"), "{e}");
        let e = Client::builder(vec!["https://x:1".into()])
            .tls(ClientTls { ca_file: Some("/nonexistent/ca.pem".into()), ..ClientTls::default() })
            .build()
            .unwrap_err()
            .to_string();
        assert!(e.contains("--cacert") && e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(normalize_endpoint("ftp://x:1").is_err());
        assert!(normalize_endpoint("").is_err());
        assert!(Client::new(vec![]).is_err());
        let c = Client::new(vec!["127.0.0.1:1".into(), "http://127.0.0.1:2/".into()]).unwrap();
        assert_eq!(c.endpoints(), ["http://127.0.0.1:1", "http://127.0.0.1:2"]);
    }

    #[test]
    fn value_encoding() {
        assert_eq!(put_body(b"hello", None), json!({"value": "hello"}));
        assert_eq!(put_body("日本".as_bytes(), Some(7)), json!({"value": "日本", "lease": 7}));
        assert_eq!(put_body(b"", None), json!({"value": ""}));
        assert_eq!(put_body(&[0xff, 0x00, 0x80], None), json!({"value_base64": "/wCA"}));
        assert_eq!(decode_value(Some("x".into()), None).unwrap(), Some(b"x".to_vec()));
        assert_eq!(decode_value(None, Some("/wCA".into())).unwrap(), Some(vec![0xff, 0x00, 0x80]));
        assert_eq!(decode_value(None, None).unwrap(), None);
        assert!(decode_value(Some("x".into()), Some("eA==".into())).is_err());
        assert!(decode_value(None, Some("not base64!".into())).is_err());
    }

    #[test]
    fn replies_decode_and_reencode_faithfully() {
        let wire = json!({"revision": 9, "kvs": [
            {"key": "/a", "value": "x", "create_revision": 2, "mod_revision": 3, "version": 2, "lease": null},
            {"key": "/b", "value_base64": "/wCA", "create_revision": 4, "mod_revision": 4, "version": 1, "lease": 5},
        ], "count": 3, "more": true, "next": "OTovYg"});
        let page: ListResponse = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(page.kvs[0].value_bytes(), b"x");
        assert_eq!(page.kvs[0].value_str(), Some("x"));
        assert_eq!(page.kvs[1].value.as_deref(), Some(&[0xff, 0x00, 0x80][..]));
        assert_eq!(page.kvs[1].value_str(), None);
        assert_eq!(page.kvs[1].lease, Some(5));
        assert_eq!(page.next.as_deref(), Some("OTovYg"));
        assert_eq!(serde_json::to_value(&page).unwrap(), wire);

        let keys_only = json!({"revision": 9, "kvs": [
            {"key": "/a", "create_revision": 2, "mod_revision": 3, "version": 2, "lease": null}],
            "count": 1, "more": false, "next": null});
        let page: ListResponse = serde_json::from_value(keys_only.clone()).unwrap();
        assert_eq!(page.kvs[0].value, None);
        assert_eq!(serde_json::to_value(&page).unwrap(), keys_only);

        let children = json!({"revision": 4, "children": [
            {"name": "a", "key": "/x/a", "has_children": true, "kv": null},
            {"name": "b", "key": "/x/b", "has_children": false,
             "kv": {"key": "/x/b", "value": "", "create_revision": 4, "mod_revision": 4, "version": 1, "lease": null}}],
            "more": false, "next": null});
        let page: ChildrenResponse = serde_json::from_value(children.clone()).unwrap();
        assert!(page.children[0].has_children && page.children[0].kv.is_none());
        assert_eq!(page.children[1].kv.as_ref().unwrap().value_bytes(), b"");
        assert_eq!(serde_json::to_value(&page).unwrap(), children);

        let cluster = json!({"cluster_id": "c1", "node_id": 1, "version": "0.1.0", "leader": null, "term": 0, "revision": 0,
            "compact_revision": 0, "applied_index": 0, "store_bytes": 10, "quota_bytes": 100, "idempotency_keys": 2,
            "leases": {"alive": 1, "granted": 4, "expired": 2, "revoked": 1},
            "locks": {"active": 1, "owners": 3, "bytes": 60, "grants": 9, "handoffs": 4, "waits": 5, "lease_ended": 1},
            "members": [{"id": 1, "client_url": "http://a", "peer_url": "http://b", "role": "voter"}]});
        let c: ClusterResponse = serde_json::from_value(cluster.clone()).unwrap();
        assert_eq!(c.leader, None);
        assert_eq!((c.leases.alive, c.leases.granted, c.leases.expired, c.leases.revoked), (1, 4, 2, 1));
        assert_eq!(serde_json::to_value(&c).unwrap(), cluster);

        let bad = json!({"key": "/a", "value": "x", "value_base64": "eA==", "create_revision": 1,
            "mod_revision": 1, "version": 1, "lease": null});
        assert!(serde_json::from_value::<KeyValue>(bad).is_err());
    }

    #[test]
    fn api_errors() {
        let body = br#"{"error":{"code":"condition_failed","message":"nope","current":
            {"key":"/a","value":"v","create_revision":1,"mod_revision":2,"version":2,"lease":null}}}"#;
        let e = api_error(409, body);
        assert_eq!(e.status(), Some(409));
        assert_eq!(e.code(), Some("condition_failed"));
        assert_eq!(e.current_kv().unwrap().unwrap().value_bytes(), b"v");
        let e = api_error(409, br#"{"error":{"code":"condition_failed","message":"nope","current":null}}"#);
        assert_eq!(e.current_kv(), Some(None));
        let e = api_error(404, br#"{"error":{"code":"key_not_found","message":"key /a not found"}}"#);
        assert!(e.is_key_not_found());
        assert_eq!(e.current_kv(), None);
        assert_eq!(e.to_string(), "key_not_found: key /a not found (HTTP 404)");
        let e = api_error(502, b"<html>Bad Gateway</html>");
        assert_eq!(e.code(), Some("http_502"));
        assert!(matches!(e, Error::Api { ref message, .. } if message == "<html>Bad Gateway</html>"));
    }

    #[tokio::test]
    async fn connection_failures_try_every_endpoint() {
        // Two ports nothing listens on (bound then dropped).
        let ports: Vec<u16> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port())
            .collect();
        let eps: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let c = Client::with_timeout(eps, Duration::from_secs(2)).unwrap();
        match c.get("/a", GetOptions::default()).await {
            Err(Error::Connect(m)) => {
                for p in &ports {
                    assert!(m.contains(&format!("127.0.0.1:{p}")), "{m}");
                }
            }
            other => panic!("expected a connection error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_timeout_is_final() {
        // Accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let accepted2 = accepted.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                accepted2.fetch_add(1, Ordering::SeqCst);
                held.push(s);
            }
        });
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let c = Client::with_timeout(vec![addr.to_string(), other.to_string()], Duration::from_millis(300))
            .unwrap();
        match c.put("/a", b"x", PutOptions::default()).await {
            Err(Error::Other(m)) => assert!(m.contains("no reply within"), "{m}"),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_reply_is_final_and_failover_finds_a_live_endpoint() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = hits.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = live.accept().await else { return };
                hits2.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let body = r#"{"error":{"code":"unavailable","message":"no leader"}}"#;
                let resp = format!(
                    "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-palisade-revision: 7\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let c = Client::with_timeout(vec![dead.to_string(), live_addr.to_string()], Duration::from_secs(2))
            .unwrap();
        let e = c.put("/a", b"x", PutOptions::default()).await.unwrap_err();
        assert_eq!(e.status(), Some(503));
        assert_eq!(e.code(), Some("unavailable"));
        // The 503 was final: one delivery only, and the live endpoint is now the first tried.
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let _ = c.get("/a", GetOptions::default()).await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        assert_eq!(c.current.load(Ordering::SeqCst), 1);
    }
}
