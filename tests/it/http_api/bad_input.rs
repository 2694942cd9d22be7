//! Every refused input: the right 4xx, the one error shape, and no change to the store
//! (revision and every key as before; for locks, elections and fencing also the locks,
//! the leases and the leader). Each case is its own assertion.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use crate::http_api::harness::{with_node, Api};

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;

/// A store with something in it, so "nothing changed" means something.
async fn seed(api: &Api) {
    api.set("/a", "orig").await;
    api.set("/a/b", "child").await;
    api.put("/v1/kv/bin", json!({"value_base64": "/wD+"})).await.ok();
}

fn value_body() -> String {
    json!({"value": "new"}).to_string()
}

#[tokio::test]
async fn invalid_keys() {
    with_node(|api| async move {
        seed(&api).await;
        let too_long = format!("/v1/kv/{}", "x".repeat(1024));
        // 512 two-byte characters: 1 + 1024 = 1025 bytes once decoded.
        let too_long_encoded = format!("/v1/kv/{}", "%C3%A9".repeat(512));
        let bad_paths = [
            "/v1/kv//a",          // empty first segment
            "/v1/kv/a//b",        // empty segment
            "/v1/kv/a/",          // trailing '/'
            "/v1/kv/a/b/",        // trailing '/' below an existing key
            "/v1/kv//",           // '//'
            "/v1/kv/.",           // '.' segment
            "/v1/kv/a/.",         // '.' segment
            "/v1/kv/a/./b",       // '.' segment
            "/v1/kv/..",          // '..' segment
            "/v1/kv/a/..",        // '..' segment
            "/v1/kv/a/../b",      // '..' segment
            "/v1/kv/a/%2E%2E",    // '..' once decoded
            "/v1/kv/a/%2e",       // '.' once decoded
            "/v1/kv/a%2F..%2Fb",  // '/a/../b' once decoded
            "/v1/kv/a%2F",        // trailing '/' once decoded
            "/v1/kv/a%2F%2Fb",    // '//' once decoded
            "/v1/kv/%2F",         // '//' once decoded
            "/v1/kv/a%01",        // control character
            "/v1/kv/a%00b",       // NUL
            "/v1/kv/a%0A",        // newline
            "/v1/kv/a%7F",        // DEL
            "/v1/kv/a%C2%85",     // U+0085, a C1 control
            "/v1/kv/a%FF",        // not UTF-8
            "/v1/kv/a%C3",        // truncated UTF-8
            "/v1/kv/%ED%A0%80",   // an encoded surrogate: not UTF-8
            "/v1/kv/db%E2%80%8B", // U+200B zero-width space: looks like /db
            "/v1/kv/a%E2%80%AEb", // U+202E right-to-left override
            "/v1/kv/a%E2%81%A6b", // U+2066 left-to-right isolate
            "/v1/kv/%EF%BB%BFa",  // U+FEFF byte-order mark
            &too_long,            // 1025 bytes
            &too_long_encoded,    // 1025 bytes once decoded
        ];
        for path in bad_paths {
            api.refused_put(path, value_body(), BAD, "invalid_key").await;
            api.refused_get(path, BAD, "invalid_key").await;
            api.refused_delete(path, BAD, "invalid_key").await;
            api.refused_delete(&format!("{path}?recursive"), BAD, "invalid_key").await;
            api.refused_get(&format!("{path}?recursive"), BAD, "invalid_key").await;
            api.refused_get(&format!("{path}?children"), BAD, "invalid_key").await;
        }

        // The root cannot be written, deleted, or read as a key.
        for root in ["/v1/kv/", "/v1/kv"] {
            api.refused_put(root, value_body(), BAD, "invalid_key").await;
            api.refused(Method::PUT, root, Body::from(value_body()), None, BAD, "invalid_key").await;
            api.refused_delete(root, BAD, "invalid_key").await;
            api.refused_delete(&format!("{root}?recursive"), BAD, "invalid_key").await;
            api.refused_get(root, BAD, "invalid_key").await;
            api.refused_get(&format!("{root}?raw"), BAD, "invalid_key").await;
        }
        // The key is checked before the body.
        api.refused_put("/v1/kv/a/", "not json", BAD, "invalid_key").await;
        assert_eq!(api.get("/v1/kv/a").await.ok()["kv"]["value"], json!("orig"));
    })
    .await;
}

