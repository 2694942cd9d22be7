//! `palisade elect NAME VALUE` and `palisade elect --observe NAME`.
//!
//! A candidate grants itself a lease of `--ttl`, keeps it alive (see [`LeaseKeeper`]) and
//! campaigns under it until it leads (a campaign the server ends after its wait is sent
//! again, unless `--wait` bounds the whole wait). Meanwhile it observes the election and
//! prints every change. Leadership is lost when the lease is lost or when the election is
//! observed led by another (or by nobody) at a revision after the candidate's own grant:
//! the command then says so and exits 1. SIGINT and SIGTERM make it resign (and revoke its
//! lease) and exit 0.
//!
//! Lines on stdout, one per change: `leader name=N value="V" token=T owner=O revision=R`,
//! `no_leader name=N revision=R`, and for the candidate itself `elected ...` (with the same
//! fields) and `resigned name=N`. With `-o json`: the server's observed events as they came
//! (`{"leader": {...}}`, `{"no_leader": {...}}`), `{"elected": {...}}` and
//! `{"resigned": {...}}`, one per line.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use super::lease::parse_ttl;
use super::lock::{parse_wait, NOT_ACQUIRED};
use super::output::{self, ClientArgs, Failure, Output};
use crate::client::{
    self, CampaignOptions, Client, ElectionEvent, Leader, LeaseKeeper, ObserveUpdate, OwnerLease,
};

/// The longest wait the server takes for one campaign request.
const MAX_CAMPAIGN_WAIT: Duration = Duration::from_secs(600);

#[derive(Args, Debug)]
#[command(after_long_help = "\
Exit status: 0 after SIGINT or SIGTERM (it resigned); 1 when leadership (or the candidacy)
was lost, or on an error; 3 when not elected within --wait; 2 when no endpoint could be
reached or the command line is wrong.")]
pub struct ElectArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The election's name: 1 to 128 characters of A-Z a-z 0-9 . _ -
    pub name: String,
    /// What this candidate announces once it leads (its address, say).
    #[arg(required_unless_present = "observe")]
    pub value: Option<String>,
    /// Only print the leader now and every change, until Ctrl-C; do not campaign.
    #[arg(long, conflicts_with_all = ["value", "ttl", "wait"])]
    pub observe: bool,
    /// The TTL of the candidate's lease: how long leadership outlives this command when it
    /// can no longer renew it.
    #[arg(long, value_name = "TTL", value_parser = parse_ttl, default_value = "15s")]
    pub ttl: Duration,
    /// Give up (exit 3) when not elected within this (default: wait as long as it takes).
    #[arg(long, value_name = "DURATION", value_parser = parse_wait)]
    pub wait: Option<Duration>,
    /// After this long without news, ask the node serving the observation whether it is
    /// still there (and in touch with a quorum); if not, observe via the next endpoint.
    #[arg(long, value_name = "DURATION", value_parser = output::parse_duration, default_value = "5s")]
    pub probe: Duration,
}

pub fn run(args: ElectArgs) -> ExitCode {
    output::run(async move {
        let client = args.client.client()?;
        let out = args.client.output;
        if args.observe {
            observe(&client, out, &args).await
        } else {
            campaign(&client, out, &args).await
        }
    })
}

/// A value for a line: quoted and escaped (`value="node-a:8080"`), or as base64.
fn value_field(l: &Leader) -> String {
    match (&l.value, &l.value_base64) {
        (Some(v), _) => format!("value={v:?}"),
        (None, Some(b)) => format!("value_base64={b}"),
        (None, None) => "value=\"\"".into(),
    }
}

/// `leader name=N value="V" token=T owner=O revision=R` (with another first word).
fn leader_line(word: &str, l: &Leader) -> String {
    format!(
        "{word} name={} {} token={} owner={} revision={}",
        l.name,
        value_field(l),
        l.fencing_token,
        l.owner,
        l.revision
    )
}

