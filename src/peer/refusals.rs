//! The log lines that say why a peer was refused, on both sides: the receiver of a refused
//! request says who claimed to send it, from where, and why; the sender of a request a
//! peer refused (401/403) says which peer refused it and the reason the peer gave. An
//! operator reading either node's log learns e.g. that the two hold different secrets.
//!
//! Invariants: each kind of line is logged at most once per [`EVERY`] per (node, peer,
//! reason), with a count of the ones held back, and no more than [`BUDGET`] lines of one
//! kind go out per [`EVERY`] in all (the claimed sender is unproven, so a stranger could
//! otherwise name a new one with every request), so a flood of refused requests cannot
//! flood the log; the memory of what was logged is bounded; a line never carries a
//! secret or a signature (only ids, addresses and the reasons of `PeerAuthError` or the
//! peer's error message, cut short and stripped of control characters).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::raft::NodeId;

/// The least time between two log lines about the same refusal.
pub const EVERY: Duration = Duration::from_secs(5);

/// The most lines of one kind per [`EVERY`], whatever peers they name.
pub const BUDGET: u64 = 20;

/// The most (node, peer, reason) triples remembered; past it, the stalest are forgotten.
const REMEMBERED: usize = 256;

/// The longest peer error message quoted (characters).
const MAX_QUOTED: usize = 200;

/// Which lines were logged lately, and how many were held back since.
pub struct Throttle {
    every: Duration,
    seen: Mutex<HashMap<String, Mark>>,
    /// Lines let out in the current window, when it began, and how many new lines the
    /// budget held back since the last one let out.
    budget: Mutex<(Instant, u64, u64)>,
}

struct Mark {
    logged_at: Instant,
    held_back: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle { every, seen: Mutex::default(), budget: Mutex::new((Instant::now(), 0, 0)) }
    }

    /// Whether the budget lets one more line out at `now`; if so, how many it held back
    /// since the last one.
    fn spend(&self, now: Instant) -> Option<u64> {
        let mut b = self.budget.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(b.0) >= self.every {
            *b = (now, 0, b.2);
        }
        if b.1 >= BUDGET {
            b.2 += 1;
            return None;
        }
        b.1 += 1;
        Some(std::mem::take(&mut b.2))
    }

    /// Whether a line about `key` may be logged at `now`; if so, how many were held back
    /// since the last one.
    pub fn admit(&self, key: String, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(mark) = seen.get_mut(&key) {
            if now.saturating_duration_since(mark.logged_at) < self.every {
                mark.held_back += 1;
                return None;
            }
            let Some(over_budget) = self.spend(now) else {
                mark.held_back += 1;
                return None;
            };
            let held_back = mark.held_back + over_budget;
            *mark = Mark { logged_at: now, held_back: 0 };
            return Some(held_back);
        }
        let over_budget = self.spend(now)?;
        if seen.len() >= REMEMBERED {
            let every = self.every;
            seen.retain(|_, m| now.saturating_duration_since(m.logged_at) < every);
            if seen.len() >= REMEMBERED {
                // Still full of recent ones (many claimed senders): forget the oldest.
                if let Some(oldest) = seen.iter().min_by_key(|(_, m)| m.logged_at).map(|(k, _)| k.clone()) {
                    seen.remove(&oldest);
                }
            }
        }
        seen.insert(key, Mark { logged_at: now, held_back: 0 });
        Some(over_budget)
    }
}

/// Shared by every node in the process (keys name the node, so nodes do not mix).
static RECEIVED: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(EVERY));
static SENT: LazyLock<Throttle> = LazyLock::new(|| Throttle::new(EVERY));

fn held_back_note(n: u64) -> String {
    match n {
        0 => String::new(),
        n => format!(" ({n} more like it since the last such line)"),
    }
}

/// Logs that node `me` refused a peer request claimed to come from `from` (if the headers
/// named a sender), received from `remote` (if known), because `why`; `kind` names the
/// reason for the rate limit.
pub fn refused_request(me: NodeId, from: Option<NodeId>, remote: Option<SocketAddr>, kind: &str, why: &str) {
    let sender = from.map_or_else(|| "an unnamed sender".to_string(), |f| format!("node {f}"));
    let key = format!("{me}/{}/{kind}", from.map_or_else(|| "?".into(), |f| f.to_string()));
    let Some(held_back) = RECEIVED.admit(key, Instant::now()) else { return };
    let at = remote.map_or_else(String::new, |r| format!(" at {r}"));
    tracing::warn!(
        from = from,
        remote = remote.map(|r| r.to_string()),
        reason = kind,
        "refused a peer request from {sender}{at}: {why}{}",
        held_back_note(held_back)
    );
}

