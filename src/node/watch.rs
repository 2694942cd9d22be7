//! Watches and long-polls: cursors over the shared history of the applied state.
//!
//! A [`Watch`] is a cursor: the next revision it has to look at. It reads the history under
//! the state's read lock, one bounded step at a time (at most [`MAX_SCAN`] revisions, one
//! page of at most [`PAGE_BYTES`] of events), and only when its consumer asks for the
//! next frame, so a consumer that does not read holds nothing but its cursor. The hub
//! (`watch_hub.rs`) wakes it when a key it selects changes; it then reads from the lowest
//! revision it was told of.
//!
//! Guarantees (each a test): frames come in revision order, each revision once, its events
//! all in one message (a revision too big for one page is sent in parts of one message,
//! read from a pinned clone of the store, so compaction cannot cut it); nothing selected is
//! skipped; progress claims only revisions whose events were all delivered, and (unless the
//! watch is serializable) only after a quorum confirmed this node is current, so a node cut
//! off from the cluster goes silent rather than vouch for stale state; a cursor below the
//! compaction floor ends the watch with `Compacted`.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::reads::Consistency;
use super::watch_hub::Registration;
use super::Node;
use crate::error::{Error, Result};
use crate::store::events::{Event, NextChange, Selector};
use crate::store::{ReadError, Store};

/// Revisions a cursor looks at per hold of the read lock.
pub const MAX_SCAN: u64 = 4096;
/// Event bytes (roughly, as sent) per page read under the read lock.
pub const PAGE_BYTES: usize = 256 * 1024;
/// Progress intervals a watch may ask for.
pub const PROGRESS_MS: std::ops::RangeInclusive<u64> = 100..=3_600_000;
/// Longest a long-poll may wait.
pub const MAX_WAIT_MS: u64 = 600_000;

/// What to watch and how.
#[derive(Debug, Clone)]
pub struct WatchRequest {
    pub selector: Selector,
    /// The first revision to deliver; `None`: from now (the next revision).
    pub start: Option<u64>,
    /// Add each key's previous value.
    pub prev_kv: bool,
    /// Which event types to deliver.
    pub puts: bool,
    pub deletes: bool,
    /// How long the watch stays silent before it sends a progress frame.
    pub progress: Duration,
    /// `Linearizable`: the watch starts after every write acknowledged before it began.
    pub consistency: Consistency,
}

/// What a watch sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchFrame {
    /// Events of one revision: the whole message (`first` and `last`), or a part of it.
    Events { revision: u64, events: Vec<Event>, first: bool, last: bool },
    /// Every selected event up to and including `revision` has been sent.
    Progress { revision: u64 },
    /// The history the watch needs is below the floor; the watch ends.
    Compacted { compact_revision: u64 },
}

/// When a watch silent from now on sends its next progress message: after `every`, less up
/// to a tenth at random, so that watches opened (or confirmed) together do not all send
/// theirs in the same instant.
fn next_progress(every: Duration) -> Instant {
    use rand::Rng;
    Instant::now() + every.mul_f64(rand::thread_rng().gen_range(0.9..=1.0))
}

/// A revision being sent in parts, read from a clone of the store pinned for it.
struct Partial {
    store: Store,
    revision: u64,
    next: usize,
    /// Whether a part of its message was sent (so the message is open).
    opened: bool,
}

/// Where a watcher is in the history.
struct Cursor {
    reg: Registration,
    selector: Selector,
    /// The next revision to look at.
    scan_from: u64,
    /// Nothing selected until the head the cursor last looked at.
    caught_up: bool,
}

/// What the cursor found in one step.
enum Found {
    /// A selected change at this revision.
    At(u64),
    Nothing,
    Compacted(u64),
}

impl Cursor {
    /// Looks at most [`MAX_SCAN`] revisions ahead.
    fn step(&mut self, store: &Store) -> Found {
        match store.next_change(&self.selector, self.scan_from, MAX_SCAN) {
            Err(ReadError::Compacted { compact_revision }) => Found::Compacted(compact_revision),
            Err(ReadError::FutureRevision { .. }) => {
                self.caught_up = true;
                Found::Nothing
            }
            Ok(NextChange::At(rev)) => Found::At(rev),
            Ok(NextChange::NoneThrough(r)) => {
                self.scan_from = r + 1;
                self.caught_up = r >= store.revision();
                Found::Nothing
            }
        }
    }

    /// After a wake-up: where to look from.
    fn woken(&mut self) {
        if let Some(from) = self.reg.slot.take() {
            self.scan_from = self.scan_from.max(from);
            self.caught_up = false;
        }
    }
}

