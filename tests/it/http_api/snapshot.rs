//! `GET /v1/maintenance/snapshot`: a snapshot file of the state as of a linearizable read,
//! with its revision; downloads at once are limited; a query parameter is refused.

use axum::http::StatusCode;
use http_body_util::BodyExt;

use crate::http_api::harness::{with_node, with_node_config};

#[tokio::test]
async fn a_download_is_a_checked_snapshot_file_of_the_current_state() {
    with_node(|api| async move {
        for i in 0..50 {
            api.set(&format!("/k/{i}"), &"x".repeat(i * 100)).await;
        }
        api.set("/k/0", "again").await;
        let r = api.get("/v1/maintenance/snapshot").await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.header("content-disposition"), Some("attachment; filename=\"palisade-51.snap\""));
        assert_eq!(r.header("x-palisade-revision"), Some("51"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("s.snap");
        std::fs::write(&file, &r.body).unwrap();
        let info = palisade::node::inspect(&file).unwrap();
        assert_eq!((info.revision, info.keys, info.bytes), (51, 50, r.body.len() as u64));
        // A later write is not in it; a new download has it.
        api.set("/k/new", "n").await;
        let again = api.get("/v1/maintenance/snapshot").await;
        assert_eq!(again.header("x-palisade-revision"), Some("52"));
        api.get("/v1/maintenance/snapshot?x=1").await.error(StatusCode::BAD_REQUEST, "invalid_argument");
    })
    .await
}

#[tokio::test]
async fn downloads_past_the_limit_are_refused_until_one_ends() {
    with_node_config(
        |cfg| cfg.max_snapshot_downloads = 1,
        |api| async move {
            for i in 0..1200 {
                api.set(&format!("/k/{i}"), &"v".repeat(1000)).await;
            }
            // One download open, its body not read yet.
            let first = api.open("/v1/maintenance/snapshot", &[]).await;
            assert_eq!(first.status(), StatusCode::OK);
            let e =
                api.get("/v1/maintenance/snapshot").await.error(StatusCode::TOO_MANY_REQUESTS, "overloaded");
            assert!(e["message"].as_str().unwrap().contains("snapshot downloads"), "{e}");
            // Read to its end (over a megabyte, through a buffer of a few pieces), then
            // the place is free again.
            let body = first.into_body().collect().await.unwrap().to_bytes();
            assert!(body.len() > 1_000_000, "{} bytes", body.len());
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join("s"), &body).unwrap();
            assert_eq!(palisade::node::inspect(&dir.path().join("s")).unwrap().keys, 1200);
            api.get("/v1/maintenance/snapshot").await.expect(StatusCode::OK);
            // One dropped before its end frees its place too.
            drop(api.open("/v1/maintenance/snapshot", &[]).await);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            api.get("/v1/maintenance/snapshot").await.expect(StatusCode::OK);
        },
    )
    .await
}
