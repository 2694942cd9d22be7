//! `palisade lock NAME -- CMD...`, `palisade lock ls`, `palisade lock show NAME`.
//!
//! Running CMD under a lock: the lock is acquired under a lease of `--ttl` made for the
//! request (the server keeps it alive while the request waits, at most `--wait`). Once
//! granted, one renewal of the lease must be acknowledged before CMD starts, so CMD always
//! starts with the lease sure to live a whole TTL. CMD then runs with the fencing token,
//! the owner id and the lease in its environment, while the lease is renewed about every
//! third of its TTL (see [`LeaseKeeper`]). The lock is lost when the cluster says the lease
//! is gone, or when no renewal was acknowledged within the TTL of sending the last
//! acknowledged one (the lease must then be assumed gone); CMD is then sent SIGTERM, and
//! SIGKILL after `--grace`. SIGINT and SIGTERM sent to palisade are passed on to CMD. When
//! CMD has exited the lock is released and its lease revoked, and palisade exits with
//! CMD's status (128 + the signal's number for a CMD ended by a signal, as shells do;
//! 1 for a CMD that exited 0 after the lock was lost: its work was cut short).
//!
//! CMD runs in a process group of its own, so every signal reaches the processes it
//! started too, unless palisade's stdin is a terminal: then CMD stays in palisade's
//! group so it can use the terminal, a Ctrl-C there reaches it directly (palisade does
//! not pass that SIGINT on a second time), and signals go to CMD alone. On Linux CMD is
//! also killed if palisade itself dies, since nobody keeps its lease alive any more.

use std::ffi::OsString;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use super::lease::{parse_ttl, show_ms};
use super::output::{self, ClientArgs, Failure, Output};
use crate::client::{self, AcquireOptions, Client, LeaseKeeper, LockInfo, OwnerLease};

/// The exit code when the lock (or leadership) was not acquired within `--wait`.
pub const NOT_ACQUIRED: u8 = 3;

#[derive(Args, Debug)]
#[command(
    subcommand_negates_reqs = true,
    override_usage = "palisade lock [OPTIONS] <NAME> -- <CMD>...\n       palisade lock <ls|show|run> [ARGS]",
    after_long_help = "\
CMD's environment gets:
  PALISADE_FENCING_TOKEN   the grant's fencing token: give it to every resource CMD writes to,
                           so that a resource can refuse a holder whose lock has passed on
  PALISADE_LOCK_NAME       the lock's name
  PALISADE_LOCK_OWNER      the holder's owner id (what a release names)
  PALISADE_LOCK_LEASE      the lease the lock is bound to
  PALISADE_ENDPOINTS       the endpoints palisade used (so `palisade fence check` works as is)

Exit status: CMD's (128 + N when signal N ended it; 1 when it exited 0 after the lock was
lost, so a lost lock never looks like success); 3 when the lock was not acquired
within --wait; 2 when no endpoint could be reached or the command line is wrong; 126 when
CMD could not be run, 127 when it was not found; 1 for any other error (nothing was run).
palisade's own lines go to stderr: stdout is CMD's.

A lock named like a subcommand (ls, show): palisade lock run ls -- CMD."
)]
pub struct LockArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: Option<LockCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Subcommand, Debug)]
pub enum LockCommand {
    /// List the locks held or awaited: name, limit, holders (owner and fencing token) and
    /// the number of waiters, following every page.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show one lock: its limit, holders (owner, lease, fencing token) and waiters in queue
    /// order.
    #[command(visible_alias = "get")]
    Show(ShowArgs),
    /// Run CMD while holding lock NAME (the same as `palisade lock NAME -- CMD`).
    Run(RunArgs),
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The lock's name: 1 to 128 characters of A-Z a-z 0-9 . _ -
    #[arg(required = true)]
    pub name: Option<String>,
    /// The TTL of the lease the lock is bound to: how long the lock outlives palisade
    /// when it can no longer renew it (`15s`, `750ms`, `2m`, a number of seconds).
    #[arg(long, value_name = "TTL", value_parser = parse_ttl, default_value = "15s")]
    pub ttl: Duration,
    /// How long to wait for the lock (`0`: try once; at most 10m).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait, default_value = "30s")]
    pub wait: Duration,
    /// How many may hold the lock at once (a semaphore; the first holder sets it).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// How long CMD has to exit after SIGTERM, once the lock is lost, before SIGKILL.
    #[arg(long, value_name = "DURATION", value_parser = parse_wait, default_value = "10s")]
    pub grace: Duration,
    /// Print nothing of palisade's own (errors and warnings still go to stderr).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The command to run and its arguments, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Locks per request (the listing still follows every page).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The lock's name.
    pub name: String,
    /// Read the local replica of the answering node (fast, possibly stale).
    #[arg(long)]
    pub serializable: bool,
}

