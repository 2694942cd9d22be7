//! `palisade status`: the cluster as the answering member sees it.

use std::process::ExitCode;

use clap::Args;

use super::output::{self, ClientArgs, Output};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

pub fn run(args: StatusArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let s = client.cluster().await?;
        if args.client.output == Output::Json {
            return output::json(&s);
        }
        let none = || "none".to_string();
        let mut text = format!(
            "cluster_id: {}\nleader: {}\nterm: {}\nrevision: {}\ncompact_revision: {}\nanswered_by: node {} ({})\n\n",
            s.cluster_id,
            s.leader.map_or_else(none, |l| l.to_string()),
            s.term,
            s.revision,
            s.compact_revision,
            s.node_id,
            s.meta.endpoint,
        );
        let rows: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.role.clone(),
                    if s.leader == Some(m.id) { "*".into() } else { String::new() },
                    m.peer_url.clone(),
                    if m.client_url.is_empty() { "-".into() } else { m.client_url.clone() },
                ]
            })
            .collect();
        text.push_str(&output::table(&["ID", "ROLE", "LEADER", "PEER URL", "CLIENT URL"], &rows));
        output::line(&text)
    })
}
