//! `GET /metrics`: the exposition counts requests by route pattern (never by key), shows
//! the store's state, follows `--metrics open|auth|off`, and counts slow requests (but not
//! waits that are a request's point).

use crate::http_api::harness::{with_node, with_node_config};
use axum::http::StatusCode;

/// The value of the sample `line` starts with, if the exposition has it.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn the_exposition_counts_requests_by_route_and_shows_the_state() {
    with_node(|api| async move {
        api.set("/secret/name", "1").await;
        api.set("/secret/other", "2").await;
        api.get("/v1/kv/secret/missing").await.error(StatusCode::NOT_FOUND, "key_not_found");
        let r = api.get("/metrics").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        let ct = r.headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        let text = r.text();
        let puts = "palisade_http_requests_total{method=\"PUT\",route=\"/v1/kv/{*key}\",status=\"200\"}";
        assert_eq!(sample(&text, puts), Some(2.0), "{text}");
        let missing = "palisade_http_requests_total{method=\"GET\",route=\"/v1/kv/{*key}\",status=\"404\"}";
        assert_eq!(sample(&text, missing), Some(1.0), "{text}");
        assert!(!text.contains("secret"), "a key leaked into a label: {text}");
        assert_eq!(sample(&text, "palisade_store_keys"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "palisade_store_revision"), Some(2.0), "{text}");
        assert_eq!(sample(&text, "palisade_raft_is_leader"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "palisade_raft_voters"), Some(1.0), "{text}");
        assert!(sample(&text, "palisade_raft_proposals_total").is_some_and(|n| n >= 2.0), "{text}");
        assert!(
            sample(&text, "palisade_wal_fsync_duration_seconds_count").is_some_and(|n| n >= 1.0),
            "{text}"
        );
        assert!(
            sample(&text, "palisade_raft_apply_duration_seconds_count").is_some_and(|n| n >= 1.0),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        // Strict like every route: an unknown query parameter is refused.
        api.get("/metrics?verbose").await.error(StatusCode::BAD_REQUEST, "invalid_argument");
    })
    .await;
}

#[tokio::test]
async fn metrics_off_is_not_served() {
    with_node_config(
        |cfg| cfg.metrics = palisade::config::MetricsAccess::Off,
        |api| async move {
            api.get("/metrics").await.error(StatusCode::NOT_FOUND, "not_found");
        },
    )
    .await;
}

#[tokio::test]
async fn metrics_open_needs_no_token_with_auth_on() {
    let keys = tempfile::tempdir().expect("a temp dir");
    let secret = keys.path().join("jwt.secret");
    std::fs::write(&secret, "an-hs256-secret-of-at-least-32-bytes\n").unwrap();
    with_node_config(
        |cfg| {
            cfg.auth_jwt_secret_file = Some(secret);
            cfg.metrics = palisade::config::MetricsAccess::Open;
        },
        |api| async move {
            assert_eq!(api.get("/metrics").await.status, StatusCode::OK);
            // The rest of the API still needs a token.
            api.get("/v1/kv/a").await.error(StatusCode::UNAUTHORIZED, "unauthenticated");
        },
    )
    .await;
}

#[tokio::test]
async fn slow_requests_are_counted_but_waits_are_not() {
    with_node_config(
        |cfg| cfg.slow_request_ms = 100,
        |api| async move {
            // A long-poll that waits 400 ms on purpose is not slow.
            let r = api.get("/v1/kv/a?wait&after_revision=0&timeout=400ms").await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            // A write whose body takes 300 ms to arrive is.
            let body = axum::body::Body::from_stream(futures::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::from_static(br#"{"value": "x"}"#))
            }));
            let r = api.send(axum::http::Method::PUT, "/v1/kv/slow", body, Some("application/json")).await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            let text = api.get("/metrics").await.text();
            let slow = |m: &str| {
                sample(
                    &text,
                    &format!("palisade_http_slow_requests_total{{method=\"{m}\",route=\"/v1/kv/{{*key}}\"}}"),
                )
            };
            assert_eq!(slow("PUT"), Some(1.0), "{text}");
            assert_eq!(slow("GET"), None, "the long-poll's wait was counted slow: {text}");
        },
    )
    .await;
}
