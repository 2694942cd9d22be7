//! `palisade status`: every member of the cluster as it sees itself: the member list comes
//! from the first endpoint that answers, then each member is asked at its own client URL
//! (all at once, each within the timeout). Exits 1 when a member cannot be reached.

use std::process::ExitCode;

use clap::Args;
use serde::Serialize;

use super::output::{self, ClientArgs, Failure, Output};
use crate::client::{self, Client};
use crate::wire::ClusterResponse;

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// One member, as the cluster lists it and as it answered (or why it did not).
#[derive(Debug, Serialize)]
struct MemberRow {
    id: u64,
    client_url: String,
    peer_url: String,
    role: String,
    reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    leader: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    term: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    applied_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    revision: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    store_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    version: Option<String>,
}

pub fn run(args: StatusArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let view = client.cluster().await?;
        let asks = view.members.iter().map(|m| {
            let args = &args.client;
            async move {
                if m.client_url.is_empty() {
                    return Err("no client URL published yet".to_string());
                }
                ask(args, &m.client_url).await
            }
        });
        let answers = futures::future::join_all(asks).await;
        let members: Vec<MemberRow> = view
            .members
            .iter()
            .zip(answers)
            .map(|(m, answer)| {
                let mut row = MemberRow {
                    id: m.id,
                    client_url: m.client_url.clone(),
                    peer_url: m.peer_url.clone(),
                    role: m.role.clone(),
                    reachable: answer.is_ok(),
                    error: None,
                    leader: None,
                    term: None,
                    applied_index: None,
                    revision: None,
                    store_bytes: None,
                    version: None,
                };
                match answer {
                    Ok(s) if s.node_id != m.id => {
                        row.reachable = false;
                        row.error = Some(format!("node {} answers at this URL", s.node_id));
                    }
                    Ok(s) => {
                        row.leader = s.leader;
                        row.term = Some(s.term);
                        row.applied_index = Some(s.applied_index);
                        row.revision = Some(s.revision);
                        row.store_bytes = Some(s.store_bytes);
                        row.version = Some(s.version);
                    }
                    Err(e) => row.error = Some(e),
                }
                row
            })
            .collect();
        let all_reachable = members.iter().all(|m| m.reachable);
        if args.client.output == Output::Json {
            // The answering node's view, each member with what it answered itself.
            let mut v = serde_json::to_value(&view.body)
                .map_err(|e| Failure::Local(format!("cannot encode JSON: {e}")))?;
            v["members"] = serde_json::to_value(&members)
                .map_err(|e| Failure::Local(format!("cannot encode JSON: {e}")))?;
            output::json(&v)?;
        } else {
            output::line(&render(&view, &members))?;
        }
        if all_reachable {
            Ok(())
        } else {
            Err(Failure::Exit(1))
        }
    })
}

/// `GET /v1/cluster` at `url` alone, with the same credentials.
async fn ask(args: &ClientArgs, url: &str) -> Result<ClusterResponse, String> {
    let one = ClientArgs { endpoints: vec![url.to_string()], ..args.clone() };
    let c: Client = one.client().map_err(|e| match e {
        Failure::Client(e) => e.to_string(),
        Failure::Local(m) => m,
        other => format!("{other:?}"),
    })?;
    match c.cluster().await {
        Ok(r) => Ok(r.body),
        Err(client::Error::Api { code, message, .. }) => Err(format!("{code}: {message}")),
        Err(e) => Err(e.to_string()),
    }
}

fn render(r: &client::Reply<ClusterResponse>, members: &[MemberRow]) -> String {
    let none = || "none".to_string();
    let dash = || "-".to_string();
    let mut text = format!(
        "cluster_id: {}\nleader: {}\nterm: {}\nrevision: {}\ncompact_revision: {}\nanswered_by: node {} ({})\n\n",
        r.cluster_id,
        r.leader.map_or_else(none, |l| l.to_string()),
        r.term,
        r.revision,
        r.compact_revision,
        r.node_id,
        r.meta.endpoint,
    );
    let rows: Vec<Vec<String>> = members
        .iter()
        .map(|m| {
            let n = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
            vec![
                m.id.to_string(),
                m.role.clone(),
                if r.leader == Some(m.id) { "*".into() } else { String::new() },
                if m.client_url.is_empty() { dash() } else { m.client_url.clone() },
                m.peer_url.clone(),
                n(m.term),
                n(m.applied_index),
                n(m.revision),
                m.store_bytes.map_or_else(dash, human_bytes),
                m.version.clone().unwrap_or_else(dash),
                match &m.error {
                    None => "ok".into(),
                    Some(e) => format!("unreachable: {e}"),
                },
            ]
        })
        .collect();
    text.push_str(&output::table(
        &[
            "ID",
            "ROLE",
            "LEADER",
            "CLIENT URL",
            "PEER URL",
            "TERM",
            "APPLIED",
            "REVISION",
            "STORE",
            "VERSION",
            "STATUS",
        ],
        &rows,
    ));
    text
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 << 30), "5.0 GiB");
    }
}
