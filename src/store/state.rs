//! The root of the replicated state: everything `apply` changes lives here.
//!
//! Today that is the multi-version key space; leases, locks, elections and the
//! idempotency table join it as they arrive. Every node applies the same proposals in the
//! same order to a `State` and so holds the same one, byte for byte (it is what a snapshot
//! captures). Nothing here reads a clock or does I/O: time arrives inside the proposal.

use serde::{Deserialize, Serialize};

use super::command::{Outcome, Proposal};
use super::mvcc::Store;

/// The replicated state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Keys and their history.
    kv: Store,
}

impl State {
    pub fn new() -> State {
        State::default()
    }

    /// The key space.
    pub fn kv(&self) -> &Store {
        &self.kv
    }

    /// The store revision: the number of changes applied so far.
    pub fn revision(&self) -> u64 {
        self.kv.revision()
    }

    /// Applies one proposal and returns what it decided. Deterministic, never panics.
    pub fn apply(&mut self, p: &Proposal) -> Outcome {
        self.kv.apply(&p.cmd)
    }

    /// The outcome of a log entry with no business payload (blank or membership).
    pub fn nothing(&self) -> Outcome {
        Outcome::Nothing { revision: self.revision() }
    }
}
