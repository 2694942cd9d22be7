//! [`Caller`]: who sent a request, and the checks every route makes with it before
//! anything is read or proposed.
//!
//! With client auth off every caller is [`Caller::open`] and every check passes. With it
//! on, a caller is a token's subject and [`Grants`]; a check that fails is
//! [`Error::PermissionDenied`], naming what was refused (never the token). A write is
//! checked whole: a transaction with one operation the caller may not do is refused
//! whole, nothing applied. Leases are checked where they live, in apply: a write is sent
//! [`Caller::on_behalf`], so the state machine refuses a lease its subject did not grant
//! and gives a new lease to its subject (see `Command::As`).

use std::sync::Arc;

use super::grants::Grants;
use crate::error::Error;
use crate::store::{Command, CompareTarget, Kind, Txn, TxnOp};

/// Who sent a request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `None`: client auth is off.
    who: Option<Arc<Identity>>,
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Identity {
    /// The token's `sub`.
    pub subject: String,
    pub grants: Grants,
    /// The token's `exp` (seconds since the epoch): a stream it opened ends then.
    pub expires_at: u64,
}

impl Caller {
    /// A caller on a node without client auth: allowed everything.
    pub fn open() -> Caller {
        Caller { who: None }
    }

    /// The caller a verified token names, until `expires_at` (its `exp`).
    pub fn authenticated(subject: String, grants: Grants, expires_at: u64) -> Caller {
        Caller { who: Some(Arc::new(Identity { subject, grants, expires_at })) }
    }

    /// When a stream opened by this caller must end (its token's `exp`), as a deadline
    /// on the runtime's clock; `None` without auth.
    pub fn stream_deadline(&self) -> Option<tokio::time::Instant> {
        let exp = self.who.as_deref()?.expires_at;
        let left = exp.saturating_sub(crate::clock::wall_clock_ms() / 1000);
        Some(tokio::time::Instant::now() + std::time::Duration::from_secs(left))
    }

    /// The subject, when authenticated.
    pub fn subject(&self) -> Option<&str> {
        self.who.as_deref().map(|w| w.subject.as_str())
    }

    /// Whether the caller may do everything (auth off, or an admin token).
    pub fn is_admin(&self) -> bool {
        self.who.as_deref().is_none_or(|w| w.grants.admin)
    }

    fn grants(&self) -> Option<&Grants> {
        self.who.as_deref().map(|w| &w.grants)
    }

    fn deny(&self, what: String) -> Error {
        let who = self.subject().unwrap_or("");
        Error::PermissionDenied(format!("{who:?} may not {what}"))
    }

    /// Reading `key` (with `subtree`: the key and everything below it).
    pub fn check_read(&self, key: &str, subtree: bool) -> Result<(), Error> {
        match self.grants() {
            Some(g) if !g.may_read(key) => Err(self.deny(format!("read {}", shown(key, subtree)))),
            _ => Ok(()),
        }
    }

    /// Writing `key` (with `subtree`: the key and everything below it).
    pub fn check_write(&self, key: &str, subtree: bool) -> Result<(), Error> {
        match self.grants() {
            Some(g) if !g.may_write(key) => Err(self.deny(format!("write {}", shown(key, subtree)))),
            _ => Ok(()),
        }
    }

    /// Using lock (or election) `name`.
    pub fn check_lock(&self, kind: Kind, name: &str) -> Result<(), Error> {
        match self.grants() {
            Some(g) if kind == Kind::Lock && !g.may_lock(name) => {
                Err(self.deny(format!("use lock {name:?}")))
            }
            Some(g) if kind == Kind::Election && !g.may_elect(name) => {
                Err(self.deny(format!("use election {name:?}")))
            }
            _ => Ok(()),
        }
    }

    /// Whether lock (or election) `name` may be seen (for filtering a listing).
    pub fn sees_lock(&self, kind: Kind, name: &str) -> bool {
        self.check_lock(kind, name).is_ok()
    }

    /// Checking a fencing token of `name`: a lock or an election of that name.
    pub fn check_fence(&self, name: &str) -> Result<(), Error> {
        match self.grants() {
            Some(g) if !g.may_lock(name) && !g.may_elect(name) => {
                Err(self
                    .deny(format!("check the fencing tokens of {name:?} (a lock or election permission)")))
            }
            _ => Ok(()),
        }
    }