/// Parses a wait or a grace period: a duration as a TTL is given (`30s`, `750ms`, `2m`,
/// a number of seconds), or zero.
pub fn parse_wait(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let v = match serde_json::from_str::<serde_json::Number>(s) {
        Ok(n) => serde_json::Value::Number(n),
        Err(_) => serde_json::Value::String(s.to_string()),
    };
    crate::wire::lock::wait_ms(&v).map(Duration::from_millis).map_err(|e| e.replacen("wait ", "", 1))
}

pub fn run(args: LockArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let out = args.client.output;
        match args.command {
            Some(LockCommand::Ls(a)) => ls(&client, out, a).await,
            Some(LockCommand::Show(a)) => show(&client, out, a).await,
            Some(LockCommand::Run(a)) => run_locked(&client, out, a).await,
            None => run_locked(&client, out, args.run).await,
        }
    })
}

/// A lock's holders for a table cell: `OWNER (token T)`, comma-separated.
fn holders(l: &LockInfo) -> String {
    if l.holders.is_empty() {
        return "-".into();
    }
    l.holders
        .iter()
        .map(|h| format!("{} (token {})", h.owner, h.fencing_token))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn ls(client: &Client, out: Output, a: LsArgs) -> Result<(), Failure> {
    let r = client.lock_list_all(a.limit).await?;
    if out == Output::Json {
        return output::json(&r);
    }
    let rows: Vec<Vec<String>> = r
        .locks
        .iter()
        .map(|l| {
            let limit = l.limit.map_or_else(|| "-".into(), |n| n.to_string());
            vec![l.name.clone(), limit, holders(l), l.waiters.len().to_string()]
        })
        .collect();
    output::line(&output::table(&["NAME", "LIMIT", "HOLDERS", "WAITERS"], &rows))
}

async fn show(client: &Client, out: Output, a: ShowArgs) -> Result<(), Failure> {
    let r = client.lock_get(&a.name, a.serializable).await?;
    if out == Output::Json {
        return output::json(&r);
    }
    let l = &r.lock;
    let mut text = format!("name: {}\n", l.name);
    match l.limit {
        None => text.push_str("limit: - (nobody holds or waits for it)\n"),
        Some(n) => text.push_str(&format!("limit: {n}\n")),
    }
    text.push_str(&format!("revision: {}\nholders: {}\n", r.revision, l.holders.len()));
    for h in &l.holders {
        text.push_str(&format!("  owner={} lease={} fencing_token={}\n", h.owner, h.lease, h.fencing_token));
    }
    text.push_str(&format!("waiters: {}\n", l.waiters.len()));
    for (i, w) in l.waiters.iter().enumerate() {
        text.push_str(&format!(
            "  {}. owner={} lease={} since_revision={}\n",
            i + 1,
            w.owner,
            w.lease,
            w.since_revision
        ));
    }
    output::write_out(text.as_bytes())
}

/// Where signals for CMD go.
#[derive(Debug, Clone, Copy)]
struct Target {
    pid: rustix::process::Pid,
    /// CMD leads a process group of its own: signal the whole group.
    group: bool,
}

impl Target {
    fn signal(&self, sig: rustix::process::Signal) {
        // A CMD that is gone already (ESRCH) needs no signal.
        let _ = if self.group {
            rustix::process::kill_process_group(self.pid, sig)
        } else {
            rustix::process::kill_process(self.pid, sig)
        };
    }
}

/// The exit code a shell would give for `status`.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => (128 + sig) as u8,
        (None, None) => 1,
    }
}

