//! Elections through the client API on one node: campaigning, reading the leader,
//! proclaiming a new value (by the leader only), resigning (leadership passes to the next
//! candidate), campaigns that are not granted, binary values, idempotent campaigns, and
//! observers in both stream framings (the state first, then every change, a hand-over
//! seen as one `leader` event). Bad input is in `bad_input.rs`.

use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::http_api::harness::{with_node, write_rev, Api, Resp};

const CONFLICT: StatusCode = StatusCode::CONFLICT;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
const PATIENCE: Duration = Duration::from_secs(10);

/// A leader, as a campaign, a proclaim or a read answered it.
#[derive(Debug, Clone, PartialEq)]
struct Leader {
    owner: String,
    lease: u64,
    token: u64,
    revision: u64,
    /// `value` or `value_base64`, whichever was given.
    value: Value,
}

/// Checks that `r` is a leader of election `name` (its exact shape and headers).
fn leader(r: &Resp, name: &str) -> Leader {
    let v = r.ok();
    let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    let value_field = if v.get("value").is_some() { "value" } else { "value_base64" };
    keys.retain(|k| *k != value_field);
    assert_eq!(keys, ["fencing_token", "lease", "name", "owner", "revision"], "{}: {v}", r.what);
    assert_eq!(v["name"], json!(name));
    let l = Leader {
        owner: v["owner"].as_str().unwrap().to_string(),
        lease: v["lease"].as_u64().unwrap(),
        token: v["fencing_token"].as_u64().unwrap(),
        revision: write_rev(r),
        value: json!({ value_field: v[value_field] }),
    };
    assert!(l.revision >= l.token, "{v}");
    l
}

async fn campaign(api: &Api, name: &str, body: Value) -> Resp {
    api.post(&format!("/v1/elections/{name}/campaign"), body, &[]).await
}

fn spawn_campaign(api: &Api, name: &str, body: Value) -> JoinHandle<Resp> {
    let (api, name) = (api.clone(), name.to_string());
    tokio::spawn(async move { campaign(&api, &name, body).await })
}

async fn proclaim(api: &Api, name: &str, body: Value) -> Resp {
    api.put(&format!("/v1/elections/{name}/leader"), body).await
}

async fn resign(api: &Api, name: &str, owner: &str) -> Resp {
    api.delete(&format!("/v1/elections/{name}/leader?owner={owner}")).await
}

/// Waits until the store revision passes `revision` (a candidate joining the queue takes
/// one, and shows in no read).
async fn revision_above(api: &Api, revision: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while api.revision().await <= revision {
        assert!(tokio::time::Instant::now() < deadline, "the revision stayed at {revision}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// An observer's stream being read: each message as `(event, data)`.
struct Observer {
    body: Body,
    buf: Vec<u8>,
    sse: bool,
    what: String,
}

impl Observer {
    async fn open(api: &Api, name: &str, ndjson: bool) -> Observer {
        let uri = format!("/v1/elections/{name}/observe");
        let headers: &[(&str, &str)] = if ndjson { &[("accept", "application/x-ndjson")] } else { &[] };
        let resp = api.open(&uri, headers).await;
        let (parts, body) = resp.into_parts();
        assert_eq!(parts.status, StatusCode::OK, "GET {uri}");
        let ct = parts.headers["content-type"].to_str().unwrap();
        assert_eq!(ct, if ndjson { "application/x-ndjson" } else { "text/event-stream" });
        assert!(
            parts.headers.contains_key("x-palisade-revision")
                && parts.headers.contains_key("x-palisade-term")
        );
        Observer { body, buf: Vec::new(), sse: !ndjson, what: format!("GET {uri}") }
    }

    /// The next message: `("leader", data)` or `("no_leader", data)`.
    async fn next(&mut self) -> (String, Value) {
        match tokio::time::timeout(PATIENCE, self.read()).await {
            Ok(m) => m,
            Err(_) => panic!("{}: no message within {PATIENCE:?}", self.what),
        }
    }

    /// Asserts that nothing comes for a while.
    async fn quiet(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.read()).await {
            panic!("{}: expected silence, got {m:?}", self.what);
        }
    }

    async fn read(&mut self) -> (String, Value) {
        let sep: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        loop {
            if let Some(i) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let raw: Vec<u8> = self.buf.drain(..i + sep.len()).collect();
                return self.parse(String::from_utf8(raw).unwrap().trim_end_matches('\n'));
            }
            match self.body.frame().await {
                None => panic!("{}: the stream ended", self.what),
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("{}: the stream failed: {e}", self.what),
            }
        }
    }

    fn parse(&self, text: &str) -> (String, Value) {
        if !self.sse {
            let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("bad line {text:?}: {e}"));
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 1, "one member per line: {text}");
            let (event, data) = obj.iter().next().unwrap();
            return (event.clone(), data.clone());
        }
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "an observer's SSE message is event and data, no id: {text:?}");
        let event = lines[0].strip_prefix("event: ").unwrap_or_else(|| panic!("{text:?}"));
        let data = lines[1].strip_prefix("data: ").unwrap_or_else(|| panic!("{text:?}"));
        (event.to_string(), serde_json::from_str(data).unwrap())
    }
}

