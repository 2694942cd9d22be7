//! The peer endpoints: `POST /raft/rpc` carrying a signed [`PeerRequest`] as JSON from a
//! member, and `POST /raft/join` for the two requests of a node that is not a member
//! (see [`join`]).
//!
//! In order, each step before any work of the next: the signed headers (sender, receiver,
//! time, body digest) are checked, so a stranger never gets a byte of body read; the sender
//! must be a member; with peer mutual TLS, the connection's certificate must name the
//! sender's peer host; the request must get one of the bounded peer slots; the body must fit
//! the peer message limit and arrive within `--body-timeout-ms` (else 408, which frees the
//! slot) and match its signed digest; the JSON must parse; a forwarded write must not be a
//! replay. Only then does the node see the request. The answer is signed too. A request
//! refused for who sent it (401, 403) is logged with the claimed sender, its address and
//! why, rate-limited (the sender logs the refusal too, from the error message).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::connection::{ClientCertificate, RemoteAddr};
use super::error::ApiError;
use crate::node::Node;
use crate::peer::{refused_request, PeerRequest, ReplayGuard, RESPONSE_SIGNATURE_HEADER, SIGNATURE_HEADERS};

/// What the peer route needs besides the node.
#[derive(Clone)]
pub struct PeerState {
    pub node: Arc<Node>,
    /// Peer requests served at once.
    pub slots: Arc<tokio::sync::Semaphore>,
    /// Forwarded writes seen lately, by signature.
    pub replays: Arc<ReplayGuard>,
}

/// Forwarded writes remembered against replay (about 100 bytes each).
pub const REPLAY_MEMORY: usize = 65_536;

fn refuse(status: StatusCode, code: &'static str, message: impl Into<String>) -> Response {
    ApiError::new(status, code, message).into_response()
}