#[tokio::test]
async fn invalid_query_parameters() {
    with_node(|api| async move {
        seed(&api).await;
        let put = |uri: &'static str| {
            let api = api.clone();
            async move { api.refused_put(uri, value_body(), BAD, "invalid_argument").await }
        };
        let get = |uri: &'static str| {
            let api = api.clone();
            async move { api.refused_get(uri, BAD, "invalid_argument").await }
        };
        let del = |uri: &'static str| {
            let api = api.clone();
            async move { api.refused_delete(uri, BAD, "invalid_argument").await }
        };

        // Unknown parameters (typos must not silently do something else).
        get("/v1/kv/a?recurisve").await;
        get("/v1/kv/a?recursive&bogus=1").await;
        get("/v1/kv/a?if_version=0").await;
        get("/v1/kv/a?prev_kv").await;
        get("/v1/kv/a?wiat").await;
        get("/v1/kv/a?watch").await;
        put("/v1/kv/a?wait").await;
        del("/v1/kv/a?wait").await;
        put("/v1/kv/a?recurisve").await;
        put("/v1/kv/a?recursive").await;
        put("/v1/kv/a?ifversion=0").await;
        put("/v1/kv/a?sequential").await;
        del("/v1/kv/a?recurisve").await;
        del("/v1/kv/a?children").await;
        del("/v1/kv/a?if-version=1").await;
        // A parameter whose name or value is not UTF-8.
        put("/v1/kv/a?if_value=%FF").await;
        get("/v1/kv/a?%FF").await;

        // Repeated parameters.
        get("/v1/kv/a?recursive&recursive").await;
        get("/v1/kv/a?recursive&limit=1&limit=2").await;
        get("/v1/kv/a?revision=1&revision=1").await;
        put("/v1/kv/a?if_version=1&if_version=1").await;
        put("/v1/kv/a?prev_kv&prev_kv").await;
        del("/v1/kv/a?if_value=orig&if_value=orig").await;

        // Numbers that are not numbers.
        put("/v1/kv/a?if_version=abc").await;
        put("/v1/kv/a?if_version=-1").await;
        put("/v1/kv/a?if_version=1.0").await;
        put("/v1/kv/a?if_version=").await;
        put("/v1/kv/a?if_version").await;
        put("/v1/kv/a?if_version=99999999999999999999999").await;
        put("/v1/kv/a?if_mod_revision=x").await;
        del("/v1/kv/a?if_version=abc").await;
        del("/v1/kv/a?if_mod_revision=-5").await;
        get("/v1/kv/a?revision=abc").await;
        get("/v1/kv/a?revision=-1").await;
        get("/v1/kv/a?revision=0").await;
        get("/v1/kv/a?recursive&limit=abc").await;

        // Flags with values that are not booleans.
        get("/v1/kv/a?recursive=maybe").await;
        get("/v1/kv/a?raw=yes").await;
        put("/v1/kv/a?prev_kv=please").await;
        del("/v1/kv/a?recursive=2").await;

        // limit: at least 1, at most the maximum (10000), only on listings.
        get("/v1/kv/a?recursive&limit=0").await;
        get("/v1/kv/a?children&limit=0").await;
        get("/v1/kv/a?recursive&limit=10001").await;
        get("/v1/kv/a?children&limit=10001").await;
        get("/v1/kv/a?recursive&limit=-1").await;
        get("/v1/kv/a?limit=5").await;
        api.get("/v1/kv/a?recursive&limit=10000").await.ok();

        // after: only a token from a previous page.
        get("/v1/kv/a?recursive&after=!!!").await;
        get("/v1/kv/a?recursive&after=").await;
        get("/v1/kv/a?recursive&after=bm90LWEtdG9rZW4").await; // "not-a-token"
        get("/v1/kv/a?recursive&after=eDovYS9i").await; // "x:/a/b": not a revision
        get("/v1/kv/a?recursive&after=%2Fa%2Fb").await; // a key, not a token
        get("/v1/kv/a?children&after=garbage!").await;
        get("/v1/kv/a?after=MTovYQ").await; // a token on a single-key read

        // Combinations that make no sense.
        get("/v1/kv/a?recursive&children").await;
        get("/v1/kv/a?raw&recursive").await;
        get("/v1/kv/a?raw&children").await;
        get("/v1/kv/a?keys_only").await;
        get("/v1/kv/a?count_only").await;
        get("/v1/kv/a?children&keys_only").await;
        get("/v1/kv/a?children&count_only").await;

        // Consistency must be one of the two names.
        get("/v1/kv/a?consistency=bogus").await;
        get("/v1/kv/a?recursive&consistency=strong").await;

        assert_eq!(api.get("/v1/kv/a").await.ok()["kv"]["value"], json!("orig"));
    })
    .await;
}

