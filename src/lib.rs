//! Palisade: a replicated coordination service.
//!
//! ```text
//!  cli ──> http (routers, our server loop; the only layer with status codes)
//!            │        └── wire (JSON shapes, shared with client/)
//!            ▼
//!          node (the facade: typed reads and writes, policy, batching, read index,
//!            │   bootstrap; serves peer requests)
//!            ├──────────────> peer (protocol, Transport, request signing)
//!            ▼                  │
//!          raft (Replica: the one door to openraft; log store, state machine adapter)
//!            │         └── wal (the write-ahead log: records, segments, recovery)
//!            ▼
//!          store (State: pure and deterministic; Proposal -> Outcome)
//! ```
//!
//! # The data path
//!
//! **A write.** `http::kv` parses `PUT /v1/kv/{key}` into a [`store::Command`] and calls
//! [`node::Node::write`], which checks it against the node's policy (key rules, value
//! size, quota; the same checks run on the leader for a write a follower forwards). On a
//! follower the command goes to the leader once, over the [`peer::Transport`], signed with
//! the cluster secret. On the leader it joins the writes waiting to be proposed: up to two
//! proposers each take a batch, wrap it in a [`store::Proposal`] stamped with the leader's
//! clock, and hand it to [`raft::Replica::propose`]. openraft appends it through the log
//! store to the [`wal`], whose writer thread writes every queued record and fsyncs once
//! (group commit) before anything is acknowledged; once a quorum holds the entry it commits,
//! and the state machine adapter applies it: [`store::State::apply`] runs the command as
//! one write transaction at one new revision and returns an [`store::Outcome`], which
//! travels back to the waiting request and becomes the reply (`409` for a failed condition:
//! outcomes are data, not errors).
//!
//! **A read.** `GET /v1/kv/{key}` becomes a [`node::KvRead`]. A linearizable read first
//! waits for a read index: the leader confirms with a quorum that it still leads (one round
//! shared by every read that arrived before it started; a follower asks the leader for the
//! index), and the node waits until it has applied that far. Then the read is answered from
//! the applied state under a short read lock, with no further coordination. A serializable
//! read skips the round.
//!
//! **Peer traffic.** `POST /raft/rpc` on the peer listener carries one
//! [`peer::PeerRequest`]. The HTTP layer checks the signature and that the sender is a
//! member; the node serves forwarded writes and read-index calls itself and hands Raft
//! calls to the replica, which refuses anything a member could not honestly send before
//! openraft sees it.
//!
//! Dependencies point one way, downwards; `store` knows nothing of tokio, openraft, HTTP,
//! the clock or the disk (`make test` checks), and `wal` knows nothing of openraft.

pub mod auth;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod error;
pub mod file_poll;
pub mod http;
pub mod metrics;
pub mod node;
pub mod peer;
pub mod raft;
pub mod store;
pub mod tls;
pub mod wal;
pub mod wire;
