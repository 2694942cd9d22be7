//! `palisade kv get|put|del|ls|txn|watch`: keys from the command line.
//!
//! Every write carries an idempotency key (`--idempotency-key`, or one made up per
//! command), so the client's own retries after a timeout or an unavailable leader never
//! apply a write twice. `watch` prints changes as they come and resumes by itself on
//! another endpoint when its connection is lost (see [`crate::client::Watcher`]).

use std::ffi::OsString;
use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::output::{self, ClientArgs, Failure, Output};
use crate::client::{
    self, ChildrenOptions, Client, Conditions, DeleteOptions, GetOptions, ListOptions, PutOptions,
    WatchOptions, WatchUpdate,
};
use crate::wire::watch::{WatchEvent, WatchMessage};

#[derive(Args, Debug)]
pub struct KvArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: KvCommand,
}

#[derive(Subcommand, Debug)]
pub enum KvCommand {
    /// Print a key's value (`-o json`: the whole key-value). Exit code 1 when it is missing.
    Get(GetArgs),
    /// Write a key. Prints `OK revision=N` (and `lease=ID` under a lease); a failed condition
    /// prints the current key and exits 1.
    Put(PutArgs),
    /// Delete a key (or a subtree with --recursive). Prints `deleted=N revision=R`.
    #[command(visible_alias = "delete", alias = "rm")]
    Del(DelArgs),
    /// List the children of a path (`name/` when it has children), or with --recursive the
    /// whole subtree as `key = value` lines.
    #[command(visible_alias = "list")]
    Ls(LsArgs),
    /// Run a transaction given as JSON (a file, or `-`/nothing for stdin):
    /// `{"compare": [...], "success": [...], "failure": [...]}`. Prints each result; exit
    /// code 1 when the compares failed (the failure branch ran).
    Txn(TxnArgs),
    /// Print the changes to a key (or a subtree) as they happen, until Ctrl-C; a lost
    /// connection is resumed on the next endpoint.
    ///
    /// One line per changed key: `PUT KEY = VALUE revision=R` or `DELETE KEY revision=R`
    /// (`-o json`: one line per message, the server's JSON; see below).
    ///
    /// A lost connection (a node gone, a broken stream, or one silent for 3 progress
    /// intervals) is resumed on the next endpoint, round-robin, just after the last revision
    /// printed or confirmed by the server: no revision is printed twice or skipped. Each
    /// resume is one `watch:` line on stderr; reopening is retried after a transport error,
    /// 429, 503 or 504, with a growing pause (at most 2 s). `--timeout` bounds the wait for
    /// each reply's head and, until the watch first starts, how long starting is retried.
    /// Exits 1 when the server refuses the watch (a bad key, a revision in the future, ...)
    /// or when the history to resume from was compacted; 2 when no endpoint can be reached
    /// at the start.
    Watch(WatchArgs),
}