#[tokio::test]
async fn invalid_bodies() {
    with_node(|api| async move {
        seed(&api).await;
        let uri = "/v1/kv/a";

        // Not JSON at all, or not complete: invalid_json (with or without a content type).
        for body in ["hello", "{", "{\"value\": \"x\"", "{\"value\": x}", "value=x", "{'value': 'x'}"] {
            api.refused_put(uri, body, BAD, "invalid_json").await;
            api.refused(Method::PUT, uri, Body::from(body), None, BAD, "invalid_json").await;
        }
        // An empty body (or only whitespace) is not JSON either.
        api.refused_put(uri, "", BAD, "invalid_json").await;
        api.refused(Method::PUT, uri, Body::empty(), None, BAD, "invalid_json").await;
        api.refused_put(uri, " \n\t", BAD, "invalid_json").await;
        api.refused_put("/v1/kv/new", "", BAD, "invalid_json").await;

        // Valid JSON of the wrong shape: invalid_argument.
        for body in [
            json!({"value": "x", "ttl": 5}),        // unknown field
            json!({"valeu": "x"}),                  // typo
            json!({"value": "x", "prev_kv": true}), // a query parameter is not a field
            json!({"value": 5}),                    // not a string
            json!({"value": true}),
            json!({"value": ["x"]}),
            json!({"value": {"a": 1}}),
            json!({"value_base64": 5}),
            json!({"value": "x", "value_base64": "eA=="}), // both
            json!({"value": "", "value_base64": ""}),      // both, empty
            json!({}),                                     // neither
            json!({"value": null}),                        // neither
            json!({"lease": 12}),                          // neither
            json!({"value_base64": "!!!"}),                // bad base64
            json!({"value_base64": "/w="}),                // bad padding
            json!({"value_base64": "aGVsbG8"}),            // missing padding
            json!({"value_base64": "-_-_"}),               // URL-safe alphabet
            json!({"value_base64": "eA==\n"}),             // trailing garbage
            json!({"value": "x", "lease": "12"}),          // lease not a number
            json!({"value": "x", "lease": -1}),
            json!({"value": "x", "lease": 1.5}),
            json!("x"), // not an object
            json!(["x"]),
            json!(null),
            json!(42),
        ] {
            api.refused_put(uri, body.to_string(), BAD, "invalid_argument").await;
        }
        // A duplicate field is a JSON error of the data kind.
        api.refused_put(uri, r#"{"value":"x","value":"y"}"#, BAD, "invalid_argument").await;

        // A lease that does not exist.
        api.refused_put(
            uri,
            json!({"value": "x", "lease": 12}).to_string(),
            StatusCode::NOT_FOUND,
            "lease_not_found",
        )
        .await;
        // Lease ids are 1 to 2^53 - 1: 0 and 2^53 are bad input, not missing leases.
        for lease in [0u64, 1 << 53] {
            api.refused_put(
                "/v1/kv/new",
                json!({"value": "x", "lease": lease}).to_string(),
                BAD,
                "invalid_argument",
            )
            .await;
        }

        // Values over 1 MiB: 413 too_large, however they are spelled.
        let mib = 1024 * 1024;
        let too_large = StatusCode::PAYLOAD_TOO_LARGE;
        api.refused_put(uri, json!({"value": "v".repeat(mib + 1)}).to_string(), too_large, "too_large").await;
        let wide = format!("{}x", "é".repeat(mib / 2));
        assert_eq!(wide.len(), mib + 1);
        api.refused_put(uri, json!({ "value": wide }).to_string(), too_large, "too_large").await;
        let b64 = STANDARD.encode(vec![0xffu8; mib + 1]);
        api.refused_put(uri, json!({ "value_base64": b64 }).to_string(), too_large, "too_large").await;

        // A body in an encoding the server does not decode: 415, nothing read or changed.
        let before = api.snapshot().await;
        for encoding in ["gzip", "deflate", "br", "identity, gzip"] {
            let r = api
                .send_with_headers(
                    Method::PUT,
                    uri,
                    Body::from(json!({"value": "x"}).to_string()),
                    &[("content-type", "application/json"), ("content-encoding", encoding)],
                )
                .await;
            r.error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_encoding");
        }
        assert_eq!(api.snapshot().await, before, "a body in an unknown encoding changed the store");
        let r = api
            .send_with_headers(
                Method::PUT,
                "/v1/kv/enc",
                Body::from(json!({"value": "plain"}).to_string()),
                &[("content-encoding", "identity")],
            )
            .await;
        r.expect(StatusCode::OK);
        api.delete("/v1/kv/enc").await;

        // Bodies over 2 MiB: 413 too_large, before any parsing.
        let body = json!({"value": "v".repeat(2 * mib)}).to_string();
        assert!(body.len() > 2 * mib);
        api.refused_put(uri, body, too_large, "too_large").await;
        api.refused_put(uri, vec![b'x'; 2 * mib + 1], too_large, "too_large").await;
        api.refused_put(uri, format!("{{\"value\":\"x\"}}{}", " ".repeat(2 * mib)), too_large, "too_large")
            .await;
        // The same without a length up front (a streamed, chunked body).
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = std::iter::once(Ok(b"{\"value\":\"".to_vec()))
            .chain((0..33).map(|_| Ok(vec![b'v'; 64 * 1024])))
            .collect();
        let stream = Body::from_stream(futures::stream::iter(chunks));
        api.refused(Method::PUT, uri, stream, Some("application/json"), too_large, "too_large").await;

        assert_eq!(api.get(uri).await.ok()["kv"]["value"], json!("orig"));
        api.get("/v1/kv/new").await.error(StatusCode::NOT_FOUND, "key_not_found");
    })
    .await;
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    with_node(|api| async move {
        seed(&api).await;
        for uri in
            ["/v2/kv/a", "/", "/v1", "/v1/kvx/a", "/v1/keys/a", "/v1/clusterx", "/healthz/x", "/metricz"]
        {
            api.refused_get(uri, StatusCode::NOT_FOUND, "not_found").await;
            api.refused_put(uri, value_body(), StatusCode::NOT_FOUND, "not_found").await;
        }
        let not_allowed = StatusCode::METHOD_NOT_ALLOWED;
        for (method, uri) in [
            (Method::PATCH, "/v1/kv/a"),
            (Method::GET, "/v1/txn"),
            (Method::PUT, "/v1/txn"),
            (Method::GET, "/v1/maintenance/compact"),
            (Method::PUT, "/v1/cluster"),
            (Method::POST, "/v1/cluster"),
            (Method::DELETE, "/healthz"),
            (Method::POST, "/readyz"),
        ] {
            api.refused(
                method,
                uri,
                Body::from(value_body()),
                Some("application/json"),
                not_allowed,
                "method_not_allowed",
            )
            .await;
        }
        // POST on a key exists only to create sequential children.
        api.refused(
            Method::POST,
            "/v1/kv/a",
            Body::from(value_body()),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        )
        .await;
        assert_eq!(api.get("/v1/kv/a").await.ok()["kv"]["value"], json!("orig"));
    })
    .await;
}

/// RFC 9110 §15.5.6: a 405 must carry an `Allow` header listing the methods the target
/// supports.
#[tokio::test]
async fn method_not_allowed_lists_allowed_methods() {
    with_node(|api| async move {
        let r = api.send(Method::PATCH, "/v1/kv/a", Body::from(value_body()), None).await;
        r.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        let allow = r.header("allow").unwrap_or_else(|| panic!("no Allow header on a 405: {:?}", r.headers));
        for m in ["GET", "PUT", "DELETE", "POST"] {
            assert!(allow.contains(m), "Allow {allow:?} lacks {m}");
        }
    })
    .await;
}

/// Past `max_inflight_requests`, a request is refused at once with 429 `overloaded` (and
/// `Retry-After`), and nothing changes; once the slot frees, requests are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_with_429() {
    use axum::body::Body;
    use tower::ServiceExt;

    let dir = tempfile::tempdir().unwrap();
    let mut cfg = crate::http_api::harness::test_config(dir.path());
    cfg.max_inflight_requests = 1;
    let node = palisade::node::Node::start(cfg).await.unwrap();
    let router = palisade::http::client_router(node.clone());
    // Wait for leadership (readyz takes the only slot only while it runs).
    for _ in 0..200 {
        let r = router
            .clone()
            .oneshot(axum::http::Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // A PUT whose body never finishes holds the only slot.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(1);
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let held = axum::http::Request::put("/v1/kv/slow").body(Body::from_stream(stream)).unwrap();
    let r2 = router.clone();
    let slow = tokio::spawn(async move { r2.oneshot(held).await.unwrap() });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let r = router
        .clone()
        .oneshot(axum::http::Request::put("/v1/kv/other").body(Body::from(r#"{"value":"x"}"#)).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], "overloaded", "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());

    // Finish the slow request; the slot frees and requests are served again.
    tx.send(Ok(axum::body::Bytes::from_static(br#"{"value":"slow"}"#))).await.unwrap();
    drop(tx);
    assert_eq!(slow.await.unwrap().status(), 200);
    let r = router
        .clone()
        .oneshot(axum::http::Request::get("/v1/kv/other").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "the refused write must not have happened");
    node.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Locks, elections and fencing

/// Everything a refused lock, election or fence request must leave as it was.
#[derive(Debug, PartialEq)]
struct LockWorld {
    store: crate::http_api::harness::Snapshot,
    /// `GET /v1/locks`'s locks.
    locks: serde_json::Value,
    /// `(id, ttl_ms)` of every lease (the remaining time moves by itself).
    leases: Vec<(u64, u64)>,
    /// The leader of the seeded election.
    leader: serde_json::Value,
    /// `/v1/cluster`'s lease counters.
    lease_counters: serde_json::Value,
}

async fn lock_world(api: &Api) -> LockWorld {
    let store = api.snapshot().await;
    let locks = api.get("/v1/locks").await.ok()["locks"].clone();
    let list = api.get("/v1/leases").await.ok();
    let leases = list["leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (l["id"].as_u64().unwrap(), l["ttl_ms"].as_u64().unwrap()))
        .collect();
    let leader = api.get("/v1/elections/e").await.ok();
    let lease_counters = api.get("/v1/cluster").await.ok()["leases"].clone();
    LockWorld { store, locks, leases, leader, lease_counters }
}

/// Held locks, an election with a leader and a client lease, so "nothing changed" means
/// something. Returns the client lease and the holder of `held`.
async fn seed_locks(api: &Api) -> (u64, String) {
    api.set("/k", "v").await;
    let lease = api.post("/v1/leases", json!({"ttl": "1h"}), &[]).await.json()["id"].as_u64().unwrap();
    let held = api.post("/v1/locks/held", json!({"ttl": "1h"}), &[]).await.ok();
    api.post("/v1/locks/sem", json!({"lease": lease, "limit": 2}), &[]).await.ok();
    api.post("/v1/elections/e/campaign", json!({"value": "leader", "lease": lease}), &[]).await.ok();
    (lease, held["owner"].as_str().unwrap().to_string())
}

/// Sends a request that must be refused with `status`/`code` (the one error shape) and
/// change nothing. `body` is sent as is, with a JSON content type when given.
async fn refused_lock(
    api: &Api,
    method: Method,
    uri: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
    status: StatusCode,
    code: &str,
) {
    let before = lock_world(api).await;
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if body.is_some() {
        all.push(("content-type", "application/json"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let r = api.send_with_headers(method, uri, body, &all).await;
    let e = r.error(status, code);
    assert_eq!(lock_world(api).await, before, "{} ({e}): a refused request changed something", r.what);
}

/// 400 `invalid_argument` (or `invalid_json`) for a JSON body, nothing changed.
async fn bad_post(api: &Api, uri: &str, body: serde_json::Value) {
    refused_lock(api, Method::POST, uri, Some(&body.to_string()), &[], BAD, "invalid_argument").await;
}

#[tokio::test]
async fn bad_lock_and_election_names() {
    with_node(|api| async move {
        seed_locks(&api).await;
        let long = "n".repeat(129);
        // (as sent in a path, as the name it decodes to)
        let names: Vec<(String, String)> = [
            ("%20", " "),
            ("%09", "\t"),
            ("%20%20", "  "),
            ("a%2Fb", "a/b"),
            ("%2F", "/"),
            ("a%20b", "a b"),
            ("a+b", "a+b"),
            ("a:b", "a:b"),
            ("*", "*"),
            ("a%25b", "a%b"),
            ("a%00", "a\0"),
            ("caf%C3%A9", "café"),
            ("db%E2%80%8B", "db\u{200B}"),
            (&long, &long),
        ]
        .iter()
        .map(|(p, n)| (p.to_string(), n.to_string()))
        .collect();
        let p = Method::POST;
        for (path, name) in &names {
            let inv = "invalid_argument";
            let lock = format!("/v1/locks/{path}");
            let election = format!("/v1/elections/{path}");
            refused_lock(&api, p.clone(), &lock, Some(r#"{"ttl":"10s"}"#), &[], BAD, inv).await;
            refused_lock(&api, Method::GET, &lock, None, &[], BAD, inv).await;
            refused_lock(&api, Method::DELETE, &format!("{lock}?owner=1-1"), None, &[], BAD, inv).await;
            refused_lock(&api, Method::GET, &format!("/v1/locks?after={path}"), None, &[], BAD, inv).await;
            let campaign = format!("{election}/campaign");
            refused_lock(&api, p.clone(), &campaign, Some(r#"{"value":"v","ttl":"10s"}"#), &[], BAD, inv)
                .await;
            refused_lock(&api, Method::GET, &election, None, &[], BAD, inv).await;
            let leader = format!("{election}/leader");
            refused_lock(&api, Method::PUT, &leader, Some(r#"{"owner":"1-1","value":"v"}"#), &[], BAD, inv)
                .await;
            refused_lock(&api, Method::DELETE, &format!("{leader}?owner=1-1"), None, &[], BAD, inv).await;
            refused_lock(&api, Method::GET, &format!("{election}/observe"), None, &[], BAD, inv).await;
            bad_post(&api, "/v1/fence/check", json!({"name": name, "token": 1})).await;
            let fenced = json!({"compare": [{"lock": name, "target": "fence", "op": "==", "value": 1}]});
            bad_post(&api, "/v1/txn", fenced).await;
        }
        // An empty name: a path that ends with it is no route (404 not_found); one with
        // more after it is routed, and the empty name refused.
        for (method, uri, status, code) in [
            (Method::POST, "/v1/locks/", NOT_FOUND, "not_found"),
            (Method::GET, "/v1/locks/", NOT_FOUND, "not_found"),
            (Method::DELETE, "/v1/locks/?owner=1-1", NOT_FOUND, "not_found"),
            (Method::GET, "/v1/elections/", NOT_FOUND, "not_found"),
            (Method::POST, "/v1/elections//campaign", BAD, "invalid_argument"),
            (Method::PUT, "/v1/elections//leader", BAD, "invalid_argument"),
            (Method::DELETE, "/v1/elections//leader?owner=1-1", BAD, "invalid_argument"),
            (Method::GET, "/v1/elections//observe", BAD, "invalid_argument"),
        ] {
            let body = r#"{"ttl":"10s","value":"v","owner":"1-1"}"#;
            refused_lock(&api, method, uri, Some(body), &[], status, code).await;
        }
        bad_post(&api, "/v1/fence/check", json!({"name": "", "token": 1})).await;
        // The longest name there may be: 128 characters of every kind allowed.
        let longest = format!("{}-._", "Az09".repeat(31));
        assert_eq!(longest.len(), 127);
        let longest = format!("{longest}x");
        let g = api.post(&format!("/v1/locks/{longest}"), json!({"ttl": "10s"}), &[]).await.ok();
        assert_eq!(g["name"], json!(longest));
        api.post(&format!("/v1/elections/{longest}/campaign"), json!({"value": "v", "ttl": "10s"}), &[])
            .await
            .ok();
    })
    .await;
}

#[tokio::test]
async fn bad_acquire_and_campaign_bodies() {
    with_node(|api| async move {
        let (lease, _) = seed_locks(&api).await;
        let lock = "/v1/locks/held";
        let campaign = "/v1/elections/e/campaign";
        let with_value = |mut v: serde_json::Value| {
            v["value"] = json!("v");
            v
        };
        let mut bodies = vec![
            // Neither ttl nor lease, or both.
            json!({}),
            json!({"wait": "1s"}),
            json!({"ttl": null}),
            json!({"lease": null}),
            json!({"ttl": null, "lease": null}),
            json!({"ttl": "10s", "lease": lease}),
            // Bad lease ids.
            json!({"lease": 0}),
            json!({"lease": -1}),
            json!({"lease": 1.5}),
            json!({"lease": "5"}),
            json!({"lease": 9_007_199_254_740_992u64}),
            json!({"lease": true}),
            // Unknown fields.
            json!({"ttl": "10s", "name": "x"}),
            json!({"ttl": "10s", "Wait": "1s"}),
            json!({"ttl": "10s", "owner": "1-1"}),
        ];
        // Bad TTLs (the floor is 2 s, the maximum 24 h).
        for ttl in [
            json!("10"),
            json!("0s"),
            json!(0),
            json!(-1),
            json!("-1s"),
            json!("1s"),
            json!("1999ms"),
            json!("25h"),
            json!("ten"),
            json!("10 s"),
            json!(""),
            json!("1.5ms"),
            json!(true),
            json!(["10s"]),
            json!({"s": 10}),
        ] {
            bodies.push(json!({ "ttl": ttl }));
        }
        // Bad waits (at most 10 minutes; zero is `0` or a decimal zero with a unit).
        for wait in [
            json!("11m"),
            json!("600001ms"),
            json!(601),
            json!("-1s"),
            json!(-1),
            json!("0"),
            json!("0.s"),
            json!(".0s"),
            json!("0.5ms"),
            json!("soon"),
            json!("1e3s"),
            json!(true),
            json!([]),
        ] {
            bodies.push(json!({"ttl": "10s", "wait": wait}));
        }
        for body in &bodies {
            bad_post(&api, lock, body.clone()).await;
            bad_post(&api, campaign, with_value(body.clone())).await;
        }
        // Bad limits, on a held lock and on a free one.
        for limit in
            [json!(0), json!(10_001), json!(-1), json!(1.5), json!("2"), json!(true), json!(4_294_967_297u64)]
        {
            bad_post(&api, lock, json!({"ttl": "10s", "limit": limit})).await;
            bad_post(&api, "/v1/locks/free", json!({"ttl": "10s", "limit": limit})).await;
        }
        // A campaign needs exactly one value, and no limit.
        for body in [
            json!({"ttl": "10s"}),
            json!({"value": null, "ttl": "10s"}),
            json!({"value": "v", "value_base64": "dg==", "ttl": "10s"}),
            json!({"value_base64": "%%%", "ttl": "10s"}),
            json!({"value": 5, "ttl": "10s"}),
            json!({"value": "v", "ttl": "10s", "limit": 1}),
        ] {
            bad_post(&api, campaign, body).await;
        }
        // Not JSON, or not an object.
        for (method, uri) in [(Method::POST, lock), (Method::POST, campaign)] {
            for (body, code) in [
                ("", "invalid_json"),
                ("{", "invalid_json"),
                ("ttl=10s", "invalid_json"),
                ("[]", "invalid_argument"),
                ("null", "invalid_argument"),
            ] {
                refused_lock(&api, method.clone(), uri, Some(body), &[], BAD, code).await;
            }
        }
        // A malformed Idempotency-Key, a compressed body, a value over the limit.
        let body = r#"{"value":"v","ttl":"10s"}"#;
        refused_lock(
            &api,
            Method::POST,
            lock,
            Some(body),
            &[("idempotency-key", "has space")],
            BAD,
            "invalid_argument",
        )
        .await;
        refused_lock(
            &api,
            Method::POST,
            campaign,
            Some(body),
            &[("content-encoding", "gzip")],
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_encoding",
        )
        .await;
        let big = json!({"value": "v".repeat(1024 * 1024 + 1), "ttl": "10s"}).to_string();
        refused_lock(
            &api,
            Method::POST,
            campaign,
            Some(&big),
            &[],
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
        )
        .await;
        let huge = format!(r#"{{"ttl":"10s"}}{}"#, " ".repeat(2 * 1024 * 1024));
        refused_lock(&api, Method::POST, lock, Some(&huge), &[], StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            .await;
    })
    .await;
}

#[tokio::test]
async fn bad_owners_proclaims_and_query_parameters() {
    with_node(|api| async move {
        let (_, holder) = seed_locks(&api).await;
        let inv = "invalid_argument";
        let long = "o".repeat(129);
        // Bad owners in a release or a resign.
        for base in ["/v1/locks/held", "/v1/elections/e/leader"] {
            for query in [
                String::new(),
                "?owner".to_string(),
                "?owner=".to_string(),
                format!("?owner={long}"),
                "?owner=a%20b".to_string(),
                "?owner=a+b".to_string(),
                "?owner=%C3%A9".to_string(),
                "?owner=%FF".to_string(),
                format!("?owner={holder}&owner={holder}"),
                format!("?owner={holder}&force"),
                format!("?Owner={holder}"),
            ] {
                refused_lock(&api, Method::DELETE, &format!("{base}{query}"), None, &[], BAD, inv).await;
            }
        }
        // Bad proclaims: an owner and exactly one value.
        for body in [
            json!({"value": "v"}),
            json!({"owner": null, "value": "v"}),
            json!({"owner": "", "value": "v"}),
            json!({"owner": long, "value": "v"}),
            json!({"owner": "a b", "value": "v"}),
            json!({"owner": "é", "value": "v"}),
            json!({"owner": 5, "value": "v"}),
            json!({"owner": "1-1"}),
            json!({"owner": "1-1", "value": "v", "value_base64": "dg=="}),
            json!({"owner": "1-1", "value_base64": "%%%"}),
            json!({"owner": "1-1", "value": "v", "ttl": "10s"}),
        ] {
            refused_lock(&api, Method::PUT, "/v1/elections/e/leader", Some(&body.to_string()), &[], BAD, inv)
                .await;
        }
        refused_lock(&api, Method::PUT, "/v1/elections/e/leader", Some(""), &[], BAD, "invalid_json").await;
        // Unknown, repeated or malformed query parameters, on every route.
        for (method, uri, body) in [
            (Method::POST, "/v1/locks/held?wait=1s", Some(r#"{"ttl":"10s"}"#)),
            (Method::POST, "/v1/locks/held?ttl=10s", Some(r#"{"ttl":"10s"}"#)),
            (Method::GET, "/v1/locks/held?limit=1", None),
            (Method::GET, "/v1/locks/held?recursive", None),
            (Method::GET, "/v1/locks/held?consistency=eventual", None),
            (Method::GET, "/v1/locks/held?consistency=serializable&consistency=serializable", None),
            (Method::GET, "/v1/locks?recursive", None),
            (Method::GET, "/v1/locks?limit=0", None),
            (Method::GET, "/v1/locks?limit=10001", None),
            (Method::GET, "/v1/locks?limit=-1", None),
            (Method::GET, "/v1/locks?limit=x", None),
            (Method::GET, "/v1/locks?limit=1&limit=2", None),
            (Method::GET, "/v1/locks?after=", None),
            (Method::GET, "/v1/locks?consistency=strong", None),
            (Method::POST, "/v1/fence/check?x=1", Some(r#"{"name":"held","token":1}"#)),
            (Method::POST, "/v1/fence/check?consistency=eventual", Some(r#"{"name":"held","token":1}"#)),
            (Method::POST, "/v1/elections/e/campaign?wait=1s", Some(r#"{"value":"v","ttl":"10s"}"#)),
            (Method::PUT, "/v1/elections/e/leader?owner=1-1", Some(r#"{"owner":"1-1","value":"v"}"#)),
            (Method::GET, "/v1/elections/e?x", None),
            (Method::GET, "/v1/elections/e?consistency=x", None),
            (Method::GET, "/v1/elections/e/observe?recursive", None),
            (Method::GET, "/v1/elections/e/observe?consistency=x", None),
            (Method::GET, "/v1/elections/e/observe?start_revision=1", None),
        ] {
            refused_lock(&api, method, uri, body, &[], BAD, inv).await;
        }
    })
    .await;
}

#[tokio::test]
async fn bad_fence_checks_and_fence_compares() {
    with_node(|api| async move {
        seed_locks(&api).await;
        let token = api.get("/v1/locks/held").await.ok()["holders"][0]["fencing_token"].as_u64().unwrap();
        for body in [
            json!({"name": "held"}),
            json!({"token": token}),
            json!({"name": "held", "token": 0}),
            json!({"name": "held", "token": -1}),
            json!({"name": "held", "token": "5"}),
            json!({"name": "held", "token": 1.5}),
            json!({"name": "held", "token": null}),
            json!({"name": null, "token": token}),
            json!({"name": 5, "token": token}),
            json!({"name": "held", "token": token, "lease": 1}),
        ] {
            bad_post(&api, "/v1/fence/check", body).await;
        }
        let over = r#"{"name":"held","token":18446744073709551616}"#;
        refused_lock(&api, Method::POST, "/v1/fence/check", Some(over), &[], BAD, "invalid_argument").await;
        for (body, code) in [("", "invalid_json"), ("{", "invalid_json"), ("[]", "invalid_argument")] {
            refused_lock(&api, Method::POST, "/v1/fence/check", Some(body), &[], BAD, code).await;
        }
        // Fence compares: `==` or `!=`, a lock (not a key) and a token.
        let put = json!([{"put": {"key": "/k", "value": "fenced"}}]);
        for compare in [
            json!({"lock": "held", "target": "fence", "op": "<", "value": token}),
            json!({"lock": "held", "target": "fence", "op": ">", "value": token}),
            json!({"lock": "held", "target": "fence", "op": "<=", "value": token}),
            json!({"lock": "held", "target": "fence", "op": "=", "value": token}),
            json!({"key": "held", "target": "fence", "op": "==", "value": token}),
            json!({"key": "/held", "target": "fence", "op": "==", "value": token}),
            json!({"key": "/held", "lock": "held", "target": "fence", "op": "==", "value": token}),
            json!({"target": "fence", "op": "==", "value": token}),
            json!({"lock": "held", "target": "fence", "op": "=="}),
            json!({"lock": "held", "target": "fence", "op": "==", "value": "5"}),
            json!({"lock": "held", "target": "fence", "op": "==", "value": -1}),
            json!({"lock": "held", "target": "fence", "op": "==", "value": 1.5}),
            json!({"lock": "held", "target": "fence", "op": "==", "value_base64": "MQ=="}),
            json!({"lock": "held", "target": "version", "op": "==", "value": 1}),
            json!({"lock": "held", "key": "/k", "target": "version", "op": "==", "value": 1}),
            json!({"lock": "held", "target": "Fence", "op": "==", "value": token}),
        ] {
            bad_post(&api, "/v1/txn", json!({"compare": [compare], "success": put})).await;
        }
        // The same compare, well formed, passes.
        let ok = json!({"compare": [{"lock": "held", "target": "fence", "op": "==", "value": token}], "success": put});
        assert_eq!(api.post("/v1/txn", ok, &[]).await.ok()["succeeded"], json!(true));
        assert_eq!(api.get("/v1/kv/k").await.ok()["kv"]["value"], json!("fenced"));
    })
    .await;
}