    /// An admin route (compaction; membership and snapshots).
    pub fn check_admin(&self, what: &str) -> Result<(), Error> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(self.deny(format!("{what} (it needs admin)")))
        }
    }

    /// Using lease `owner`'s lease (keepalive, show): the caller must have granted it.
    /// `owner`: the lease's owner as the applied state knows it.
    pub fn check_lease(&self, id: u64, owner: Option<&str>) -> Result<(), Error> {
        if self.is_admin() || owner == self.subject() {
            Ok(())
        } else {
            Err(self.deny(format!("use lease {id}, which another subject granted")))
        }
    }

    /// Whether a lease of `owner` may be seen (for filtering a listing).
    pub fn sees_lease(&self, owner: Option<&str>) -> bool {
        self.is_admin() || owner == self.subject()
    }

    /// Every key, lock and admin permission `cmd` needs, before it is proposed.
    pub fn check_command(&self, cmd: &Command) -> Result<(), Error> {
        if self.grants().is_none() {
            return Ok(());
        }
        match cmd {
            Command::Put { key, cond, prev_kv, .. } => {
                self.check_write(key, false)?;
                // A condition or a previous value reads the key too.
                if !cond.is_empty() || *prev_kv {
                    self.check_read(key, false)?;
                }
                Ok(())
            }
            Command::Delete { key, recursive, cond, prev_kv } => {
                self.check_write(key, *recursive)?;
                if !cond.is_empty() || *prev_kv {
                    self.check_read(key, *recursive)?;
                }
                Ok(())
            }
            Command::Txn(txn) => self.check_txn(txn),
            Command::Compact { .. } => self.check_admin("compact the history"),
            Command::Idempotent { cmd, .. } | Command::As { cmd, .. } => self.check_command(cmd),
            Command::Batch { cmds } => cmds.iter().try_for_each(|c| self.check_command(c)),
            // A lease is for keys, locks or elections: a token allowed none of them has no use
            // for one (and may not fill the cluster's lease table).
            Command::LeaseGrant { .. } => match self.grants() {
                Some(g) if !g.admin && g.write.is_empty() && g.locks.is_empty() && g.elections.is_empty() => {
                    Err(self.deny("grant a lease (that needs a write, lock or election permission)".into()))
                }
                _ => Ok(()),
            },
            // Whose a lease is, apply decides.
            Command::LeaseRevoke { .. } => Ok(()),
            Command::LeaseClock { .. } | Command::LeaseExpire { .. } => {
                self.check_admin("move the lease clock")
            }
            Command::LockAcquire { kind, name, .. }
            | Command::LockRelease { kind, name, .. }
            | Command::LockCancel { kind, name, .. } => self.check_lock(*kind, name),
            Command::Proclaim { name, .. } => self.check_lock(Kind::Election, name),
        }
    }

    /// A transaction: every compare reads its key (a fence compare, its lock or election);
    /// every operation of both branches, whichever runs.
    fn check_txn(&self, txn: &Txn) -> Result<(), Error> {
        for c in &txn.compare {
            match c.target {
                CompareTarget::Fence(_) => self.check_fence(&c.key)?,
                _ => self.check_read(&c.key, false)?,
            }
        }
        for op in txn.success.iter().chain(&txn.failure) {
            match op {
                TxnOp::Put { key, prev_kv, .. } => {
                    self.check_write(key, false)?;
                    if *prev_kv {
                        self.check_read(key, false)?;
                    }
                }
                TxnOp::Delete { key, recursive, prev_kv } => {
                    self.check_write(key, *recursive)?;
                    if *prev_kv {
                        self.check_read(key, *recursive)?;
                    }
                }
                TxnOp::Get { key, recursive, .. } => self.check_read(key, *recursive)?,
            }
        }
        Ok(())
    }

    /// The idempotency key of a request of this caller: keys are per subject (another
    /// subject using the same key neither sees this one's outcome nor blocks its write).
    pub fn scoped_idempotency_key(&self, key: Option<String>) -> Option<String> {
        use sha2::{Digest, Sha256};
        let (key, who) = (key?, self.who.as_deref());
        let Some(who) = who else { return Some(key) };
        let mut h = Sha256::new();
        h.update(who.subject.as_bytes());
        h.update(b"\n");
        h.update(key.as_bytes());
        Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// `cmd` as this caller sends it: on behalf of its subject when authenticated (so
    /// apply checks the leases it names and gives it the leases it makes), as it is when
    /// auth is off.
    pub fn on_behalf(&self, cmd: Command) -> Command {
        match self.who.as_deref() {
            None => cmd,
            Some(w) => Command::As { subject: w.subject.clone(), admin: w.grants.admin, cmd: Box::new(cmd) },
        }
    }
}

