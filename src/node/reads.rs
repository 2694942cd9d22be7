//! Reads: typed key-value reads served from the applied state, after a read index for
//! linearizable ones. A leader within its read lease takes its index at once; otherwise
//! read-index rounds are shared by every read that arrived before the round started,
//! confirmed locally on the leader or by asking it from a follower.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Node;
use crate::error::{Error, Result};
use crate::peer::{PeerError, PeerRequest, PeerResponse, ReadIndexReply};
use crate::raft::ReadIndexError;
use crate::store::{ChildrenPage, KeyValue, ListOptions, ListPage, ReadError};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (a read index the leader
    /// vouches for: from its read lease or a quorum round).
    #[default]
    Linearizable,
    /// This node's applied state, possibly behind the leader; no round trip.
    Serializable,
}

/// A key-value read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvRead {
    /// One key, now or at a past revision.
    Get { key: String, revision: Option<u64> },
    /// The key and its subtree, sorted, one page.
    List { key: String, opts: ListOptions },
    /// How many keys the key and its subtree hold.
    Count { key: String, revision: Option<u64> },
    /// One level below the key, one page of names after `after`.
    Children { key: String, revision: Option<u64>, after: Option<String>, limit: usize },
}

impl KvRead {
    /// The key the read addresses, and whether it reads the key's subtree too.
    pub fn scope(&self) -> (&str, bool) {
        match self {
            KvRead::Get { key, .. } => (key, false),
            KvRead::List { key, .. } | KvRead::Count { key, .. } | KvRead::Children { key, .. } => {
                (key, true)
            }
        }
    }
}

/// What a [`KvRead`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvReadResult {
    /// `kv` is `None` when the key does not exist at `revision`.
    Get {
        revision: u64,
        kv: Option<KeyValue>,
    },
    List(ListPage),
    Count {
        revision: u64,
        count: u64,
    },
    Children(ChildrenPage),
}

fn read_error(e: ReadError, requested: Option<u64>) -> Error {
    let requested = requested.unwrap_or(0);
    match e {
        ReadError::Compacted { compact_revision } => Error::Compacted { requested, compact_revision },
        ReadError::FutureRevision { revision } => Error::FutureRevision { requested, revision },
    }
}

/// Read-index requests waiting for the next quorum round.
#[derive(Default)]
pub(super) struct ReadRounds {
    waiting: Vec<oneshot::Sender<Result<u64>>>,
    running: bool,
    /// When the last round that a quorum confirmed started.
    confirmed_at: Option<Instant>,
}

