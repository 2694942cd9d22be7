//! `POST /v1/kv/{parent}?sequential`: 201, a 20-digit name strictly increasing per parent,
//! never reused after deletes; refused shapes change nothing.

use axum::http::StatusCode;
use serde_json::json;

use crate::http_api::harness::{with_node, write_rev};

#[tokio::test]
async fn sequential_children_increase_per_parent_and_are_never_reused() {
    with_node(|api| async move {
        let create = |parent: &'static str, value: &'static str| {
            let api = api.clone();
            async move {
                let r = api.post(&format!("/v1/kv{parent}?sequential"), json!({ "value": value }), &[]).await;
                r.expect(StatusCode::CREATED);
                assert_eq!(write_rev(&r), r.json()["kv"]["create_revision"].as_u64().unwrap());
                r.json()["kv"]["key"].as_str().unwrap().to_string()
            }
        };
        assert_eq!(create("/q", "a").await, "/q/00000000000000000001");
        assert_eq!(create("/q", "b").await, "/q/00000000000000000002");
        assert_eq!(create("/other", "c").await, "/other/00000000000000000001");
        assert_eq!(create("/", "root").await, "/00000000000000000001");
        // Deleting every child does not reset the sequence.
        api.delete("/v1/kv/q?recursive").await.ok();
        assert_eq!(create("/q", "d").await, "/q/00000000000000000003");
        // A name taken by a plain put is skipped, never overwritten.
        api.set("/q/00000000000000000004", "manual").await;
        assert_eq!(create("/q", "e").await, "/q/00000000000000000005");
        let r = api.get("/v1/kv/q/00000000000000000004").await.ok();
        assert_eq!(r["kv"]["value"], json!("manual"));
        // Binary values and names that sort like numbers.
        let r = api.post("/v1/kv/q?sequential", json!({"value_base64": "/wA="}), &[]).await;
        r.expect(StatusCode::CREATED);
        let list = api.get("/v1/kv/q?children").await.ok();
        let names: Vec<&str> =
            list["children"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            ["00000000000000000003", "00000000000000000004", "00000000000000000005", "00000000000000000006"]
        );
    })
    .await
}

#[tokio::test]
async fn refused_sequential_creates_change_nothing() {
    with_node(|api| async move {
        api.set("/q", "x").await;
        let bad = StatusCode::BAD_REQUEST;
        let body = json!({"value": "v"}).to_string();
        api.refused_post("/v1/kv/q", body.clone(), bad, "invalid_argument").await;
        api.refused_post("/v1/kv/q?sequential=maybe", body.clone(), bad, "invalid_argument").await;
        api.refused_post("/v1/kv/q?sequential&if_version=0", body.clone(), bad, "invalid_argument").await;
        api.refused_post("/v1/kv/q/?sequential", body.clone(), bad, "invalid_key").await;
        api.refused_post("/v1/kv/a%01?sequential", body.clone(), bad, "invalid_key").await;
        let long = format!("/v1/kv/{}?sequential", "p".repeat(1024 - 21));
        api.refused_post(&long, body.clone(), bad, "invalid_key").await;
        api.refused_post("/v1/kv/q?sequential", "{}", bad, "invalid_argument").await;
        api.refused_post("/v1/kv/q?sequential", "{", bad, "invalid_json").await;
        api.refused_post("/v1/kv/q?sequential", r#"{"value":"v","prev_kv":true}"#, bad, "invalid_argument")
            .await;
        api.refused_post(
            "/v1/kv/q?sequential",
            r#"{"value":"v","lease":3}"#,
            StatusCode::NOT_FOUND,
            "lease_not_found",
        )
        .await;
        // One byte shorter parent fits exactly.
        let fits = format!("/v1/kv/{}?sequential", "p".repeat(1024 - 22));
        api.post(&fits, json!({"value": "v"}), &[]).await.expect(StatusCode::CREATED);
    })
    .await
}
