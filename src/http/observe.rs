//! What the client listener reports about its requests: the request metrics (count by
//! route and status, latency by route), the slow-request log line, and `GET /metrics`.
//!
//! Invariants: a request is labelled by its route pattern, never by its path (a key can
//! be sensitive, and paths are unbounded); the slow-request line names the method, route,
//! status and duration only, never a key, a value, a query or a token. A request whose
//! point is to wait (a long-poll, a lock or election wait, a watch or observe stream) is
//! counted but never called slow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::query::Query;
use crate::config::MetricsAccess;
use crate::metrics::{method_label, route_of};
use crate::node::Node;

/// Counts and times every request, and logs the slow ones.
pub(super) async fn observe(State(node): State<Arc<Node>>, req: Request, next: Next) -> Response {
    let t0 = Instant::now();
    let method = method_label(req.method().as_str());
    let route = route_of(super::CLIENT_ROUTES, req.uri().path());
    let waits = super::is_long_poll(&req) || super::is_lock_wait(&req) || is_stream(req.method(), route);
    let resp = next.run(req).await;
    let took = t0.elapsed();
    let status = resp.status().as_u16();
    node.metrics().request(method, route, status, took);
    let slow_ms = node.config().slow_request_ms;
    if !waits && slow_ms > 0 && took >= Duration::from_millis(slow_ms) {
        node.metrics().slow_request(method, route);
        tracing::warn!(method, route, status, ms = took.as_millis() as u64, "slow request");
    }
    resp
}

/// Whether a request to `route` is a stream, whose life is its point.
fn is_stream(method: &Method, route: &str) -> bool {
    method == Method::GET && (route.starts_with("/v1/watch") || route.ends_with("/observe"))
}

/// `GET /metrics`: the Prometheus (OpenMetrics) text of this node. With `--metrics auth`
/// and client auth on, any valid token may read it.
pub async fn metrics(State(node): State<Arc<Node>>, req: Request) -> Result<Response, ApiError> {
    if node.config().metrics == MetricsAccess::Auth {
        if let Err(refusal) = super::caller_of(&node, req.headers()) {
            return Ok(*refusal);
        }
    }
    let uri: &Uri = req.uri();
    Query::parse(uri.query(), &[])?;
    let text = node.metrics_text();
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}