pub async fn rpc(
    State(st): State<PeerState>,
    remote: Option<Extension<RemoteAddr>>,
    certificate: Option<Extension<ClientCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let node = &st.node;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let remote = remote.map(|Extension(RemoteAddr(r))| r);
    let key = node.peer_key();
    let verified = match key.check_headers(header, node.id(), crate::clock::wall_clock_ms()) {
        Ok(v) => v,
        Err(e) => {
            // The sender is only claimed here: the headers did not prove it.
            let claimed = header(SIGNATURE_HEADERS[0]).and_then(|f| f.parse().ok());
            refused_request(node.id(), claimed, remote, e.kind(), &e.explain(claimed));
            return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
        }
    };
    let from = verified.from;
    // A sender this node's membership does not name may still be a leader that joined
    // after the membership this node has applied: its appends and snapshots are let
    // through to the replica (checked once the body says what it is); anything else is
    // refused.
    let stranger = from != node.id() && !node.is_member(from);
    let not_member = || {
        let why = format!("node {from} is not a member of this cluster");
        refused_request(node.id(), Some(from), remote, "not_a_member", &why);
        refuse(StatusCode::FORBIDDEN, "permission_denied", why)
    };
    if stranger && !node.replica_has_membership() {
        return not_member();
    }
    // With peer mutual TLS the certificate must be the claimed member's own: one the CA
    // issued for another host (another member, or anything else it signed) is refused.
    if let Some(Extension(ClientCertificate(der))) = &certificate {
        let host = node.peer_host(from).unwrap_or_default();
        if !crate::tls::certificate_names(der, &host) {
            let why = format!(
                "the TLS certificate presented does not name node {from}'s peer host {host:?} (a member's peer \
                 certificate must list its peer address among its subject alternative names)"
            );
            refused_request(node.id(), Some(from), remote, "certificate_mismatch", &why);
            return refuse(StatusCode::FORBIDDEN, "permission_denied", why);
        }
    }
    let Ok(_slot) = st.slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many peer requests in flight; retry",
        );
    };
    let limit = node.config().max_peer_message_bytes;
    let req = match read_signed(node, key, &verified, remote, body, limit, "a peer message").await {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    if stranger && !node.takes_from_unknown(from, &req) {
        return not_member();
    }
    if matches!(req, PeerRequest::Forward(_))
        && !st.replays.first_time(&verified.signature, crate::clock::wall_clock_ms())
    {
        return refuse(StatusCode::CONFLICT, "replayed", "this forwarded write was already received");
    }
    let resp = node.clone().handle_peer(from, req).await;
    let body = serde_json::to_vec(&resp).expect("peer responses serialise");
    let mut reply = ([(axum::http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response();
    if let Some(sig) = key.sign_response(&verified, &body) {
        let value = axum::http::HeaderValue::from_str(&sig).expect("hex is a valid header value");
        reply.headers_mut().insert(RESPONSE_SIGNATURE_HEADER, value);
    }
    reply
}

/// Reads a peer request's body (at most `limit` bytes, `what` naming it in the 413),
/// checks it against its signed digest, and parses it; or the refusal to answer.
async fn read_signed(
    node: &Node,
    key: &crate::peer::PeerKey,
    verified: &crate::peer::Verified,
    remote: Option<std::net::SocketAddr>,
    body: axum::body::Body,
    limit: usize,
    what: &str,
) -> Result<PeerRequest, Box<Response>> {
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(e) if super::connection::is_body_timeout(&e) => {
            return Err(Box::new(super::extract::body_timeout(&e).into_response()))
        }
        Err(e) => {
            return Err(Box::new(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("{what} is at most {limit} bytes: {e}"),
            )))
        }
    };
    let from = verified.from;
    if let Err(e) = key.check_body(verified, &bytes) {
        refused_request(node.id(), Some(from), remote, e.kind(), &e.explain(Some(from)));
        return Err(Box::new(refuse(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string())));
    }
    match serde_json::from_slice(&bytes) {
        Ok(req) => Ok(req),
        Err(e) => Err(Box::new(refuse(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))),
    }
}

/// The largest body `POST /raft/join` reads (a join names an id and two URLs).
pub const JOIN_BODY_LIMIT: usize = 16 * 1024;

/// `POST /raft/join`: the requests of a node that is not a member (yet, or any more): a
/// join ([`PeerRequest::Join`]) or a removal check ([`PeerRequest::MemberCheck`]), nothing
/// else. The sender must still prove itself as on `/raft/rpc`: the signature by the
/// cluster's secret (addressed to this node, or to node 0: a joining node does not know
/// the ids of the members it calls), and with peer mutual TLS a certificate of the cluster
/// CA that names the peer host the join gives (for a removal check, the sender's recorded
/// peer host when it is still a member here). The body is bounded by [`JOIN_BODY_LIMIT`].
pub async fn join(
    State(st): State<PeerState>,
    remote: Option<Extension<RemoteAddr>>,
    certificate: Option<Extension<ClientCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let node = &st.node;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let remote = remote.map(|Extension(RemoteAddr(r))| r);
    let key = node.peer_key();
    let to = if header(SIGNATURE_HEADERS[1]) == Some("0") { 0 } else { node.id() };
    let verified = match key.check_headers(header, to, crate::clock::wall_clock_ms()) {
        Ok(v) => v,
        Err(e) => {
            let claimed = header(SIGNATURE_HEADERS[0]).and_then(|f| f.parse().ok());
            refused_request(node.id(), claimed, remote, e.kind(), &e.explain(claimed));
            return refuse(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string());
        }
    };
    let from = verified.from;
    let Ok(_slot) = st.slots.clone().try_acquire_owned() else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many peer requests in flight; retry",
        );
    };
    let req = match read_signed(node, key, &verified, remote, body, JOIN_BODY_LIMIT, "a join").await {
        Ok(r) => r,
        Err(refusal) => return *refusal,
    };
    let host = match &req {
        // Read as the membership will record it (a URL without a scheme gets one).
        PeerRequest::Join(j) => crate::config::normalize_url(&j.peer_url)
            .ok()
            .and_then(|u| reqwest::Url::parse(&u).ok())
            .and_then(|u| u.host_str().map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())),
        PeerRequest::MemberCheck => node.peer_host(from),
        _ => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "invalid_argument",
                "only joins and removal checks go to /raft/join; members call /raft/rpc",
            )
        }
    };
    if certificate.is_some() && host.is_none() && matches!(req, PeerRequest::Join(_)) {
        // Under peer mutual TLS a joining node's certificate must name the host it joins
        // as: without one, nothing ties the certificate to the member it would become. (A
        // removal check answers no more than whether the sender's id was removed.)
        return refuse(
            StatusCode::BAD_REQUEST,
            "invalid_argument",
            "the peer URL names no host to check the peer certificate against",
        );
    }
    if let (Some(Extension(ClientCertificate(der))), Some(host)) = (&certificate, &host) {
        if !crate::tls::certificate_names(der, host) {
            let why = format!(
                "the TLS certificate presented does not name node {from}'s peer host {host:?} (a member's peer \
                 certificate must list its peer address among its subject alternative names)"
            );
            refused_request(node.id(), Some(from), remote, "certificate_mismatch", &why);
            return refuse(StatusCode::FORBIDDEN, "permission_denied", why);
        }
    }
    let resp = node.clone().handle_peer(from, req).await;
    let body = serde_json::to_vec(&resp).expect("peer responses serialise");
    let mut reply = ([(axum::http::header::CONTENT_TYPE, "application/json")], body.clone()).into_response();
    if let Some(sig) = key.sign_response(&verified, &body) {
        let value = axum::http::HeaderValue::from_str(&sig).expect("hex is a valid header value");
        reply.headers_mut().insert(RESPONSE_SIGNATURE_HEADER, value);
    }
    reply
}
