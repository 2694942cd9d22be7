//! A real single-node cluster in a temp dir, driven through `client_router` with
//! `tower::ServiceExt::oneshot` (no socket), plus the assertions every test shares.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use futures::FutureExt;
use palisade::config::Config;
use palisade::node::Node;
use serde_json::{json, Value};
use tower::ServiceExt;

pub const CLIENT_URL: &str = "http://127.0.0.1:1";
pub const PEER_URL: &str = "http://127.0.0.1:2";

/// One reply, fully read.
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// `METHOD uri`, for assertion messages.
    pub what: String,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (panics, showing the body, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {:?}", self.what, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().expect("header is ASCII"))
    }

    fn header_u64(&self, name: &str) -> u64 {
        let v = self.header(name).unwrap_or_else(|| {
            panic!("{}: no {name} header (status {}, headers {:?})", self.what, self.status, self.headers)
        });
        v.parse().unwrap_or_else(|_| panic!("{}: {name} is not a number: {v:?}", self.what))
    }

    /// `X-Palisade-Revision`.
    pub fn rev_header(&self) -> u64 {
        self.header_u64("x-palisade-revision")
    }

    /// `X-Palisade-Term`.
    pub fn term_header(&self) -> u64 {
        self.header_u64("x-palisade-term")
    }

    /// Asserts the status, showing the body when it differs.
    pub fn expect(&self, status: StatusCode) -> &Resp {
        assert_eq!(self.status, status, "{}: unexpected status; body: {}", self.what, self.text());
        self
    }

    /// Asserts 200 and returns the JSON body.
    pub fn ok(&self) -> Value {
        self.expect(StatusCode::OK);
        self.json()
    }

    /// Asserts the one error shape: `status`, a JSON body `{"error": {"code": code,
    /// "message": <non-empty>, ...}}` and nothing else at the top level. Returns the error
    /// object.
    pub fn error(&self, status: StatusCode, code: &str) -> Value {
        self.expect(status);
        let ct = self.header("content-type").unwrap_or("");
        assert!(ct.starts_with("application/json"), "{}: error content-type is {ct:?}", self.what);
        let body = self.json();
        let obj =
            body.as_object().unwrap_or_else(|| panic!("{}: error body is not an object: {body}", self.what));
        assert_eq!(
            obj.keys().collect::<Vec<_>>(),
            vec!["error"],
            "{}: an error body has only `error` at the top level: {body}",
            self.what
        );
        let err = &body["error"];
        assert_eq!(err["code"], json!(code), "{}: wrong error code in {body}", self.what);
        let msg = err["message"].as_str().unwrap_or_else(|| panic!("{}: no message in {body}", self.what));
        assert!(!msg.trim().is_empty(), "{}: empty error message in {body}", self.what);
        err.clone()
    }
}

/// What a refused request must leave untouched: the store revision and every key.
#[derive(Debug, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub kvs: Value,
}

/// A one-node config in `dir` that advertises [`CLIENT_URL`] and [`PEER_URL`] (nothing
/// listens: requests go through the router directly).
pub fn test_config(dir: &std::path::Path) -> Config {
    let mut cfg = Config::new(1, dir);
    cfg.listen_client = CLIENT_URL.trim_start_matches("http://").into();
    cfg.listen_peer = PEER_URL.trim_start_matches("http://").into();
    cfg
}

/// A handle on the node under test.
#[derive(Clone)]
pub struct Api {
    router: Router,
    /// Sent as `Authorization: Bearer <token>` with every request (client auth on).
    token: Option<String>,
}

/// Starts a one-node cluster in a fresh temp dir, waits until `/readyz` says 200, runs
/// `test`, then shuts the node down and removes the dir, also when `test` panics.
pub async fn with_node<Fut: Future<Output = ()>>(test: impl FnOnce(Api) -> Fut) {
    with_node_config(|_| {}, test).await
}

/// [`with_node`] with settings changed by `tweak` first.
pub async fn with_node_config<Fut: Future<Output = ()>>(
    tweak: impl FnOnce(&mut Config),
    test: impl FnOnce(Api) -> Fut,
) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut cfg = test_config(dir.path());
    tweak(&mut cfg);
    let node = Node::start(cfg).await.expect("the node starts");
    let api = Api { router: palisade::http::client_router(node.clone()), token: None };
    let result = AssertUnwindSafe(async {
        api.wait_ready().await;
        test(api.clone()).await
    })
    .catch_unwind()
    .await;
    node.shutdown().await;
    drop(api);
    drop(node);
    drop(dir);
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

impl Api {
    /// The same node, every request sent with `Authorization: Bearer <token>`.
    pub fn with_token(&self, token: &str) -> Api {
        Api { router: self.router.clone(), token: Some(token.to_string()) }
    }

    /// The request's headers: `Authorization` from [`Api::with_token`], if any.
    fn builder(&self, method: &Method, uri: &str) -> axum::http::request::Builder {
        let req = Request::builder().method(method.clone()).uri(uri);
        match &self.token {
            Some(t) => req.header(header::AUTHORIZATION, format!("Bearer {t}")),
            None => req,
        }
    }

    async fn wait_ready(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get("/readyz").await;
            if r.status == StatusCode::OK {
                return;
            }
            assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "readyz: {}", r.text());
            assert!(tokio::time::Instant::now() < deadline, "the one-node cluster never became ready");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Sends one request through the router.
    pub async fn send(&self, method: Method, uri: &str, body: Body, content_type: Option<&str>) -> Resp {
        let mut req = self.builder(&method, uri);
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req.body(body).unwrap_or_else(|e| panic!("{method} {uri}: bad request: {e}"));
        let resp = self.router.clone().oneshot(req).await.expect("the router is infallible");
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.expect("the body reads");
        Resp { status: parts.status, headers: parts.headers, body, what: format!("{method} {uri}") }
    }

