//! `palisade lease grant|keepalive|revoke|ls|show`: leases from the command line.
//!
//! Grants and revokes carry an idempotency key (`--idempotency-key`, or one made up per
//! command), like every write of the CLI. `keepalive` renews a lease about every third of
//! its TTL until Ctrl-C; it retries a failed renewal (503, 504, 429, no connection, no
//! reply within a third of the TTL) on the next endpoint, only for as long as the lease is
//! sure to live: its TTL after the moment the last acknowledged renewal was sent. A lease
//! the server no longer has (404), or one not renewed within that time, is reported as lost
//! and the command exits 1.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio::time::Instant;

use super::kv::OnceArgs;
use super::output::{self, ClientArgs, Failure, Output};
use crate::client::{self, Client};

#[derive(Args, Debug)]
pub struct LeaseArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: LeaseCommand,
}

#[derive(Subcommand, Debug)]
pub enum LeaseCommand {
    /// Grant a lease. Prints `lease=ID ttl=TTL`.
    Grant(GrantArgs),
    /// Keep a lease alive until Ctrl-C (a renewal about every TTL/3; prints the time left
    /// after each). Exit code 1 when the lease is lost.
    #[command(visible_alias = "keep-alive")]
    Keepalive(IdArgs),
    /// End a lease now; its keys are deleted at one revision. Prints `lease=ID deleted=N revision=R`.
    #[command(visible_alias = "rm")]
    Revoke(RevokeArgs),
    /// List every lease (id, TTL, time left, number of keys), following every page.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Show a lease: TTL, time left and its keys (the first 1000).
    #[command(visible_alias = "get")]
    Show(IdArgs),
}

#[derive(Args, Debug)]
pub struct GrantArgs {
    /// The lease's TTL: `10s`, `750ms`, `2m`, `1h`, or a number of seconds (`10`, `2.5`);
    /// a whole number of milliseconds, within the cluster's bounds (by default 2 s to 24 h).
    #[arg(value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Grant the lease under this id (1 to 2^53-1; default: one the cluster picks). An id
    /// in use is refused (`lease_exists`).
    #[arg(long, value_name = "N")]
    pub id: Option<u64>,
    #[command(flatten)]
    pub once: OnceArgs,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The lease id.
    pub id: u64,
}

#[derive(Args, Debug)]
pub struct RevokeArgs {
    /// The lease id.
    pub id: u64,
    #[command(flatten)]
    pub once: OnceArgs,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// Leases per request (the listing still follows every page).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
}

/// Parses a TTL argument as the server does (`10s`, `750ms`, `2m`, `1h`), and a bare number
/// as seconds (what a JSON number means in a grant).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let v = match serde_json::from_str::<serde_json::Number>(s) {
        Ok(n) => serde_json::Value::Number(n),
        Err(_) => serde_json::Value::String(s.to_string()),
    };
    crate::wire::lease::ttl_ms(&v).map(Duration::from_millis)
}

/// Milliseconds for people: `10s`, `2m`, `1h`, `9.873s`, `750ms`.
pub fn show_ms(ms: u64) -> String {
    match ms {
        0 => "0s".into(),
        ms if ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        ms if ms.is_multiple_of(60_000) => format!("{}m", ms / 60_000),
        ms if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        ms if ms > 1000 => format!("{}.{}s", ms / 1000, format!("{:03}", ms % 1000).trim_end_matches('0')),
        ms => format!("{ms}ms"),
    }
}

pub fn run(args: LeaseArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let out = args.client.output;
        match args.command {
            LeaseCommand::Grant(a) => grant(&client, out, a).await,
            LeaseCommand::Keepalive(a) => keepalive(&client, out, a.id).await,
            LeaseCommand::Revoke(a) => revoke(&client, out, a).await,
            LeaseCommand::Ls(a) => ls(&client, out, a).await,
            LeaseCommand::Show(a) => show(&client, out, a.id).await,
        }
    })
}

async fn grant(client: &Client, out: Output, a: GrantArgs) -> Result<(), Failure> {
    let r = client.lease_grant(a.ttl, a.id, Some(&a.once.key())).await?;
    match out {
        Output::Json => output::json(&r),
        Output::Table => output::line(&format!("lease={} ttl={}", r.id, show_ms(r.ttl_ms))),
    }
}

async fn revoke(client: &Client, out: Output, a: RevokeArgs) -> Result<(), Failure> {
    let r = client.lease_revoke(a.id, Some(&a.once.key())).await?;
    match out {
        Output::Json => output::json(&r),
        Output::Table => {
            output::line(&format!("lease={} deleted={} revision={}", r.id, r.deleted, r.revision))
        }
    }
}

async fn ls(client: &Client, out: Output, a: LsArgs) -> Result<(), Failure> {
    let r = client.lease_list_all(a.limit).await?;
    if out == Output::Json {
        return output::json(&r);
    }
    let rows: Vec<Vec<String>> = r
        .leases
        .iter()
        .map(|l| vec![l.id.to_string(), show_ms(l.ttl_ms), show_ms(l.remaining_ms), l.key_count.to_string()])
        .collect();
    output::line(&output::table(&["ID", "TTL", "REMAINING", "KEYS"], &rows))
}

