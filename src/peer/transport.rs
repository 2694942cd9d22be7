//! Carrying peer requests: the [`Transport`] seam, its HTTP implementation, and Raft's
//! calls over it.
//!
//! Over HTTP a request is `POST {peer_url}/raft/rpc` with the JSON of a [`PeerRequest`]
//! and the headers of [`PeerKey::sign`]; the answer is the JSON of a [`PeerResponse`],
//! signed for that request (an answer whose signature does not check is a failed call)
//! and no larger than the peer message limit.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::auth::{PeerKey, RESPONSE_SIGNATURE_HEADER};
use super::protocol::{PeerRequest, PeerResponse};
use crate::raft::{CallError, Member, NodeId, RaftReply, RaftRpc, RaftSender};

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

/// HTTP between processes, signed with the cluster secret.
pub struct HttpTransport {
    client: reqwest::Client,
    key: PeerKey,
    /// The member this transport speaks for.
    from: NodeId,
    /// The largest answer accepted (bytes).
    max_answer_bytes: usize,
}

impl HttpTransport {
    pub fn new(from: NodeId, key: PeerKey, max_answer_bytes: usize) -> HttpTransport {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client builds");
        HttpTransport { client, key, from, max_answer_bytes }
    }
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
        let url = format!("{}/raft/rpc", member.peer_url.trim_end_matches('/'));
        let body = match serde_json::to_vec(&req) {
            Ok(b) => b,
            Err(e) => return futures::future::ready(Err(CallError::Unreachable(e.to_string()))).boxed(),
        };
        let mut request = self.client.post(&url).header("content-type", "application/json");
        let headers = self.key.sign(self.from, target, crate::clock::wall_clock_ms(), &body);
        let signature = headers[4].1.clone();
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request.body(body);
        let (key, limit, from) = (self.key.clone(), self.max_answer_bytes, self.from);
        async move {
            let exchange = async {
                let resp = request.send().await.map_err(|e| {
                    if e.is_connect() {
                        CallError::Unreachable(e.to_string())
                    } else {
                        CallError::Failed(e.to_string())
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
