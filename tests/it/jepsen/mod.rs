//! Jepsen-style testing: record what clients saw under faults, then check it.
//!
//! - `history`: the recorded operations and their outcomes.
//! - `recorder`: concurrent HTTP clients that produce a history.
//! - checkers: linearizability (per key), revisions, watches, locks and fencing.
#![allow(dead_code)]

pub mod fencing;
pub mod history;
pub mod linearizability;
pub mod recorder;
pub mod replay;
pub mod watch;
