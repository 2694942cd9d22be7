//! The watch hub: which watchers (streams and long-polls) select which keys, and the task
//! that tells them, after every applied batch, that a key they select changed.
//!
//! A watcher holds no queue: only a [`Slot`] with the lowest revision it has not yet read
//! that changed a key it selects (`pending`, 0 = none) and a wake-up. It reads the events
//! themselves from the shared history, at its own pace (see `watch.rs`); a slow or stalled
//! one never holds up applying nor the other watchers, and costs the same memory however
//! far behind it is.
//!
//! Invariants:
//! - revisions are dispatched in order, each once; `dispatched` is published (release)
//!   only after every slot selecting a key of those revisions was flagged, so a watcher
//!   that reads `dispatched` and then finds its slot unflagged has been told of every
//!   change up to it;
//! - a flag only lowers `pending` from 0: the first change since the watcher last took its
//!   flag is the one it holds (changes are dispatched in revision order);
//! - revisions the index no longer holds (a snapshot installed past them) flag every
//!   slot, so nobody misses a change: each finds out from the history what it needs.
//!
//! The lookup per changed key costs one hash probe per path prefix (`/a`, `/a/b`, ...),
//! whatever the number of watchers; a revision that changed more keys than there are
//! watchers is matched watcher by watcher instead.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::Node;
use crate::store::events::Selector;
use crate::store::key;

/// Revisions dispatched per hold of the state's read lock.
const DISPATCH_BATCH: u64 = 1024;

/// One watcher's mailbox: a flag and a wake-up, never a queue.
#[derive(Debug, Default)]
pub(super) struct Slot {
    /// The lowest revision changing a selected key since the watcher last took the flag
    /// (0: none).
    pending: AtomicU64,
    notify: Notify,
}

impl Slot {
    fn flag(&self, revision: u64) {
        if self.pending.compare_exchange(0, revision, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.notify.notify_one();
        }
    }

    /// Takes the flag: the lowest revision to read from, if any change came.
    pub fn take(&self) -> Option<u64> {
        match self.pending.swap(0, Ordering::AcqRel) {
            0 => None,
            r => Some(r),
        }
    }

    /// Whether a change came since the flag was last taken.
    pub fn flagged(&self) -> bool {
        self.pending.load(Ordering::Acquire) != 0
    }

    /// Resolves once a change comes (or came since the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

/// Who selects what: slots by the key they select, one map for single keys and one for
/// subtrees.
#[derive(Default)]
struct Registry {
    keys: HashMap<String, Vec<Arc<Slot>>>,
    subtrees: HashMap<String, Vec<Arc<Slot>>>,
}

impl Registry {
    fn map(&mut self, sel: &Selector) -> &mut HashMap<String, Vec<Arc<Slot>>> {
        if sel.recursive {
            &mut self.subtrees
        } else {
            &mut self.keys
        }
    }

    /// Flags every slot selecting `k`.
    fn flag_key(&self, k: &str, revision: u64) {
        let flag =
            |slots: Option<&Vec<Arc<Slot>>>| slots.into_iter().flatten().for_each(|s| s.flag(revision));
        flag(self.keys.get(k));
        if self.subtrees.is_empty() {
            return;
        }
        flag(self.subtrees.get(key::ROOT));
        // Every path prefix of `k` that ends before a `/`, then `k` itself.
        for (i, _) in k.match_indices('/').skip(1) {
            flag(self.subtrees.get(&k[..i]));
        }
        flag(self.subtrees.get(k));
    }

