//! `palisade fence check NAME [TOKEN]`: whether a fencing token is still a current holder's
//! of a lock (or the leader's of an election), as a resource asks before it accepts a
//! write (Chubby's CheckSequencer).

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{self, ClientArgs, Failure, Output};
use crate::client::{Client, Fence};

#[derive(Args, Debug)]
pub struct FenceArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: FenceCommand,
}

#[derive(Subcommand, Debug)]
pub enum FenceCommand {
    /// Check a fencing token: prints `valid name=N token=T` (exit 0), or `stale name=N
    /// token=T current_token=C` (`none` when nobody holds it; exit 1). `-o json`: the
    /// server's reply.
    Check(CheckArgs),
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// The lock's (or election's) name.
    pub name: String,
    /// The fencing token to check (default: PALISADE_FENCING_TOKEN, which `palisade lock`
    /// gives the command it runs).
    #[arg(env = "PALISADE_FENCING_TOKEN")]
    pub token: u64,
}

pub fn run(args: FenceArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let out = args.client.output;
        match args.command {
            FenceCommand::Check(a) => check(&client, out, a).await,
        }
    })
}

async fn check(client: &Client, out: Output, a: CheckArgs) -> Result<(), Failure> {
    match client.fence_check(&a.name, a.token).await? {
        Fence::Valid(v) => match out {
            Output::Json => output::json(&v),
            Output::Table => output::line(&format!("valid name={} token={}", a.name, v.token)),
        },
        Fence::Stale { token, current_token, body } => {
            match out {
                Output::Json => output::json(&body)?,
                Output::Table => {
                    let current = current_token.map_or_else(|| "none".to_string(), |t| t.to_string());
                    output::line(&format!("stale name={} token={token} current_token={current}", a.name))?
                }
            }
            Err(Failure::Exit(1))
        }
    }
}
