//! Automatic compaction: while this node leads, it proposes `Compact` so history stays
//! within `--auto-compact-retention-ms` of age and `--auto-compact-max-revisions` of
//! length (etcd's periodic and revision modes, together).
//!
//! The leader samples the revision once per tick on its monotonic clock; the time target
//! is the newest sample at least the retention old. The count target is the current
//! revision minus the revision bound, acted on only once history is a tenth over it, so a
//! fast writer costs one compaction per tenth of the bound, not one per tick. Samples are
//! dropped when leadership is lost: a new leader waits a whole retention before its first
//! time-based compaction (never earlier than the old leader would have). Compaction itself
//! is a replicated command, so every node drops the same history at the same log position.

use std::collections::VecDeque;
use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use super::Node;
use crate::store::Command;

/// What to compact to, given revision samples `(when, revision)` oldest first.
pub(super) fn target(
    samples: &VecDeque<(Instant, u64)>,
    now: Instant,
    current: u64,
    floor: u64,
    retention: Duration,
    max_revisions: u64,
) -> Option<u64> {
    let by_time =
        samples.iter().rev().find(|(at, _)| now.duration_since(*at) >= retention).map(|(_, rev)| *rev);
    let by_count = (current.saturating_sub(floor) > max_revisions.saturating_add(max_revisions / 10))
        .then(|| current - max_revisions);
    let target = by_time.into_iter().chain(by_count).max()?;
    (target > floor).then_some(target)
}

impl Node {
    /// Runs for the node's life; proposes compactions while this node leads.
    pub(super) async fn auto_compact(node: Weak<Node>) {
        let (retention, max_revisions, mut leadership) = {
            let Some(n) = node.upgrade() else { return };
            if n.cfg.auto_compact_retention_ms == 0 {
                return;
            }
            (
                Duration::from_millis(n.cfg.auto_compact_retention_ms),
                n.cfg.auto_compact_max_revisions,
                n.replica.leadership(),
            )
        };
        let tick = (retention / 10).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
        // Time-based compactions at most once per tenth of the retention: each one walks
        // the key space on every node.
        let spacing = retention / 10;
        let mut last_time_based: Option<Instant> = None;
        let mut interval = tokio::time::interval(tick);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if node.strong_count() == 0 {
                return;
            }
            let is_self = leadership.borrow_and_update().is_self;
            if !is_self {
                samples.clear();
                continue;
            }
            let Some(n) = node.upgrade() else { return };
            let (current, floor) = {
                let a = n.replica.applied();
                (a.state.revision(), a.state.kv().compact_revision())
            };
            let now = Instant::now();
            samples.push_back((now, current));
            // Keep only what a target can still need: the newest sample older than the
            // retention, and everything younger.
            while samples.len() > 1 && now.duration_since(samples[1].0) >= retention {
                samples.pop_front();
            }
            let by_count = current.saturating_sub(floor) > max_revisions.saturating_add(max_revisions / 10);
            let spaced = last_time_based.is_none_or(|at| now.duration_since(at) >= spacing);
            if !by_count && !spaced {
                continue;
            }
            let Some(revision) = target(&samples, now, current, floor, retention, max_revisions) else {
                continue;
            };
            if !by_count {
                last_time_based = Some(now);
            }
            match n.write(Command::Compact { revision }).await {
                Ok(_) => tracing::debug!(revision, "automatic compaction"),
                Err(e) => {
                    tracing::warn!(revision, error = %e, "automatic compaction failed; trying again next tick")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_age_and_length() {
        let t0 = Instant::now();
        let s =
            |v: &[(u64, u64)]| v.iter().map(|(ms, rev)| (t0 + Duration::from_millis(*ms), *rev)).collect();
        let ret = Duration::from_millis(1000);
        let samples: VecDeque<_> = s(&[(0, 10), (500, 20), (1000, 30)]);
        // Nothing is a retention old yet.
        assert_eq!(target(&samples, t0 + Duration::from_millis(900), 30, 0, ret, 1_000), None);
        // The newest sample at least a retention old.
        assert_eq!(target(&samples, t0 + Duration::from_millis(1600), 30, 0, ret, 1_000), Some(20));
        // Never at or below the floor.
        assert_eq!(target(&samples, t0 + Duration::from_millis(1600), 30, 20, ret, 1_000), None);
        // The length bound acts once history is a tenth over it, and takes it back to the bound.
        assert_eq!(target(&VecDeque::new(), t0, 1_100, 0, ret, 1_000), None);
        assert_eq!(target(&VecDeque::new(), t0, 1_101, 0, ret, 1_000), Some(101));
        // Whichever drops more.
        assert_eq!(target(&samples, t0 + Duration::from_millis(2000), 2_000, 0, ret, 1_000), Some(1_000));
    }
}
