//! Multi-version key space: every key keeps its versions in revision order, so any
//! revision at or above the compaction floor can be read exactly as it was.
//!
//! Invariants:
//! - `revision` is the store's logical clock; it only grows, by one per applied change
//!   (a `WriteTxn`: every key one command changes lands at the same revision).
//! - each key's version list is sorted by `mod_revision`, and a tombstone (`value: None`)
//!   ends an incarnation; a key with no versions is never kept.
//! - reads never change anything.
//!
//! The key map is a persistent B-tree (`imbl::OrdMap`): cloning the store is O(1) and
//! shares structure, so a snapshot can be serialised from a clone while writes go on.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::history::History;
use super::key;
use super::kv::KeyValue;

/// One version of a key: a put (value) or a delete (tombstone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Version {
    pub mod_revision: u64,
    pub create_revision: u64,
    pub version: u64,
    #[serde(with = "super::bytes_b64::option")]
    pub value: Option<Vec<u8>>,
    pub lease: Option<u64>,
}

/// Why a read could not be answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// The revision asked for is below the compaction floor.
    Compacted { compact_revision: u64 },
    /// The revision asked for has not happened yet.
    FutureRevision { revision: u64 },
}

/// Options of a recursive listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListOptions {
    /// Revision to read at; `None` = the current one.
    pub revision: Option<u64>,
    /// Only keys strictly greater than this one (the paging cursor).
    pub after: Option<String>,
    /// At most this many keys in the page.
    pub limit: usize,
    /// Stop adding keys once the page holds this many key + value bytes (at least one key
    /// is always returned, so a page can exceed it by one value).
    pub max_bytes: usize,
    /// Leave values out.
    pub keys_only: bool,
}

/// One page of a recursive listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// The revision the page reflects.
    pub revision: u64,
    pub kvs: Vec<KeyValue>,
    /// Keys in the whole range at that revision (not only this page).
    pub count: u64,
    /// More keys follow the last one of this page.
    pub more: bool,
}

/// One direct child of a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Child {
    pub name: String,
    pub key: String,
    /// Whether any key exists below this child.
    pub has_children: bool,
    /// The child's own key-value, if the child path is itself a key.
    pub kv: Option<KeyValue>,
}

/// One page of a children listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildrenPage {
    pub revision: u64,
    pub children: Vec<Child>,
    pub more: bool,
}

/// The multi-version key space.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "StoreImage")]
pub struct Store {
    keys: imbl::OrdMap<String, Vec<Version>>,
    revision: u64,
    compact_revision: u64,
    /// Bytes of keys and values held over all versions (for the size quota).
    bytes: u64,
    /// Keys that exist at the current revision.
    live: u64,
    /// The last sequence number handed out under each parent (sequential keys); never
    /// reset, so a number is never reused, even after its key was deleted.
    #[serde(default)]
    sequences: imbl::OrdMap<String, u64>,
    /// The keys each lease owns now (a key belongs to the lease of its current version).
    #[serde(default)]
    lease_keys: imbl::OrdMap<u64, imbl::OrdSet<String>>,
    /// Which keys each revision from the floor on changed (derived from `keys`).
    #[serde(skip)]
    history: History,
}

/// A store as serialised: everything but what is derived from it.
#[derive(Deserialize)]
struct StoreImage {
    keys: imbl::OrdMap<String, Vec<Version>>,
    revision: u64,
    compact_revision: u64,
    bytes: u64,
    live: u64,
    #[serde(default)]
    sequences: imbl::OrdMap<String, u64>,
    #[serde(default)]
    lease_keys: imbl::OrdMap<u64, imbl::OrdSet<String>>,
}

impl TryFrom<StoreImage> for Store {
    type Error = String;

