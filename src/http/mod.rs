//! HTTP front-end: the client API router, the peer (Raft) router, and the serve loop.
//! The only layer that knows status codes; everything else goes through [`Node`].
//!
//! Layers (outermost first): request tracing, then the routes; the API routes (not the
//! health routes, which must answer an orchestrator even under overload) sit behind the
//! in-flight limit. Body limits are enforced by each handler as it reads the body, so an
//! oversized body gets our JSON 413.
//!
//! Under the routers, [`serve`] runs our own server (`server.rs`, `connection.rs`): a cap on
//! open connections, deadlines for request heads, bodies and idle connections, accept
//! loops that survive running out of file descriptors, and graceful shutdown.

mod cluster;
mod connection;
mod election;
pub mod error;
mod extract;
mod kv;
mod lease;
mod lock;
mod maintenance;
mod members;
mod observe;
mod peer;
mod query;
mod server;
mod snapshot;
mod txn;
mod watch;
mod write;

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, Method, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post, put};
use axum::Router;
use serde::Serialize;

use crate::auth::Caller;
use crate::node::Node;
use crate::peer::ReplayGuard;
use error::ApiError;

/// The client API routes, as the OpenAPI spec lists them (method, axum path).
pub const CLIENT_ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/kv/{*key}"),
    ("PUT", "/v1/kv/{*key}"),
    ("DELETE", "/v1/kv/{*key}"),
    ("POST", "/v1/kv/{*key}"),
    ("POST", "/v1/txn"),
    ("GET", "/v1/watch/{*key}"),
    ("POST", "/v1/leases"),
    ("GET", "/v1/leases"),
    ("GET", "/v1/leases/{id}"),
    ("DELETE", "/v1/leases/{id}"),
    ("POST", "/v1/leases/{id}/keepalive"),
    ("POST", "/v1/locks/{name}"),
    ("GET", "/v1/locks/{name}"),
    ("DELETE", "/v1/locks/{name}"),
    ("GET", "/v1/locks"),
    ("POST", "/v1/fence/check"),
    ("POST", "/v1/elections/{name}/campaign"),
    ("GET", "/v1/elections/{name}"),
    ("PUT", "/v1/elections/{name}/leader"),
    ("DELETE", "/v1/elections/{name}/leader"),
    ("GET", "/v1/elections/{name}/observe"),
    ("POST", "/v1/maintenance/compact"),
    ("GET", "/v1/maintenance/snapshot"),
    ("GET", "/v1/cluster"),
    ("POST", "/v1/cluster/members"),
    ("POST", "/v1/cluster/members/{id}/promote"),
    ("PUT", "/v1/cluster/members/{id}"),
    ("DELETE", "/v1/cluster/members/{id}"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
];

/// The client API.
pub fn client_router(node: Arc<Node>) -> Router {
    let kv = get(kv::get).put(kv::put).delete(kv::delete).post(kv::post);
    // The in-flight limit sheds load with a 429 before any work (or body buffering).
    let api = Router::new()
        .route("/v1/kv", kv.clone())
        .route("/v1/kv/", kv.clone())
        .route("/v1/kv/{*key}", kv)
        .route("/v1/txn", post(txn::txn))
        .route("/v1/watch", get(watch::watch))
        .route("/v1/watch/", get(watch::watch))
        .route("/v1/watch/{*key}", get(watch::watch))
        .route("/v1/leases", post(lease::grant).get(lease::list))
        .route("/v1/leases/{id}", get(lease::get).delete(lease::revoke))
        .route("/v1/leases/{id}/keepalive", post(lease::keepalive))
        .route("/v1/locks", get(lock::list))
        .route("/v1/locks/{name}", post(lock::acquire).get(lock::get).delete(lock::release))
        .route("/v1/fence/check", post(lock::fence_check))
        .route("/v1/elections/{name}", get(election::get))
        .route("/v1/elections/{name}/campaign", post(election::campaign))
        .route("/v1/elections/{name}/leader", put(election::proclaim).delete(election::resign))
        .route("/v1/elections/{name}/observe", get(election::observe))
        .route("/v1/maintenance/compact", post(maintenance::compact))
        // Backups: a snapshot of the state, streamed (admin only).
        .route("/v1/maintenance/snapshot", get(snapshot::download))
        .route("/v1/cluster", get(cluster::cluster))
        // Membership changes (admin only).
        .route("/v1/cluster/members", post(members::add))
        .route("/v1/cluster/members/{id}/promote", post(members::promote))
        .route("/v1/cluster/members/{id}", put(members::update).delete(members::remove))
        .layer(axum::middleware::from_fn_with_state(node.clone(), authenticate))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(tokio::sync::Semaphore::new(node.config().max_inflight_requests)),
            limit_inflight,
        ));
    let mut router = Router::new()
        .merge(api)
        .route("/healthz", get(cluster::healthz))
        .route("/readyz", get(cluster::readyz));
    if node.config().metrics != crate::config::MetricsAccess::Off {
        router = router.route("/metrics", get(observe::metrics));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(node.clone(), observe::observe))
        .with_state(node)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// The peer API: Raft RPCs, forwarded writes and read-index calls, each signed by a
