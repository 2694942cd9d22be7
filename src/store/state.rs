//! The root of the replicated state: everything `apply` changes lives here.
//!
//! Today that is the multi-version key space and the idempotency table; leases, locks and
//! elections join it as they arrive. Every node applies the same proposals in the
//! same order to a `State` and so holds the same one, byte for byte (it is what a snapshot
//! captures). Nothing here reads a clock or does I/O: time arrives inside the proposal.

use serde::{Deserialize, Serialize};

use super::command::{apply_batch, Command, Outcome, Proposal};
use super::dedup::{self, Dedup, Seen};
use super::mvcc::Store;

/// The replicated state machine's data.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Keys and their history.
    kv: Store,
    /// Idempotency keys of recent writes and what they got.
    #[serde(default)]
    dedup: Dedup,
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

    /// The idempotency table.
    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    /// Applies one proposal and returns what it decided. Deterministic, never panics.
    /// Idempotency entries that expired by the proposal's leader stamp go first.
    pub fn apply(&mut self, p: &Proposal) -> Outcome {
        self.dedup.expire(p.leader_time_ms);
        match &p.cmd {
            Command::Batch { cmds } => {
                apply_batch(self, cmds, State::revision, |s, c| s.apply_one(c, p.leader_time_ms))
            }
            cmd => self.apply_one(cmd, p.leader_time_ms),
        }
    }

    /// Applies one command that is not a batch, through the idempotency table when it
    /// carries a key.
    fn apply_one(&mut self, cmd: &Command, now_ms: u64) -> Outcome {
        let Command::Idempotent { key, fingerprint, retain, cmd } = cmd else {
            return self.kv.apply(cmd);
        };
        if matches!(cmd.as_ref(), Command::Batch { .. } | Command::Idempotent { .. }) {
            return self.nothing();
        }
        match self.dedup.seen(key, fingerprint) {
            Seen::New => {
                let outcome = self.kv.apply(cmd);
                self.dedup.remember(key, fingerprint.clone(), outcome.clone(), now_ms, *retain);
                outcome
            }
            Seen::Replay(first) => Outcome::Replayed { first: Box::new(dedup::refill(first, cmd)) },
            Seen::Conflict => Outcome::IdempotencyConflict { revision: self.revision() },
        }
    }

    /// The outcome of a log entry with no business payload (blank or membership).
    pub fn nothing(&self) -> Outcome {
        Outcome::Nothing { revision: self.revision() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Condition, Retention};

    const RETAIN: Retention = Retention { window_ms: 1_000, max_entries: 100, max_bytes: u64::MAX };

    fn put(key: &str, value: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            lease: None,
            sequential: false,
            cond: Condition::default(),
            prev_kv: false,
        }
    }

    fn once(id: &str, cmd: Command) -> Command {
        let fingerprint = dedup::fingerprint(&cmd);
        Command::Idempotent { key: id.into(), fingerprint, retain: RETAIN, cmd: Box::new(cmd) }
    }

    fn at(time: u64, cmd: Command) -> Proposal {
        Proposal::new(cmd, time)
    }

    #[test]
    fn an_idempotent_write_applies_once_and_a_retry_gets_the_first_outcome() {
        let mut s = State::new();
        let first = s.apply(&at(0, once("k1", put("/a", "1"))));
        assert_eq!(first.revision(), 1);
        // The retry, even batched with other writes, applies nothing.
        let retry =
            s.apply(&at(10, Command::Batch { cmds: vec![once("k1", put("/a", "1")), put("/b", "x")] }));
        let Outcome::Batch { outcomes, .. } = retry else { panic!("{retry:?}") };
        assert_eq!(outcomes[0], Outcome::Replayed { first: Box::new(first.clone()) });
        assert_eq!(s.revision(), 2, "only /b was written");
        assert_eq!(s.kv().current("/a").unwrap().version, 1);
        // The same key with another request: a conflict, nothing applied.
        assert_eq!(
            s.apply(&at(20, once("k1", put("/a", "2")))),
            Outcome::IdempotencyConflict { revision: 2 }
        );
        assert_eq!(s.revision(), 2);
        // A failed condition is remembered too.
        let cas = Command::Put {
            key: "/a".into(),
            value: b"3".to_vec(),
            lease: None,
            sequential: false,
            cond: Condition { if_version: Some(7), ..Condition::default() },
            prev_kv: false,
        };
        let failed = s.apply(&at(30, once("k2", cas.clone())));
        assert!(matches!(failed, Outcome::ConditionFailed { .. }));
        assert_eq!(s.apply(&at(40, once("k2", cas))), Outcome::Replayed { first: Box::new(failed) });
    }

    #[test]
    fn idempotency_entries_expire_by_the_leader_stamp_and_survive_a_snapshot() {
        let mut s = State::new();
        s.apply(&at(1_000, once("k", put("/a", "1"))));
        let copy: State = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(copy, s, "the table is part of the snapshot");
        let mut s = copy;
        assert!(matches!(s.apply(&at(1_999, once("k", put("/a", "1")))), Outcome::Replayed { .. }));
        // Past the window the key is forgotten: the same request applies again.
        assert!(matches!(s.apply(&at(2_000, once("k", put("/a", "1")))), Outcome::Put { revision: 2, .. }));
        assert_eq!(s.dedup().len(), 1);
    }
}