fn event_line(e: &ElectionEvent) -> String {
    match e {
        ElectionEvent::Leader(l) => leader_line("leader", l),
        ElectionEvent::NoLeader(n) => format!("no_leader name={} revision={}", n.name, n.revision),
    }
}

/// Prints an observed event: the server's line in JSON, else a human line.
fn print_event(out: Output, event: &ElectionEvent, json: &str) -> Result<(), Failure> {
    match out {
        Output::Json => output::line(json),
        Output::Table => output::line(&event_line(event)),
    }
}

/// Starts the observer in a task of its own; its updates (or its final error) come on the
/// channel.
fn start_observer(
    client: &Client,
    name: &str,
    probe: Duration,
) -> Result<tokio::sync::mpsc::Receiver<Result<ObserveUpdate, client::Error>>, Failure> {
    let mut observer = client.observe(name, probe)?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let update = observer.next().await;
            let last = update.is_err();
            if tx.send(update).await.is_err() || last {
                return;
            }
        }
    });
    Ok(rx)
}

async fn observe(client: &Client, out: Output, a: &ElectArgs) -> Result<(), Failure> {
    let mut updates = start_observer(client, &a.name, a.probe)?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Failure::Local(format!("cannot handle SIGINT: {e}")))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Failure::Local(format!("cannot handle SIGTERM: {e}")))?;
    loop {
        let update = tokio::select! {
            u = updates.recv() => u,
            _ = sigint.recv() => return Ok(()),
            _ = sigterm.recv() => return Ok(()),
        };
        match update {
            None => return Err(Failure::Local("the observation ended".into())),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(ObserveUpdate::Notice(n))) => eprintln!("elect: {n}"),
            Some(Ok(ObserveUpdate::Event { event, json })) => print_event(out, &event, &json)?,
        }
    }
}

/// What the campaign loop learnt.
enum Outcome {
    /// SIGINT or SIGTERM: resign.
    Stop,
    /// Leadership (or the candidacy) was lost: exit 1 with this message.
    Lost(String),
    /// Not elected within `--wait`.
    NotElected,
}

