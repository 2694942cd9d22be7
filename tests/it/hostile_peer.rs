//! Hostile peer traffic against a real 3-node cluster: forged votes, appends, snapshots,
//! forwards and member records, without the cluster secret, with a wrong one, from a
//! stranger, and from a member that lies. Every one is refused, and afterwards the cluster
//! has the same term, the same data on every node, and every node is healthy.

use std::time::Duration;

use openraft::{CommittedLeaderId, EntryPayload, LogId};
use palisade::peer::{PeerKey, PeerRequest};
use palisade::raft::RaftRpc;
use palisade::store::{Command, Condition, Proposal};
use serde_json::Value;

use crate::support::process::{Cluster, ClusterOptions, Consistency};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// What one peer call got: the HTTP status and the JSON reply.
struct Answer {
    status: u16,
    body: Value,
}

/// POSTs `body` to node `to`'s peer endpoint, signed by `key` as node `from` at `time_ms`.
async fn send_raw(c: &Cluster, key: &PeerKey, from: u64, to: u64, time_ms: u64, body: Vec<u8>) -> Answer {
    let mut req = reqwest::Client::new().post(format!("{}/raft/rpc", c.peer_url(to)));
    for (name, value) in key.sign(from, to, time_ms, &body) {
        req = req.header(name, value);
    }
    let resp =
        req.body(body).timeout(Duration::from_secs(10)).send().await.expect("the peer listener answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    Answer { status, body: serde_json::from_str(&text).unwrap_or(Value::String(text)) }
}

async fn send(c: &Cluster, key: &PeerKey, from: u64, to: u64, req: &PeerRequest) -> Answer {
    send_raw(c, key, from, to, now_ms(), serde_json::to_vec(req).unwrap()).await
}

fn vote(term: u64, candidate: u64) -> PeerRequest {
    PeerRequest::Raft(RaftRpc::Vote(openraft::raft::VoteRequest {
        vote: openraft::Vote::new(term, candidate),
        last_log_id: Some(LogId::new(CommittedLeaderId::new(term, candidate), u64::MAX / 4)),
    }))
}

fn put(key: &str, value: &[u8]) -> Command {
    Command::Put {
        key: key.into(),
        sequential: false,
        value: value.to_vec(),
        lease: None,
        cond: Condition::default(),
        prev_kv: false,
    }
}

/// An append from `leader` in `term` whose entries write `/evil`, starting at `first`.
fn append(term: u64, leader: u64, first: u64, indexes: &[u64]) -> PeerRequest {
    let entries = indexes
        .iter()
        .map(|&i| openraft::Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, leader), i),
            payload: EntryPayload::Normal(Proposal::new(put("/evil", b"x"), 0)),
        })
        .collect();
    PeerRequest::Raft(RaftRpc::Append(openraft::raft::AppendEntriesRequest {
        vote: openraft::Vote::new_committed(term, leader),
        prev_log_id: first.checked_sub(1).map(|p| LogId::new(CommittedLeaderId::new(term, leader), p)),
        entries,
        leader_commit: None,
    }))
}

fn snapshot_chunk(term: u64, leader: u64) -> PeerRequest {
    PeerRequest::Raft(RaftRpc::SnapshotChunk {
        vote: openraft::Vote::new_committed(term, leader),
        meta: openraft::SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, leader), 1_000_000)),
            last_membership: Default::default(),
            snapshot_id: "forged".into(),
        },
        offset: 0,
        total: 2,
        done: true,
        data: b"{}".to_vec(),
    })
}

/// Term, revision and the whole key space as each node sees them.
async fn state(c: &Cluster) -> Vec<(u64, u64, Vec<(String, Value)>)> {
    let mut out = Vec::new();
    for id in c.ids() {
        let view = c.cluster_view(id).await.expect("/v1/cluster answers");
        let listing =
            c.http().list(&c.client_url(id), "/", Consistency::Serializable).await.expect("a listing");
        out.push((
            view["term"].as_u64().unwrap(),
            view["revision"].as_u64().unwrap(),
            listing.kvs.into_iter().collect(),
        ));
    }
    out
}

