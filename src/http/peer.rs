//! The peer endpoint: one `POST /raft/rpc` carrying a signed [`PeerRequest`] as JSON.
//!
//! In order, each step before any work of the next: the signature headers (sender,
//! receiver, time) are checked, the sender must be a member, the request must get one of
//! the bounded peer slots, the body must fit the peer message limit and arrive within
//! `--body-timeout-ms` (else 408, which frees the slot), the signature must match the
//! body, the JSON must parse. Only then does the node see the request.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::node::Node;
use crate::peer::PeerRequest;

/// What the peer route needs besides the node.
#[derive(Clone)]
pub struct PeerState {
    pub node: Arc<Node>,
    /// Peer requests served at once.
    pub slots: Arc<tokio::sync::Semaphore>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

pub async fn rpc(State(st): State<PeerState>, headers: HeaderMap, body: Body) -> Response {
    let node = &st.node;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = node.peer_key();
    let (from, time) = match key.check_headers(header, node.id(), now_ms()) {
        Ok(x) => x,
        Err(e) => return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
    };
    if from != node.id() && !node.is_member(from) {
        return refuse(
            StatusCode::FORBIDDEN,
            "permission_denied",
            format!("node {from} is not a member of this cluster"),
        );
    }
    let Ok(_slot) = st.slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many peer requests in flight; retry",
        );
    };
    let limit = node.config().max_peer_message_bytes;
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) if super::connection::is_body_timeout(&e) => {
            return super::extract::body_timeout(&e).into_response()
        }
        Err(e) => {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("peer message over {limit} bytes: {e}"),
            )
        }
    };
    if let Err(e) = key.verify(header, from, node.id(), time, &bytes) {
        return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
    }
    let req: PeerRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()),
    };
    let resp = node.clone().handle_peer(from, req).await;
    super::json_body(&resp).into_response()
}