/// The program, for messages.
fn shown(cmd: &[OsString]) -> String {
    cmd.first().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default()
}

/// How a run of CMD ended.
enum Ended {
    /// CMD exited; `lost`: after the lock was lost.
    Exited { status: std::process::ExitStatus, lost: bool },
    /// CMD could not be started (or waited for); the exit code to give.
    NotStarted(u8),
}

async fn run_locked(client: &Client, out: Output, a: RunArgs) -> Result<(), Failure> {
    let name = a.name.clone().unwrap_or_default();
    let say = |m: String| {
        if !a.quiet {
            eprintln!("lock: {m}");
        }
    };
    let mut warn = |m: String| eprintln!("lock: warning: {m}");
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Failure::Local(format!("cannot handle SIGINT: {e}")))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Failure::Local(format!("cannot handle SIGTERM: {e}")))?;

    // Acquire. A signal meanwhile ends the request: the server takes the waiter out of
    // the queue and revokes the lease it made for it.
    let sent = Instant::now();
    let opts = AcquireOptions {
        lease: OwnerLease::Ttl(a.ttl),
        wait: Some(a.wait),
        limit: a.limit,
        idempotency_key: None,
    };
    let acquired = tokio::select! {
        r = client.lock_acquire(&name, opts) => r,
        _ = sigint.recv() => {
            eprintln!("lock: interrupted while acquiring {name}; CMD was not run");
            return Err(Failure::Exit(130));
        }
        _ = sigterm.recv() => {
            eprintln!("lock: terminated while acquiring {name}; CMD was not run");
            return Err(Failure::Exit(143));
        }
    };
    let grant = match acquired {
        Ok(g) => g.body,
        Err(e) if e.code() == Some("lock_timeout") => {
            let how = if a.wait.is_zero() {
                "it is held".to_string()
            } else {
                format!("not acquired within {}", show_ms(a.wait.as_millis() as u64))
            };
            eprintln!("lock: {name}: {how} (lock_timeout); CMD was not run");
            return Err(Failure::Exit(NOT_ACQUIRED));
        }
        Err(e) => return Err(e.into()),
    };
    let (owner, lease, token) = (grant.owner.clone(), grant.lease, grant.fencing_token);

    // One acknowledged renewal before CMD starts: from then on the lease is sure to live a
    // whole TTL.
    let mut keeper = LeaseKeeper::new(client.clone(), lease, a.ttl, sent);
    if let Err(lost) = keeper.renew(&mut warn).await {
        release(client, &name, &owner, lease, &say).await;
        return Err(Failure::Local(format!("{name}: the lock was granted but {lost}; CMD was not run")));
    }
    match out {
        Output::Json if !a.quiet => eprintln!("{}", serde_json::to_string(&grant).unwrap_or_default()),
        Output::Json => {}
        Output::Table => {
            say(format!("acquired {name} (fencing token {token}, owner {owner}, lease {lease})"))
        }
    }

    let ended = supervise(client, &a, &name, &grant, &mut keeper, &mut sigint, &mut sigterm).await;
    release(client, &name, &owner, lease, &say).await;
    match ended {
        // A CMD that exits 0 after its lock was lost (it handled SIGTERM) did not finish
        // its work under the lock: that is not a success.
        Ended::Exited { status, lost } => match exit_code(status) {
            0 if lost => Err(Failure::Exit(1)),
            0 => Ok(()),
            code => Err(Failure::Exit(code)),
        },
        Ended::NotStarted(code) => Err(Failure::Exit(code)),
    }
}

