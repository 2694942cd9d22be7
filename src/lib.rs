//! Palisade: a replicated coordination service.
//!
//! ```text
//!  http (axum routers, the only layer that knows status codes)
//!    |
//!  node (the facade: write, read(consistency), status; forwards to the leader)
//!    |
//!  raft (openraft glue: log store, state machine adapter, peer network)
//!    |
//!  store (pure deterministic state machine: MVCC keys, commands, outcomes)
//! ```
//!
//! Dependencies point one way, downwards. `store` knows nothing of tokio, openraft or HTTP.

pub mod cli;
pub mod client;
pub mod config;
pub mod error;
pub mod http;
pub mod node;
pub mod peer;
pub mod raft;
pub mod store;
pub mod wal;
pub mod wire;
