//! One lock (or election): up to `limit` holders and a FIFO queue of waiters, each an
//! owner bound to a lease.
//!
//! Invariants: owners are distinct; a waiter exists only while the holders are at the
//! limit (so a waiter leaving never lets anyone in, and a holder leaving lets the first
//! waiters in, in order); a holder's fencing token is the revision at which it was
//! granted, so tokens of one name strictly increase in grant order. An election is a lock
//! of limit 1 whose entries carry the candidate's value. Nothing here takes revisions: the
//! table ([`super::locks::Locks`]) does, and passes them in.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Locks and elections live in separate name spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Lock,
    Election,
}

impl Kind {
    /// How a message names the kind ("lock", "election").
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Lock => "lock",
            Kind::Election => "election",
        }
    }
}

/// A holder: granted at `token` (its fencing token), until it releases or its lease ends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub owner: String,
    pub lease: u64,
    /// The revision of the grant.
    pub token: u64,
    /// An election leader's value (empty for a lock).
    #[serde(default, with = "super::bytes_b64")]
    pub value: Vec<u8>,
}

/// A waiter, queued at `since`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Waiter {
    pub owner: String,
    pub lease: u64,
    /// The revision at which it joined the queue.
    pub since: u64,
    /// A candidate's value (empty for a lock).
    #[serde(default, with = "super::bytes_b64")]
    pub value: Vec<u8>,
}

/// Where an owner is in a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// Among the holders, at this index.
    Holding(usize),
    /// In the queue, at this position (0: next in line).
    Waiting(usize),
}

/// One lock or election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    /// How many may hold it at once (1: a mutex; more: a semaphore).
    pub limit: u32,
    /// In grant order (tokens increasing).
    pub holders: Vec<Holder>,
    pub waiters: VecDeque<Waiter>,
    /// The revision of the last change (a grant, a release, a proclaim, a waiter joining
    /// or leaving).
    pub revision: u64,
}

impl Lock {
    /// An idle lock of `limit`.
    pub fn new(limit: u32) -> Lock {
        Lock { limit, holders: Vec::new(), waiters: VecDeque::new(), revision: 0 }
    }

    /// Whether nobody holds or waits (the table forgets such a lock).
    pub fn is_idle(&self) -> bool {
        self.holders.is_empty() && self.waiters.is_empty()
    }

    /// Whether a new owner would be granted at once.
    pub fn has_room(&self) -> bool {
        self.waiters.is_empty() && self.holders.len() < self.limit as usize
    }

    /// Where `owner` is, if anywhere.
    pub fn place(&self, owner: &str) -> Option<Place> {
        if let Some(i) = self.holders.iter().position(|h| h.owner == owner) {
            return Some(Place::Holding(i));
        }
        self.waiters.iter().position(|w| w.owner == owner).map(Place::Waiting)
    }

    /// The holder with this token, if any holds it.
    pub fn holder_with_token(&self, token: u64) -> Option<&Holder> {
        self.holders.iter().find(|h| h.token == token)
    }

    /// The newest holder's token (the highest), if anyone holds it.
    pub fn newest_token(&self) -> Option<u64> {
        self.holders.iter().map(|h| h.token).max()
    }

    /// Grants the first waiter if there is room, at revision `token`; returns the new holder.
    pub fn grant_next(&mut self, token: u64) -> Option<&Holder> {
        if self.holders.len() >= self.limit as usize {
            return None;
        }
        let w = self.waiters.pop_front()?;
        self.holders.push(Holder { owner: w.owner, lease: w.lease, token, value: w.value });
        self.revision = token;
        self.holders.last()
    }

    /// Whether the invariants hold (checked on a loaded image).
    pub fn check(&self) -> Result<(), String> {
        if self.limit == 0 {
            return Err("a lock has limit 0".into());
        }
        if self.holders.len() > self.limit as usize {
            return Err(format!("a lock of limit {} has {} holders", self.limit, self.holders.len()));
        }
        if !self.waiters.is_empty() && self.holders.len() < self.limit as usize {
            return Err("a lock has waiters while there is room".into());
        }
        if self.holders.windows(2).any(|w| w[0].token >= w[1].token) {
            return Err("a lock's holders are not in token order".into());
        }
        let mut owners: Vec<&str> = self
            .holders
            .iter()
            .map(|h| h.owner.as_str())
            .chain(self.waiters.iter().map(|w| w.owner.as_str()))
            .collect();
        owners.sort_unstable();
        if owners.windows(2).any(|w| w[0] == w[1]) {
            return Err("a lock names an owner twice".into());
        }
        Ok(())
    }
}