/// Starts CMD and waits for it, keeping the lease alive; stops CMD when the lock is lost
/// and passes SIGINT and SIGTERM on.
async fn supervise(
    client: &Client,
    a: &RunArgs,
    name: &str,
    grant: &client::LockGrant,
    keeper: &mut LeaseKeeper,
    sigint: &mut tokio::signal::unix::Signal,
    sigterm: &mut tokio::signal::unix::Signal,
) -> Ended {
    let terminal = std::io::stdin().is_terminal();
    let mut cmd = tokio::process::Command::new(&a.command[0]);
    cmd.args(&a.command[1..])
        .env("PALISADE_FENCING_TOKEN", grant.fencing_token.to_string())
        .env("PALISADE_LOCK_NAME", name)
        .env("PALISADE_LOCK_OWNER", &grant.owner)
        .env("PALISADE_LOCK_LEASE", grant.lease.to_string())
        .env("PALISADE_ENDPOINTS", client.endpoints().join(","));
    if !terminal {
        cmd.process_group(0);
    }
    #[cfg(target_os = "linux")]
    // SAFETY: the closure runs in the child between fork and exec and makes one system
    // call (prctl), which is async-signal-safe; it allocates nothing and takes no lock.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))
                .map_err(std::io::Error::from)
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
            eprintln!("lock: cannot run {}: {e}", shown(&a.command));
            return Ended::NotStarted(code);
        }
    };
    let Some(pid) = child.id().and_then(|id| rustix::process::Pid::from_raw(id as i32)) else {
        // It exited already and was reaped: nothing to supervise.
        return match child.wait().await {
            Ok(status) => Ended::Exited { status, lost: false },
            Err(_) => Ended::NotStarted(1),
        };
    };
    let target = Target { pid, group: !terminal };

    let mut warn = |m: String| eprintln!("lock: warning: {m}");
    let keep = keeper.keep(&mut warn);
    tokio::pin!(keep);
    let mut lost = false;
    let mut kill_at: Option<Instant> = None;
    loop {
        tokio::select! {
            status = child.wait() => {
                return match status {
                    Ok(status) => Ended::Exited { status, lost },
                    Err(e) => {
                        eprintln!("lock: cannot wait for {}: {e}", shown(&a.command));
                        Ended::NotStarted(1)
                    }
                };
            }
            why = &mut keep, if !lost => {
                lost = true;
                eprintln!(
                    "lock: {name} is lost ({why}); stopping {} (SIGTERM, then SIGKILL after {})",
                    shown(&a.command),
                    show_ms(a.grace.as_millis() as u64)
                );
                target.signal(rustix::process::Signal::TERM);
                kill_at = Some(Instant::now() + a.grace);
            }
            _ = tokio::time::sleep_until(kill_at.unwrap_or_else(Instant::now)), if kill_at.is_some() => {
                eprintln!("lock: {} did not exit within {}: SIGKILL", shown(&a.command), show_ms(a.grace.as_millis() as u64));
                target.signal(rustix::process::Signal::KILL);
                kill_at = None;
            }
            _ = sigint.recv() => {
                // From a terminal, a Ctrl-C reached CMD (in palisade's group) already.
                if target.group {
                    target.signal(rustix::process::Signal::INT);
                }
            }
            _ = sigterm.recv() => target.signal(rustix::process::Signal::TERM),
        }
    }
}

/// Releases the lock and revokes its lease. A lock that is no longer held (its lease
/// ended) needs no release; a failure is reported and left to the lease's end.
async fn release(client: &Client, name: &str, owner: &str, lease: u64, say: &impl Fn(String)) {
    match client.lock_release(name, owner, Some(&client::new_idempotency_key())).await {
        Ok(r) if r.released => say(format!("released {name}")),
        Ok(_) | Err(client::Error::Api { status: 404, .. }) => {}
        Err(e) => {
            eprintln!("lock: warning: releasing {name} failed ({e}); it is released when lease {lease} ends")
        }
    }
    match client.lease_revoke(lease, Some(&client::new_idempotency_key())).await {
        Ok(_) => {}
        Err(e) if e.is_lease_not_found() => {}
        Err(e) => eprintln!("lock: warning: revoking lease {lease} failed ({e}); it ends within its TTL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits() {
        assert_eq!(parse_wait("0"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_wait("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_wait("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_wait("10m"), Ok(Duration::from_secs(600)));
        for bad in ["soon", "-1", "5x", "", "1 s"] {
            assert!(parse_wait(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exit_codes_as_shells_give_them() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(std::process::ExitStatus::from_raw(9)), 137);
    }
}
