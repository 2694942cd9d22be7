//! The leader's read lease: when each voter last acknowledged this leader, timed by when
//! the acknowledged AppendEntries was *sent*, and the highest commit index the leader has
//! told anyone.
//!
//! A follower that takes an AppendEntries of a leader's vote refuses every vote request
//! for openraft's leader lease (the longest election timeout) after it got it, by its own
//! clock, and does not campaign for longer still; a member that restarts starts that clock
//! at start-up. So once a quorum has acknowledged messages sent at `t`, no other leader can
//! be elected before `t` plus that lease without this leader's own vote, which it stops
//! trusting the lease for as soon as it is asked for it ([`LeaseClock::vote_requested`]).
//! Until then nothing is acknowledged anywhere that this leader has not applied or sent as
//! committed: a read index of the highest commit index it sent covers it. The leader
//! trusts a shorter window (the shortest election timeout, half the followers'), which
//! leaves the rest as margin for clocks that run at different rates.
//!
//! Invariants: an acknowledgement counts only for the vote that sent it (a new term or
//! leader starts afresh); only an answer in which the follower took that vote counts (not
//! `HigherVote`); the commit index is recorded before the message carrying it is sent;
//! a vote request of a later term ends the lease of every earlier vote for good, before
//! Raft sees the request; the quorum is that of every configuration of a joint
//! membership; this node counts itself, when it is a voter, as acknowledging now.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use tokio::time::Instant;

use super::types::{NodeId, Vote};

/// Acknowledgements of one leader's vote, by voter.
#[derive(Default)]
pub(crate) struct LeaseClock {
    acks: Mutex<Acks>,
}

#[derive(Default)]
struct Acks {
    /// The vote the acknowledgements are for.
    vote: Option<Vote>,
    /// For each member, the latest sending time of a message of `vote` it took.
    sent: BTreeMap<NodeId, Instant>,
    /// The highest commit index sent in a message of `vote`.
    commit: u64,
    /// Votes of a term below this have no lease (a candidate of this term asked for a vote).
    floor: u64,
}

impl Acks {
    /// Makes `vote` the current one if it is newer; whether it is the current one.
    fn current(&mut self, vote: &Vote) -> bool {
        if !vote.is_committed() || vote.leader_id().term < self.floor {
            return false;
        }
        match &self.vote {
            Some(v) if v == vote => true,
            // A message of an older leadership (this node's or not): it says nothing about
            // the current one.
            Some(v) if v > vote => false,
            _ => {
                *self = Acks { vote: Some(*vote), floor: self.floor, ..Default::default() };
                true
            }
        }
    }
}

impl LeaseClock {
    /// A message of `vote` telling `commit` as committed is about to be sent.
    pub fn sending(&self, vote: &Vote, commit: u64) {
        let mut a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        if a.current(vote) {
            a.commit = a.commit.max(commit);
        }
    }

    /// `target` took a message of `vote` that was sent at `sent`.
    pub fn acked(&self, target: NodeId, vote: &Vote, sent: Instant) {
        let mut a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        if a.current(vote) {
            let at = a.sent.entry(target).or_insert(sent);
            *at = (*at).max(sent);
        }
    }

    /// A candidate of `term` asks this node for its vote: no leadership of an earlier term
    /// here may rely on the lease any more (the vote may be granted).
    pub fn vote_requested(&self, term: u64) {
        let mut a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        a.floor = a.floor.max(term);
        if a.vote.is_some_and(|v| v.leader_id().term < term) {
            *a = Acks { floor: a.floor, ..Default::default() };
        }
    }