    /// Checks what the derived index relies on, then rebuilds it: a damaged image is
    /// refused, never half-read.
    fn try_from(s: StoreImage) -> Result<Store, String> {
        if s.compact_revision > s.revision {
            return Err(format!(
                "compact revision {} is above the revision {}",
                s.compact_revision, s.revision
            ));
        }
        for (k, vs) in &s.keys {
            if vs.is_empty() {
                return Err(format!("key {k:?} has no versions"));
            }
            if vs.windows(2).any(|w| w[0].mod_revision > w[1].mod_revision)
                || vs.last().is_some_and(|v| v.mod_revision > s.revision)
            {
                return Err(format!("the versions of key {k:?} are out of order or ahead of the store"));
            }
        }
        // The index holds an entry per revision that changed a key, so it is bounded by
        // the versions held, whatever revision the image claims.
        let history = History::rebuild(
            s.compact_revision,
            s.revision,
            s.keys.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (v.mod_revision, k.as_str()))),
        );
        Ok(Store {
            keys: s.keys,
            revision: s.revision,
            compact_revision: s.compact_revision,
            bytes: s.bytes,
            live: s.live,
            sequences: s.sequences,
            lease_keys: s.lease_keys,
            history,
        })
    }
}

/// The name width of a sequential key: every u64 fits, and names sort like numbers.
pub const SEQUENCE_DIGITS: usize = 20;

/// The key of sequence number `n` under `parent`.
pub fn sequential_key(parent: &str, n: u64) -> String {
    if key::is_root(parent) {
        format!("/{n:020}")
    } else {
        format!("{parent}/{n:020}")
    }
}

/// What a reader sees of `v`, a version of `key` (nothing for a delete).
pub(super) fn to_kv(key: &str, v: &Version) -> Option<KeyValue> {
    v.value.as_ref().map(|value| KeyValue {
        key: key.to_string(),
        value: value.clone(),
        create_revision: v.create_revision,
        mod_revision: v.mod_revision,
        version: v.version,
        lease: v.lease,
    })
}

/// How many of a key's oldest versions compaction to `floor` drops: every version older
/// than the one a read at the floor sees. That one stays when it holds a value, and when it
/// is a delete at the floor itself (so a history read, or a watch resuming, at the floor
/// still sees the delete); an older delete goes with everything before it.
fn droppable(versions: &[Version], floor: u64) -> usize {
    let upto = versions.partition_point(|v| v.mod_revision <= floor);
    match upto.checked_sub(1).map(|i| &versions[i]) {
        Some(v) if v.value.is_some() || v.mod_revision == floor => upto - 1,
        _ => upto,
    }
}

