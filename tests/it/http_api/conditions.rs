//! Conditional writes: `if_version`, `if_mod_revision`, `if_value` on PUT and DELETE. A
//! failed condition is 409 `condition_failed` with the current kv (or null), the state
//! headers, and no change at all.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::http_api::harness::{kv, with_node, write_rev, Api, Resp};

/// A refused conditional PUT: 409, `current` as given, headers at the current revision.
async fn put_conflict(api: &Api, uri: &str, value: &str, current: Value) -> Resp {
    let rev = api.revision().await;
    let r = api
        .refused_put(uri, json!({ "value": value }).to_string(), StatusCode::CONFLICT, "condition_failed")
        .await;
    check_conflict(&r, rev, current);
    r
}

async fn delete_conflict(api: &Api, uri: &str, current: Value) -> Resp {
    let rev = api.revision().await;
    let r = api.refused_delete(uri, StatusCode::CONFLICT, "condition_failed").await;
    check_conflict(&r, rev, current);
    r
}

fn check_conflict(r: &Resp, rev: u64, current: Value) {
    let err = &r.json()["error"];
    assert_eq!(err["current"], current, "{}: error.current", r.what);
    assert!(err.as_object().unwrap().contains_key("current"), "{}: current must be present", r.what);
    assert_eq!(r.rev_header(), rev, "{}: X-Palisade-Revision on a 409", r.what);
    assert!(r.term_header() >= 1, "{}: X-Palisade-Term on a 409", r.what);
}

#[tokio::test]
async fn conditional_puts() {
    with_node(|api| async move {
        // if_version=0: create only.
        let r = api.put("/v1/kv/c?if_version=0", json!({"value": "1"})).await;
        let c1 = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/c", "1", c1, c1, 1));
        put_conflict(&api, "/v1/kv/c?if_version=0", "2", kv("/c", "1", c1, c1, 1)).await;
        // Even with prev_kv asked for, a failed condition is a 409 and nothing else.
        put_conflict(&api, "/v1/kv/c?if_version=0&prev_kv", "2", kv("/c", "1", c1, c1, 1)).await;

        // if_version=N.
        let r = api.put("/v1/kv/c?if_version=1", json!({"value": "2"})).await;
        let c2 = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/c", "2", c1, c2, 2));
        put_conflict(&api, "/v1/kv/c?if_version=1", "3", kv("/c", "2", c1, c2, 2)).await;
        put_conflict(&api, "/v1/kv/c?if_version=3", "3", kv("/c", "2", c1, c2, 2)).await;

        // if_mod_revision.
        put_conflict(&api, &format!("/v1/kv/c?if_mod_revision={c1}"), "3", kv("/c", "2", c1, c2, 2)).await;
        put_conflict(&api, &format!("/v1/kv/c?if_mod_revision={}", c2 + 100), "3", kv("/c", "2", c1, c2, 2))
            .await;
        let r = api.put(&format!("/v1/kv/c?if_mod_revision={c2}&prev_kv"), json!({"value": "3"})).await;
        let c3 = write_rev(&r);
        let body = r.ok();
        assert_eq!(body["kv"], kv("/c", "3", c1, c3, 3));
        assert_eq!(body["prev_kv"], kv("/c", "2", c1, c2, 2));
        // if_mod_revision=0 means "absent", like if_version=0.
        put_conflict(&api, "/v1/kv/c?if_mod_revision=0", "x", kv("/c", "3", c1, c3, 3)).await;
        let r = api.put("/v1/kv/fresh?if_mod_revision=0", json!({"value": "f"})).await;
        let f = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/fresh", "f", f, f, 1));

        // if_value.
        put_conflict(&api, "/v1/kv/c?if_value=2", "4", kv("/c", "3", c1, c3, 3)).await;
        put_conflict(&api, "/v1/kv/c?if_value=", "4", kv("/c", "3", c1, c3, 3)).await;
        let r = api.put("/v1/kv/c?if_value=3", json!({"value": "a b+c"})).await;
        let c4 = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/c", "a b+c", c1, c4, 4));
        // Query decoding: %20 and '+' are spaces, %2B is a plus.
        put_conflict(&api, "/v1/kv/c?if_value=a+b+c", "x", kv("/c", "a b+c", c1, c4, 4)).await;
        let r = api.put("/v1/kv/c?if_value=a+b%2Bc", json!({"value": "a b+c"})).await;
        let c5 = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/c", "a b+c", c1, c5, 5));
        let r = api.put("/v1/kv/c?if_value=a%20b%2Bc", json!({"value": "5"})).await;
        let c6 = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/c", "5", c1, c6, 6));
        // if_value on a missing key never holds: current is null.
        put_conflict(&api, "/v1/kv/missing?if_value=x", "y", Value::Null).await;
        put_conflict(&api, "/v1/kv/missing?if_value=", "y", Value::Null).await;
        // Any existing-key condition on a missing key fails with current null.
        put_conflict(&api, "/v1/kv/missing?if_version=1", "y", Value::Null).await;
        put_conflict(&api, &format!("/v1/kv/missing?if_mod_revision={c6}"), "y", Value::Null).await;

        // All given conditions must hold.
        put_conflict(&api, "/v1/kv/c?if_version=6&if_value=nope", "x", kv("/c", "5", c1, c6, 6)).await;
        put_conflict(
            &api,
            &format!("/v1/kv/c?if_version=5&if_mod_revision={c6}"),
            "x",
            kv("/c", "5", c1, c6, 6),
        )
        .await;
        let r = api
            .put(&format!("/v1/kv/c?if_version=6&if_mod_revision={c6}&if_value=5"), json!({"value": "7"}))
            .await;
        let c7 = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/c", "7", c1, c7, 7));

        // A binary current value shows up as value_base64 in the 409.
        api.put("/v1/kv/bin", json!({"value_base64": "/w=="})).await.ok();
        let r = api
            .refused_put(
                "/v1/kv/bin?if_version=0",
                json!({"value": "x"}).to_string(),
                StatusCode::CONFLICT,
                "condition_failed",
            )
            .await;
        assert_eq!(r.json()["error"]["current"]["value_base64"], json!("/w=="));
    })
    .await;
}

