//! The peer endpoint: one POST carrying a [`PeerRequest`] as JSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use crate::node::Node;
use crate::raft::network::PeerRequest;

/// Largest peer message: a full snapshot travels in one (JSON, its data base64-encoded:
/// about 1.8 x the store's size; the default quota is 1 GiB).
const MAX_PEER_BODY: usize = 4 << 30;

pub async fn rpc(State(node): State<Arc<Node>>, body: Body) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_PEER_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(axum::http::StatusCode::PAYLOAD_TOO_LARGE, "too_large", e.to_string())
                .into_response()
        }
    };
    let req: PeerRequest = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_json", e.to_string())
                .into_response()
        }
    };
    let resp = node.handle_peer(req).await;
    super::json_body(&resp).into_response()
}
