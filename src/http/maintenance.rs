//! `POST /v1/maintenance/compact`: drops the history below a revision.
//!
//! At or below the current floor: 200, nothing changes. Above the current revision: 400
//! `future_revision`. Compaction takes no revision of its own.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::write;
use crate::auth::Caller;
use crate::error::Error;
use crate::node::Node;
use crate::store::{Command, Outcome};
use crate::wire::txn::{CompactRequest, CompactResponse};

/// `POST /v1/maintenance/compact` with `{"revision": N}`.
pub async fn compact(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    caller.check_admin("compact the history")?;
    let (req, once): (CompactRequest, _) = write::json_write(&node, &uri, &headers, body).await?;
    let outcome = write::send(&node, &caller, once, Command::Compact { revision: req.revision }).await?;
    let term = node.term();
    let (outcome, replayed) = write::unwrap_replay(outcome, term)?;
    let reply = match outcome {
        Outcome::Compacted { revision, compact_revision, .. } => {
            let mut resp =
                (StatusCode::OK, super::json_body(&CompactResponse { revision, compact_revision }))
                    .into_response();
            super::state_headers(resp.headers_mut(), revision, term);
            Ok(resp)
        }
        Outcome::FutureRevision { revision } => {
            Err(ApiError::from(Error::FutureRevision { requested: req.revision, revision }))
        }
        other => Err(Error::Internal(format!("a compaction was decided as {other:?}")).into()),
    };
    write::mark_replayed(reply, replayed)
}