async fn show(client: &Client, out: Output, id: u64) -> Result<(), Failure> {
    let r = client.lease_get(id).await?;
    if out == Output::Json {
        return output::json(&r);
    }
    let mut text = format!(
        "id: {}\nttl: {}\nremaining: {}\nkeys: {}\n",
        r.id,
        show_ms(r.ttl_ms),
        show_ms(r.remaining_ms),
        r.key_count
    );
    for k in &r.keys {
        text.push_str(&format!("  {k}\n"));
    }
    let unlisted = r.key_count.saturating_sub(r.keys.len() as u64);
    if unlisted > 0 {
        text.push_str(&format!("  ... and {unlisted} more\n"));
    }
    output::write_out(text.as_bytes())
}

/// Whether a failed renewal may succeed when tried again: nothing says the lease is gone.
fn transient(e: &client::Error) -> bool {
    match e {
        client::Error::Api { status, .. } => matches!(status, 429 | 503 | 504),
        client::Error::Connect(_) | client::Error::Other(_) => true,
    }
}

/// How long to wait before the next attempt after `failures` failed ones in a row.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 << failures.min(3))
}

async fn keepalive(client: &Client, out: Output, id: u64) -> Result<(), Failure> {
    let renew = renew_until_lost(client, out, id);
    tokio::select! {
        r = renew => r,
        r = tokio::signal::ctrl_c() => {
            r.map_err(|e| Failure::Local(format!("cannot wait for Ctrl-C: {e}")))?;
            eprintln!("stopped: lease {id} is no longer kept alive (it ends within its TTL)");
            Ok(())
        }
    }
}

/// Renews lease `id` until it is lost (the error says how); never returns `Ok`.
async fn renew_until_lost(client: &Client, out: Output, id: u64) -> Result<(), Failure> {
    // Until a first renewal is acknowledged the lease's TTL is unknown: a failing first
    // renewal is tried again for one request timeout.
    let started = Instant::now();
    let mut sure_until = started + client.timeout();
    let mut acknowledged: Option<Duration> = None;
    let mut failures = 0u32;
    loop {
        let sent = Instant::now();
        if sent >= sure_until {
            return Err(Failure::Local(match acknowledged {
                Some(ttl) => format!(
                    "lease {id} may have expired: no renewal was acknowledged within its TTL ({}) of sending \
                     the last acknowledged one; it is not kept alive any more",
                    show_ms(ttl.as_millis() as u64)
                ),
                None => format!("lease {id}: no renewal was acknowledged within {:?}", client.timeout()),
            }));
        }
        // An attempt may take a third of the TTL (what is left of the lease's sure time at
        // most), so one endpoint that hangs leaves time to try another.
        let left = sure_until - sent;
        let patience = acknowledged.map_or(left, |ttl| (ttl / 3).min(left));
        let reply = match tokio::time::timeout(patience, client.lease_keepalive(id)).await {
            Ok(r) => r,
            Err(_) => {
                let left = sure_until.saturating_duration_since(Instant::now());
                eprintln!(
                    "warning: renewing lease {id}: no reply within {patience:.1?}; retrying for up to {left:.1?}"
                );
                client.next_endpoint();
                continue;
            }
        };
        match reply {
            Ok(r) => {
                let ttl = Duration::from_millis(r.ttl_ms);
                // The lease lives at least its TTL after this renewal was sent.
                sure_until = sent + ttl;
                acknowledged = Some(ttl);
                failures = 0;
                match out {
                    Output::Json => output::json_line(&r)?,
                    Output::Table => output::line(&format!(
                        "lease={} ttl={} remaining={}",
                        r.id,
                        show_ms(r.ttl_ms),
                        show_ms(r.remaining_ms)
                    ))?,
                }
                tokio::time::sleep(ttl / 3).await;
            }
            Err(e) if e.is_lease_not_found() => {
                return Err(Failure::Local(format!(
                    "lease {id} is lost: the cluster does not have it (it expired, was revoked, or never \
                     existed): {e}"
                )));
            }
            Err(e) if transient(&e) => {
                let left = sure_until.saturating_duration_since(Instant::now());
                eprintln!("warning: renewing lease {id} failed ({e}); retrying for up to {left:.1?}");
                client.next_endpoint();
                tokio::time::sleep(backoff(failures).min(left)).await;
                failures += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_arguments() {
        assert_eq!(parse_ttl("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_ttl("750ms"), Ok(Duration::from_millis(750)));
        assert_eq!(parse_ttl("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_ttl("2.5"), Ok(Duration::from_millis(2500)));
        for bad in ["0", "0s", "-5s", "-5", "ten", "10x", "10 s", "s", "", "0.0001", "1.5ms"] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn durations_for_people() {
        assert_eq!(show_ms(10_000), "10s");
        assert_eq!(show_ms(120_000), "2m");
        assert_eq!(show_ms(7_200_000), "2h");
        assert_eq!(show_ms(9_873), "9.873s");
        assert_eq!(show_ms(9_870), "9.87s");
        assert_eq!(show_ms(750), "750ms");
        assert_eq!(show_ms(0), "0s");
    }
}
