//! Carrying peer requests: the [`Transport`] seam, its HTTP implementation, and Raft's
//! calls over it.
//!
//! Over HTTP a request is `POST {peer_url}/raft/rpc` (`/raft/join` for the requests of a
//! node that may not be a member, see [`PeerRequest::path`]) with the JSON of a [`PeerRequest`]
//! and the headers of [`PeerKey::sign`]; the answer is the JSON of a [`PeerResponse`],
//! signed for that request (an answer whose signature does not check is a failed call)
//! and no larger than the peer message limit.
//!
//! With peer TLS, requests go over https only: the cluster CA is the only trust root, and
//! this node's peer certificate is its client certificate (mutual TLS). The HTTP client is
//! rebuilt when those files change (each request takes the client current when it
//! starts), so a rotated certificate is presented on every new connection without a
//! restart. Failures of the TLS layer (a peer's certificate refused, ours refused by the
//! peer) are logged at most every [`TLS_WARN_EVERY`], with the reason.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::FutureExt;

use super::auth::{PeerKey, RESPONSE_SIGNATURE_HEADER};
use super::protocol::{PeerRequest, PeerResponse};
use crate::raft::{CallError, Member, NodeId, RaftReply, RaftRpc, RaftSender};
use crate::tls::{ClientFiles, Reloading, TlsError};

/// Moves one member's requests to the others. Implementations never wait longer than the
/// timeout given, and say whether a failed request certainly did not arrive.
pub trait Transport: Send + Sync + 'static {
    fn call(
        &self,
        target: NodeId,
        member: &Member,
        req: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, CallError>>;
}

/// How often a failing TLS connection to the peers is logged at most.
pub const TLS_WARN_EVERY: Duration = Duration::from_secs(5);

/// HTTP between processes, signed with the cluster secret, over mutual TLS when peer TLS
/// is configured.
pub struct HttpTransport {
    /// The HTTP client as of the current TLS files (a fixed one for plain HTTP).
    client: Arc<Reloading<reqwest::Client>>,
    /// Whether calls go over TLS (then https only).
    tls: bool,
    /// When a TLS failure was last logged.
    tls_warned: Arc<Mutex<Option<Instant>>>,
    key: PeerKey,
    /// The member this transport speaks for.
    from: NodeId,
    /// The largest answer accepted (bytes).
    max_answer_bytes: usize,
}

impl HttpTransport {
    /// A transport over plain HTTP, or over mutual TLS with `tls` (the cluster CA and this
    /// node's peer certificate; followed as they change). An error names the bad file.
    pub fn new(
        from: NodeId,
        key: PeerKey,
        max_answer_bytes: usize,
        tls: Option<ClientFiles>,
    ) -> Result<HttpTransport, TlsError> {
        let client = match tls.clone() {
            None => Reloading::fixed("peer transport", build_client(None)),
            Some(files) => {
                let watched = files.files();
                let client = Reloading::load("peer transport TLS", watched, move || {
                    Ok(build_client(Some(files.load()?)))
                })?;
                client.watch(crate::tls::RELOAD_EVERY);
                client
            }
        };
        Ok(HttpTransport {
            client,
            tls: tls.is_some(),
            tls_warned: Arc::new(Mutex::new(None)),
            key,
            from,
            max_answer_bytes,
        })
    }
}

fn build_client(tls: Option<rustls::ClientConfig>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().no_proxy().pool_max_idle_per_host(64).tcp_nodelay(true);
    if let Some(tls) = tls {
        // Never a plain-HTTP peer call while peer TLS is on.
        builder = builder.use_preconfigured_tls(tls).https_only(true);
    }
    builder.build().expect("an HTTP client builds from a valid TLS config")
}

/// `e` with its causes (reqwest's own text leaves out the TLS reason).
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = cause.source();
    }
    out
}