/// The data of an observed `leader` event for this leader at `revision`.
fn leader_event(name: &str, l: &Leader, revision: u64) -> Value {
    let mut v = json!({
        "name": name, "owner": l.owner, "lease": l.lease, "fencing_token": l.token, "revision": revision,
    });
    for (k, x) in l.value.as_object().unwrap() {
        v[k] = x.clone();
    }
    v
}

#[tokio::test]
async fn campaign_read_and_resign() {
    with_node(|api| async move {
        api.set("/a", "x").await; // revision 1
        let r = api.get("/v1/elections/db").await;
        let e = r.error(NOT_FOUND, "no_leader");
        assert!(e["message"].as_str().unwrap().contains("db"), "{e}");
        assert_eq!(r.rev_header(), 1);
        let l = leader(&campaign(&api, "db", json!({"value": "10.0.0.8:5432", "ttl": "10s"})).await, "db");
        assert_eq!((l.token, l.revision), (2, 2), "the leadership took the next revision");
        assert_eq!(l.owner, format!("{:x}-2", l.lease));
        assert_eq!(l.value, json!({"value": "10.0.0.8:5432"}));
        let read = leader(&api.get("/v1/elections/db").await, "db");
        assert_eq!(read, l);
        assert_eq!(leader(&api.get("/v1/elections/db?consistency=serializable").await, "db"), l);
        // An election and a lock of the same name are apart.
        assert_eq!(api.get("/v1/locks/db").await.ok()["holders"], json!([]));
        let r = resign(&api, "db", &l.owner).await;
        assert_eq!(r.ok(), json!({"revision": 3, "released": true}));
        api.get("/v1/elections/db").await.error(NOT_FOUND, "no_leader");
        // Resigning again: 409 not_leader, nothing changed.
        let r = resign(&api, "db", &l.owner).await;
        r.error(CONFLICT, "not_leader");
        assert_eq!(r.rev_header(), 3);
        assert_eq!(api.revision().await, 3);
    })
    .await
}

#[tokio::test]
async fn only_the_leader_proclaims_and_the_token_stays() {
    with_node(|api| async move {
        let a = leader(&campaign(&api, "p", json!({"value": "a", "ttl": "10s"})).await, "p");
        let b_req = spawn_campaign(&api, "p", json!({"value": "b", "ttl": "10s"}));
        revision_above(&api, a.revision).await;
        let before = api.revision().await;
        let r = proclaim(&api, "p", json!({"owner": a.owner, "value": "a2"})).await;
        let p = leader(&r, "p");
        assert_eq!((p.owner.clone(), p.lease, p.token), (a.owner.clone(), a.lease, a.token));
        assert_eq!(p.value, json!({"value": "a2"}));
        assert_eq!(p.revision, before + 1, "a proclaim takes a revision of its own");
        assert_eq!(leader(&api.get("/v1/elections/p").await, "p"), p);
        // Nobody else proclaims: a waiting candidate, an unknown owner, another election's
        // leader. Nothing changes.
        let c = leader(&campaign(&api, "other", json!({"value": "c", "ttl": "10s"})).await, "other");
        let snap = api.snapshot().await;
        assert_eq!(a.owner, "1-1", "the first lease, the first revision");
        for owner in ["2-1", &c.owner, "ff-ffff", "1-01"] {
            let r = proclaim(&api, "p", json!({"owner": owner, "value": "usurper"})).await;
            let e = r.error(CONFLICT, "not_leader");
            assert!(e["message"].as_str().unwrap().contains(owner), "{e}");
        }
        assert_eq!(api.snapshot().await, snap);
        let now = leader(&api.get("/v1/elections/p").await, "p");
        assert_eq!((now.owner, now.token, now.value), (p.owner.clone(), p.token, p.value.clone()));
        // The waiting candidate is not the leader until the leader resigns.
        assert!(!b_req.is_finished());
        resign(&api, "p", &a.owner).await.ok();
        let b = leader(&b_req.await.unwrap(), "p");
        proclaim(&api, "p", json!({"owner": a.owner, "value": "late"})).await.error(CONFLICT, "not_leader");
        assert_eq!(
            leader(&proclaim(&api, "p", json!({"owner": b.owner, "value": "b2"})).await, "p").token,
            b.token
        );
    })
    .await
}

