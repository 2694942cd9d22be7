//! `GET /v1/maintenance/snapshot`: a backup of the state, streamed (admin only).
//!
//! The body is a snapshot file (the format of the snapshots in a data dir, with its
//! checksum trailer) of a copy of the applied state taken after a read index, so it holds
//! every write acknowledged before the request; `X-Palisade-Revision` is the revision it
//! captures. It is encoded while it is sent, through a bounded buffer: memory does not
//! grow with the store, and writes go on meanwhile. Downloads running at once on a node are
//! limited (`--max-snapshot-downloads`): one more gets 429 `overloaded`. A download that
//! fails midway ends with a broken body (never a short file that looks complete: the
//! trailer is missing, and readers refuse it).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::query::Query;
use crate::auth::Caller;
use crate::node::Node;

/// `GET /v1/maintenance/snapshot`.
pub async fn download(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.check_admin("download a snapshot")?;
    Query::parse(uri.query(), &[])?;
    let stream = node.backup().await?;
    let revision = stream.revision;
    // The stream (and its place among the downloads) lives as long as the body.
    let pieces = futures::stream::unfold(stream, |mut s| async move {
        s.next().await.map(|piece| (piece.map(axum::body::Bytes::from), s))
    });
    let mut resp = (StatusCode::OK, Body::from_stream(pieces)).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    let disposition = format!("attachment; filename=\"palisade-{revision}.snap\"");
    headers.insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).expect("ASCII"));
    super::state_headers(headers, revision, node.term());
    Ok(resp)
}