#[tokio::test]
async fn conditional_deletes() {
    with_node(|api| async move {
        let d1 = write_rev(&api.put("/v1/kv/d", json!({"value": "one"})).await);
        let d2 = write_rev(&api.put("/v1/kv/d", json!({"value": "two"})).await);
        let now = kv("/d", "two", d1, d2, 2);

        delete_conflict(&api, "/v1/kv/d?if_version=1", now.clone()).await;
        delete_conflict(&api, "/v1/kv/d?if_version=0", now.clone()).await;
        delete_conflict(&api, &format!("/v1/kv/d?if_mod_revision={d1}"), now.clone()).await;
        delete_conflict(&api, "/v1/kv/d?if_value=one", now.clone()).await;
        delete_conflict(&api, "/v1/kv/d?if_version=2&if_value=one", now.clone()).await;
        delete_conflict(&api, "/v1/kv/d?if_value=one&prev_kv", now.clone()).await;
        delete_conflict(&api, "/v1/kv/missing?if_value=x", Value::Null).await;
        delete_conflict(&api, "/v1/kv/missing?if_version=1", Value::Null).await;
        assert_eq!(api.get("/v1/kv/d").await.ok()["kv"], now, "the key is as before");

        // A recursive delete with a failing condition on its key deletes nothing below.
        api.set("/d/child", "c").await;
        let cur = api.get("/v1/kv/d").await.ok()["kv"].clone();
        delete_conflict(&api, "/v1/kv/d?recursive&if_version=9", cur).await;
        assert_eq!(api.get("/v1/kv/d/child").await.ok()["kv"]["value"], json!("c"));
        api.delete("/v1/kv/d/child").await.ok();

        // Conditions that hold.
        let r = api.delete(&format!("/v1/kv/d?if_version=2&if_mod_revision={d2}&if_value=two&prev_kv")).await;
        let rev = write_rev(&r);
        assert_eq!(r.ok(), json!({"revision": rev, "deleted": 1, "prev_kvs": [now]}));
        api.get("/v1/kv/d").await.error(StatusCode::NOT_FOUND, "key_not_found");

        let e1 = write_rev(&api.put("/v1/kv/e", json!({"value": "x"})).await);
        let r = api.delete(&format!("/v1/kv/e?if_mod_revision={e1}")).await;
        assert_eq!(r.ok()["deleted"], json!(1));
        api.put("/v1/kv/e", json!({"value": "y z"})).await.ok();
        let r = api.delete("/v1/kv/e?if_value=y+z").await;
        assert_eq!(r.ok()["deleted"], json!(1));

        // if_version=0 on a missing key holds, and there is nothing to delete.
        let before = api.snapshot().await;
        let r = api.delete("/v1/kv/e?if_version=0").await;
        assert_eq!(r.ok(), json!({"revision": before.revision, "deleted": 0}));
        assert_eq!(api.snapshot().await, before);
    })
    .await;
}
