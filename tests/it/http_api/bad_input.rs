//! Every refused input: the right 4xx, the one error shape, and no change to the store
//! (revision and every key as before). Each case is its own assertion.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::json;

use crate::http_api::harness::{with_node, Api};

const BAD: StatusCode = StatusCode::BAD_REQUEST;

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
