//! `palisade compact [REV | --keep N]`: drops the history below a revision.

use std::process::ExitCode;

use clap::Args;

use super::kv::OnceArgs;
use super::output::{self, ClientArgs, Failure, Output};

#[derive(Args, Debug)]
pub struct CompactArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// Drop the history below this revision.
    #[arg(required_unless_present = "keep", conflicts_with = "keep")]
    pub revision: Option<u64>,
    /// Compact to the current revision minus N (revisions from there on stay readable).
    #[arg(long, value_name = "N")]
    pub keep: Option<u64>,
    #[command(flatten)]
    pub once: OnceArgs,
}

pub fn run(args: CompactArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let revision = match (args.revision, args.keep) {
            (Some(r), _) => r,
            (None, Some(keep)) => client.cluster().await?.revision.saturating_sub(keep),
            (None, None) => return Err(Failure::Local("give a revision or --keep N".into())),
        };
        let r = client.compact(revision, Some(&args.once.key())).await?;
        match args.client.output {
            Output::Json => output::json(&r),
            Output::Table => {
                output::line(&format!("compact_revision={} revision={}", r.compact_revision, r.revision))
            }
        }
    })
}