/// A watch stream; [`Watch::next`] gives its frames.
pub struct Watch {
    node: Arc<Node>,
    cursor: Cursor,
    prev_kv: bool,
    puts: bool,
    deletes: bool,
    progress: Duration,
    next_progress: Instant,
    /// Progress only once a quorum confirmed this node is current (the default).
    linearizable: bool,
    partial: Option<Partial>,
    /// A frame to send before anything else.
    queued: Option<WatchFrame>,
    done: bool,
    /// The applied revision when the watch started.
    pub head: u64,
}

impl Watch {
    /// The next frame; `None` once the watch is over (compacted, or the node stops).
    pub async fn next(&mut self) -> Option<WatchFrame> {
        if let Some(f) = self.queued.take() {
            return Some(f);
        }
        if self.done {
            return None;
        }
        loop {
            if let Some(frame) = self.step() {
                self.next_progress = next_progress(self.progress);
                self.done = matches!(frame, WatchFrame::Compacted { .. });
                return Some(frame);
            }
            if self.partial.is_some() || !self.cursor.caught_up {
                tokio::task::consume_budget().await;
                continue;
            }
            let slot = self.cursor.reg.slot.clone();
            tokio::select! {
                biased;
                _ = slot.changed() => self.cursor.woken(),
                _ = tokio::time::sleep_until(self.next_progress) => {
                    // One quorum round vouches for every watch that ticks within a second
                    // of it (10,000 idle watches need not make 10,000 rounds).
                    let max_age = self.progress.min(Duration::from_secs(1));
                    if self.linearizable && self.node.confirm_contact(max_age).await.is_err() {
                        // Out of touch with a quorum (a partitioned or leaderless node): a
                        // progress message would vouch for a revision that may be stale.
                        // Silence instead, which a client resumes elsewhere after.
                        self.next_progress = next_progress(self.progress);
                        continue;
                    }
                    // Read `dispatched` first: unflagged after it means told of everything
                    // up to it.
                    let dispatched = self.cursor.reg.dispatched();
                    if !slot.flagged() {
                        let revision = dispatched.max(self.cursor.scan_from - 1);
                        self.cursor.scan_from = revision + 1;
                        self.next_progress = next_progress(self.progress);
                        return Some(WatchFrame::Progress { revision });
                    }
                }
                _ = self.cursor.reg.closed() => {
                    self.done = true;
                    return None;
                }
            }
        }
    }

    /// One bounded step of reading; a frame if it found one.
    fn step(&mut self) -> Option<WatchFrame> {
        if let Some(p) = &self.partial {
            let page = p.store.events(&self.cursor.selector, p.revision, p.next, PAGE_BYTES, self.prev_kv);
            let revision = p.revision;
            return match page {
                Ok(page) => self.page(revision, page.events, page.next),
                // The pinned store holds the revision: cannot happen, but never loop.
                Err(_) => Some(WatchFrame::Compacted { compact_revision: revision + 1 }),
            };
        }
        if self.cursor.caught_up {
            return None;
        }
        let applied = self.node.replica.applied();
        let store = applied.state.kv();
        match self.cursor.step(store) {
            Found::Nothing => None,
            Found::Compacted(compact_revision) => Some(WatchFrame::Compacted { compact_revision }),
            Found::At(revision) => {
                match store.events(&self.cursor.selector, revision, 0, PAGE_BYTES, self.prev_kv) {
                    Ok(page) => {
                        if page.next.is_some() {
                            self.partial =
                                Some(Partial { store: store.clone(), revision, next: 0, opened: false });
                        }
                        drop(applied);
                        self.page(revision, page.events, page.next)
                    }
                    Err(ReadError::Compacted { compact_revision }) => {
                        Some(WatchFrame::Compacted { compact_revision })
                    }
                    Err(ReadError::FutureRevision { .. }) => None,
                }
            }
        }
    }

    /// The frame for a page of `revision`'s events, if any is to be sent.
    fn page(&mut self, revision: u64, mut events: Vec<Event>, next: Option<usize>) -> Option<WatchFrame> {
        events.retain(|e| match e {
            Event::Put { .. } => self.puts,
            Event::Delete { .. } => self.deletes,
        });
        let opened = self.partial.as_ref().is_some_and(|p| p.opened);
        match next {
            Some(at) => {
                let p = self.partial.as_mut().expect("a revision in parts is pinned");
                p.next = at;
                p.opened |= !events.is_empty();
            }
            None => {
                self.partial = None;
                self.cursor.scan_from = revision + 1;
            }
        }
        let last = next.is_none();
        if events.is_empty() && !(last && opened) {
            return None;
        }
        Some(WatchFrame::Events { revision, events, first: !opened, last })
    }
}