/// The idempotency key of a write.
#[derive(Args, Debug)]
pub struct OnceArgs {
    /// Apply the write at most once under this key (default: a new random key per command,
    /// so the command's own retries never apply it twice).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

impl OnceArgs {
    pub fn key(&self) -> String {
        self.idempotency_key.clone().unwrap_or_else(client::new_idempotency_key)
    }
}

#[derive(Args, Debug)]
pub struct TxnArgs {
    /// The transaction's JSON file (`-` or nothing: stdin).
    pub file: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub once: OnceArgs,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// The key, e.g. `/app/db/leader`.
    pub key: String,
    /// Read the key as of this revision.
    #[arg(long)]
    pub revision: Option<u64>,
    /// Read the local replica of the answering node (fast, possibly stale).
    #[arg(long)]
    pub serializable: bool,
}

/// Write conditions; all given ones must hold.
#[derive(Args, Debug)]
pub struct CondArgs {
    /// Only if the key's version is N (0: only if the key does not exist).
    #[arg(long, value_name = "N")]
    pub if_version: Option<u64>,
    /// Only if the key was last modified at revision N.
    #[arg(long, value_name = "N")]
    pub if_mod_revision: Option<u64>,
    /// Only if the key's current value is V.
    #[arg(long, value_name = "V")]
    pub if_value: Option<String>,
}

#[derive(Args, Debug)]
pub struct PutArgs {
    /// The key, e.g. `/app/db/leader`.
    pub key: String,
    /// The value; `-` reads it from stdin (bytes as they are; binary is fine).
    pub value: OsString,
    #[command(flatten)]
    pub cond: CondArgs,
    /// Also print the previous key-value.
    #[arg(long)]
    pub prev_kv: bool,
    /// Create the next sequential child of KEY (`KEY/00000000000000000001`, ...) instead of
    /// writing KEY; prints the key created.
    #[arg(long, conflicts_with_all = ["prev_kv", "if_version", "if_mod_revision", "if_value"])]
    pub sequential: bool,
    /// Attach the key to lease ID: the key is deleted when the lease ends.
    #[arg(long, value_name = "ID", conflicts_with = "ttl")]
    pub lease: Option<u64>,
    /// Grant a lease of this TTL (`10s`, `750ms`, `2m`, a number of seconds) and attach the
    /// key to it; prints the lease id (keep it alive with `palisade lease keepalive ID`). The
    /// grant's idempotency key is the write's with `.lease` appended; when the write is
    /// refused, the lease is revoked again.
    #[arg(long, value_name = "TTL", value_parser = super::lease::parse_ttl)]
    pub ttl: Option<Duration>,
    #[command(flatten)]
    pub once: OnceArgs,
}

#[derive(Args, Debug)]
pub struct DelArgs {
    /// The key, e.g. `/app/db/leader`.
    pub key: String,
    /// Delete the key and everything below it.
    #[arg(long, short = 'r')]
    pub recursive: bool,
    #[command(flatten)]
    pub cond: CondArgs,
    /// Also print the deleted key-values.
    #[arg(long)]
    pub prev_kv: bool,
    #[command(flatten)]
    pub once: OnceArgs,
}

#[derive(Args, Debug)]
pub struct LsArgs {
    /// The path to list.
    #[arg(default_value = "/")]
    pub key: String,
    /// List the key and its whole subtree (`key = value` lines), following every page.
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// With --recursive: print keys only.
    #[arg(long, requires = "recursive")]
    pub keys_only: bool,
    /// Entries per request (the listing still follows every page).
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// List as of this revision.
    #[arg(long)]
    pub revision: Option<u64>,
    /// Read the local replica of the answering node (fast, possibly stale).
    #[arg(long)]
    pub serializable: bool,
}

#[derive(Args, Debug)]
#[command(after_long_help = "\
Output (-o json): one line per message, as the server sent it:
  {\"revision\":R,\"events\":[{\"type\":\"put\",\"kv\":{...},\"prev_kv\":{...}},...]}
      every change of one revision
  {\"progress\":{\"revision\":N}}
      every change up to N was printed (to continue later: --from N+1); the first line
      of a watch from now, then printed only when N is above the last revision printed
Human output: one line per changed key (values with control characters are quoted and
escaped); with --prev-kv each is followed by a `  prev: ...` line. Progress is not shown.
On Ctrl-C, stderr says which --from continues where the watch stopped.")]
pub struct WatchArgs {
    /// The key, e.g. `/app/config` (with --recursive, the root of the subtree; `/` for
    /// every key).
    pub key: String,
    /// Watch the key and everything below it.
    #[arg(long, short = 'r')]
    pub recursive: bool,
    /// Print the history from this revision (inclusive), then the changes as they happen
    /// (default: from now).
    #[arg(long, value_name = "REV")]
    pub from: Option<u64>,
    /// Also show each key's previous value.
    #[arg(long)]
    pub prev_kv: bool,
    /// How often the server confirms an idle watch; after 3 times this without a word from
    /// it, the connection is taken as lost and the watch resumes on the next endpoint.
    #[arg(long, value_name = "DURATION", value_parser = output::parse_duration, default_value = "5s")]
    pub progress: Duration,
}

pub fn run(args: KvArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let out = args.client.output;
        match args.command {
            KvCommand::Get(a) => get(&client, out, a).await,
            KvCommand::Put(a) => put(&client, out, a).await,
            KvCommand::Del(a) => del(&client, out, a).await,
            KvCommand::Ls(a) => ls(&client, out, a).await,
            KvCommand::Txn(a) => txn(&client, out, a).await,
            KvCommand::Watch(a) => watch(&client, out, a).await,
        }
    })
}

async fn get(client: &Client, out: Output, a: GetArgs) -> Result<(), Failure> {
    let opts = GetOptions { revision: a.revision, consistency_serializable: a.serializable };
    let r = client.get(&a.key, opts).await?;
    match out {
        Output::Json => output::json(&r),
        Output::Table => {
            let mut bytes = r.kv.value_bytes().to_vec();
            bytes.push(b'\n');
            output::write_out(&bytes)
        }
    }
}

fn value_arg(v: OsString) -> Result<Vec<u8>, Failure> {
    if v == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .lock()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::Local(format!("cannot read the value from stdin: {e}")))?;
        return Ok(buf);
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStringExt;
        Ok(v.into_vec())
    }
    #[cfg(not(unix))]
    {
        v.into_string()
            .map(String::into_bytes)
            .map_err(|_| Failure::Local("the value is not valid Unicode; pass it on stdin with `-`".into()))
    }
}