impl Node {
    /// Waits until this node can serve a linearizable read: a read index the leader vouches
    /// for (its read lease, or a quorum round) is applied here.
    pub async fn linearize(self: &Arc<Self>) -> Result<()> {
        // While this node's log cannot be written (disk full), its Raft core waits on the
        // write and applies nothing: a linearizable read could only time out.
        self.check_storage().map_err(Error::Unavailable)?;
        let deadline = self.deadline();
        // A leader within its read lease needs no round (see `raft::lease`).
        if let Some((index, _)) = self.replica.lease_read_index() {
            return tokio::time::timeout_at(deadline, self.replica.wait_applied(index)).await.map_err(|_| {
                Error::Unavailable("this node did not apply its own read index within the deadline".into())
            });
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            r.waiting.push(tx);
            !std::mem::replace(&mut r.running, true)
        };
        if start {
            let node = self.clone();
            tokio::spawn(async move { node.read_rounds().await });
        }
        let index = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err(Error::Unavailable("this node is shutting down".into())),
            Err(_) => {
                return Err(Error::Unavailable("no quorum confirmed the read within the deadline".into()))
            }
        };
        tokio::time::timeout_at(deadline, self.replica.wait_applied(index)).await.map_err(|_| {
            Error::Unavailable("this node did not catch up with the leader within the deadline".into())
        })?;
        Ok(())
    }

    /// Whether a quorum confirmed, within `max_age`, that this node was in touch with the
    /// cluster's leader (a read-index round that succeeded); else one more round tells.
    pub async fn confirm_contact(self: &Arc<Self>, max_age: Duration) -> Result<()> {
        let recent = {
            let r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            r.confirmed_at.is_some_and(|at| at.elapsed() <= max_age)
        };
        if recent {
            return Ok(());
        }
        self.linearize().await
    }

    /// Runs read-index rounds while reads are waiting; each round answers every read that
    /// was waiting when it started.
    async fn read_rounds(self: Arc<Self>) {
        loop {
            let waiting = {
                let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                if r.waiting.is_empty() {
                    r.running = false;
                    return;
                }
                std::mem::take(&mut r.waiting)
            };
            let started = Instant::now();
            let result = self.read_index_round().await;
            if result.is_ok() {
                let mut r = self.reads.lock().unwrap_or_else(|e| e.into_inner());
                r.confirmed_at = r.confirmed_at.max(Some(started));
            }
            for w in waiting {
                let _ = w.send(result.clone());
            }
        }
    }

    /// One read-index round: confirms leadership locally, or asks the leader.
    async fn read_index_round(self: &Arc<Self>) -> Result<u64> {
        let reply = self.at_leader(
            || PeerRequest::ReadIndex,
            |node, _| async move { node.local_read_index().await },
            |resp| match resp {
                PeerResponse::ReadIndex(r) => Some(r),
                _ => None,
            },
            None,
        );
        Ok(reply.await?.index)
    }

    /// The leader's read index, for a follower that asks (see [`Self::linearize`]).
    ///
    /// A round in which too few members answered within a heartbeat interval (a slow
    /// member, a lost message) is tried again for up to an election timeout, so one missed
    /// answer never fails a read. Past that this node has likely been deposed without
    /// knowing it yet: it says so (503) and the caller goes elsewhere, rather than holding
    /// the request (a keepalive, say) until its deadline.
    pub(super) async fn local_read_index(&self) -> std::result::Result<ReadIndexReply, PeerError> {
        let give_up = tokio::time::Instant::now() + Duration::from_millis(self.cfg.election_timeout_ms);
        loop {
            match self.replica.read_index().await {
                Ok((index, term)) => return Ok(ReadIndexReply { index, term }),
                Err(ReadIndexError::NotLeader { leader }) => return Err(PeerError::NotLeader { leader }),
                Err(ReadIndexError::NoQuorum(q)) if tokio::time::Instant::now() >= give_up => {
                    return Err(PeerError::Unavailable(format!("no quorum: {q}")));
                }
                Err(ReadIndexError::NoQuorum(q)) => {
                    tracing::debug!(%q, "a read-index round missed a quorum; trying again");
                    tokio::time::sleep(Duration::from_millis(self.cfg.heartbeat_ms)).await;
                }
                Err(ReadIndexError::Stopped(e)) => {
                    return Err(PeerError::Unavailable(format!("raft stopped: {e}")))
                }
            }
        }
    }

    /// Answers a key-value read from the applied state, after a read index for a
    /// linearizable one.
    pub async fn read(self: &Arc<Self>, read: KvRead, consistency: Consistency) -> Result<KvReadResult> {
        match &read {
            KvRead::Get { key, revision } => {
                self.check_key(key)?;
                check_revision(*revision)?;
            }
            KvRead::List { key, opts } => {
                self.check_read_key(key)?;
                check_revision(opts.revision)?;
                self.check_limit(opts.limit)?;
            }
            KvRead::Count { key, revision } => {
                self.check_read_key(key)?;
                check_revision(*revision)?;
            }
            KvRead::Children { key, revision, limit, .. } => {
                self.check_read_key(key)?;
                check_revision(*revision)?;
                self.check_limit(*limit)?;
            }
        }
        if consistency == Consistency::Linearizable {
            self.linearize().await?;
        }
        let max_page_bytes = self.cfg.max_page_bytes;
        let answer = move |kv: &crate::store::Store, read: KvRead| match read {
            KvRead::Get { key, revision } => {
                let (rev, found) = kv.get(&key, revision).map_err(|e| read_error(e, revision))?;
                Ok(KvReadResult::Get { revision: rev, kv: found })
            }
            KvRead::List { key, opts } => {
                let opts = ListOptions { max_bytes: opts.max_bytes.min(max_page_bytes), ..opts };
                kv.list(&key, &opts).map(KvReadResult::List).map_err(|e| read_error(e, opts.revision))
            }
            KvRead::Count { key, revision } => {
                let count = kv.count(&key, revision).map_err(|e| read_error(e, revision))?;
                Ok(KvReadResult::Count { revision: revision.unwrap_or(kv.revision()), count })
            }
            KvRead::Children { key, revision, after, limit } => kv
                .children(&key, revision, after.as_deref(), limit)
                .map(KvReadResult::Children)
                .map_err(|e| read_error(e, revision)),
        };
        if matches!(read, KvRead::Get { .. }) {
            // One key: answered under the read lock, which is held for microseconds.
            let applied = self.replica.applied();
            return answer(applied.state.kv(), read);
        }
        // A listing may walk much of the key space: it works on a snapshot of the state (an
        // O(1) clone of the persistent map), so applying writes never waits for it.
        let state = self.replica.applied().state.clone();
        answer(state.kv(), read)
    }

    /// A page size a listing may ask for.
    fn check_limit(&self, limit: usize) -> Result<()> {
        let max = self.cfg.max_list_limit;
        if limit == 0 || limit > max {
            return Err(Error::InvalidArgument(format!("limit must be between 1 and {max}, not {limit}")));
        }
        Ok(())
    }
}

fn check_revision(revision: Option<u64>) -> Result<()> {
    if revision == Some(0) {
        return Err(Error::InvalidArgument("revision must be at least 1".into()));
    }
    Ok(())
}
