//! The client HTTP API, driven through `palisade::http::client_router` without a socket
//! (`tower::ServiceExt::oneshot`) against a real single-node cluster in a temp dir.
//! Covers every route and every behaviour of API.md's "Keys" section that `src/http/kv.rs`
//! implements, leases, locks, elections and fencing, plus `/v1/cluster`, `/healthz` and
//! `/readyz`.

pub mod harness;

mod auth;
mod bad_input;
mod cluster;
mod compaction;
mod conditions;
mod elections;
mod idempotency;
mod keys;
mod leases;
mod listing;
mod locks;
mod metrics;
mod sequential;
mod txn;
mod watch;
