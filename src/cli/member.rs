//! `palisade member ls|add|promote|rm|update`: the cluster's members and changes to them
//! (admin). Each change prints the member as it left it; `-o json` prints the server's reply.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::output::{self, ClientArgs, Failure, Output};
use crate::client::Reply;
use crate::wire::MemberResponse;

#[derive(Args, Debug)]
pub struct MemberArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(subcommand)]
    pub command: MemberCommand,
}

#[derive(Subcommand, Debug)]
pub enum MemberCommand {
    /// List the members: id, role (voter or learner), leader, peer URL, client URL.
    Ls,
    /// Add a learner (it gets the log but does not vote until promoted).
    Add(AddArgs),
    /// Make a learner a voter (refused with `learner_behind` until it has caught up).
    Promote(IdArgs),
    /// Remove a member (a voter, a learner, or the leader), by id or by peer URL; its id is
    /// never used again.
    Rm(RmArgs),
    /// Move a member to new URLs; then restart it with the matching --listen-peer /
    /// --advertise-peer.
    Update(UpdateArgs),
}

#[derive(Args, Debug)]
pub struct AddArgs {
    /// The new member's node id (never one used before).
    pub id: u64,
    /// Its peer URL (`http://host:7380`).
    #[arg(long)]
    pub peer_url: String,
    /// Its client URL (`http://host:7379`).
    #[arg(long)]
    pub client_url: String,
}

#[derive(Args, Debug)]
pub struct IdArgs {
    /// The member's node id.
    pub id: u64,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    /// The member's node id, or its peer URL (`https://palisade-3.palisade-peer:7380`).
    pub member: String,
    /// Succeed, printing `not a member`, when no member has that id or peer URL (so a
    /// scripted removal can run again).
    #[arg(long)]
    pub missing_ok: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("urls").required(true).multiple(true).args(["peer_url", "client_url"])))]
pub struct UpdateArgs {
    /// The member's node id.
    pub id: u64,
    /// Its new peer URL.
    #[arg(long)]
    pub peer_url: Option<String>,
    /// Its new client URL.
    #[arg(long)]
    pub client_url: Option<String>,
}

fn show(out: Output, what: &str, r: &Reply<MemberResponse>) -> Result<(), Failure> {
    match out {
        Output::Json => output::json(r),
        Output::Table => {
            let m = &**r;
            output::line(&format!(
                "{what} member {} role={} peer_url={} client_url={}",
                m.id,
                m.role,
                m.peer_url,
                if m.client_url.is_empty() { "-" } else { &m.client_url }
            ))
        }
    }
}

pub fn run(args: MemberArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let out = args.client.output;
        match args.command {
            MemberCommand::Ls => {
                let s = client.cluster().await?;
                if out == Output::Json {
                    return output::json(&s.members);
                }
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
                output::line(&output::table(&["ID", "ROLE", "LEADER", "PEER URL", "CLIENT URL"], &rows))
            }
            MemberCommand::Add(a) => {
                show(out, "added", &client.add_member(a.id, &a.peer_url, &a.client_url).await?)
            }
            MemberCommand::Promote(a) => show(out, "promoted", &client.promote_member(a.id).await?),
            MemberCommand::Rm(a) => remove(&client, out, a).await,
            MemberCommand::Update(a) => show(
                out,
                "updated",
                &client.update_member(a.id, a.peer_url.as_deref(), a.client_url.as_deref()).await?,
            ),
        }
    })
}

/// `member rm`: by id, or by the peer URL the membership records (looked up first).
async fn remove(client: &crate::client::Client, out: Output, a: RmArgs) -> Result<(), Failure> {
    let id = match a.member.parse::<u64>() {
        Ok(id) => Some(id),
        Err(_) => {
            let url = crate::config::normalize_url(&a.member).map_err(|m| {
                Failure::Local(format!("{:?} is neither a node id nor a peer URL: {m}", a.member))
            })?;
            let members = client.cluster().await?;
            members.members.iter().find(|m| m.peer_url == url).map(|m| m.id)
        }
    };
    let removed = match id {
        Some(id) => client.remove_member(id).await.map(Some),
        None => Ok(None),
    };
    match removed {
        Ok(Some(r)) => show(out, "removed", &r),
        Ok(None) | Err(crate::client::Error::Api { status: 404, .. }) if a.missing_ok => match out {
            Output::Json => output::json(&serde_json::json!({ "member": a.member, "removed": false })),
            Output::Table => output::line(&format!("not a member: {}", a.member)),
        },
        Ok(None) => Err(Failure::Local(format!("no member has the peer URL {}", a.member))),
        Err(e) => Err(e.into()),
    }
}