impl Node {
    /// A selector's key: any path for a subtree, a key (not the root) for one key.
    fn check_selector(&self, selector: &Selector) -> Result<()> {
        if selector.recursive {
            self.check_read_key(&selector.key)
        } else {
            self.check_key(&selector.key)
        }
    }

    fn register_watcher(self: &Arc<Self>, selector: &Selector) -> Result<Registration> {
        let max = self.cfg.max_watchers;
        self.watches.register(selector.clone(), max).ok_or_else(|| {
            Error::Overloaded(format!(
                "this node serves {max} watches and long-polls already (max_watchers); retry shortly or use another member"
            ))
        })
    }

    /// Starts a watch: checks the request, waits for a linearizable start if asked, and
    /// registers the watcher. A start below the floor is not an error here: the watch
    /// then begins (and ends) with `Compacted`.
    pub async fn watch(self: &Arc<Self>, req: WatchRequest) -> Result<Watch> {
        self.check_selector(&req.selector)?;
        if req.start == Some(0) {
            return Err(Error::InvalidArgument("start_revision must be at least 1".into()));
        }
        let ms = req.progress.as_millis() as u64;
        if !PROGRESS_MS.contains(&ms) {
            return Err(Error::InvalidArgument(format!(
                "progress must be between {} ms and {} ms, not {ms} ms",
                PROGRESS_MS.start(),
                PROGRESS_MS.end()
            )));
        }
        if !req.puts && !req.deletes {
            return Err(Error::InvalidArgument("types must name put, delete or both".into()));
        }
        if req.consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        // Registered before the head is read: every change after the head is then flagged.
        let reg = self.register_watcher(&req.selector)?;
        let head = self.applied_revision();
        let (scan_from, caught_up, queued) = match req.start {
            None => (head + 1, true, Some(WatchFrame::Progress { revision: head })),
            Some(start) if start > head + 1 => {
                return Err(Error::FutureRevision { requested: start, revision: head });
            }
            Some(start) => (start, false, None),
        };
        Ok(Watch {
            node: self.clone(),
            cursor: Cursor { reg, selector: req.selector, scan_from, caught_up },
            prev_kv: req.prev_kv,
            puts: req.puts,
            deletes: req.deletes,
            progress: req.progress,
            next_progress: next_progress(req.progress),
            linearizable: req.consistency == Consistency::Linearizable,
            partial: None,
            queued,
            done: false,
            head,
        })
    }

    /// A long-poll: waits until a key `selector` selects changes after revision `after`
    /// (default: the current one) (true), or `timeout` passes (false). Returns at once if
    /// one changed already.
    pub async fn wait_change(
        self: &Arc<Self>,
        selector: Selector,
        after: Option<u64>,
        timeout: Duration,
        consistency: Consistency,
    ) -> Result<bool> {
        self.check_selector(&selector)?;
        if timeout > Duration::from_millis(MAX_WAIT_MS) {
            return Err(Error::InvalidArgument(format!(
                "timeout must be at most {} s, not {} ms",
                MAX_WAIT_MS / 1000,
                timeout.as_millis()
            )));
        }
        let deadline = Instant::now() + timeout;
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        let reg = self.register_watcher(&selector)?;
        let head = self.applied_revision();
        let after = after.unwrap_or(head);
        if after > head {
            return Err(Error::FutureRevision { requested: after, revision: head });
        }
        let mut cursor = Cursor { reg, selector, scan_from: after + 1, caught_up: false };
        loop {
            while !cursor.caught_up {
                let found = {
                    let applied = self.replica.applied();
                    cursor.step(applied.state.kv())
                };
                match found {
                    Found::At(_) => return Ok(true),
                    Found::Compacted(compact_revision) => {
                        return Err(Error::Compacted { requested: after, compact_revision })
                    }
                    Found::Nothing => tokio::task::consume_budget().await,
                }
            }
            let slot = cursor.reg.slot.clone();
            tokio::select! {
                biased;
                _ = slot.changed() => cursor.woken(),
                _ = tokio::time::sleep_until(deadline) => return Ok(false),
                _ = cursor.reg.closed() => return Err(Error::Unavailable("this node is shutting down".into())),
            }
        }
    }

    /// Ends every watch and long-poll (the node is shutting down).
    pub fn close_watches(&self) {
        self.watches.close();
    }

    /// Watches and long-polls open on this node.
    pub fn watchers(&self) -> usize {
        self.watches.watchers()
    }
}