/// Logs that `peer` refused a request of node `me` with HTTP `status` (401 or 403) and the
/// error `body` it answered.
pub fn refused_by_peer(me: NodeId, peer: NodeId, status: u16, body: &[u8]) {
    let Some(held_back) = SENT.admit(format!("{me}/{peer}/{status}"), Instant::now()) else { return };
    let why = peer_message(body);
    tracing::warn!(
        peer,
        status,
        "node {peer} refused this node's requests: {why}{}",
        held_back_note(held_back)
    );
}

/// The `error.message` of an error answer (else its text), cut short, without control
/// characters: the peer chose it, so it must not forge log lines.
fn peer_message(body: &[u8]) -> String {
    let parsed: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string));
    let text = parsed.unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    let mut out: String = text.chars().filter(|c| !c.is_control()).take(MAX_QUOTED).collect();
    if text.chars().filter(|c| !c.is_control()).count() > MAX_QUOTED {
        out.push('…');
    }
    if out.trim().is_empty() {
        out = "(no reason given)".into();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_naming_new_senders_stays_within_the_budget() {
        let t = Throttle::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let let_out = (0..1000).filter(|i| t.admit(format!("1/{i}/unsigned"), t0).is_some()).count();
        assert_eq!(let_out as u64, BUDGET);
        // The next window lets lines out again, and says how many were held back.
        assert_eq!(t.admit("1/5000/unsigned".into(), t0 + Duration::from_secs(5)), Some(1000 - BUDGET));
    }

    #[test]
    fn a_refusal_is_logged_once_per_window_with_a_count_of_the_rest() {
        let t = Throttle::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(t.admit("1/4/wrong_secret".into(), t0), Some(0));
        for i in 1..=10 {
            assert_eq!(t.admit("1/4/wrong_secret".into(), t0 + Duration::from_millis(100 * i)), None);
        }
        // Another sender or another reason has its own window.
        assert_eq!(t.admit("1/5/wrong_secret".into(), t0), Some(0));
        assert_eq!(t.admit("1/4/skewed".into(), t0), Some(0));
        assert_eq!(t.admit("1/4/wrong_secret".into(), t0 + Duration::from_secs(5)), Some(10));
        assert_eq!(t.admit("1/4/wrong_secret".into(), t0 + Duration::from_secs(6)), None);
    }

    #[test]
    fn the_memory_stays_bounded_under_many_claimed_senders() {
        let t = Throttle::new(Duration::from_secs(5));
        let t0 = Instant::now();
        // Within the budget (one new sender a second), every line goes out, and what is
        // remembered stays bounded.
        for i in 0..10_000u64 {
            assert!(t.admit(format!("1/{i}/wrong_secret"), t0 + Duration::from_secs(i)).is_some());
        }
        assert!(t.seen.lock().unwrap().len() <= REMEMBERED);
        // Past the budget, new senders are not even remembered.
        let t = Throttle::new(Duration::from_secs(5));
        for i in 0..10_000u64 {
            t.admit(format!("1/{i}/wrong_secret"), t0 + Duration::from_micros(i));
        }
        assert!(t.seen.lock().unwrap().len() as u64 <= BUDGET);
    }

    #[test]
    fn peer_messages_are_quoted_short_and_on_one_line() {
        let body = br#"{"error":{"code":"unauthenticated","message":"the signature does not match (a wrong peer secret?)"}}"#;
        assert_eq!(peer_message(body), "the signature does not match (a wrong peer secret?)");
        assert_eq!(peer_message(b"plain\ntext\r\n"), "plaintext");
        assert_eq!(peer_message(b""), "(no reason given)");
        let long = "x".repeat(1000);
        assert_eq!(peer_message(long.as_bytes()).chars().count(), MAX_QUOTED + 1);
    }
}