/// A key or subtree as a refusal names it.
fn shown(key: &str, subtree: bool) -> String {
    if subtree {
        format!("{key:?} and everything below it")
    } else {
        format!("{key:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Compare, CompareOp, Condition};

    fn caller(read: &[&str], write: &[&str]) -> Caller {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Caller::authenticated(
            "svc".into(),
            Grants { read: list(read), write: list(write), locks: vec!["db-*".into()], ..Grants::default() },
            u64::MAX,
        )
    }

    fn put(key: &str) -> Command {
        Command::Put {
            key: key.into(),
            value: b"v".to_vec(),
            lease: None,
            sequential: false,
            cond: Condition::default(),
            prev_kv: false,
        }
    }

    fn cas(key: &str) -> Command {
        let mut c = put(key);
        if let Command::Put { cond, .. } = &mut c {
            cond.if_version = Some(0);
        }
        c
    }

    fn denied(r: Result<(), Error>) -> bool {
        matches!(r, Err(Error::PermissionDenied(_)))
    }

    #[test]
    fn open_callers_may_do_anything() {
        let c = Caller::open();
        assert!(c.check_command(&Command::Compact { revision: 1 }).is_ok());
        assert!(c.check_read("/", true).is_ok() && c.is_admin());
        assert_eq!(c.on_behalf(put("/a")), put("/a"));
    }

    #[test]
    fn writes_need_write_and_reading_writes_need_read_too() {
        let c = caller(&["/app/"], &["/app/locks/"]);
        assert!(c.check_command(&put("/app/locks/a")).is_ok());
        assert!(denied(c.check_command(&put("/app/x"))));
        let guarded = cas("/app/locks/a");
        assert!(c.check_command(&guarded).is_ok());
        let w = caller(&[], &["/w/"]);
        assert!(denied(w.check_command(&cas("/w/a"))));
        let del = |key: &str, recursive| Command::Delete {
            key: key.into(),
            recursive,
            cond: Condition::default(),
            prev_kv: false,
        };
        assert!(c.check_command(&del("/app/locks", true)).is_ok());
        assert!(denied(c.check_command(&del("/app", true))), "a part of the subtree is not enough");
        assert!(denied(c.check_command(&Command::Compact { revision: 1 })));
    }

    #[test]
    fn a_txn_is_refused_whole_for_any_op_or_compare() {
        let c = caller(&["/app/"], &["/app/locks/"]);
        let ok = Txn {
            compare: vec![Compare {
                key: "/app/x".into(),
                op: CompareOp::Eq,
                target: CompareTarget::Version(0),
            }],
            success: vec![TxnOp::Put {
                key: "/app/locks/a".into(),
                value: vec![],
                lease: None,
                sequential: false,
                prev_kv: false,
            }],
            failure: vec![TxnOp::Get { key: "/app".into(), recursive: true, limit: None, keys_only: false }],
            max_read_bytes: 0,
            default_get_limit: 0,
        };
        assert!(c.check_command(&Command::Txn(ok.clone())).is_ok());
        let mut bad = ok.clone();
        bad.failure.push(TxnOp::Delete { key: "/other".into(), recursive: false, prev_kv: false });
        assert!(denied(c.check_command(&Command::Txn(bad))));
        let mut bad = ok.clone();
        bad.compare.push(Compare {
            key: "/secret".into(),
            op: CompareOp::Eq,
            target: CompareTarget::Version(0),
        });
        assert!(denied(c.check_command(&Command::Txn(bad))));
        let mut fenced = ok;
        fenced.compare.push(Compare {
            key: "db-1".into(),
            op: CompareOp::Eq,
            target: CompareTarget::Fence(3),
        });
        assert!(c.check_command(&Command::Txn(fenced.clone())).is_ok());
        fenced.compare[1].key = "cache".into();
        assert!(denied(c.check_command(&Command::Txn(fenced))));
    }

    #[test]
    fn locks_elections_leases_and_admin() {
        let c = caller(&[], &[]);
        assert!(c.check_lock(Kind::Lock, "db-1").is_ok());
        assert!(denied(c.check_lock(Kind::Election, "db-1")));
        assert!(c.check_fence("db-1").is_ok() && denied(c.check_fence("x")));
        assert!(c.check_lease(5, Some("svc")).is_ok());
        assert!(denied(c.check_lease(5, Some("other"))) && denied(c.check_lease(5, None)));
        assert!(denied(c.check_admin("compact")));
        match c.on_behalf(put("/a")) {
            Command::As { subject, admin: false, .. } => assert_eq!(subject, "svc"),
            other => panic!("{other:?}"),
        }
        let e = c.check_read("/secret", true).unwrap_err().to_string();
        assert!(e.contains("svc") && e.contains("/secret"), "{e}");
    }
}