#[tokio::test]
async fn a_resign_hands_leadership_to_the_next_candidate() {
    with_node(|api| async move {
        let a = leader(&campaign(&api, "h", json!({"value": "a", "ttl": "10s"})).await, "h");
        let b_req = spawn_campaign(&api, "h", json!({"value": "b", "ttl": "10s"}));
        revision_above(&api, a.revision).await;
        let queued = api.revision().await;
        let c_req = spawn_campaign(&api, "h", json!({"value": "c", "ttl": "10s", "wait": "20s"}));
        revision_above(&api, queued).await;
        let r = resign(&api, "h", &a.owner).await;
        let resigned = r.ok();
        assert_eq!(resigned["released"], json!(true));
        let b = leader(&b_req.await.unwrap(), "h");
        assert_eq!(b.token, resigned["revision"].as_u64().unwrap() + 1);
        assert_eq!(b.value, json!({"value": "b"}));
        assert_eq!(b.owner, format!("{:x}-{queued:x}", b.lease), "the owner was made when it queued");
        assert_eq!(leader(&api.get("/v1/elections/h").await, "h").owner, b.owner);
        // A waiting candidate withdraws: released false, and its campaign is told.
        let c_owner = format!("{:x}-{:x}", b.lease + 1, queued + 1);
        let r = resign(&api, "h", &c_owner).await;
        assert_eq!(r.ok()["released"], json!(false), "c's owner is {c_owner}");
        c_req.await.unwrap().error(CONFLICT, "lock_timeout");
        // Nobody waits any more: b's resign leaves nobody leading.
        resign(&api, "h", &b.owner).await.ok();
        api.get("/v1/elections/h").await.error(NOT_FOUND, "no_leader");
    })
    .await
}

#[tokio::test]
async fn campaigns_that_are_not_granted() {
    with_node(|api| async move {
        let a = leader(&campaign(&api, "n", json!({"value": "a", "ttl": "10s"})).await, "n");
        // Try once, and a wait that runs out.
        let before = api.snapshot().await;
        let r = campaign(&api, "n", json!({"value": "b", "ttl": "10s", "wait": "0s"})).await;
        r.error(CONFLICT, "lock_timeout");
        assert_eq!(api.snapshot().await, before, "a try once changes nothing");
        campaign(&api, "n", json!({"value": "b", "ttl": "10s", "wait": "200ms"}))
            .await
            .error(CONFLICT, "lock_timeout");
        // A candidate whose lease ends.
        let lease = api.post("/v1/leases", json!({"ttl": "1h"}), &[]).await.json()["id"].as_u64().unwrap();
        let rev = api.revision().await;
        let w_req = spawn_campaign(&api, "n", json!({"value": "c", "lease": lease}));
        revision_above(&api, rev).await;
        api.delete(&format!("/v1/leases/{lease}")).await.ok();
        let e = w_req.await.unwrap().error(CONFLICT, "lease_expired");
        assert_eq!(e["lease"], json!(lease));
        // A lease that does not exist.
        campaign(&api, "n2", json!({"value": "d", "lease": 777_777}))
            .await
            .error(NOT_FOUND, "lease_not_found");
        api.get("/v1/elections/n2").await.error(NOT_FOUND, "no_leader");
        assert_eq!(leader(&api.get("/v1/elections/n").await, "n").owner, a.owner);
    })
    .await
}