fn conditions(c: CondArgs) -> Conditions {
    Conditions { if_version: c.if_version, if_mod_revision: c.if_mod_revision, if_value: c.if_value }
}

/// On a failed condition, prints the current key-value (stdout) before the error is reported.
fn show_conflict(out: Output, e: &client::Error) -> Result<(), Failure> {
    let Some(current) = e.current_kv() else { return Ok(()) };
    match (out, current) {
        (Output::Json, current) => output::json(&current),
        (Output::Table, Some(kv)) => output::line(&format!("current: {}", output::describe(&kv))),
        (Output::Table, None) => output::line("current: (the key does not exist)"),
    }
}

async fn put(client: &Client, out: Output, a: PutArgs) -> Result<(), Failure> {
    let value = value_arg(a.value)?;
    let once = a.once.key();
    let (lease, granted) = match a.ttl {
        Some(ttl) => {
            let grant_key = format!("{once}.lease");
            if grant_key.len() > 128 {
                return Err(Failure::Local(
                    "with --ttl, --idempotency-key is at most 122 characters (the lease is granted under KEY.lease)"
                        .into(),
                ));
            }
            let g = client.lease_grant(ttl, None, Some(&grant_key)).await?;
            (Some(g.id), Some(g.ttl_ms))
        }
        None => (a.lease, None),
    };
    let lease_note = match (lease, granted) {
        (Some(id), Some(ttl)) => format!(" lease={id} ttl={}", super::lease::show_ms(ttl)),
        (Some(id), None) => format!(" lease={id}"),
        _ => String::new(),
    };
    let r = if a.sequential {
        client.put_sequential(&a.key, &value, lease, Some(&once)).await
    } else {
        let c = conditions(a.cond);
        let opts = PutOptions {
            if_version: c.if_version,
            if_mod_revision: c.if_mod_revision,
            if_value: c.if_value,
            prev_kv: a.prev_kv,
            lease,
            idempotency_key: Some(once),
        };
        client.put(&a.key, &value, opts).await
    };
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            if let (Some(id), Some(_)) = (lease, granted) {
                revoke_unused(client, id, &e).await;
            }
            show_conflict(out, &e)?;
            return Err(e.into());
        }
    };
    match out {
        Output::Json => output::json(&r),
        Output::Table if a.sequential => {
            output::line(&format!("{} revision={}{lease_note}", r.kv.key, r.revision))
        }
        Output::Table => {
            output::line(&format!("OK revision={}{lease_note}", r.revision))?;
            if a.prev_kv {
                match &r.prev_kv {
                    Some(p) => output::line(&format!("prev: {}", output::describe(p)))?,
                    None => output::line("prev: (the key did not exist)")?,
                }
            }
            Ok(())
        }
    }
}