/// Reads an answer's body, refusing more than `limit` bytes.
async fn read_limited(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>, CallError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| CallError::Failed(e.to_string()))? {
        if out.len() + chunk.len() > limit {
            return Err(CallError::Failed(format!("the answer is over {limit} bytes")));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

impl Transport for HttpTransport {
    fn call(
        &self,
        target: NodeId,
        member: &Member,
        req: PeerRequest,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<PeerResponse, CallError>> {
        let url = format!("{}{}", member.peer_url.trim_end_matches('/'), req.path());
        let body = match serde_json::to_vec(&req) {
            Ok(b) => b,
            Err(e) => return futures::future::ready(Err(CallError::Unreachable(e.to_string()))).boxed(),
        };
        let mut request = self.client.current().post(&url).header("content-type", "application/json");
        let headers = self.key.sign(self.from, target, crate::clock::wall_clock_ms(), &body);
        let signature = headers[4].1.clone();
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(body);
        let (key, limit, from) = (self.key.clone(), self.max_answer_bytes, self.from);
        let (tls, tls_warned) = (self.tls, self.tls_warned.clone());
        async move {
            let exchange = async {
                let resp = request.send().await.map_err(|e| {
                    let text = with_causes(&e);
                    // Over TLS 1.3 a refused client certificate shows only once the
                    // request is under way: not a connect error, but still TLS's.
                    if tls && is_tls_failure(&text) {
                        warn_tls(&tls_warned, target, &text);
                    }
                    if e.is_connect() {
                        CallError::Unreachable(text)
                    } else {
                        CallError::Failed(text)
                    }
                })?;
                let status = resp.status();
                let answer_signature = resp
                    .headers()
                    .get(RESPONSE_SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let bytes = read_limited(resp, limit).await?;
                if !status.is_success() {
                    if matches!(status.as_u16(), 401 | 403) {
                        super::refusals::refused_by_peer(from, target, status.as_u16(), &bytes);
                    }
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                    // Refused before anything happened (auth, limits): nothing arrived.
                    let e = format!("{url}: HTTP {status}: {text}");
                    return Err(if status.is_client_error() || status.as_u16() == 503 {
                        CallError::Unreachable(e)
                    } else {
                        CallError::Failed(e)
                    });
                }
                // An answer nobody signed may be forged on the way: as good as none.
                key.check_response(&signature, answer_signature.as_deref(), &bytes)
                    .map_err(|e| CallError::Failed(format!("{url}: {e}")))?;
                serde_json::from_slice(&bytes).map_err(|e| CallError::Failed(e.to_string()))
            };
            tokio::time::timeout(timeout, exchange).await.map_err(|_| CallError::Timeout)?
        }
        .boxed()
    }
}

/// Whether a connect error's text is about TLS (not a peer that is down).
fn is_tls_failure(text: &str) -> bool {
    ["certificate", "handshake", "tls", "TLS", "alert"].iter().any(|w| text.contains(w))
}

/// Logs a TLS failure towards the peers, at most every [`TLS_WARN_EVERY`].
fn warn_tls(last: &Mutex<Option<Instant>>, target: NodeId, text: &str) {
    let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_some_and(|at| at.elapsed() < TLS_WARN_EVERY) {
        return;
    }
    *last = Some(Instant::now());
    tracing::warn!(target_node = target, "peer TLS connection to node {target} failed: {text}");
}

/// Raft's calls over a peer transport.
pub struct RaftOverPeers(pub Arc<dyn Transport>);

impl RaftSender for RaftOverPeers {
    fn send(
        &self,
        target: NodeId,
        member: &Member,
        rpc: RaftRpc,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<RaftReply, CallError>> {
        let call = self.0.call(target, member, PeerRequest::Raft(rpc), timeout);
        async move {
            match call.await? {
                PeerResponse::Raft(r) => Ok(r),
                other => Err(CallError::Failed(format!("unexpected peer response {other:?}"))),
            }
        }
        .boxed()
    }
}
