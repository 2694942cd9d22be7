//! Shared helpers for the integration tests. Import with `mod support;` at the top of a
//! test file, then `use support::process::{Cluster, ClusterOptions, Http};`.
//!
//! - [`process`]: real `palisade serve` processes on 127.0.0.1 (a cluster of them, each
//!   with its own temp data dir and log file), crash and restart them, find the leader,
//!   and a small reqwest-based HTTP client for the KV API.
//! - [`running`]: a client command left running, read line by line.
//! - [`watch_client`]: a watch reader that records every message of a (resumed) watch
//!   for `jepsen::watch::check_watches`.
//! - [`credentials`]: the test run's CA, JWT secret and tokens, and clients that present
//!   them (for clusters started with TLS and client auth, and plain ones alike).
//! - [`tls`]: test certificates (a CA and what it signs) and the TLS files of a cluster.
//! - [`netns`]: a private test network (one network namespace and address per node) with
//!   iptables faults: partitions, one-way drops, lossy links. Needs root.
//!
//! Not every test file uses every helper, so dead-code warnings are off for the module.
#![allow(dead_code)]

pub mod credentials;
pub mod netns;
pub mod process;
pub mod running;
pub mod tls;
pub mod watch_client;
