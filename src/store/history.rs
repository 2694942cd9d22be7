//! The revision index of the key space's history: which keys each revision changed, so a
//! watch can walk history revision by revision without looking at keys that did not change.
//!
//! Invariants:
//! - entries are sparse and in revision order: one for each revision from `first` on that
//!   changed a key (a revision that changed only locks or elections has none);
//! - each entry's keys are sorted and distinct, whatever order the writes came in, so the
//!   index of a node that applied the log and of one that loaded a snapshot are equal;
//! - it is derived data: never serialised, rebuilt from the key versions on load (so its
//!   size is bounded by the versions held), trimmed by compaction exactly as the versions
//!   are (nothing at or above the floor goes).
//!
//! A persistent vector of shared entries: cloning the store stays O(1), and a write after a
//! clone copies a path of the tree, not the entries.

use std::sync::Arc;

/// The keys each revision from `first` on changed, for the revisions that changed any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct History {
    /// The lowest revision the index speaks for.
    first: u64,
    /// `(revision, keys)`, revisions increasing.
    entries: imbl::Vector<(u64, Arc<Vec<Box<str>>>)>,
}

impl Default for History {
    fn default() -> Self {
        History { first: 1, entries: imbl::Vector::new() }
    }
}

impl History {
    /// The index of a store whose first revision still known is `first` (at least 1),
    /// from `(revision, key)` pairs in any order; pairs outside `first..=last` are ignored.
    pub fn rebuild<'a>(first: u64, last: u64, changes: impl Iterator<Item = (u64, &'a str)>) -> History {
        let first = first.max(1);
        let mut buckets: std::collections::BTreeMap<u64, Vec<Box<str>>> = Default::default();
        for (rev, key) in changes {
            if rev >= first && rev <= last {
                buckets.entry(rev).or_default().push(key.into());
            }
        }
        let entries = buckets
            .into_iter()
            .map(|(rev, mut keys)| {
                keys.sort_unstable();
                keys.dedup();
                (rev, Arc::new(keys))
            })
            .collect();
        History { first, entries }
    }

    /// The lowest revision the index speaks for.
    pub fn first(&self) -> u64 {
        self.first
    }

    /// Where the entries of revisions at or above `rev` begin.
    fn position(&self, rev: u64) -> usize {
        self.entries.binary_search_by(|(r, _)| r.cmp(&rev)).unwrap_or_else(|i| i)
    }

    /// The keys revision `rev` changed, sorted (none: it changed no key); `None` below
    /// the index. (Revisions past the store's current one are the caller's to refuse.)
    pub fn keys(&self, rev: u64) -> Option<&[Box<str>]> {
        if rev < self.first {
            return None;
        }
        let i = self.position(rev);
        Some(match self.entries.get(i) {
            Some((r, keys)) if *r == rev => keys.as_slice(),
            _ => &[],
        })
    }

    /// The revisions from `from` to `to` (inclusive) that changed keys, with their keys,
    /// in order.
    /// (Found by binary search, then read entry by entry: `skip` on the vector's iterator
    /// would step through every entry before `from`.)
    pub fn range(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &[Box<str>])> + '_ {
        (self.position(from)..self.entries.len())
            .map(|i| &self.entries[i])
            .take_while(move |(r, _)| *r <= to)
            .map(|(r, keys)| (*r, keys.as_slice()))
    }

    /// Records that revision `rev` (the newest) changed `key`.
    pub fn touch(&mut self, rev: u64, key: &str) {
        if self.entries.back().is_none_or(|(r, _)| *r != rev) {
            debug_assert!(self.entries.back().is_none_or(|(r, _)| *r < rev), "revisions increase");
            self.entries.push_back((rev, Arc::new(Vec::new())));
        }
        let Some((_, last)) = self.entries.back_mut() else { return };
        let keys = Arc::make_mut(last);
        // Writes of one revision mostly come in key order (a recursive delete always does).
        match keys.last() {
            Some(k) if k.as_ref() < key => keys.push(key.into()),
            None => keys.push(key.into()),
            _ => {
                if let Err(i) = keys.binary_search_by(|k| k.as_ref().cmp(key)) {
                    keys.insert(i, key.into());
                }
            }
        }
    }

    /// Drops the entries below `floor`.
    pub fn compact(&mut self, floor: u64) {
        if floor <= self.first {
            return;
        }
        let drop = self.position(floor);
        self.entries = self.entries.skip(drop);
        self.first = floor;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(h: &History, rev: u64) -> Option<Vec<&str>> {
        h.keys(rev).map(|ks| ks.iter().map(|k| k.as_ref()).collect())
    }

    #[test]
    fn entries_are_sparse_sorted_and_distinct() {
        let mut h = History::default();
        h.touch(1, "/b");
        h.touch(1, "/a");
        h.touch(1, "/b");
        h.touch(1, "/c");
        // Revision 2 changed no key.
        h.touch(3, "/z");
        assert_eq!(keys(&h, 1), Some(vec!["/a", "/b", "/c"]));
        assert_eq!(keys(&h, 2), Some(vec![]));
        assert_eq!(keys(&h, 3), Some(vec!["/z"]));
        assert_eq!(keys(&h, 0), None);
        assert_eq!(h.range(2, 9).map(|(r, _)| r).collect::<Vec<_>>(), vec![3]);
        assert_eq!(h.range(1, 2).map(|(r, k)| (r, k.len())).collect::<Vec<_>>(), vec![(1, 3)]);
        let rebuilt =
            History::rebuild(0, 3, [(3, "/z"), (1, "/c"), (1, "/b"), (1, "/a"), (1, "/b")].into_iter());
        assert_eq!(rebuilt, h);
    }

    #[test]
    fn compaction_keeps_the_floor() {
        let mut h = History::default();
        for rev in 1..=5 {
            h.touch(rev, &format!("/k{rev}"));
        }
        let before = h.clone();
        h.compact(3);
        assert_eq!(h.first(), 3);
        assert_eq!(keys(&h, 2), None);
        assert_eq!(keys(&h, 3), Some(vec!["/k3"]));
        assert_eq!(keys(&h, 5), Some(vec!["/k5"]));
        // A clone taken before is untouched.
        assert_eq!(keys(&before, 1), Some(vec!["/k1"]));
        h.compact(2);
        assert_eq!(h.first(), 3);
        assert_eq!(h, History::rebuild(3, 5, [(5, "/k5"), (4, "/k4"), (3, "/k3"), (2, "/k2")].into_iter()));
        // Past the end: empty, and the next revision follows on.
        h.compact(6);
        assert_eq!((h.first(), keys(&h, 5)), (6, None));
        h.touch(7, "/n");
        assert_eq!(keys(&h, 6), Some(vec![]));
        assert_eq!(keys(&h, 7), Some(vec!["/n"]));
    }
}