    fn all(&self) -> impl Iterator<Item = (&String, bool, &Arc<Slot>)> {
        let keys = self.keys.iter().flat_map(|(k, v)| v.iter().map(move |s| (k, false, s)));
        keys.chain(self.subtrees.iter().flat_map(|(k, v)| v.iter().map(move |s| (k, true, s))))
    }
}

/// The watchers of one node.
#[derive(Default)]
pub(super) struct WatchHub {
    registry: Mutex<Registry>,
    /// Watchers registered (streams and long-polls).
    count: AtomicUsize,
    /// The last revision dispatched to the slots.
    dispatched: AtomicU64,
    /// Set when the node shuts down: every watch ends.
    closed: tokio::sync::watch::Sender<bool>,
}

/// A watcher's place in the hub; leaving drops it from the registry.
pub(super) struct Registration {
    hub: Weak<WatchHub>,
    sel: Selector,
    pub slot: Arc<Slot>,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Registration {
    /// Resolves when the node shuts down.
    pub async fn closed(&mut self) {
        let _ = self.closed.wait_for(|c| *c).await;
    }

    /// The last revision dispatched (acquire: every flag it implies is visible).
    pub fn dispatched(&self) -> u64 {
        self.hub.upgrade().map_or(0, |h| h.dispatched.load(Ordering::Acquire))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else { return };
        let mut reg = hub.registry.lock().unwrap_or_else(|e| e.into_inner());
        let map = reg.map(&self.sel);
        if let Some(slots) = map.get_mut(&self.sel.key) {
            if let Some(i) = slots.iter().position(|s| Arc::ptr_eq(s, &self.slot)) {
                slots.swap_remove(i);
            }
            if slots.is_empty() {
                map.remove(&self.sel.key);
            }
        }
        hub.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A place among the watchers for a request that waits on something other than keys (a
/// lock wait, an election observer): it counts against the same limit.
pub(super) struct Seat {
    hub: Weak<WatchHub>,
    closed: tokio::sync::watch::Receiver<bool>,
}

impl Seat {
    /// Resolves when the node shuts down.
    pub async fn closed(&mut self) {
        let _ = self.closed.wait_for(|c| *c).await;
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.count.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl WatchHub {
    /// Takes a [`Seat`], unless `max` watchers are registered already.
    pub fn reserve(self: &Arc<Self>, max: usize) -> Option<Seat> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Seat { hub: Arc::downgrade(self), closed: self.closed.subscribe() })
    }

    /// Watchers registered now.
    pub fn watchers(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Registers a watcher of `sel`, unless `max` are registered already.
    pub fn register(self: &Arc<Self>, sel: Selector, max: usize) -> Option<Registration> {
        if self.count.fetch_add(1, Ordering::Relaxed) >= max {
            self.count.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        let slot = Arc::new(Slot::default());
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.map(&sel).entry(sel.key.clone()).or_default().push(slot.clone());
        Some(Registration { hub: Arc::downgrade(self), sel, slot, closed: self.closed.subscribe() })
    }

    /// Ends every watch (the node is shutting down).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Flags the slots selecting what revisions `dispatched + 1 ..= head` changed, in
    /// batches, then publishes `head` as dispatched.
    fn dispatch(&self, node: &Node, head: u64) {
        let mut from = self.dispatched.load(Ordering::Relaxed) + 1;
        let mut flagged_all = false;
        while from <= head {
            let to = head.min(from + DISPATCH_BATCH - 1);
            {
                let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
                let watchers = self.watchers();
                if watchers > 0 {
                    let applied = node.replica.applied();
                    let history = applied.state.kv();
                    let first = history.history_first();
                    if from < first && !flagged_all {
                        // Revisions the index no longer holds (a snapshot was installed
                        // past them, or compaction overtook this loop): everyone looks
                        // for themselves, once for the whole stretch.
                        reg.all().for_each(|(_, _, s)| s.flag(from));
                        flagged_all = true;
                    }
                    for (rev, keys) in history.changes(from.max(first), to) {
                        if keys.len() <= watchers {
                            keys.iter().for_each(|k| reg.flag_key(k, rev));
                        } else {
                            for (k, recursive, slot) in reg.all() {
                                if keys.iter().any(|x| Selector::selects(k, recursive, x)) {
                                    slot.flag(rev);
                                }
                            }
                        }
                    }
                }
            }
            self.dispatched.store(to, Ordering::Release);
            from = to + 1;
        }
    }

    /// Dispatches every applied batch until the node is gone.
    pub async fn run(node: Weak<Node>) {
        let mut position = {
            let Some(node) = node.upgrade() else { return };
            // Nothing before now concerns anyone: every watcher starts at or after it.
            let head = node.applied_revision();
            node.watches.dispatched.store(head, Ordering::Release);
            node.replica.applied_position()
        };
        while position.changed().await.is_ok() {
            let head = position.borrow_and_update().revision;
            let Some(node) = node.upgrade() else { return };
            node.watches.dispatch(&node, head);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(k: &str, recursive: bool) -> Selector {
        Selector { key: k.into(), recursive }
    }

    #[test]
    fn a_change_flags_exactly_the_watchers_selecting_it() {
        let hub = Arc::new(WatchHub::default());
        let regs: Vec<_> =
            [("/a/b", false), ("/a", true), ("/", true), ("/a/b", true), ("/a/bc", true), ("/a", false)]
                .into_iter()
                .map(|(k, r)| hub.register(sel(k, r), 100).unwrap())
                .collect();
        hub.registry.lock().unwrap().flag_key("/a/b", 7);
        let flagged: Vec<Option<u64>> = regs.iter().map(|r| r.slot.take()).collect();
        assert_eq!(flagged, vec![Some(7), Some(7), Some(7), Some(7), None, None]);
        // The first change since the flag was taken is the one kept.
        let reg = hub.registry.lock().unwrap();
        reg.flag_key("/a/b/c", 8);
        reg.flag_key("/a/b/c", 9);
        drop(reg);
        assert_eq!(regs[1].slot.take(), Some(8));
        assert_eq!(regs[0].slot.take(), None);
    }

    #[test]
    fn the_limit_counts_and_leaving_frees_a_place() {
        let hub = Arc::new(WatchHub::default());
        let a = hub.register(sel("/a", false), 2).unwrap();
        let _b = hub.register(sel("/a", false), 2).unwrap();
        assert!(hub.register(sel("/c", true), 2).is_none());
        assert_eq!(hub.watchers(), 2);
        drop(a);
        assert_eq!(hub.watchers(), 1);
        assert_eq!(hub.registry.lock().unwrap().keys["/a"].len(), 1);
        assert!(hub.register(sel("/c", true), 2).is_some());
    }
}
