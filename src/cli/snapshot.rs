//! `palisade snapshot save|status|restore`: backups of a cluster's state.
//!
//! - `save FILE` downloads a snapshot from a member into `FILE.part`, fsyncs it, checks it
//!   (checksum, and that it decodes whole) and only then renames it to `FILE`: `FILE` is a
//!   complete, checked backup or is not there.
//! - `status FILE` checks a backup file locally (no server) and says what it holds.
//! - `restore FILE --data-dir DIR --node-id N --initial-cluster ...` seeds an empty data dir
//!   for one member of a new cluster (run it once per member with the same file and
//!   `--initial-cluster`, then start each with `palisade serve`).
//!
//! Exit codes: 0 done; 1 the file is damaged, the server refused, or a local step failed
//! (nothing is left at `FILE`, nothing is written to `DIR`); 2 no endpoint could be reached.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::output::{self, ClientArgs, Failure, Output};
use crate::node::BackupInfo;

#[derive(Args, Debug)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: SnapshotCommand,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Download a snapshot of the cluster's state (needs an admin token when client auth
    /// is on) into FILE, checked before it is put in place.
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
    },
    /// Check a snapshot file and show what it holds (local: no server needed). Exit code 1
    /// when it is truncated or damaged.
    Status {
        /// The snapshot file.
        file: PathBuf,
    },
    /// Seed an empty data dir for one member of a new cluster from a snapshot file.
    Restore(RestoreArgs),
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The snapshot file (from `palisade snapshot save`).
    pub file: PathBuf,
    /// The data dir to create (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// This member's id in the new cluster.
    #[arg(long, value_name = "N")]
    pub node_id: u64,
    /// The new cluster's members, as `palisade serve` takes them (`1=http://a:7380,...`);
    /// the same for every member restored.
    #[arg(long, value_name = "ID=PEER_URL,...")]
    pub initial_cluster: String,
}

pub fn run(args: SnapshotArgs) -> ExitCode {
    let out = args.client.output;
    output::run(async move {
        match args.command {
            SnapshotCommand::Save { file } => save(&args.client, &file).await,
            SnapshotCommand::Status { file } => status(&file, out),
            SnapshotCommand::Restore(r) => restore(&r, out),
        }
    })
}

fn local(e: impl std::fmt::Display) -> Failure {
    Failure::Local(e.to_string())
}

/// `FILE.part`, beside `FILE`.
fn part_of(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// The directory `file` is in.
fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

#[derive(Serialize)]
struct Saved<'a> {
    file: &'a Path,
    endpoint: String,
    #[serde(flatten)]
    info: BackupInfo,
}

async fn save(client_args: &ClientArgs, file: &Path) -> Result<(), Failure> {
    let client = client_args.client()?;
    let part = part_of(file);
    let result = async {
        let f = std::fs::File::create(&part)
            .map_err(|e| local(format!("cannot create {}: {e}", part.display())))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let download = client.snapshot(&mut w).await?;
        let f = w.into_inner().map_err(|e| local(format!("writing {}: {}", part.display(), e.error())))?;
        f.sync_all().map_err(|e| local(format!("syncing {}: {e}", part.display())))?;
        drop(f);
        // Checked whole before it takes the name: a broken download never looks like a backup.
        let info = tokio::task::spawn_blocking({
            let part = part.clone();
            move || crate::node::inspect(&part)
        })
        .await
        .map_err(local)?
        .map_err(|e| local(format!("the downloaded snapshot is unusable: {e}")))?;
        if info.revision != download.revision {
            return Err(local(format!(
                "the downloaded snapshot holds revision {}, but the server announced {}",
                info.revision, download.revision
            )));
        }
        std::fs::rename(&part, file)
            .and_then(|()| std::fs::File::open(dir_of(file))?.sync_all())
            .map_err(|e| local(format!("cannot move {} to {}: {e}", part.display(), file.display())))?;
        Ok((download, info))
    }
    .await;
    let (download, info) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    match client_args.output {
        Output::Json => output::json(&Saved { file, endpoint: download.endpoint, info }),
        Output::Table => output::line(&format!(
            "saved {} (from {}): revision={} keys={} bytes={} sha256={}",
            file.display(),
            download.endpoint,
            info.revision,
            info.keys,
            info.bytes,
            info.sha256
        )),
    }
}

fn status(file: &Path, out: Output) -> Result<(), Failure> {
    let info = crate::node::inspect(file).map_err(local)?;
    match out {
        Output::Json => output::json(&info),
        Output::Table => output::line(&describe(&info)),
    }
}

fn describe(info: &BackupInfo) -> String {
    format!(
        "revision: {}\ncompact_revision: {}\nkeys: {}\nleases: {}\nlocks: {}\nformat_version: {}\nbytes: {}\nsha256: {}\nchecksum ok",
        info.revision,
        info.compact_revision,
        info.keys,
        info.leases,
        info.locks,
        info.format_version,
        info.bytes,
        info.sha256
    )
}

fn restore(r: &RestoreArgs, out: Output) -> Result<(), Failure> {
    let restored = crate::node::restore(&r.file, &r.data_dir, r.node_id, &r.initial_cluster)
        .map_err(|e| local(format!("{e:#}")))?;
    match out {
        Output::Json => output::json(&restored),
        Output::Table => output::line(&format!(
            "restored {} as node {} of new cluster {}\n{}\nstart it with: palisade serve --data-dir {} --node-id {} --initial-cluster {}",
            restored.data_dir.display(),
            restored.node_id,
            restored.cluster_id,
            describe(&restored.backup),
            restored.data_dir.display(),
            restored.node_id,
            r.initial_cluster
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_part_file_sits_beside_the_file() {
        assert_eq!(part_of(Path::new("/b/x.snap")), PathBuf::from("/b/x.snap.part"));
        assert_eq!(dir_of(Path::new("x.snap")), PathBuf::from("."));
        assert_eq!(dir_of(Path::new("/b/x.snap")), PathBuf::from("/b"));
    }
}
