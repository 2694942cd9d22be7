//! Compaction: history below the floor is gone (410 with `compact_revision`), what is at
//! or above it reads as before (a delete at the floor included), automatic compaction,
//! and a store over its quota brought back by compaction and deletes.

use axum::http::StatusCode;
use serde_json::json;

use crate::http_api::harness::{kv, with_node, with_node_config};

#[tokio::test]
async fn compaction_drops_history_below_the_floor_only() {
    with_node(|api| async move {
        api.set("/a", "1").await; // 1
        api.set("/a", "2").await; // 2
        api.set("/b", "x").await; // 3
        api.delete("/v1/kv/b").await.ok(); // 4
        api.set("/c", "y").await; // 5
        let r = api.post("/v1/maintenance/compact", json!({"revision": 4}), &[]).await.ok();
        assert_eq!(r, json!({"revision": 5, "compact_revision": 4}));
        let gone = api.get("/v1/kv/a?revision=3").await;
        let e = gone.error(StatusCode::GONE, "compacted");
        assert_eq!(e["compact_revision"], json!(4));
        api.get("/v1/kv/?recursive&revision=1").await.error(StatusCode::GONE, "compacted");
        // At the floor: /a as it was, /b deleted exactly at the floor is absent there.
        assert_eq!(api.get("/v1/kv/a?revision=4").await.ok()["kv"], kv("/a", "2", 1, 2, 2));
        api.get("/v1/kv/b?revision=4").await.error(StatusCode::NOT_FOUND, "key_not_found");
        let list = api.get("/v1/kv/?recursive&revision=4").await.ok();
        assert_eq!(list["kvs"], json!([kv("/a", "2", 1, 2, 2)]));
        // At or below the floor: 200, no change. Above the current revision: 400.
        let r = api.post("/v1/maintenance/compact", json!({"revision": 2}), &[]).await.ok();
        assert_eq!(r["compact_revision"], json!(4));
        let before = api.snapshot().await;
        api.refused_post(
            "/v1/maintenance/compact",
            r#"{"revision": 6}"#,
            StatusCode::BAD_REQUEST,
            "future_revision",
        )
        .await;
        for bad in [
            r#"{"revision": -1}"#,
            r#"{"revision": "3"}"#,
            r#"{}"#,
            r#"{"revision": 3, "x": 1}"#,
            r#"{"revision": 1.5}"#,
        ] {
            api.refused_post("/v1/maintenance/compact", bad, StatusCode::BAD_REQUEST, "invalid_argument")
                .await;
        }
        api.refused_post("/v1/maintenance/compact", "nope", StatusCode::BAD_REQUEST, "invalid_json").await;
        assert_eq!(api.snapshot().await, before);
        let cluster = api.get("/v1/cluster").await.ok();
        assert_eq!(cluster["compact_revision"], json!(4));
    })
    .await
}

#[tokio::test]
async fn automatic_compaction_keeps_the_configured_history() {
    with_node_config(
        |cfg| {
            cfg.auto_compact_retention_ms = 60_000;
            cfg.auto_compact_max_revisions = 20;
        },
        |api| async move {
            for i in 0..30 {
                api.set("/k", &i.to_string()).await;
            }
            // The leader compacts to 20 revisions behind once history is a tenth over.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                let c = api.get("/v1/cluster").await.ok();
                if c["compact_revision"] == json!(10) {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "no automatic compaction: {c}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            api.get("/v1/kv/k?revision=9").await.error(StatusCode::GONE, "compacted");
            assert_eq!(api.get("/v1/kv/k?revision=10").await.ok()["kv"]["value"], json!("9"));
        },
    )
    .await
}

#[tokio::test]
async fn a_full_store_recovers_with_deletes_and_compaction() {
    with_node_config(
        |cfg| {
            cfg.quota_bytes = 4_000;
            cfg.auto_compact_retention_ms = 0;
        },
        |api| async move {
            let value = "v".repeat(300);
            let mut written = 0;
            loop {
                let r = api.put(&format!("/v1/kv/k{}", written % 4), json!({ "value": value })).await;
                if r.status == StatusCode::INSUFFICIENT_STORAGE {
                    r.error(StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded");
                    break;
                }
                r.expect(StatusCode::OK);
                written += 1;
                assert!(written < 100, "the quota never bit");
            }
            let full = api.get("/v1/cluster").await.ok();
            assert!(full["store_bytes"].as_u64().unwrap() > 3_600, "{full}");
            assert_eq!(full["quota_bytes"], json!(4_000));
            // History, not live data, fills it: compacting to now frees it.
            let rev = api.revision().await;
            api.post("/v1/maintenance/compact", json!({ "revision": rev }), &[]).await.ok();
            let after = api.get("/v1/cluster").await.ok();
            assert!(after["store_bytes"].as_u64().unwrap() < 1_400, "{after}");
            api.put("/v1/kv/k9", json!({ "value": value })).await.ok();
            // Deletes always work at the quota, and compaction drops their tombstones.
            for k in ["k0", "k1", "k2", "k3", "k9"] {
                api.delete(&format!("/v1/kv/{k}")).await.ok();
            }
            let rev = api.revision().await;
            api.post("/v1/maintenance/compact", json!({ "revision": rev }), &[]).await.ok();
            // What is left is the delete at the floor itself (kept so a read at the floor,
            // or a watch resuming there, still sees it): the 3 bytes of "/k9".
            assert_eq!(api.get("/v1/cluster").await.ok()["store_bytes"], json!(3));
        },
    )
    .await
}
