//! What a watch reads from the history: where the next change to the keys it selects is,
//! and the events of one revision on those keys, in pages of bounded size.
//!
//! Invariants: the events of a revision come in key order, the same on every node (they
//! are read from the revision index, whose entries are sorted); a revision is paged by its
//! position in that index, so paging never splits or repeats an event; everything at or
//! above the compaction floor can be read, nothing below it.

use super::key;
use super::kv::KeyValue;
use super::mvcc::{to_kv, ReadError, Store};

/// The keys a watch selects: one key, or a key and everything below it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Selector {
    pub key: String,
    pub recursive: bool,
}

impl Selector {
    /// Whether `k` is selected.
    pub fn matches(&self, k: &str) -> bool {
        Self::selects(&self.key, self.recursive, k)
    }

    /// Whether the selector of `key` (with `recursive`) selects `k`.
    pub fn selects(key: &str, recursive: bool, k: &str) -> bool {
        if !recursive {
            return k == key;
        }
        key::is_root(key) || k == key || k.strip_prefix(key).is_some_and(|r| r.starts_with('/'))
    }

    /// The positions in `keys` (sorted, distinct) of the keys selected, in order.
    fn positions(&self, keys: &[Box<str>]) -> impl Iterator<Item = usize> {
        let find = |k: &str| keys.binary_search_by(|x| x.as_ref().cmp(k)).ok();
        let (own, range) = if !self.recursive {
            (find(&self.key), 0..0)
        } else if key::is_root(&self.key) {
            (None, 0..keys.len())
        } else {
            let prefix = key::child_prefix(&self.key);
            let end = key::prefix_end(&prefix);
            let lo = keys.partition_point(|k| k.as_ref() < prefix.as_str());
            let hi = keys.partition_point(|k| k.as_ref() < end.as_str());
            // The key itself sorts before its descendants.
            (find(&self.key), lo..hi)
        };
        own.into_iter().chain(range)
    }
}

/// One change to a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Put { kv: KeyValue, prev: Option<KeyValue> },
    Delete { key: String, mod_revision: u64, prev: Option<KeyValue> },
}

impl Event {
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { key, .. } => key,
        }
    }

    /// Roughly the bytes the event takes on the wire (for page budgets).
    pub fn weight(&self) -> usize {
        let kv = |kv: &KeyValue| kv.key.len() + kv.value.len() * 4 / 3 + 128;
        match self {
            Event::Put { kv: k, prev } => kv(k) + prev.as_ref().map_or(0, kv),
            Event::Delete { key, prev, .. } => key.len() + 64 + prev.as_ref().map_or(0, kv),
        }
    }
}

/// Where the next change to selected keys is, from a revision on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextChange {
    /// At this revision.
    At(u64),
    /// None up to and including this revision (the scan stopped there: the current
    /// revision, or the end of its budget).
    NoneThrough(u64),
}

/// A page of one revision's events on selected keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsPage {
    pub events: Vec<Event>,
    /// Where the next page of the same revision starts; `None`: the revision is complete.
    pub next: Option<usize>,
}

impl Store {
    /// The keys revision `rev` changed, sorted; `None` when the history no longer (or
    /// not yet) holds it.
    pub fn changed_keys(&self, rev: u64) -> Option<&[Box<str>]> {
        self.history().keys(rev)
    }

    /// The lowest revision whose changed keys [`Self::changed_keys`] knows.
    pub fn history_first(&self) -> u64 {
        self.history().first()
    }