    /// The latest time `t` such that, in every configuration of `configs`, a majority of
    /// voters took a message of `vote` sent at `t` or later (this node, `me`, counting as
    /// taking one `now`), and the highest commit index sent in a message of `vote`, read
    /// together; `None` when some configuration has no such majority.
    pub fn quorum_acked(
        &self,
        vote: &Vote,
        me: NodeId,
        configs: &[BTreeSet<NodeId>],
        now: Instant,
    ) -> Option<(Instant, u64)> {
        let a = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        if a.vote.as_ref() != Some(vote) || configs.is_empty() {
            return None;
        }
        let mut oldest: Option<Instant> = None;
        // One configuration's acknowledgements, newest first (a handful: at most 15 voters).
        let mut times: Vec<Instant> = Vec::new();
        for voters in configs {
            times.clear();
            times.extend(voters.iter().filter_map(|id| {
                if *id == me {
                    Some(now)
                } else {
                    a.sent.get(id).copied()
                }
            }));
            let majority = voters.len() / 2 + 1;
            if times.len() < majority {
                return None;
            }
            times.sort_unstable_by(|x, y| y.cmp(x));
            let t = times[majority - 1];
            oldest = Some(oldest.map_or(t, |o| o.min(t)));
        }
        oldest.map(|t| (t, a.commit))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn vote(term: u64, node: NodeId) -> Vote {
        Vote::new_committed(term, node)
    }

    /// When the quorum acknowledged `vote` (the commit sent is checked apart).
    fn at(
        clock: &LeaseClock,
        vote: &Vote,
        me: NodeId,
        configs: &[BTreeSet<NodeId>],
        now: Instant,
    ) -> Option<Instant> {
        clock.quorum_acked(vote, me, configs, now).map(|(t, _)| t)
    }

    /// The commit index sent under `vote`, while the lease of `vote` stands.
    fn commit(clock: &LeaseClock, vote: &Vote, now: Instant) -> Option<u64> {
        clock.quorum_acked(vote, vote.leader_id().voted_for().unwrap(), &[set(&[1])], now).map(|(_, c)| c)
    }

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_majority_of_each_configuration_decides() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(100);
        let v = vote(3, 1);
        let three = [set(&[1, 2, 3])];
        // Alone, the leader is no majority of three.
        assert_eq!(at(&clock, &v, 1, &three, now), None);
        clock.acked(2, &v, t0 + Duration::from_millis(10));
        assert_eq!(at(&clock, &v, 1, &three, now), Some(t0 + Duration::from_millis(10)));
        // The second-freshest of {now, 2's, 3's} counts; a later ack of 2 moves it, an
        // earlier one does not.
        clock.acked(3, &v, t0 + Duration::from_millis(50));
        assert_eq!(at(&clock, &v, 1, &three, now), Some(t0 + Duration::from_millis(50)));
        clock.acked(3, &v, t0 + Duration::from_millis(20));
        assert_eq!(at(&clock, &v, 1, &three, now), Some(t0 + Duration::from_millis(50)));
        // A joint configuration needs a majority of the new voters too: 4 and 5 never
        // answered.
        let joint = [set(&[1, 2, 3]), set(&[3, 4, 5])];
        assert_eq!(at(&clock, &v, 1, &joint, now), None);
        clock.acked(4, &v, t0 + Duration::from_millis(5));
        assert_eq!(at(&clock, &v, 1, &joint, now), Some(t0 + Duration::from_millis(5)));
        // A leader that is not a voter (being removed) does not count itself.
        assert_eq!(at(&clock, &v, 1, &[set(&[2, 3, 4])], now), Some(t0 + Duration::from_millis(10)));
        assert_eq!(at(&clock, &v, 1, &[], now), None);
    }

    #[test]
    fn a_vote_request_of_a_later_term_ends_the_lease() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(100);
        let three = [set(&[1, 2, 3])];
        let v = vote(3, 1);
        clock.sending(&v, 7);
        clock.acked(2, &v, t0);
        assert_eq!(commit(&clock, &v, now), Some(7));
        assert_eq!(at(&clock, &v, 1, &three, now), Some(t0));
        // A candidate of the same term cannot get this leader's vote: the lease stands.
        clock.vote_requested(3);
        assert_eq!(at(&clock, &v, 1, &three, now), Some(t0));
        clock.vote_requested(4);
        assert_eq!(at(&clock, &v, 1, &three, now), None);
        assert_eq!(commit(&clock, &v, now), None);
        // Late answers and sends of that leadership do not bring it back...
        clock.acked(2, &v, now);
        clock.sending(&v, 9);
        assert_eq!(at(&clock, &v, 1, &three, now), None);
        // ...but a leadership of the later term has a lease of its own.
        let w = vote(4, 1);
        clock.sending(&w, 9);
        clock.acked(3, &w, now);
        assert_eq!(at(&clock, &w, 1, &three, now), Some(now));
        assert_eq!(commit(&clock, &w, now), Some(9));
    }

    #[test]
    fn acknowledgements_count_only_for_their_vote() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(100);
        let three = [set(&[1, 2, 3])];
        clock.acked(2, &vote(3, 1), t0);
        // Another term: nothing acknowledged yet.
        assert_eq!(at(&clock, &vote(4, 1), 1, &three, now), None);
        // A vote not committed (a candidate's) is no leadership.
        clock.acked(2, &Vote::new(5, 1), t0);
        assert_eq!(at(&clock, &vote(3, 1), 1, &three, now), Some(t0));
        // A newer leadership starts afresh, and late answers to the old one are ignored.
        clock.acked(3, &vote(4, 1), t0 + Duration::from_millis(1));
        clock.acked(2, &vote(3, 1), t0 + Duration::from_millis(2));
        assert_eq!(at(&clock, &vote(3, 1), 1, &three, now), None);
        assert_eq!(at(&clock, &vote(4, 1), 1, &three, now), Some(t0 + Duration::from_millis(1)));
    }
}