    /// A request with these exact headers (and the token of [`Api::with_token`], if any).
    pub async fn send_with_headers(
        &self,
        method: Method,
        uri: &str,
        body: Body,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self.builder(&method, uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(body).unwrap_or_else(|e| panic!("{method} {uri}: bad request: {e}"));
        let resp = self.router.clone().oneshot(req).await.expect("the router is infallible");
        let (parts, body) = resp.into_parts();
        let body = axum::body::to_bytes(body, usize::MAX).await.expect("the body reads");
        Resp { status: parts.status, headers: parts.headers, body, what: format!("{method} {uri}") }
    }

    /// Sends a `GET` and hands back the reply with its body unread (for streams).
    pub async fn open(&self, uri: &str, headers: &[(&str, &str)]) -> axum::response::Response {
        let mut req = self.builder(&Method::GET, uri);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let req = req.body(Body::empty()).unwrap_or_else(|e| panic!("GET {uri}: bad request: {e}"));
        self.router.clone().oneshot(req).await.expect("the router is infallible")
    }

    pub async fn get(&self, uri: &str) -> Resp {
        self.send(Method::GET, uri, Body::empty(), None).await
    }

    pub async fn delete(&self, uri: &str) -> Resp {
        self.send(Method::DELETE, uri, Body::empty(), None).await
    }

    /// `PUT` with a JSON body and `Content-Type: application/json`.
    pub async fn put(&self, uri: &str, body: Value) -> Resp {
        self.send(Method::PUT, uri, Body::from(body.to_string()), Some("application/json")).await
    }

    /// `PUT` with these exact body bytes and no content type (`curl -d` without `-H`).
    pub async fn put_raw(&self, uri: &str, body: impl Into<Body>) -> Resp {
        self.send(Method::PUT, uri, body.into(), None).await
    }

    /// `POST` with a JSON body (and these extra headers).
    pub async fn post(&self, uri: &str, body: Value, headers: &[(&str, &str)]) -> Resp {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send_with_headers(Method::POST, uri, Body::from(body.to_string()), &all).await
    }

    /// A refused `POST` with a JSON content type and these body bytes.
    pub async fn refused_post(
        &self,
        uri: &str,
        body: impl Into<Body>,
        status: StatusCode,
        code: &str,
    ) -> Resp {
        self.refused(Method::POST, uri, body.into(), Some("application/json"), status, code).await
    }

    /// Writes a UTF-8 value (must succeed) and returns the reply.
    pub async fn set(&self, key: &str, value: &str) -> Value {
        self.put(&format!("/v1/kv{key}"), json!({ "value": value })).await.ok()
    }

    /// The store revision `/v1/cluster` reports.
    pub async fn revision(&self) -> u64 {
        let v = self.get("/v1/cluster").await.ok();
        v["revision"].as_u64().unwrap_or_else(|| panic!("/v1/cluster has no revision: {v}"))
    }

    /// Every key there is, with values and revisions, and the store revision.
    pub async fn snapshot(&self) -> Snapshot {
        let revision = self.revision().await;
        let list = self.get("/v1/kv/?recursive").await.ok();
        assert_eq!(list["more"], json!(false), "the snapshot listing fits one page");
        assert_eq!(list["revision"], json!(revision), "listing and /v1/cluster disagree");
        Snapshot { revision, kvs: list["kvs"].clone() }
    }

    /// Sends a request that must be refused with `status` / `code`, and checks that it
    /// changed nothing. Returns the reply.
    pub async fn refused(
        &self,
        method: Method,
        uri: &str,
        body: Body,
        content_type: Option<&str>,
        status: StatusCode,
        code: &str,
    ) -> Resp {
        let before = self.snapshot().await;
        let r = self.send(method, uri, body, content_type).await;
        r.error(status, code);
        let after = self.snapshot().await;
        assert_eq!(before, after, "{}: a refused request changed the store", r.what);
        r
    }

    pub async fn refused_get(&self, uri: &str, status: StatusCode, code: &str) -> Resp {
        self.refused(Method::GET, uri, Body::empty(), None, status, code).await
    }

    pub async fn refused_delete(&self, uri: &str, status: StatusCode, code: &str) -> Resp {
        self.refused(Method::DELETE, uri, Body::empty(), None, status, code).await
    }

    /// A refused `PUT` with a JSON content type and these body bytes.
    pub async fn refused_put(
        &self,
        uri: &str,
        body: impl Into<Body>,
        status: StatusCode,
        code: &str,
    ) -> Resp {
        self.refused(Method::PUT, uri, body.into(), Some("application/json"), status, code).await
    }
}

/// The kv object a reply should carry for a UTF-8 value.
pub fn kv(key: &str, value: &str, create: u64, modified: u64, version: u64) -> Value {
    json!({
        "key": key,
        "value": value,
        "create_revision": create,
        "mod_revision": modified,
        "version": version,
        "lease": null,
    })
}

/// The revision a write reply reports (and checks that the headers agree with it).
pub fn write_rev(r: &Resp) -> u64 {
    let body = r.json();
    let rev = body["revision"].as_u64().unwrap_or_else(|| panic!("{}: no revision in {body}", r.what));
    assert_eq!(r.rev_header(), rev, "{}: X-Palisade-Revision differs from the body", r.what);
    assert!(r.term_header() >= 1, "{}: X-Palisade-Term is 0", r.what);
    rev
}