fn assert_refused_by_raft(a: &Answer, what: &str) {
    assert_eq!(a.status, 200, "{what}: {}", a.body);
    assert!(a.body["raft"]["refused"].is_string(), "{what} reached raft: {}", a.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_hostile_peer_messages_change_nothing() {
    let c = Cluster::start(ClusterOptions::default()).await;
    let (leader, term) = c.leader().await;
    let follower = c.ids().into_iter().find(|id| *id != leader).unwrap();
    for i in 0..20 {
        let r = c.http().put(&c.client_url(leader), &format!("/k/{i}"), "v").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    // Let every node apply everything, then remember what they hold.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = state(&c).await;
    let secret = std::fs::read(c.peer_secret_path()).unwrap();
    let key = PeerKey::from_secret(secret.trim_ascii()).unwrap();
    let wrong = PeerKey::from_secret(b"not the cluster's secret at all").unwrap();
    let none = PeerKey::insecure();
    let other = c.ids().into_iter().find(|id| *id != leader && *id != follower).unwrap();

    // Without the secret, with a wrong one, or with a stale time: 401, before anything else.
    let forged = [
        ("a vote with term u64::MAX", vote(u64::MAX, other)),
        ("an append writing /evil", append(term + 1, other, 1, &[1, 2])),
        ("a snapshot", snapshot_chunk(term + 1, other)),
        ("a forwarded write", PeerRequest::Forward(put("/evil", b"x"))),
        (
            "a member record",
            PeerRequest::PublishMember { client_url: "http://evil:1".into(), incarnation: 7 },
        ),
        ("a read index", PeerRequest::ReadIndex),
    ];
    for target in [leader, follower] {
        for (what, req) in &forged {
            for (k, label) in [(&none, "unsigned"), (&wrong, "wrong secret")] {
                let a = send(&c, k, other, target, req).await;
                assert_eq!(a.status, 401, "{label} {what} to node {target}: {}", a.body);
                assert_eq!(a.body["error"]["code"], "unauthenticated", "{}", a.body);
            }
            let body = serde_json::to_vec(req).unwrap();
            let stale = send_raw(&c, &key, other, target, now_ms() - 600_000, body).await;
            assert_eq!(stale.status, 401, "a replayed {what}: {}", stale.body);
        }
    }
    // No headers at all; a request signed for another node.
    let bare = reqwest::Client::new()
        .post(format!("{}/raft/rpc", c.peer_url(leader)))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status().as_u16(), 401);
    let body = serde_json::to_vec(&PeerRequest::ReadIndex).unwrap();
    let mut misdirected = reqwest::Client::new().post(format!("{}/raft/rpc", c.peer_url(leader)));
    for (name, value) in key.sign(other, follower, now_ms(), &body) {
        misdirected = misdirected.header(name, value);
    }
    assert_eq!(misdirected.body(body).send().await.unwrap().status().as_u16(), 401);

    // With the secret, from a node that is not a member: 403.
    let a = send(&c, &key, 9, leader, &vote(term + 1, 9)).await;
    assert_eq!(a.status, 403, "{}", a.body);

    // With the secret, from members that lie: refused by the replica, never handed to Raft.
    assert_refused_by_raft(
        &send(&c, &key, other, follower, &vote(u64::MAX, other)).await,
        "a vote with term u64::MAX",
    );
    assert_refused_by_raft(
        &send(&c, &key, other, follower, &vote(term + 1, leader)).await,
        "a vote for another node",
    );
    assert_refused_by_raft(
        &send(&c, &key, other, follower, &append(term + 1, other, 5, &[5, 7])).await,
        "an append with a hole",
    );
    assert_refused_by_raft(
        &send(&c, &key, other, follower, &append(u64::MAX - 1, other, 1, &[1])).await,
        "an append with an impossible term",
    );
    assert_refused_by_raft(
        &send(&c, &key, other, follower, &snapshot_chunk(term, leader)).await,
        "a snapshot for another leader",
    );
    let chunk = PeerRequest::Raft(RaftRpc::SnapshotChunk {
        vote: openraft::Vote::new_committed(term, other),
        meta: openraft::SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(term, other), 1)),
            last_membership: Default::default(),
            snapshot_id: "odd".into(),
        },
        offset: 5,
        total: 10,
        done: false,
        data: b"xxxxx".to_vec(),
    });
    assert_refused_by_raft(&send(&c, &key, other, follower, &chunk).await, "a snapshot chunk out of order");

    // A forwarded write is checked by the leader as a client's would be.
    let big = vec![b'v'; 2 << 20];
    for (what, cmd) in [
        ("an empty key", put("", b"x")),
        ("the root", put("/", b"x")),
        ("a trailing slash", put("/a/", b"x")),
        ("a zero-width space", put("/k/0\u{200B}", b"x")),
        ("a value over the limit", put("/big", &big)),
        ("a batch", Command::Batch { cmds: vec![put("/b1", b"x")] }),
    ] {
        let a = send(&c, &key, other, leader, &PeerRequest::Forward(cmd)).await;
        assert_eq!(a.status, 200, "{what}: {}", a.body);
        assert!(a.body["forward"]["Err"]["refused"].is_object(), "{what} was not refused: {}", a.body);
    }
    // A member's record: only a URL, and only its own (`from` is proven).
    let a = send(
        &c,
        &key,
        other,
        leader,
        &PeerRequest::PublishMember { client_url: "not a url".into(), incarnation: 1 },
    )
    .await;
    assert!(a.body["publish_member"]["Err"]["refused"].is_object(), "{}", a.body);

    // A captured forwarded write sent again is refused: it applies once.
    let body = serde_json::to_vec(&PeerRequest::Forward(put("/once", b"1"))).unwrap();
    let signed = key.sign(other, leader, now_ms(), &body);
    let send_captured = || {
        let mut req = reqwest::Client::new().post(format!("{}/raft/rpc", c.peer_url(leader)));
        for (name, value) in &signed {
            req = req.header(*name, value.clone());
        }
        req.body(body.clone()).send()
    };
    let first = send_captured().await.unwrap();
    assert_eq!(first.status().as_u16(), 200);
    assert!(first.headers().contains_key("x-palisade-signature"), "the answer is signed");
    let again = send_captured().await.unwrap();
    assert_eq!(again.status().as_u16(), 409, "a replayed forward was served");
    let r = c.http().get(&c.client_url(leader), "/once", Consistency::Linearizable).await.unwrap();
    assert_eq!(r.body["kv"]["version"], 1, "{}", r.text);
    // A body that does not match its signed digest.
    let mut tampered = reqwest::Client::new().post(format!("{}/raft/rpc", c.peer_url(leader)));
    for (name, value) in &signed {
        tampered = tampered.header(*name, value.clone());
    }
    let body2 = serde_json::to_vec(&PeerRequest::Forward(put("/once", b"2"))).unwrap();
    assert_eq!(tampered.body(body2).send().await.unwrap().status().as_u16(), 401);

    // Bodies past the peer message limit (just past: the node answers 413 once the limit is
    // read, and a sender still writing many megabytes more would see its pipe broken
    // instead of the answer), and garbage.
    let huge = vec![b' '; palisade::config::Config::defaults().max_peer_message_bytes + (1 << 20)];
    let a = send_raw(&c, &key, other, leader, now_ms(), huge).await;
    assert_eq!(a.status, 413, "{}", a.body);
    let a = send_raw(&c, &key, other, leader, now_ms(), b"{\"raft\": 12".to_vec()).await;
    assert_eq!(a.status, 400, "{}", a.body);

    // Nothing else changed: same term (no election was provoked), the same data but the one
    // write a member sent, all healthy.
    let mut after = state(&c).await;
    for node in &mut after {
        node.1 -= 1;
        node.2.retain(|(k, _)| k != "/once");
    }
    assert_eq!(after, before, "a hostile peer message changed something");
    for id in c.ids() {
        let r = c.http().get_path(&c.client_url(id), "/healthz").await.unwrap();
        assert_eq!(r.status, 200, "node {id}: {}", r.text);
    }
    let r = c.http().put(&c.client_url(follower), "/after", "ok").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(c.leader().await, (leader, term), "leadership moved");
}
