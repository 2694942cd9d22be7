//! Jepsen-style testing: record what clients saw under faults, then check it.
//!
//! - `history`: the recorded operations and their outcomes.
//! - `recorder`: concurrent HTTP clients that produce a history.
//! - checkers: linearizability (per key), revisions, watches, locks and fencing, leases and
//!   their ephemeral keys under the failover rule (`leases`).
#![allow(dead_code)]

pub mod fencing;
pub mod history;
pub mod leases;
pub mod linearizability;
pub mod recorder;
pub mod replay;
pub mod watch;
