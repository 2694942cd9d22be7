//! Carrying peer requests: the [`Transport`] seam, its HTTP implementation, and Raft's
//! calls over it.
//!
//! Over HTTP a request is `POST {peer_url}/raft/rpc` with the JSON of a [`PeerRequest`]
//! and the headers of [`PeerKey::sign`]; the answer is the JSON of a [`PeerResponse`].

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;

use super::auth::PeerKey;
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
}

impl HttpTransport {
    pub fn new(from: NodeId, key: PeerKey) -> HttpTransport {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(64)
            .tcp_nodelay(true)
            .build()
            .expect("a plain HTTP client builds");
        HttpTransport { client, key, from }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
        for (name, value) in self.key.sign(self.from, target, now_ms(), &body) {
            request = request.header(name, value);
        }
        let request = request.body(body);
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
                let bytes = resp.bytes().await.map_err(|e| CallError::Failed(e.to_string()))?;
                if !status.is_success() {
                    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
                    // Refused before anything happened (auth, limits): nothing arrived.
                    let e = format!("{url}: HTTP {status}: {text}");
                    return Err(if status.is_client_error() || status.as_u16() == 503 {
                        CallError::Unreachable(e)
                    } else {
                        CallError::Failed(e)
                    });
                }
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
