//! The command line: `palisade serve` runs a node; every other subcommand is a client.

mod compact;
pub(crate) mod kv;
mod lease;
mod output;
mod serve;
mod status;

use clap::{Parser, Subcommand};

/// Palisade: a replicated coordination service (hierarchical MVCC keys over HTTP/JSON).
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
    /// Show the cluster: members, roles, leader, term and revision.
    Status(status::StatusArgs),
    /// Drop the history below a revision (or keep the last N revisions).
    Compact(compact::CompactArgs),
}

/// Parses the command line and runs the subcommand.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Commands::Serve(args) => serve::run(args),
        Commands::Kv(args) => kv::run(args),
        Commands::Lease(args) => lease::run(args),
        Commands::Status(args) => status::run(args),
        Commands::Compact(args) => compact::run(args),
    }
}