#[tokio::test]
async fn a_binary_value_travels_as_value_base64() {
    with_node(|api| async move {
        let l = leader(&campaign(&api, "bin", json!({"value_base64": "/wD+", "ttl": "10s"})).await, "bin");
        assert_eq!(l.value, json!({"value_base64": "/wD+"}));
        assert_eq!(leader(&api.get("/v1/elections/bin").await, "bin").value, json!({"value_base64": "/wD+"}));
        let mut o = Observer::open(&api, "bin", false).await;
        assert_eq!(o.next().await.1["value_base64"], json!("/wD+"));
        // UTF-8 bytes given as base64 come back as text, and the other way round.
        let p =
            leader(&proclaim(&api, "bin", json!({"owner": l.owner, "value_base64": "aGk="})).await, "bin");
        assert_eq!(p.value, json!({"value": "hi"}));
        assert_eq!(o.next().await.1["value"], json!("hi"));
        let p =
            leader(&proclaim(&api, "bin", json!({"owner": l.owner, "value_base64": "gA=="})).await, "bin");
        assert_eq!(p.value, json!({"value_base64": "gA=="}));
        let (event, data) = o.next().await;
        assert_eq!(event, "leader");
        assert!(data.get("value").is_none(), "{data}");
        // An empty value is a value.
        let e = leader(&campaign(&api, "empty", json!({"value": "", "ttl": "10s"})).await, "empty");
        assert_eq!(e.value, json!({"value": ""}));
    })
    .await
}

#[tokio::test]
async fn an_observer_sees_the_state_then_every_change() {
    with_node(|api| async move {
        for ndjson in [false, true] {
            let name = if ndjson { "obs-ndjson" } else { "obs-sse" };
            let start = api.revision().await;
            let mut o = Observer::open(&api, name, ndjson).await;
            // The state now: nobody leads.
            assert_eq!(o.next().await, ("no_leader".to_string(), json!({"name": name, "revision": start})));
            let a = leader(&campaign(&api, name, json!({"value": "a", "ttl": "10s"})).await, name);
            assert_eq!(o.next().await, ("leader".to_string(), leader_event(name, &a, a.revision)));
            // A proclaim: the same leadership, a new value.
            let p = leader(&proclaim(&api, name, json!({"owner": a.owner, "value": "a2"})).await, name);
            assert_eq!(o.next().await, ("leader".to_string(), leader_event(name, &p, p.revision)));
            // A candidate queueing changes nobody's view.
            let rev = api.revision().await;
            let b_req = spawn_campaign(&api, name, json!({"value": "b", "ttl": "10s"}));
            revision_above(&api, rev).await;
            o.quiet(Duration::from_millis(200)).await;
            // A resign with a candidate waiting: one `leader` event, no `no_leader` between.
            resign(&api, name, &a.owner).await.ok();
            let b = leader(&b_req.await.unwrap(), name);
            assert_eq!(o.next().await, ("leader".to_string(), leader_event(name, &b, b.token)));
            // The last leader resigns: nobody leads.
            let at = write_rev(&resign(&api, name, &b.owner).await);
            assert_eq!(o.next().await, ("no_leader".to_string(), json!({"name": name, "revision": at})));
            // Changes elsewhere, and failed proclaims, send nothing.
            campaign(&api, "elsewhere", json!({"value": "x", "ttl": "10s", "wait": "0s"})).await;
            api.set("/unrelated", "x").await;
            proclaim(&api, name, json!({"owner": b.owner, "value": "ghost"}))
                .await
                .error(CONFLICT, "not_leader");
            o.quiet(Duration::from_millis(200)).await;
            // A second observer starts with the state now.
            let c = leader(&campaign(&api, name, json!({"value": "c", "ttl": "10s"})).await, name);
            let mut o2 = Observer::open(&api, name, ndjson).await;
            let now = api.revision().await;
            assert_eq!(o2.next().await, ("leader".to_string(), leader_event(name, &c, now)));
            assert_eq!(o.next().await.1["owner"], json!(c.owner));
        }
    })
    .await
}

#[tokio::test]
async fn an_idempotency_key_replays_a_campaign_and_a_proclaim() {
    with_node(|api| async move {
        let k = [("idempotency-key", "campaign-1")];
        let body = json!({"value": "a", "ttl": "10s"});
        let first = api.post("/v1/elections/i/campaign", body.clone(), &k).await;
        let l = leader(&first, "i");
        let snap = api.snapshot().await;
        let retry = api.post("/v1/elections/i/campaign", body, &k).await;
        assert_eq!(leader(&retry, "i"), l);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(api.snapshot().await, snap);
        let pk = [("idempotency-key", "proclaim-1")];
        let pbody = json!({"owner": l.owner, "value": "a2"}).to_string();
        let headers = [pk[0], ("content-type", "application/json")];
        let send = || {
            api.send_with_headers(
                axum::http::Method::PUT,
                "/v1/elections/i/leader",
                Body::from(pbody.clone()),
                &headers,
            )
        };
        let p1 = send().await;
        let p2 = send().await;
        assert_eq!(leader(&p2, "i"), leader(&p1, "i"));
        assert_eq!(p2.header("idempotent-replayed"), Some("true"));
    })
    .await
}