/// member. Never exposed to clients (it has its own listener).
pub fn peer_router(node: Arc<Node>) -> Router {
    let slots = Arc::new(tokio::sync::Semaphore::new(node.config().max_peer_inflight));
    Router::new()
        .route("/raft/rpc", post(peer::rpc))
        .route("/raft/join", post(peer::join))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(peer::PeerState { node, slots, replays: Arc::new(ReplayGuard::new(peer::REPLAY_MEMORY)) })
}

/// Names the caller of an API request ([`Caller`] in the request's extensions): anyone
/// when client auth is off; else the subject of a valid bearer token, or 401
/// `unauthenticated` with `WWW-Authenticate` (the health routes stay open).
async fn authenticate(
    axum::extract::State(node): axum::extract::State<Arc<Node>>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let caller = match caller_of(&node, req.headers()) {
        Ok(caller) => caller,
        Err(refusal) => return *refusal,
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The caller `headers` name (anyone while client auth is off), or the 401 to answer.
fn caller_of(node: &Node, headers: &HeaderMap) -> Result<Caller, Box<axum::response::Response>> {
    let Some(verifier) = node.auth() else { return Ok(Caller::open()) };
    let mut values = headers.get_all(axum::http::header::AUTHORIZATION).iter();
    let (first, more) = (values.next(), values.next().is_some());
    let checked = if more {
        Err(crate::error::Error::Unauthenticated("send one Authorization header, not several".into()))
    } else {
        verifier.caller(first.map(|v| v.as_bytes()), crate::clock::wall_clock_ms() / 1000)
    };
    checked.map_err(|e| {
        let challenge = if first.is_none() {
            HeaderValue::from_static("Bearer realm=\"palisade\"")
        } else {
            HeaderValue::from_static("Bearer realm=\"palisade\", error=\"invalid_token\"")
        };
        let mut resp = ApiError::from(e).into_response();
        resp.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, challenge);
        Box::new(resp)
    })
}

/// Refuses a request with 429 when `--max-inflight-requests` are already being served, so
/// memory and queues stay bounded under overload. A long-poll (`GET /v1/kv/...?wait`)
/// spends most of its life waiting, not working: it is bounded by `--max-watchers`
/// instead, like a watch; so is a lock acquire or an election campaign once its body has
/// been read (see [`InflightPermit`]).
async fn limit_inflight(
    axum::extract::State(permits): axum::extract::State<Arc<tokio::sync::Semaphore>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if is_long_poll(&req) {
        return next.run(req).await;
    }
    let Ok(permit) = permits.try_acquire_owned() else {
        return ApiError::from(crate::error::Error::Overloaded(
            "too many requests in flight on this node; retry shortly".into(),
        ))
        .into_response();
    };
    if is_lock_wait(&req) {
        // Held while the body is read and checked; the route lets go of it when it starts
        // to wait (see `InflightPermit`).
        let mut req = req;
        req.extensions_mut().insert(InflightPermit(Arc::new(std::sync::Mutex::new(Some(permit)))));
        return next.run(req).await;
    }
    let response = next.run(req).await;
    drop(permit);
    response
}

/// A request's place among `--max-inflight-requests`, handed to a route that may wait
/// (an acquire, a campaign): it holds the place while it reads and checks the request,
/// then lets go of it to wait under `--max-watchers` instead.
#[derive(Clone)]
pub(crate) struct InflightPermit(Arc<std::sync::Mutex<Option<tokio::sync::OwnedSemaphorePermit>>>);

impl InflightPermit {
    /// Frees the place (the request goes on, counted elsewhere).
    pub(crate) fn release(&self) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Whether `req` is a long-poll: a key read whose query turns `wait` on, parsed as the
/// route parses it (a query the route refuses is no long-poll: it is answered at once).
fn is_long_poll(req: &axum::extract::Request) -> bool {
    (req.method() == Method::GET || req.method() == Method::HEAD)
        && req.uri().path().starts_with("/v1/kv")
        // Parsed only when it may be one (the name, or a percent-encoded one, is there).
        && req.uri().query().is_some_and(|q| q.contains("wait") || q.contains('%'))
        && kv::is_long_poll(req.uri())
}

/// Whether `req` may wait for a grant: an acquire or a campaign.
fn is_lock_wait(req: &axum::extract::Request) -> bool {
    let path = req.uri().path();
    req.method() == Method::POST
        && ((path.starts_with("/v1/locks/") && path.len() > "/v1/locks/".len())
            || (path.starts_with("/v1/elections/") && path.ends_with("/campaign")))
}

async fn not_found(uri: Uri) -> ApiError {
    crate::error::Error::NotFound(format!("no route for {}", uri.path())).into()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    crate::error::Error::MethodNotAllowed(format!("{method} is not allowed on {}", uri.path())).into()
}

/// Serialises `v` as a JSON body.
pub(crate) fn json_body<T: Serialize>(v: &T) -> impl IntoResponse {
    let bytes = serde_json::to_vec(v).expect("responses serialise");
    ([(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], bytes)
}

/// Adds the headers every state-reflecting response carries.
pub(crate) fn state_headers(h: &mut HeaderMap, revision: u64, term: u64) {
    h.insert("x-palisade-revision", HeaderValue::from(revision));
    h.insert("x-palisade-term", HeaderValue::from(term));
}

/// Serves the client and peer routers on the given listeners until `shutdown` resolves.
/// Then, in order: `/readyz` turns false and the client listener stops taking
/// connections; the client requests being served have `--shutdown-timeout-ms` to finish
/// (watches end at once); a leader hands its leadership over; and only then does the peer
/// listener close (the hand-over, and the other members' calls until then, need it).
///
/// The client listener takes at most `--max-client-connections` connections; the peer
/// listener at most `--max-peer-inflight` (HTTP/1.1 serves one request per connection at
/// a time, so more peer connections than peer requests served at once would only wait).
/// Both apply `--header-timeout-ms`, `--body-timeout-ms` and `--idle-timeout-ms`.
///
/// A listener with TLS in `tls` speaks HTTPS only (see `server.rs`); its config follows
/// its files once [`crate::tls::ListenerTls::watch`] runs.
pub async fn serve(
    node: Arc<Node>,
    client: tokio::net::TcpListener,
    peer: tokio::net::TcpListener,
    tls: crate::tls::ListenerTls,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cfg = node.config();
    let timeouts = connection::Timeouts {
        header: std::time::Duration::from_millis(cfg.header_timeout_ms),
        body: std::time::Duration::from_millis(cfg.body_timeout_ms),
        idle: std::time::Duration::from_millis(cfg.idle_timeout_ms),
    };
    let health = Arc::new(server::ServerHealth::default());
    let client = server::Listener {
        name: "client",
        tcp: client,
        app: client_router(node.clone()).layer(axum::Extension(health.clone())),
        max_connections: cfg.max_client_connections,
        cap_setting: "max_client_connections",
        tls: tls.client,
    };
    let peer = server::Listener {
        name: "peer",
        tcp: peer,
        app: peer_router(node.clone()),
        max_connections: cfg.max_peer_inflight,
        cap_setting: "max_peer_inflight",
        tls: tls.peer,
    };
    let (close_peer, peer_closing) = tokio::sync::oneshot::channel::<()>();
    // Peer requests are short (a request deadline at most): a second is enough for those
    // in flight when the peer listener closes.
    let peer_server = tokio::spawn(server::run(
        vec![peer],
        timeouts,
        std::time::Duration::from_secs(1),
        health.clone(),
        async move {
            let _ = peer_closing.await;
        },
        || {},
    ));
    let grace = std::time::Duration::from_millis(cfg.shutdown_timeout_ms);
    let client_shutdown = {
        let node = node.clone();
        async move {
            shutdown.await;
            tracing::info!(?grace, "shutting down: not ready, finishing the requests being served");
            node.begin_shutdown();
        }
    };
    // Watches never finish by themselves: they end as the server starts draining.
    let drain_node = node.clone();
    server::run(vec![client], timeouts, grace, health, client_shutdown, move || drain_node.close_watches())
        .await;
    if node.health().is_ok() {
        node.hand_over_leadership().await;
    }
    let _ = close_peer.send(());
    let _ = peer_server.await;
    Ok(())
}
