//! The client HTTP API, driven through `palisade::http::client_router` without a socket
//! (`tower::ServiceExt::oneshot`) against a real single-node cluster in a temp dir.
//! Covers every route and every behaviour of API.md's "Keys" section that `src/http/kv.rs`
//! implements, plus `/v1/cluster`, `/healthz` and `/readyz`.

#[path = "http_api/harness.rs"]
mod harness;

#[path = "http_api/bad_input.rs"]
mod bad_input;
#[path = "http_api/cluster.rs"]
mod cluster;
#[path = "http_api/conditions.rs"]
mod conditions;
#[path = "http_api/keys.rs"]
mod keys;
#[path = "http_api/listing.rs"]
mod listing;
