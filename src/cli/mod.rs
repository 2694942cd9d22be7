//! The command line: `palisade serve` runs a node; every other subcommand is a client.

mod auth;
mod compact;
mod elect;
mod fence;
pub(crate) mod kv;
mod lease;
mod lock;
mod member;
mod output;
mod serve;
mod snapshot;
mod status;

use clap::{Parser, Subcommand};

/// Palisade: a replicated coordination service (hierarchical MVCC keys, leases, watches, locks
/// and elections over HTTP/JSON).
#[derive(Parser, Debug)]
#[command(name = "palisade", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Commands,
}

#[derive(Subcommand, Debug)]
pub enum Commands {
    /// Run a node.
    Serve(crate::config::ServeFlags),
    /// Read, write, delete and list keys.
    Kv(kv::KvArgs),
    /// Grant, keep alive, revoke, list and show leases.
    Lease(lease::LeaseArgs),
    /// Run a command while holding a lock (`palisade lock NAME -- CMD...`), with its fencing
    /// token in the command's environment; list and show locks.
    Lock(lock::LockArgs),
    /// Campaign in an election and hold leadership until Ctrl-C (`palisade elect NAME
    /// VALUE`), or follow who leads (`palisade elect --observe NAME`).
    Elect(elect::ElectArgs),
    /// Check a fencing token (`palisade fence check NAME TOKEN`).
    Fence(fence::FenceArgs),
    /// Show the cluster: members, roles, leader, term and revision.
    Status(status::StatusArgs),
    /// List the members, add a learner, promote it, remove or move a member (admin).
    Member(member::MemberArgs),
    /// Drop the history below a revision (or keep the last N revisions).
    Compact(compact::CompactArgs),
    /// Mint client tokens for a cluster with client auth on (`palisade auth token`).
    Auth(auth::AuthArgs),
    /// Back up the cluster's state (`save`), check a backup (`status`), and seed a new
    /// cluster's data dirs from one (`restore`).
    Snapshot(snapshot::SnapshotArgs),
}

/// Parses the command line and runs the subcommand.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Serve(args) => serve::run(args),
        Commands::Kv(args) => kv::run(args),
        Commands::Lease(args) => lease::run(args),
        Commands::Lock(args) => lock::run(args),
        Commands::Elect(args) => elect::run(args),
        Commands::Fence(args) => fence::run(args),
        Commands::Status(args) => status::run(args),
        Commands::Member(args) => member::run(args),
        Commands::Compact(args) => compact::run(args),
        Commands::Auth(args) => auth::run(args),
        Commands::Snapshot(args) => snapshot::run(args),
    }
}