/// Revokes the lease `kv put --ttl` granted when the put was refused for good (a bad
/// request, a missing lease, a failed condition: what any retry of it is refused with too),
/// on a best-effort basis. After any other failure the put may have applied (an earlier
/// attempt may have, before a 503, 504, 507 or no reply), and the lease is left to its TTL.
async fn revoke_unused(client: &Client, id: u64, e: &client::Error) {
    let refused = matches!(e.status(), Some(400 | 404 | 409 | 413 | 415));
    if !refused {
        eprintln!(
            "warning: the write may or may not have applied; lease {id} is left to expire within its TTL"
        );
        return;
    }
    match client.lease_revoke(id, Some(&client::new_idempotency_key())).await {
        Ok(_) => eprintln!("lease {id} was revoked: the write did not apply"),
        Err(r) => eprintln!("warning: lease {id} could not be revoked ({r}); it expires within its TTL"),
    }
}

async fn del(client: &Client, out: Output, a: DelArgs) -> Result<(), Failure> {
    let opts = DeleteOptions {
        recursive: a.recursive,
        conditions: conditions(a.cond),
        prev_kv: a.prev_kv,
        idempotency_key: Some(a.once.key()),
    };
    let r = match client.delete(&a.key, opts).await {
        Ok(r) => r,
        Err(e) => {
            show_conflict(out, &e)?;
            return Err(e.into());
        }
    };
    match out {
        Output::Json => output::json(&r),
        Output::Table => {
            output::line(&format!("deleted={} revision={}", r.deleted, r.revision))?;
            for p in &r.prev_kvs {
                output::line(&format!("prev: {}", output::describe(p)))?;
            }
            Ok(())
        }
    }
}

async fn ls(client: &Client, out: Output, a: LsArgs) -> Result<(), Failure> {
    if a.recursive {
        let opts = ListOptions {
            limit: a.limit,
            after: None,
            keys_only: a.keys_only,
            revision: a.revision,
            serializable: a.serializable,
        };
        if out == Output::Json {
            return output::json(&client.list_all(&a.key, opts).await?);
        }
        // Page by page, printing as the pages arrive.
        let mut opts = opts;
        loop {
            let page = client.list(&a.key, opts.clone()).await?;
            let mut text = String::new();
            for kv in &page.kvs {
                text.push_str(&kv.key);
                if !a.keys_only {
                    text.push_str(" = ");
                    text.push_str(&output::display_value(kv));
                }
                text.push('\n');
            }
            output::write_out(text.as_bytes())?;
            if !page.more {
                return Ok(());
            }
            let Some(next) = page.body.next else {
                return Err(Failure::Local("the server said more keys follow but gave no page token".into()));
            };
            opts.after = Some(next);
        }
    }
    let opts =
        ChildrenOptions { limit: a.limit, after: None, revision: a.revision, serializable: a.serializable };
    if out == Output::Json {
        return output::json(&client.children_all(&a.key, opts).await?);
    }
    let mut opts = opts;
    loop {
        let page = client.children(&a.key, opts.clone()).await?;
        let mut text = String::new();
        for c in &page.children {
            text.push_str(&c.name);
            if c.has_children {
                text.push('/');
            }
            text.push('\n');
        }
        output::write_out(text.as_bytes())?;
        if !page.more {
            return Ok(());
        }
        let Some(next) = page.body.next else {
            return Err(Failure::Local("the server said more children follow but gave no page token".into()));
        };
        opts.after = Some(next);
    }
}