async fn campaign(client: &Client, out: Output, a: &ElectArgs) -> Result<(), Failure> {
    let name = a.name.as_str();
    let value = a.value.clone().unwrap_or_default();
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| Failure::Local(format!("cannot handle SIGINT: {e}")))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Failure::Local(format!("cannot handle SIGTERM: {e}")))?;
    let sent = Instant::now();
    let grant = client.lease_grant(a.ttl, None, Some(&client::new_idempotency_key())).await?;
    let lease = grant.id;
    let mut keeper = LeaseKeeper::new(client.clone(), lease, Duration::from_millis(grant.ttl_ms), sent);
    let mut updates = start_observer(client, name, a.probe)?;
    let until = a.wait.map(|w| Instant::now() + w);

    // One campaign request: the server holds it up to its wait.
    let request = |left: Option<Duration>| {
        let wait = left.map_or(MAX_CAMPAIGN_WAIT, |l| l.min(MAX_CAMPAIGN_WAIT));
        // Whole milliseconds, as the wire takes them.
        let wait = Duration::from_millis(wait.as_millis() as u64);
        let opts = CampaignOptions { lease: OwnerLease::Id(lease), wait: Some(wait), idempotency_key: None };
        client.campaign(name, value.as_bytes(), opts)
    };
    let pending = request(a.wait);
    tokio::pin!(pending);
    let mut warn = |m: String| eprintln!("elect: warning: {m}");
    let keep = keeper.keep(&mut warn);
    tokio::pin!(keep);
    // Our grant, once elected.
    let mut elected: Option<Leader> = None;
    let outcome = loop {
        tokio::select! {
            r = &mut pending, if elected.is_none() => match r {
                Ok(leader) => {
                    let leader = leader.body;
                    print_elected(out, &leader)?;
                    elected = Some(leader);
                }
                Err(e) if e.code() == Some("lock_timeout") => {
                    let left = until.map(|u| u.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        break Outcome::NotElected;
                    }
                    pending.set(request(left));
                }
                Err(e) => {
                    revoke(client, lease).await;
                    return Err(e.into());
                }
            },
            lost = &mut keep => {
                let what = if elected.is_some() { "leadership" } else { "the candidacy" };
                break Outcome::Lost(format!("{what} of {name} is lost: {lost}"));
            }
            u = updates.recv() => match u {
                None => break Outcome::Lost("the observation ended".into()),
                Some(Err(e)) => {
                    // Without an observation a lost leadership could go unnoticed.
                    revoke(client, lease).await;
                    return Err(e.into());
                }
                Some(Ok(ObserveUpdate::Notice(n))) => eprintln!("elect: {n}"),
                Some(Ok(ObserveUpdate::Event { event, json })) => {
                    if let ElectionEvent::Leader(l) = &event {
                        if l.lease == lease {
                            // This candidate leads: said once, whichever news comes first.
                            if elected.is_none() {
                                print_elected(out, l)?;
                                elected = Some(l.clone());
                            }
                            continue;
                        }
                    }
                    print_event(out, &event, &json)?;
                    if let Some(me) = &elected {
                        if event.revision() >= me.fencing_token {
                            break Outcome::Lost(format!(
                                "leadership of {name} is lost: {}",
                                event_line(&event)
                            ));
                        }
                    }
                }
            },
            _ = sigint.recv() => break Outcome::Stop,
            _ = sigterm.recv() => break Outcome::Stop,
        }
    };
    match outcome {
        Outcome::Stop => {
            if let Some(me) = &elected {
                match client.resign(name, &me.owner, Some(&client::new_idempotency_key())).await {
                    Ok(r) => {
                        let body =
                            serde_json::json!({"name": name, "owner": me.owner, "revision": r.revision});
                        match out {
                            Output::Json => output::json_line(&serde_json::json!({ "resigned": body }))?,
                            Output::Table => {
                                output::line(&format!("resigned name={name} revision={}", r.revision))?
                            }
                        }
                    }
                    Err(e) if e.code() == Some("not_leader") => {}
                    Err(e) => eprintln!("elect: warning: resigning failed ({e}); revoking the lease instead"),
                }
            }
            revoke(client, lease).await;
            Ok(())
        }
        Outcome::Lost(why) => {
            revoke(client, lease).await;
            Err(Failure::Local(why))
        }
        Outcome::NotElected => {
            revoke(client, lease).await;
            eprintln!(
                "elect: {name}: not elected within {} (lock_timeout)",
                super::lease::show_ms(a.wait.unwrap_or_default().as_millis() as u64)
            );
            Err(Failure::Exit(NOT_ACQUIRED))
        }
    }
}

fn print_elected(out: Output, l: &Leader) -> Result<(), Failure> {
    match out {
        Output::Json => output::json_line(&serde_json::json!({ "elected": l })),
        Output::Table => output::line(&leader_line("elected", l)),
    }
}

/// Ends the candidate's lease (and with it any candidacy or leadership), best effort.
async fn revoke(client: &Client, lease: u64) {
    match client.lease_revoke(lease, Some(&client::new_idempotency_key())).await {
        Ok(_) => {}
        Err(e) if e.is_lease_not_found() => {}
        Err(e) => eprintln!("elect: warning: revoking lease {lease} failed ({e}); it ends within its TTL"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines() {
        let l = Leader {
            name: "db".into(),
            value: Some("node a:1".into()),
            value_base64: None,
            owner: "3-4".into(),
            lease: 3,
            fencing_token: 4,
            revision: 5,
        };
        assert_eq!(
            leader_line("leader", &l),
            "leader name=db value=\"node a:1\" token=4 owner=3-4 revision=5"
        );
        let b = Leader { value: None, value_base64: Some("/w==".into()), ..l };
        assert_eq!(
            leader_line("elected", &b),
            "elected name=db value_base64=/w== token=4 owner=3-4 revision=5"
        );
        let n = ElectionEvent::NoLeader(client::NoLeader { name: "db".into(), revision: 9 });
        assert_eq!(event_line(&n), "no_leader name=db revision=9");
    }
}