/// A value too large to keep whole among the remembered outcomes (over 64 KiB) is still
/// replayed: it is the request's own, put back from the retry.
#[tokio::test]
async fn a_big_value_is_replayed_too() {
    with_node(|api| async move {
        let big = "v".repeat(100 * 1024);
        let k = [("idempotency-key", "campaign-big")];
        let body = json!({"value": big, "ttl": "10s"});
        let first = leader(&api.post("/v1/elections/big/campaign", body.clone(), &k).await, "big");
        let retry = api.post("/v1/elections/big/campaign", body, &k).await;
        assert_eq!(leader(&retry, "big"), first);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        // A waiting candidate's big value, replayed once it leads.
        let wk = [("idempotency-key", "campaign-big-waiting")];
        let other = "w".repeat(100 * 1024);
        let w_req = {
            let (api, other) = (api.clone(), other.clone());
            tokio::spawn(async move {
                api.post("/v1/elections/big/campaign", json!({"value": other, "ttl": "10s"}), &wk).await
            })
        };
        revision_above(&api, first.revision).await;
        resign(&api, "big", &first.owner).await.ok();
        let w = leader(&w_req.await.unwrap(), "big");
        let again = api.post("/v1/elections/big/campaign", json!({"value": other, "ttl": "10s"}), &wk).await;
        let w2 = leader(&again, "big");
        assert_eq!((w2.owner, w2.token, w2.value), (w.owner.clone(), w.token, w.value));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        // A proclaim of a big value.
        let pk = [("idempotency-key", "proclaim-big"), ("content-type", "application/json")];
        let pbody = json!({"owner": w.owner, "value": big}).to_string();
        let put = || {
            api.send_with_headers(
                axum::http::Method::PUT,
                "/v1/elections/big/leader",
                Body::from(pbody.clone()),
                &pk,
            )
        };
        let p1 = leader(&put().await, "big");
        let r = put().await;
        assert_eq!(leader(&r, "big"), p1);
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
    })
    .await
}

/// Candidates' values count against the size quota like keys do: campaigns past it are
/// 507 and change nothing; resigning frees the room again.
#[tokio::test]
async fn candidates_values_count_against_the_quota() {
    crate::http_api::harness::with_node_config(
        |cfg| cfg.quota_bytes = 4_000,
        |api| async move {
            let value = "v".repeat(500);
            let mut owners = Vec::new();
            loop {
                let name = format!("e{}", owners.len());
                let r = campaign(&api, &name, json!({"value": value, "ttl": "10s", "wait": "0s"})).await;
                if r.status == StatusCode::INSUFFICIENT_STORAGE {
                    r.error(StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded");
                    let v = api.get("/v1/cluster").await.ok();
                    assert_eq!(v["locks"]["active"], json!(owners.len()), "nothing changed: {v}");
                    break;
                }
                owners.push((name, r.ok()["owner"].as_str().unwrap().to_string()));
                assert!(owners.len() < 20, "the quota never bit");
            }
            assert!(owners.len() >= 4, "{} campaigns fitted", owners.len());
            // A proclaim that would grow past it is refused too; one that shrinks is not.
            let (name, owner) = &owners[0];
            let r = proclaim(&api, name, json!({"owner": owner, "value": "v".repeat(2_000)})).await;
            r.error(StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded");
            proclaim(&api, name, json!({"owner": owner, "value": "small"})).await.ok();
            let v = api.get("/v1/cluster").await.ok();
            assert!(v["locks"]["bytes"].as_u64().unwrap() > 3_000, "{v}");
            for (name, owner) in &owners {
                resign(&api, name, owner).await.ok();
            }
            assert_eq!(api.get("/v1/cluster").await.ok()["locks"]["bytes"], json!(0));
            let r = campaign(&api, "again", json!({"value": value, "ttl": "10s", "wait": "0s"})).await;
            r.ok();
        },
    )
    .await
}