async fn txn(client: &Client, out: Output, a: TxnArgs) -> Result<(), Failure> {
    let text = match a.file.as_deref() {
        None => value_arg("-".into())?,
        Some(p) if p == std::path::Path::new("-") => value_arg("-".into())?,
        Some(p) => {
            std::fs::read(p).map_err(|e| Failure::Local(format!("cannot read {}: {e}", p.display())))?
        }
    };
    let req: client::TxnRequest = serde_json::from_slice(&text).map_err(|e| {
        Failure::Local(format!("the transaction is not valid JSON of the expected shape: {e}"))
    })?;
    let r = client.txn(&req, Some(&a.once.key())).await?;
    match out {
        Output::Json => output::json(&r)?,
        Output::Table => {
            let branch = if r.succeeded { "SUCCESS" } else { "FAILURE" };
            output::line(&format!("{branch} revision={}", r.revision))?;
            for result in &r.results {
                use crate::wire::txn::OpResult;
                match result {
                    OpResult::Put(p) => output::line(&format!("put {} revision={}", p.key, p.revision))?,
                    OpResult::Delete(d) => output::line(&format!("delete deleted={}", d.deleted))?,
                    OpResult::Get(g) => {
                        output::line(&format!(
                            "get {} key(s){}",
                            g.kvs.len(),
                            if g.more { ", more" } else { "" }
                        ))?;
                        for kv in &g.kvs {
                            output::line(&format!("  {} = {}", kv.key, output::display_value(kv)))?;
                        }
                    }
                }
            }
        }
    }
    if r.succeeded {
        Ok(())
    } else {
        Err(Failure::Exit(1))
    }
}

/// Text on one line: as it is, or quoted and escaped when it holds control characters.
fn one_line(s: &str) -> String {
    if s.chars().any(char::is_control) {
        format!("{s:?}")
    } else {
        s.to_string()
    }
}

/// The human lines of one revision's events.
fn change_lines(revision: u64, events: &[WatchEvent], prev_kv: bool) -> String {
    let mut text = String::new();
    for e in events {
        let prev = match e {
            WatchEvent::Put { kv, prev_kv: prev } => {
                text.push_str(&format!(
                    "PUT {} = {} revision={revision}\n",
                    one_line(&kv.key),
                    one_line(&output::display_value(kv))
                ));
                prev
            }
            WatchEvent::Delete { kv, prev_kv: prev } => {
                text.push_str(&format!("DELETE {} revision={revision}\n", one_line(&kv.key)));
                prev
            }
        };
        if prev_kv {
            match prev {
                Some(p) => text.push_str(&format!("  prev: {}\n", output::describe(p))),
                None => text.push_str("  prev: (the key did not exist)\n"),
            }
        }
    }
    text
}

async fn watch(client: &Client, out: Output, a: WatchArgs) -> Result<(), Failure> {
    let opts = WatchOptions {
        recursive: a.recursive,
        start_revision: a.from,
        prev_kv: a.prev_kv,
        progress: a.progress,
    };
    let mut watcher = client.watch(&a.key, opts)?;
    // The last revision printed (a change, or in JSON a progress message).
    let mut printed: Option<u64> = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let update = tokio::select! {
            u = watcher.next() => u?,
            r = &mut ctrl_c => {
                r.map_err(|e| Failure::Local(format!("cannot wait for Ctrl-C: {e}")))?;
                match watcher.resume_revision() {
                    Some(r) => eprintln!(
                        "watch: stopped; every change up to revision {} was printed (continue with --from {r})",
                        r - 1
                    ),
                    None => eprintln!("watch: stopped"),
                }
                return Ok(());
            }
        };
        let Some(update) = update else { return Ok(()) };
        let (message, json) = match update {
            WatchUpdate::Notice(n) => {
                eprintln!("watch: {n}");
                continue;
            }
            WatchUpdate::Message { message, json } => (message, json),
        };
        match message {
            WatchMessage::Change { revision, events } => {
                printed = Some(revision);
                match out {
                    Output::Json => output::line(&json)?,
                    Output::Table => {
                        output::write_out(change_lines(revision, &events, a.prev_kv).as_bytes())?
                    }
                }
            }
            WatchMessage::Progress { progress } => {
                if out == Output::Json && printed.is_none_or(|p| progress.revision > p) {
                    printed = Some(progress.revision);
                    output::line(&json)?;
                }
            }
            WatchMessage::Compacted { compacted } => {
                let at = watcher.resume_revision().map_or_else(String::new, |r| format!(" at revision {r}"));
                return Err(Failure::Local(format!(
                    "the watch cannot go on{at}: the history below revision {} was compacted; read the \
                     current keys again and watch from a later revision",
                    compacted.compact_revision
                )));
            }
        }
    }
}