    /// The revisions from `from` to `to` (inclusive) that changed keys, with their keys.
    pub fn changes(&self, from: u64, to: u64) -> impl Iterator<Item = (u64, &[Box<str>])> + '_ {
        self.history().range(from, to)
    }

    fn check_history(&self, from: u64) -> Result<(), ReadError> {
        if from < self.history().first() || from < self.compact_revision() {
            return Err(ReadError::Compacted { compact_revision: self.compact_revision() });
        }
        Ok(())
    }

    /// The first revision at or after `from` that changed a selected key, looking at no
    /// more than `max_scan` revisions (one key is found at once, whatever the budget).
    /// `Compacted` when `from` is below the floor.
    pub fn next_change(&self, sel: &Selector, from: u64, max_scan: u64) -> Result<NextChange, ReadError> {
        self.check_history(from)?;
        let head = self.revision();
        if from > head {
            return Ok(NextChange::NoneThrough(head));
        }
        if !sel.recursive {
            let Some(vs) = self.versions(&sel.key) else { return Ok(NextChange::NoneThrough(head)) };
            let i = vs.partition_point(|v| v.mod_revision < from);
            return Ok(match vs.get(i) {
                Some(v) => NextChange::At(v.mod_revision),
                None => NextChange::NoneThrough(head),
            });
        }
        // At most `max_scan` revisions that changed keys are looked at.
        let mut scanned = 0;
        for (rev, keys) in self.history().range(from, head) {
            if sel.positions(keys).next().is_some() {
                return Ok(NextChange::At(rev));
            }
            scanned += 1;
            if scanned >= max_scan.max(1) && rev < head {
                return Ok(NextChange::NoneThrough(rev));
            }
        }
        Ok(NextChange::NoneThrough(head))
    }

    /// The events of revision `rev` on selected keys, from position `start` of the
    /// revision (0 for the first page), until the page weighs `max_bytes` (at least one
    /// key's events are returned). With `prev_kv`, each event carries the key's previous
    /// value when it had one that is still held.
    pub fn events(
        &self,
        sel: &Selector,
        rev: u64,
        start: usize,
        max_bytes: usize,
        prev_kv: bool,
    ) -> Result<EventsPage, ReadError> {
        self.check_history(rev)?;
        if rev > self.revision() {
            return Err(ReadError::FutureRevision { revision: self.revision() });
        }
        let keys = self.history().keys(rev).unwrap_or(&[]);
        let mut events = Vec::new();
        let mut bytes = 0;
        for pos in sel.positions(keys).filter(|&p| p >= start) {
            if bytes >= max_bytes && !events.is_empty() {
                return Ok(EventsPage { events, next: Some(pos) });
            }
            let key = keys[pos].as_ref();
            let vs = self.versions(key).unwrap_or(&[]);
            let first = vs.partition_point(|v| v.mod_revision < rev);
            for j in first..vs.len() {
                let v = &vs[j];
                if v.mod_revision != rev {
                    break;
                }
                let prev = if prev_kv { j.checked_sub(1).and_then(|p| to_kv(key, &vs[p])) } else { None };
                let event = match to_kv(key, v) {
                    Some(kv) => Event::Put { kv, prev },
                    None => Event::Delete { key: key.to_string(), mod_revision: rev, prev },
                };
                bytes += event.weight();
                events.push(event);
            }
        }
        Ok(EventsPage { events, next: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(key: &str, recursive: bool) -> Selector {
        Selector { key: key.into(), recursive }
    }

    /// A store with: 1 put /a, 2 put /a/b + /a.c + /a/d (one revision), 3 put /b,
    /// 4 delete /a recursively, 5 put /a/b again.
    fn store() -> Store {
        let mut s = Store::new();
        s.write().put("/a", b"1".to_vec(), None);
        {
            let mut w = s.write();
            w.put("/a/d", b"d".to_vec(), None);
            w.put("/a.c", b"c".to_vec(), None);
            w.put("/a/b", b"b".to_vec(), Some(7));
        }
        s.write().put("/b", b"x".to_vec(), None);
        s.write().delete("/a", true);
        s.write().put("/a/b", b"b2".to_vec(), None);
        s
    }

    fn keys(page: &EventsPage) -> Vec<(&str, bool)> {
        page.events.iter().map(|e| (e.key(), matches!(e, Event::Put { .. }))).collect()
    }

    #[test]
    fn selectors() {
        let r = sel("/a", true);
        assert!(r.matches("/a") && r.matches("/a/b") && r.matches("/a/b/c"));
        assert!(!r.matches("/a.c") && !r.matches("/ab") && !r.matches("/"));
        assert!(sel("/", true).matches("/x"));
        assert!(sel("/a", false).matches("/a") && !sel("/a", false).matches("/a/b"));
    }

    #[test]
    fn next_change_finds_selected_keys_only() {
        let s = store();
        assert_eq!(s.next_change(&sel("/a", false), 1, 10), Ok(NextChange::At(1)));
        assert_eq!(s.next_change(&sel("/a", false), 2, 10), Ok(NextChange::At(4)));
        assert_eq!(s.next_change(&sel("/a", false), 5, 10), Ok(NextChange::NoneThrough(5)));
        assert_eq!(s.next_change(&sel("/a", true), 3, 10), Ok(NextChange::At(4)));
        assert_eq!(s.next_change(&sel("/a.c", true), 3, 10), Ok(NextChange::NoneThrough(5)));
        assert_eq!(s.next_change(&sel("/b", true), 1, 1), Ok(NextChange::NoneThrough(1)));
        assert_eq!(s.next_change(&sel("/b", true), 2, 2), Ok(NextChange::At(3)));
        assert_eq!(s.next_change(&sel("/", true), 6, 10), Ok(NextChange::NoneThrough(5)));
        assert_eq!(s.next_change(&sel("/nothing", false), 1, 10), Ok(NextChange::NoneThrough(5)));
    }

    #[test]
    fn a_revision_in_key_order_and_in_pages() {
        let s = store();
        let all = s.events(&sel("/", true), 2, 0, usize::MAX, false).unwrap();
        assert_eq!(keys(&all), vec![("/a.c", true), ("/a/b", true), ("/a/d", true)]);
        assert_eq!(all.next, None);
        let sub = s.events(&sel("/a", true), 2, 0, usize::MAX, false).unwrap();
        assert_eq!(keys(&sub), vec![("/a/b", true), ("/a/d", true)]);
        // The recursive delete: the key itself and its subtree, not /a.c.
        let del = s.events(&sel("/a", true), 4, 0, usize::MAX, true).unwrap();
        assert_eq!(keys(&del), vec![("/a", false), ("/a/b", false), ("/a/d", false)]);
        match &del.events[1] {
            Event::Delete { mod_revision: 4, prev: Some(p), .. } => {
                assert_eq!((p.value.as_slice(), p.lease), (&b"b"[..], Some(7)))
            }
            e => panic!("{e:?}"),
        }
        // One event a page: the pages add up to the whole revision.
        let mut got = Vec::new();
        let mut at = 0;
        loop {
            let page = s.events(&sel("/a", true), 4, at, 1, false).unwrap();
            assert_eq!(page.events.len(), 1);
            got.extend(page.events);
            match page.next {
                Some(n) => at = n,
                None => break,
            }
        }
        assert_eq!(got, s.events(&sel("/a", true), 4, 0, usize::MAX, false).unwrap().events);
        // A put after a delete has no previous value; one after a put has.
        let again = s.events(&sel("/a/b", false), 5, 0, usize::MAX, true).unwrap();
        assert!(matches!(&again.events[..], [Event::Put { prev: None, .. }]));
        assert!(s.events(&sel("/a/b", false), 3, 0, usize::MAX, true).unwrap().events.is_empty());
        assert_eq!(
            s.events(&sel("/a", false), 6, 0, 1, false),
            Err(ReadError::FutureRevision { revision: 5 })
        );
    }

    #[test]
    fn compaction_keeps_the_floor_revision_whole() {
        let mut s = store();
        assert!(s.compact(4));
        let c = ReadError::Compacted { compact_revision: 4 };
        assert_eq!(s.next_change(&sel("/a", true), 3, 10), Err(c.clone()));
        assert_eq!(s.events(&sel("/a", true), 3, 0, usize::MAX, false), Err(c));
        // The deletes at the floor are all still there (their previous values are not).
        let del = s.events(&sel("/a", true), 4, 0, usize::MAX, true).unwrap();
        assert_eq!(keys(&del), vec![("/a", false), ("/a/b", false), ("/a/d", false)]);
        assert_eq!(s.next_change(&sel("/a", false), 4, 10), Ok(NextChange::At(4)));
        // A store loaded from its image reads the same.
        let loaded: Store = serde_json::from_slice(&serde_json::to_vec(&s).unwrap()).unwrap();
        assert_eq!(loaded, s);
        for rev in 4..=5 {
            assert_eq!(
                loaded.events(&sel("/", true), rev, 0, usize::MAX, true),
                s.events(&sel("/", true), rev, 0, usize::MAX, true)
            );
        }
    }

    #[test]
    fn a_damaged_image_is_refused() {
        let s = store();
        let mut image: serde_json::Value = serde_json::to_value(&s).unwrap();
        image["compact_revision"] = 9.into();
        assert!(serde_json::from_value::<Store>(image).is_err());
        let mut image: serde_json::Value = serde_json::to_value(&s).unwrap();
        image["keys"]["/b"] = serde_json::json!([]);
        assert!(serde_json::from_value::<Store>(image).is_err());
        let mut image: serde_json::Value = serde_json::to_value(&s).unwrap();
        image["revision"] = 2.into();
        assert!(serde_json::from_value::<Store>(image).is_err());
        // Revisions no version accounts for are those of lock and election changes: the
        // index holds entries only for revisions that changed keys, so it stays small.
        let mut image: serde_json::Value = serde_json::to_value(&s).unwrap();
        image["revision"] = (1u64 << 50).into();
        let loaded = serde_json::from_value::<Store>(image).unwrap();
        assert_eq!(loaded.changes(1, u64::MAX).count(), 5);
        assert_eq!(loaded.next_change(&sel("/", true), 6, 10), Ok(NextChange::NoneThrough(1 << 50)));
    }
}
