//! `/v1/cluster`, `/healthz` and `/readyz`.

use axum::http::StatusCode;
use serde_json::json;

use crate::http_api::harness::{with_node, write_rev, CLIENT_URL, PEER_URL};

#[tokio::test]
async fn cluster_status_and_health() {
    with_node(|api| async move {
        // Ready once the single node leads (with_node waited for it).
        let r = api.get("/readyz").await;
        r.expect(StatusCode::OK);
        assert!(r.header("content-type").unwrap_or("").starts_with("application/json"));
        let r = api.get("/healthz").await;
        r.expect(StatusCode::OK);
        assert_eq!(r.json(), json!({"status": "ok"}));

        let r = api.get("/v1/cluster").await;
        let c = r.ok();
        // {"cluster_id", "leader", "term", "revision", "compact_revision", "members"}.
        let id = c["cluster_id"].as_str().unwrap_or_else(|| panic!("cluster_id is a string: {c}"));
        assert!(!id.is_empty(), "{c}");
        assert_eq!(c["leader"], json!(1), "the one node leads: {c}");
        let term = c["term"].as_u64().unwrap_or_else(|| panic!("term is a number: {c}"));
        assert!(term >= 1, "{c}");
        let rev = c["revision"].as_u64().unwrap_or_else(|| panic!("revision is a number: {c}"));
        assert_eq!(c["compact_revision"], json!(0), "{c}");
        assert_eq!(
            c["members"],
            json!([{"id": 1, "client_url": CLIENT_URL, "peer_url": PEER_URL, "role": "voter"}]),
            "members: exactly id, client_url, peer_url, role"
        );
        assert_eq!(r.rev_header(), rev);
        assert_eq!(r.term_header(), term);

        // The revision follows writes; the cluster id and term do not change.
        let w = write_rev(&api.put("/v1/kv/x", json!({"value": "1"})).await);
        assert_eq!(w, rev + 1);
        let c2 = api.get("/v1/cluster").await.ok();
        assert_eq!(c2["revision"], json!(w));
        assert_eq!(c2["cluster_id"], c["cluster_id"]);
        assert_eq!(c2["term"], json!(term));
        // A refused write or a read moves nothing.
        api.get("/v1/kv/x").await.ok();
        api.put("/v1/kv/x?if_version=0", json!({"value": "2"}))
            .await
            .error(StatusCode::CONFLICT, "condition_failed");
        assert_eq!(api.get("/v1/cluster").await.ok()["revision"], json!(w));
    })
    .await;
}

/// API.md, Precise rules, Strictness: unknown query parameters are 400 (on every route
/// that reads state, not only the key routes).
#[tokio::test]
async fn cluster_refuses_unknown_query_parameters() {
    with_node(|api| async move {
        api.refused_get("/v1/cluster?recurisve", StatusCode::BAD_REQUEST, "invalid_argument").await;
    })
    .await;
}
