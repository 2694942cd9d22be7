//! A recorded history of key-value operations: what each client asked and what it saw.
//!
//! Times are nanoseconds on one monotonic clock shared by every client of a run. An op
//! whose outcome is `Unknown` (timeout, connection reset, 5xx) may have taken effect at
//! any point after its invocation, or never: checkers treat its completion as open-ended.
//! A `Fail` is definite: the op did not take effect (refused before proposal, a 4xx, or a
//! compare that did not hold).

use std::fmt;

/// A register value: `None` is "the key does not exist".
pub type Value = Option<String>;

/// What a client asked for, on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    /// A linearizable read.
    Read,
    /// An unconditional put.
    Write { value: String },
    /// A compare-and-swap: put `value` only if the current value is `expected`
    /// (`None`: only if the key does not exist, i.e. `if_version=0`).
    Cas { expected: Value, value: String },
}

/// What the client saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The op took effect. `read` is the value a read returned (`None` for writes and
    /// CAS); `revision` is the store revision the reply carried, if any.
    Ok { read: Option<Value>, revision: Option<u64> },
    /// Definitely did not take effect (refused, or a compare that failed).
    Fail,
    /// May or may not have taken effect.
    Unknown,
}

/// One operation of one client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Position in the history (unique).
    pub id: usize,
    /// The client (a logical process: one op at a time).
    pub process: usize,
    pub key: String,
    pub call: Call,
    pub invoke_ns: u64,
    /// When the reply arrived; `None` for an op with no reply at all.
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
}

impl Op {
    /// The latest moment the op can have taken effect (`u64::MAX`: open-ended).
    pub fn effective_end(&self) -> u64 {
        match self.outcome {
            Outcome::Unknown => u64::MAX,
            _ => self.complete_ns.unwrap_or(u64::MAX),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let end = match self.complete_ns {
            Some(c) => format!("{:.3}ms", c as f64 / 1e6),
            None => "-".into(),
        };
        write!(
            f,
            "#{:<5} p{:<3} {:>10.3}ms..{:<12} {} {:?} -> {:?}",
            self.id,
            self.process,
            self.invoke_ns as f64 / 1e6,
            end,
            self.key,
            self.call,
            self.outcome
        )
    }
}

/// A whole run's history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// The ops on `key`, in invocation order.
    pub fn for_key(&self, key: &str) -> Vec<&Op> {
        let mut ops: Vec<&Op> = self.ops.iter().filter(|o| o.key == key).collect();
        ops.sort_by_key(|o| (o.invoke_ns, o.id));
        ops
    }

    /// Every key touched, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.ops.iter().map(|o| o.key.clone()).collect();
        k.sort();
        k.dedup();
        k
    }

    /// One line per op, for failure messages.
    pub fn render(ops: &[&Op]) -> String {
        ops.iter().map(|o| format!("  {o}\n")).collect()
    }
}
