//! The revision index of the key space's history: which keys each revision changed, so a
//! watch can walk history revision by revision without looking at keys that did not change.
//!
//! Invariants:
//! - revisions are dense: the index holds one entry for every revision from `first` to the
//!   store's current revision (an entry may be empty: a revision that changed no key);
//! - each entry's keys are sorted and distinct, whatever order the writes came in, so the
//!   index of a node that applied the log and of one that loaded a snapshot are equal;
//! - it is derived data: never serialised, rebuilt from the key versions on load, trimmed
//!   by compaction exactly as the versions are (nothing at or above the floor goes).
//!
//! A persistent vector of shared entries: cloning the store stays O(1), and a write after a
//! clone copies a path of the tree, not the entries.

use std::sync::Arc;

/// The keys each revision changed, for revisions `first..first + len`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct History {
    /// The revision of the first entry.
    first: u64,
    entries: imbl::Vector<Arc<Vec<Box<str>>>>,
}

impl Default for History {
    fn default() -> Self {
        History { first: 1, entries: imbl::Vector::new() }
    }
}

impl History {
    /// The index of a store whose first revision still known is `first` (at least 1),
    /// from `(revision, key)` pairs in any order; revisions up to `last` get an entry.
    pub fn rebuild<'a>(first: u64, last: u64, changes: impl Iterator<Item = (u64, &'a str)>) -> History {
        let first = first.max(1);
        let len = last.saturating_add(1).saturating_sub(first);
        let mut buckets: Vec<Vec<Box<str>>> = vec![Vec::new(); len as usize];
        for (rev, key) in changes {
            if rev >= first && rev <= last {
                buckets[(rev - first) as usize].push(key.into());
            }
        }
        let entries = buckets
            .into_iter()
            .map(|mut keys| {
                keys.sort_unstable();
                keys.dedup();
                Arc::new(keys)
            })
            .collect();
        History { first, entries }
    }

    /// The lowest revision the index holds (or would hold: the next one, when empty).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The keys revision `rev` changed, sorted; `None` outside the index.
    pub fn keys(&self, rev: u64) -> Option<&[Box<str>]> {
        let i = rev.checked_sub(self.first)?;
        self.entries.get(usize::try_from(i).ok()?).map(|keys| keys.as_slice())
    }

    /// Opens the entry of revision `rev`, which must follow the last one.
    pub fn begin(&mut self, rev: u64) {
        debug_assert_eq!(rev, self.first + self.entries.len() as u64, "revisions are dense");
        self.entries.push_back(Arc::new(Vec::new()));
    }

    /// Records that the revision opened last changed `key`.
    pub fn touch(&mut self, key: &str) {
        let Some(last) = self.entries.back_mut() else { return };
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
        let drop = ((floor - self.first) as usize).min(self.entries.len());
        self.entries = self.entries.skip(drop);
        self.first += drop as u64;
        if self.entries.is_empty() {
            self.first = floor;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(h: &History, rev: u64) -> Option<Vec<&str>> {
        h.keys(rev).map(|ks| ks.iter().map(|k| k.as_ref()).collect())
    }

    #[test]
    fn entries_are_dense_sorted_and_distinct() {
        let mut h = History::default();
        h.begin(1);
        h.touch("/b");
        h.touch("/a");
        h.touch("/b");
        h.touch("/c");
        h.begin(2);
        h.begin(3);
        h.touch("/z");
        assert_eq!(keys(&h, 1), Some(vec!["/a", "/b", "/c"]));
        assert_eq!(keys(&h, 2), Some(vec![]));
        assert_eq!(keys(&h, 3), Some(vec!["/z"]));
        assert_eq!(keys(&h, 0), None);
        assert_eq!(keys(&h, 4), None);
        let rebuilt =
            History::rebuild(0, 3, [(3, "/z"), (1, "/c"), (1, "/b"), (1, "/a"), (1, "/b")].into_iter());
        assert_eq!(rebuilt, h);
    }

    #[test]
    fn compaction_keeps_the_floor() {
        let mut h = History::default();
        for rev in 1..=5 {
            h.begin(rev);
            h.touch(&format!("/k{rev}"));
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
        h.begin(6);
        assert_eq!(keys(&h, 6), Some(vec![]));
    }
}
