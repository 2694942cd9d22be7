//! The lock hub: which requests wait on which lock owners (an acquire or a campaign
//! waiting for its grant) and which observe which elections, and the task that wakes them
//! after every applied batch that concerned them.
//!
//! Like the watch hub it holds no queues: a waiter has a wake-up and reads what happened
//! from the applied state itself. The state's journal says which owners each revision
//! granted, removed or changed, so one hash probe per event wakes exactly the requests
//! concerned, however many wait. When the journal does not reach back to the last
//! dispatched revision (a snapshot was installed, or the node fell far behind) everyone
//! is woken once and looks for themselves; a spurious wake-up costs a look, never an event.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::Notify;

use super::Node;
use crate::store::Kind;

/// What a request waits on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Subject {
    /// An owner's grant or removal.
    Owner(String),
    /// Any change to a lock's or an election's holders.
    Name(Kind, String),
}

/// The requests waiting, by subject.
#[derive(Default)]
pub(super) struct LockHub {
    registry: Mutex<HashMap<Subject, Vec<Arc<Notify>>>>,
    /// The last revision dispatched.
    dispatched: AtomicU64,
}

/// A request's place in the hub; dropping it leaves.
pub(super) struct LockRegistration {
    hub: Weak<LockHub>,
    subject: Subject,
    pub notify: Arc<Notify>,
}

impl Drop for LockRegistration {
    fn drop(&mut self) {
        let Some(hub) = self.hub.upgrade() else { return };
        let mut reg = hub.registry.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(list) = reg.get_mut(&self.subject) {
            list.retain(|n| !Arc::ptr_eq(n, &self.notify));
            if list.is_empty() {
                reg.remove(&self.subject);
            }
        }
    }
}

impl LockHub {
    fn register(self: &Arc<Self>, subject: Subject) -> LockRegistration {
        let notify = Arc::new(Notify::new());
        let mut reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        reg.entry(subject.clone()).or_default().push(notify.clone());
        LockRegistration { hub: Arc::downgrade(self), subject, notify }
    }

    /// Wakes on every grant, removal or change of `owner`.
    pub fn watch_owner(self: &Arc<Self>, owner: &str) -> LockRegistration {
        self.register(Subject::Owner(owner.to_string()))
    }

    /// Wakes on every change to the holders of the lock or election `name`.
    pub fn watch_name(self: &Arc<Self>, kind: Kind, name: &str) -> LockRegistration {
        self.register(Subject::Name(kind, name.to_string()))
    }

    /// Wakes the requests concerned by what revisions after the last dispatched one up to
    /// `head` did.
    fn dispatch(&self, node: &Node, head: u64) {
        let after = self.dispatched.load(Ordering::Relaxed);
        if head <= after {
            return;
        }
        {
            let reg = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            if !reg.is_empty() {
                let applied = node.replica.applied();
                match applied.state.locks().events_after(after) {
                    Some(events) => {
                        let wake =
                            |s: &Subject| reg.get(s).into_iter().flatten().for_each(|n| n.notify_one());
                        for e in events {
                            wake(&Subject::Owner(e.owner.clone()));
                            wake(&Subject::Name(e.kind, e.name.clone()));
                        }
                    }
                    None => reg.values().flatten().for_each(|n| n.notify_one()),
                };
            }
        }
        self.dispatched.store(head, Ordering::Release);
    }

    /// Dispatches every applied batch until the node is gone.
    pub async fn run(node: Weak<Node>) {
        let mut position = {
            let Some(node) = node.upgrade() else { return };
            node.lock_hub.dispatched.store(node.applied_revision(), Ordering::Release);
            node.replica.applied_position()
        };
        while position.changed().await.is_ok() {
            let head = position.borrow_and_update().revision;
            let Some(node) = node.upgrade() else { return };
            node.lock_hub.dispatch(&node, head);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn leaving_drops_the_registration() {
        let hub = Arc::new(LockHub::default());
        let a = hub.watch_owner("o1");
        let b = hub.watch_owner("o1");
        let _c = hub.watch_name(Kind::Election, "e");
        assert_eq!(hub.registry.lock().unwrap().len(), 2);
        drop(a);
        assert_eq!(hub.registry.lock().unwrap()[&Subject::Owner("o1".into())].len(), 1);
        drop(b);
        assert!(!hub.registry.lock().unwrap().contains_key(&Subject::Owner("o1".into())));
    }
}