/// The version of a key visible at `rev`, if the key existed then.
fn visible_at(versions: &[Version], rev: u64) -> Option<&Version> {
    let i = versions.partition_point(|v| v.mod_revision <= rev);
    if i == 0 {
        return None;
    }
    let v = &versions[i - 1];
    v.value.as_ref().map(|_| v)
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current revision: the number of changes applied so far.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Revisions below this one can no longer be read.
    pub fn compact_revision(&self) -> u64 {
        self.compact_revision
    }

    /// Bytes of keys and values held over all versions.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Keys that exist now.
    pub fn live_keys(&self) -> u64 {
        self.live
    }

    /// Every version `key` holds, oldest first.
    pub(super) fn versions(&self, key: &str) -> Option<&[Version]> {
        self.keys.get(key).map(Vec::as_slice)
    }

    /// The revision index (which keys each revision changed).
    pub(super) fn history(&self) -> &History {
        &self.history
    }

    fn check_revision(&self, rev: Option<u64>) -> Result<u64, ReadError> {
        match rev {
            None => Ok(self.revision),
            Some(r) if r > self.revision => Err(ReadError::FutureRevision { revision: self.revision }),
            Some(r) if r < self.compact_revision => {
                Err(ReadError::Compacted { compact_revision: self.compact_revision })
            }
            Some(r) => Ok(r),
        }
    }

    /// One key at `rev` (default: now).
    pub fn get(&self, key: &str, rev: Option<u64>) -> Result<(u64, Option<KeyValue>), ReadError> {
        let rev = self.check_revision(rev)?;
        let kv = self.keys.get(key).and_then(|vs| visible_at(vs, rev)).and_then(|v| to_kv(key, v));
        Ok((rev, kv))
    }

    /// The current key-value of `key`, if it exists.
    pub fn current(&self, key: &str) -> Option<KeyValue> {
        self.keys.get(key).and_then(|vs| vs.last()).and_then(|v| to_kv(key, v))
    }

    /// Iterates the stored keys of `key` itself and everything below it, from `start`.
    fn subtree<'a>(
        &'a self,
        key: &'a str,
        after: Option<&'a str>,
    ) -> impl Iterator<Item = (&'a String, &'a Vec<Version>)> + 'a {
        let prefix = key::child_prefix(key);
        let end = key::prefix_end(&prefix);
        let own = if key::is_root(key) { None } else { self.keys.get_key_value(key) };
        let own = own.filter(|(k, _)| after.is_none_or(|a| k.as_str() > a));
        let lower = match after {
            // A cursor at or past the end of the range: nothing is left.
            Some(a) if a >= end.as_str() => Bound::Included(end.clone()),
            Some(a) if a >= prefix.as_str() => Bound::Excluded(a.to_string()),
            _ => Bound::Included(prefix),
        };
        let below = self.keys.range::<_, String>((lower, Bound::Excluded(end)));
        // The key itself sorts before its descendants, but keys such as `/a.b` sort
        // between `/a` and `/a/`; they are outside the range above, so order holds.
        own.into_iter().chain(below)
    }

    /// `key` and everything below it, sorted, paged.
    pub fn list(&self, key: &str, opts: &ListOptions) -> Result<ListPage, ReadError> {
        let rev = self.check_revision(opts.revision)?;
        let (kvs, more) = self.list_at(key, rev, opts);
        let count = self.count(key, Some(rev))?;
        Ok(ListPage { revision: rev, kvs, count, more })
    }

    /// One page of `key` and its subtree at `rev` (a checked revision), and whether more
    /// keys follow.
    fn list_at(&self, key: &str, rev: u64, opts: &ListOptions) -> (Vec<KeyValue>, bool) {
        let mut kvs = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for (k, vs) in self.subtree(key, opts.after.as_deref()) {
            let Some(v) = visible_at(vs, rev) else { continue };
            if kvs.len() >= opts.limit || (bytes >= opts.max_bytes && !kvs.is_empty()) {
                more = true;
                break;
            }
            let mut kv = to_kv(k, v).expect("visible versions have values");
            if opts.keys_only {
                kv.value.clear();
            }
            bytes += kv.key.len() + kv.value.len();
            kvs.push(kv);
        }
        (kvs, more)
    }

    /// How many keys `key` and its subtree hold at `rev`.
    pub fn count(&self, key: &str, rev: Option<u64>) -> Result<u64, ReadError> {
        let rev = self.check_revision(rev)?;
        if rev == self.revision && key::is_root(key) {
            return Ok(self.live);
        }
        Ok(self.subtree(key, None).filter(|(_, vs)| visible_at(vs, rev).is_some()).count() as u64)
    }

    /// The direct children of `key` at `rev`, sorted by name, after the name `after`.
    pub fn children(
        &self,
        key: &str,
        rev: Option<u64>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ChildrenPage, ReadError> {
        let rev = self.check_revision(rev)?;
        let prefix = key::child_prefix(key);
        let end = key::prefix_end(&prefix);
        let start = match after {
            // Children named after `after` start at prefix + after + something greater.
            Some(a) => Bound::Excluded(format!("{prefix}{a}")),
            None => Bound::Included(prefix.clone()),
        };
        let mut found: BTreeMap<String, Child> = BTreeMap::new();
        let mut cursor = start;
        'scan: loop {
            let mut iter = self.keys.range::<_, String>((cursor.clone(), Bound::Excluded(end.clone())));
            loop {
                let Some((k, vs)) = iter.next() else { break 'scan };
                if visible_at(vs, rev).is_none() {
                    continue;
                }
                let name = key::child_name(&prefix, k);
                if after.is_some_and(|a| name <= a) {
                    if k.len() > prefix.len() + name.len() {
                        // Below a child that is already paged past: skip its subtree.
                        cursor = Bound::Included(key::prefix_end(&format!("{prefix}{name}/")));
                        continue 'scan;
                    }
                    continue;
                }
                // No early stop: a later key can still add a smaller name (`/p/a/x`
                // sorts after `/p/a.b`), so the whole range is scanned, one seek per
                // child that has descendants.
                // Only the smallest `limit + 1` names are kept (the page and whether more
                // follow): a name pushed out can never come back into them.
                if found.len() > limit && found.last_key_value().is_some_and(|(last, _)| last.as_str() < name)
                {
                    if k.len() > prefix.len() + name.len() {
                        cursor = Bound::Included(key::prefix_end(&format!("{prefix}{name}/")));
                        continue 'scan;
                    }
                    continue;
                }
                let child_key = format!("{prefix}{name}");
                let entry = found.entry(name.to_string()).or_insert_with(|| Child {
                    name: name.to_string(),
                    key: child_key.clone(),
                    has_children: false,
                    kv: None,
                });
                let below = k.len() > child_key.len();
                if below {
                    entry.has_children = true;
                } else {
                    entry.kv = visible_at(vs, rev).and_then(|v| to_kv(k, v));
                }
                if found.len() > limit.saturating_add(1) {
                    found.pop_last();
                }
                if below {
                    // Skip the rest of this child's subtree.
                    cursor = Bound::Included(key::prefix_end(&format!("{child_key}/")));
                    continue 'scan;
                }
            }
        }
        let more = found.len() > limit;
        let children = found.into_values().take(limit).collect();
        Ok(ChildrenPage { revision: rev, children, more })
    }

    /// The keys lease `id` owns now, in key order.
    pub fn lease_keys(&self, id: u64) -> impl Iterator<Item = &String> + '_ {
        self.lease_keys.get(&id).into_iter().flat_map(|keys| keys.iter())
    }

    /// How many keys lease `id` owns now.
    pub fn lease_key_count(&self, id: u64) -> usize {
        self.lease_keys.get(&id).map_or(0, imbl::OrdSet::len)
    }

    /// Moves `key` from the lease it belonged to (`from`) to `to`.
    fn attach(&mut self, key: &str, from: Option<u64>, to: Option<u64>) {
        if from == to {
            return;
        }
        if let Some(from) = from {
            if let Some(keys) = self.lease_keys.get_mut(&from) {
                keys.remove(key);
                if keys.is_empty() {
                    self.lease_keys.remove(&from);
                }
            }
        }
        if let Some(to) = to {
            self.lease_keys.entry(to).or_default().insert(key.to_string());
        }
    }

    /// The last sequence number handed out under `parent` (0: none yet).
    pub fn sequence(&self, parent: &str) -> u64 {
        self.sequences.get(parent).copied().unwrap_or(0)
    }

    /// Drops the history below `revision`: what a read at `revision` or later sees stays
    /// exactly as it was (see `droppable` for which versions stay). Takes no revision of its own. Returns whether the
    /// floor moved (it never moves down, nor past the current revision).
    pub fn compact(&mut self, revision: u64) -> bool {
        let revision = revision.min(self.revision);
        if revision <= self.compact_revision {
            return false;
        }
        self.compact_revision = revision;
        self.history.compact(revision);
        let mut gone: Vec<String> = Vec::new();
        let mut freed = 0u64;
        // Only keys with an old version to drop are touched (a write through the shared
        // map copies the path to the key).
        let stale: Vec<String> =
            self.keys.iter().filter(|(_, vs)| droppable(vs, revision) > 0).map(|(k, _)| k.clone()).collect();
        for k in stale {
            let Some(vs) = self.keys.get_mut(&k) else { continue };
            let n = droppable(vs, revision);
            for v in vs.drain(..n) {
                freed += (k.len() + v.value.as_ref().map_or(0, Vec::len)) as u64;
            }
            if vs.capacity() > 2 * vs.len() + 4 {
                vs.shrink_to_fit();
            }
            if vs.is_empty() {
                gone.push(k);
            }
        }
        for k in gone {
            self.keys.remove(&k);
        }
        self.bytes = self.bytes.saturating_sub(freed);
        true
    }

    /// Takes the next revision for a change that is not to a key (a lock's or an
    /// election's); returns it.
    pub(crate) fn bump(&mut self) -> u64 {
        self.write().mark();
        self.revision
    }

    /// Starts a write transaction: every change made through it lands at one revision,
    /// the next one, taken at the first change (a transaction that changes nothing leaves
    /// the revision as it is).
    pub(crate) fn write(&mut self) -> WriteTxn<'_> {
        let rev = self.revision + 1;
        WriteTxn { store: self, rev, changed: false }
    }
}

