//! `Idempotency-Key` on every write: a retry gets the first outcome (with
//! `Idempotent-Replayed: true`) and applies nothing; another request under the same key is
//! 422; a malformed key is 400 with nothing applied.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::http_api::harness::{with_node, write_rev};

#[tokio::test]
async fn a_retried_write_applies_once_and_gets_the_first_reply() {
    with_node(|api| async move {
        let key = [("idempotency-key", "put-1")];
        let first =
            api.send_with_headers(Method::PUT, "/v1/kv/a", Body::from(r#"{"value":"1"}"#), &key).await;
        assert_eq!(write_rev(&first), 1);
        assert_eq!(first.header("idempotent-replayed"), None);
        api.set("/b", "other").await; // rev 2
        let retry =
            api.send_with_headers(Method::PUT, "/v1/kv/a", Body::from(r#"{"value":"1"}"#), &key).await;
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.json(), first.json(), "the first outcome, revision included");
        assert_eq!(api.revision().await, 2, "the retry applied nothing");
        let a = api.get("/v1/kv/a").await.ok();
        assert_eq!(a["kv"]["version"], json!(1));

        // The same key for another request: 422, nothing applied.
        let other =
            api.send_with_headers(Method::PUT, "/v1/kv/a", Body::from(r#"{"value":"2"}"#), &key).await;
        other.error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict");
        assert_eq!(api.revision().await, 2);

        // DELETE, sequential POST, txn and compaction: replayed the same way.
        let del = [("idempotency-key", "del-1")];
        let d1 = api.send_with_headers(Method::DELETE, "/v1/kv/b", Body::empty(), &del).await;
        assert_eq!(d1.ok()["deleted"], json!(1));
        let d2 = api.send_with_headers(Method::DELETE, "/v1/kv/b", Body::empty(), &del).await;
        assert_eq!(d2.header("idempotent-replayed"), Some("true"));
        assert_eq!(d2.ok(), d1.json(), "a retried delete reports what the first one deleted");
        let seq = [("idempotency-key", "seq-1")];
        let s1 = api.post("/v1/kv/jobs?sequential", json!({"value": "j"}), &seq).await;
        let s2 = api.post("/v1/kv/jobs?sequential", json!({"value": "j"}), &seq).await;
        s2.expect(StatusCode::CREATED);
        assert_eq!(s2.json(), s1.json(), "one job, not two");
        let jobs = api.get("/v1/kv/jobs?recursive&count_only").await.ok();
        assert_eq!(jobs["count"], json!(1));
        let tx = [("idempotency-key", "txn-1")];
        let body = json!({"success": [{"put": {"key": "/t", "value": "v"}}]});
        let t1 = api.post("/v1/txn", body.clone(), &tx).await.ok();
        let t2 = api.post("/v1/txn", body, &tx).await;
        assert_eq!(t2.header("idempotent-replayed"), Some("true"));
        assert_eq!(t2.ok(), t1);
        let cluster = api.get("/v1/cluster").await.ok();
        assert_eq!(cluster["idempotency_keys"], json!(4));
    })
    .await
}

#[tokio::test]
async fn a_failed_condition_is_remembered_too() {
    with_node(|api| async move {
        api.set("/a", "x").await;
        let key = [("idempotency-key", "cas-1")];
        let body = || Body::from(r#"{"value":"new"}"#);
        let first = api.send_with_headers(Method::PUT, "/v1/kv/a?if_version=5", body(), &key).await;
        first.error(StatusCode::CONFLICT, "condition_failed");
        api.set("/a", "y").await;
        let retry = api.send_with_headers(Method::PUT, "/v1/kv/a?if_version=5", body(), &key).await;
        retry.error(StatusCode::CONFLICT, "condition_failed");
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.json(), first.json(), "the first outcome, not a new decision");
    })
    .await
}

#[tokio::test]
async fn malformed_idempotency_keys_are_refused() {
    with_node(|api| async move {
        api.set("/a", "x").await;
        let long = "k".repeat(129);
        for bad in ["", "has space", "tab\tkey", long.as_str(), "caf\u{e9}"] {
            let before = api.snapshot().await;
            let r = api
                .send_with_headers(
                    Method::PUT,
                    "/v1/kv/a",
                    Body::from(r#"{"value":"1"}"#),
                    &[("idempotency-key", bad)],
                )
                .await;
            r.error(StatusCode::BAD_REQUEST, "invalid_argument");
            assert_eq!(api.snapshot().await, before, "{bad:?}");
        }
        let two = [("idempotency-key", "a"), ("idempotency-key", "b")];
        let r = api.send_with_headers(Method::DELETE, "/v1/kv/a", Body::empty(), &two).await;
        r.error(StatusCode::BAD_REQUEST, "invalid_argument");
        // A key refused before proposing (400) is not remembered: the key stays usable.
        let key = [("idempotency-key", "k1")];
        let r = api.send_with_headers(Method::PUT, "/v1/kv/a/", Body::from(r#"{"value":"1"}"#), &key).await;
        r.error(StatusCode::BAD_REQUEST, "invalid_key");
        let r = api.send_with_headers(Method::PUT, "/v1/kv/c", Body::from(r#"{"value":"1"}"#), &key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("idempotent-replayed"), None);
    })
    .await
}

#[tokio::test]
async fn a_retry_whose_first_reply_was_too_large_to_keep_is_refused_never_reapplied() {
    with_node(|api| async move {
        let big = "b".repeat(40_000);
        api.set("/big/1", &big).await;
        api.set("/big/2", &big).await;
        let key = [("idempotency-key", "wipe")];
        let first =
            api.send_with_headers(Method::DELETE, "/v1/kv/big?recursive&prev_kv", Body::empty(), &key).await;
        assert_eq!(first.ok()["deleted"], json!(2));
        api.set("/big/3", "new").await;
        let retry =
            api.send_with_headers(Method::DELETE, "/v1/kv/big?recursive&prev_kv", Body::empty(), &key).await;
        let e = retry.error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict");
        assert_eq!(e["applied_revision"], json!(3));
        assert_eq!(api.get("/v1/kv/big/3").await.ok()["kv"]["value"], json!("new"), "not applied again");
    })
    .await
}