/// A write transaction over the store (etcd's `kvstore_txn` is the model): reads inside it
/// see its own changes, and all of its changes share one revision.
pub(crate) struct WriteTxn<'a> {
    store: &'a mut Store,
    /// The revision the changes get.
    rev: u64,
    /// Whether anything changed (then `store.revision == rev`).
    changed: bool,
}

impl WriteTxn<'_> {
    /// Takes the transaction's revision on the first change.
    fn change(&mut self) {
        if !self.changed {
            self.changed = true;
            self.store.revision = self.rev;
        }
    }

    /// Takes the transaction's revision for a change that is not to a key (a lock's or an
    /// election's, which the state root applies alongside).
    pub fn mark(&mut self) {
        self.change();
    }

    /// The key as it is now, this transaction's changes included.
    pub fn current(&self, key: &str) -> Option<KeyValue> {
        self.store.current(key)
    }

    /// Writes `value` under `key`; returns the new and previous kv.
    pub fn put(&mut self, key: &str, value: Vec<u8>, lease: Option<u64>) -> (KeyValue, Option<KeyValue>) {
        self.change();
        let rev = self.rev;
        let store = &mut *self.store;
        let versions = store.keys.entry(key.to_string()).or_default();
        let prev = versions.last().and_then(|v| to_kv(key, v));
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (rev, 1),
        };
        if prev.is_none() {
            store.live += 1;
        }
        store.bytes += (key.len() + value.len()) as u64;
        versions.push(Version { mod_revision: rev, create_revision, version, value: Some(value), lease });
        let kv = to_kv(key, versions.last().expect("just pushed")).expect("has a value");
        store.attach(key, prev.as_ref().and_then(|p| p.lease), lease);
        store.history.touch(rev, key);
        (kv, prev)
    }

    /// Creates the next sequential child of `parent` (skipping names that exist already,
    /// so it always creates a key); returns it.
    pub fn put_sequential(&mut self, parent: &str, value: Vec<u8>, lease: Option<u64>) -> KeyValue {
        let mut n = self.store.sequence(parent);
        let key = loop {
            n = n.saturating_add(1);
            let key = sequential_key(parent, n);
            if self.store.current(&key).is_none() || n == u64::MAX {
                break key;
            }
        };
        if !self.store.sequences.contains_key(parent) {
            self.store.bytes += (parent.len() + 8) as u64;
        }
        self.store.sequences.insert(parent.to_string(), n);
        self.put(&key, value, lease).0
    }

    /// One page of `key` and its subtree as it is now, this transaction's changes included.
    pub fn list_page(&self, key: &str, opts: &ListOptions) -> (Vec<KeyValue>, bool) {
        self.store.list_at(key, self.store.revision, opts)
    }

    /// Deletes `key` (and with `recursive` its whole subtree), if anything exists there;
    /// returns the deleted kvs (none: nothing changed).
    pub fn delete(&mut self, key: &str, recursive: bool) -> Vec<KeyValue> {
        let targets: Vec<KeyValue> = if recursive {
            self.store.subtree(key, None).filter_map(|(k, vs)| vs.last().and_then(|v| to_kv(k, v))).collect()
        } else {
            self.current(key).into_iter().collect()
        };
        if targets.is_empty() {
            return targets;
        }
        self.change();
        let rev = self.rev;
        let store = &mut *self.store;
        for kv in &targets {
            let versions = store.keys.get_mut(&kv.key).expect("target exists");
            versions.push(Version {
                mod_revision: rev,
                create_revision: 0,
                version: 0,
                value: None,
                lease: None,
            });
            store.bytes += kv.key.len() as u64;
            store.live -= 1;
            store.attach(&kv.key, kv.lease, None);
            store.history.touch(rev, &kv.key);
        }
        targets
    }
}

#[cfg(test)]
#[path = "mvcc_tests.rs"]
mod tests;
