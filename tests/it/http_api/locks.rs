//! Locks through the client API on one node: acquire, read, list and release; FIFO
//! hand-offs to waiting requests (run concurrently); waits that run out, tries that do
//! not wait, semaphores and their limit; owners bound to leases (a client's lease that is
//! revoked, a waiter's lease that ends, the lease made for a waiting request kept alive
//! only while it waits); requests that go away while waiting; releases of unknown owners;
//! fencing tokens (strictly increasing, equal to the grant revisions), the fence check and
//! the transaction fence compare; idempotent acquires and releases; and the watcher limit.
//! Bad input is in `bad_input.rs`.

use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use palisade::config::Config;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use crate::http_api::harness::{with_node, with_node_config, write_rev, Api, Resp};

const CONFLICT: StatusCode = StatusCode::CONFLICT;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
/// How long a test waits for something that should happen promptly.
const PATIENCE: Duration = Duration::from_secs(10);

/// A node whose floor allows short leases: election timeout 60 ms, so TTLs from 120 ms.
fn short_leases(cfg: &mut Config) {
    cfg.heartbeat_ms = 20;
    cfg.election_timeout_ms = 60;
    cfg.lease_min_ttl_ms = 120;
    cfg.lease_checkpoint_ms = 50;
}

/// A grant, as an acquire answered it.
#[derive(Debug, Clone, PartialEq)]
struct Grant {
    owner: String,
    lease: u64,
    token: u64,
    revision: u64,
}

/// Checks that `r` is a grant of lock `name` (its exact shape, its headers) and returns it.
fn granted(r: &Resp, name: &str) -> Grant {
    let v = r.ok();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["fencing_token", "lease", "name", "owner", "revision"], "{}: {v}", r.what);
    assert_eq!(v["name"], json!(name), "{v}");
    let g = Grant {
        owner: v["owner"].as_str().unwrap().to_string(),
        lease: v["lease"].as_u64().unwrap(),
        token: v["fencing_token"].as_u64().unwrap(),
        revision: write_rev(r),
    };
    assert!(g.owner.starts_with(&format!("{:x}-", g.lease)), "the owner names its lease: {v}");
    assert!(g.revision >= g.token && g.token > 0, "{v}");
    g
}

async fn acquire(api: &Api, name: &str, body: Value) -> Resp {
    api.post(&format!("/v1/locks/{name}"), body, &[]).await
}

/// Acquires `name` (must be granted at once) and returns the grant.
async fn take(api: &Api, name: &str, body: Value) -> Grant {
    let g = granted(&acquire(api, name, body).await, name);
    assert_eq!(g.token, g.revision, "an immediate grant's token is its revision");
    assert_eq!(g.owner, format!("{:x}-{:x}", g.lease, g.token), "an owner is lease-revision in hex");
    g
}

/// Sends an acquire from a task of its own (it may wait).
fn spawn_acquire(api: &Api, name: &str, body: Value) -> JoinHandle<Resp> {
    let (api, name) = (api.clone(), name.to_string());
    tokio::spawn(async move { acquire(&api, &name, body).await })
}

async fn release(api: &Api, name: &str, owner: &str) -> Resp {
    api.delete(&format!("/v1/locks/{name}?owner={owner}")).await
}

/// Lock `name` as `GET /v1/locks/{name}` shows it, without the revision.
async fn state(api: &Api, name: &str) -> Value {
    let mut v = api.get(&format!("/v1/locks/{name}")).await.ok();
    v.as_object_mut().unwrap().remove("revision");
    v
}

/// Polls `check` until it holds (panics after [`PATIENCE`]).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until lock `name` has `n` waiters and returns its state.
async fn waiters(api: &Api, name: &str, n: usize) -> Value {
    eventually(&format!("{name} has {n} waiters"), || async {
        state(api, name).await["waiters"].as_array().unwrap().len() == n
    })
    .await;
    state(api, name).await
}

/// The owner of the `i`th waiter of a lock state.
fn waiter(state: &Value, i: usize) -> String {
    state["waiters"][i]["owner"].as_str().unwrap().to_string()
}

async fn lease_exists(api: &Api, id: u64) -> bool {
    let r = api.get(&format!("/v1/leases/{id}")).await;
    match r.status {
        StatusCode::OK => true,
        NOT_FOUND => false,
        s => panic!("GET /v1/leases/{id}: {s} {}", r.text()),
    }
}

/// Grants a lease of `ttl` (a client's) and returns its id.
async fn client_lease(api: &Api, ttl: &str) -> u64 {
    let r = api.post("/v1/leases", json!({ "ttl": ttl }), &[]).await;
    r.expect(StatusCode::CREATED);
    r.json()["id"].as_u64().unwrap()
}

async fn lease_counters(api: &Api) -> Value {
    api.get("/v1/cluster").await.ok()["leases"].clone()
}

/// The lock held by `holders` (in grant order) with `waiting` in line.
fn held(name: &str, limit: u32, holders: &[&Grant], waiting: &[(String, u64, u64)]) -> Value {
    json!({
        "name": name,
        "limit": limit,
        "holders": holders.iter().map(|g| json!({
            "owner": g.owner, "lease": g.lease, "fencing_token": g.token, "since_revision": g.token,
        })).collect::<Vec<_>>(),
        "waiters": waiting.iter().map(|(owner, lease, since)| json!({
            "owner": owner, "lease": lease, "since_revision": since,
        })).collect::<Vec<_>>(),
    })
}

fn free(name: &str) -> Value {
    json!({"name": name, "limit": null, "holders": [], "waiters": []})
}

#[tokio::test]
async fn acquire_read_list_and_release() {
    with_node(|api| async move {
        api.set("/a", "x").await; // revision 1
        assert_eq!(state(&api, "db").await, free("db"), "a lock nobody holds reads as free");
        let g = take(&api, "db", json!({"ttl": "10s"})).await;
        assert_eq!(g.token, 2, "the grant took the next revision");
        // The lease made for the request exists (the client keeps it alive from now on).
        let lease = api.get(&format!("/v1/leases/{}", g.lease)).await.ok();
        assert_eq!((lease["ttl_ms"].clone(), lease["key_count"].clone()), (json!(10_000), json!(0)));
        let r = api.get("/v1/locks/db").await;
        assert_eq!(write_rev(&r), 2);
        assert_eq!(state(&api, "db").await, held("db", 1, &[&g], &[]));
        let s = api.get("/v1/locks/db?consistency=serializable").await.ok();
        assert_eq!(s["holders"][0]["owner"], json!(g.owner));

        // Listing: held locks in name order, in pages.
        let b = take(&api, "b.lock", json!({"ttl": "10s", "wait": "0s"})).await;
        let c = take(&api, "c_lock", json!({"ttl": 10, "limit": 3})).await;
        let all = api.get("/v1/locks").await.ok();
        assert_eq!(all["count"], json!(3));
        assert_eq!(all["more"], json!(false));
        assert!(all.get("next").is_none(), "{all}");
        let names: Vec<&str> =
            all["locks"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["b.lock", "c_lock", "db"]);
        assert_eq!(all["locks"][1], held("c_lock", 3, &[&c], &[]));
        let page = api.get("/v1/locks?limit=2").await.ok();
        assert_eq!(
            (page["count"].clone(), page["more"].clone(), page["next"].clone()),
            (json!(2), json!(true), json!("c_lock"))
        );
        let rest = api.get("/v1/locks?limit=2&after=c_lock&consistency=serializable").await.ok();
        assert_eq!(rest["locks"], json!([held("db", 1, &[&g], &[])]));
        assert_eq!(rest["more"], json!(false));

        // A release takes a revision of its own; the name is forgotten.
        let before = api.revision().await;
        let r = release(&api, "db", &g.owner).await;
        assert_eq!(r.ok(), json!({"revision": before + 1, "released": true}));
        assert_eq!(write_rev(&r), before + 1);
        assert_eq!(state(&api, "db").await, free("db"));
        assert!(lease_exists(&api, g.lease).await, "a release leaves the lease alone");
        // Releasing again: 404 owner_not_found, with the state headers, nothing changed.
        let again = release(&api, "db", &g.owner).await;
        again.error(NOT_FOUND, "owner_not_found");
        assert_eq!(again.rev_header(), before + 1);
        assert_eq!(api.revision().await, before + 1);
        for (name, grant) in [("b.lock", &b), ("c_lock", &c)] {
            release(&api, name, &grant.owner).await.ok();
        }
        assert_eq!(api.get("/v1/locks").await.ok()["locks"], json!([]));
    })
    .await
}

#[tokio::test]
async fn waiters_are_granted_in_fifo_order() {
    with_node(|api| async move {
        let a = take(&api, "q", json!({"ttl": "10s"})).await;
        let b_req = spawn_acquire(&api, "q", json!({"ttl": "10s"}));
        let s = waiters(&api, "q", 1).await;
        let c_req = spawn_acquire(&api, "q", json!({"ttl": "10s", "wait": "20s"}));
        let s2 = waiters(&api, "q", 2).await;
        let (b_owner, c_owner) = (waiter(&s2, 0), waiter(&s2, 1));
        assert_eq!(waiter(&s, 0), b_owner, "the first in line stays first");
        let since = |i: usize| s2["waiters"][i]["since_revision"].as_u64().unwrap();
        assert!(a.token < since(0) && since(0) < since(1), "queued in order: {s2}");
        // A try that does not wait never jumps the queue, nor does it change anything.
        let rev = api.revision().await;
        acquire(&api, "q", json!({"ttl": "10s", "wait": "0s"})).await.error(CONFLICT, "lock_timeout");
        assert_eq!(api.revision().await, rev);
        assert_eq!(state(&api, "q").await, s2);

        // The holder releases: the first waiter is granted at the next revision.
        let r = release(&api, "q", &a.owner).await;
        let released_at = write_rev(&r);
        let b = granted(&b_req.await.unwrap(), "q");
        assert_eq!((b.owner.clone(), b.token), (b_owner, released_at + 1));
        assert_eq!(
            state(&api, "q").await,
            held("q", 1, &[&b], &[(c_owner.clone(), s2["waiters"][1]["lease"].as_u64().unwrap(), since(1))])
        );
        assert!(!c_req.is_finished(), "the second waiter still waits");
        let r = release(&api, "q", &b.owner).await;
        let c = granted(&c_req.await.unwrap(), "q");
        assert_eq!((c.owner.clone(), c.token), (c_owner, write_rev(&r) + 1));
        assert!(a.token < b.token && b.token < c.token, "tokens strictly increase");
        assert_eq!(state(&api, "q").await, held("q", 1, &[&c], &[]));
    })
    .await
}

#[tokio::test]
async fn a_wait_that_runs_out_is_lock_timeout_and_the_waiter_leaves() {
    with_node(|api| async move {
        let h = take(&api, "t", json!({"ttl": "10s"})).await;
        let lease = client_lease(&api, "10s").await;
        let before = api.revision().await;
        let started = tokio::time::Instant::now();
        let r = acquire(&api, "t", json!({"lease": lease, "wait": "300ms"})).await;
        let waited = started.elapsed();
        let e = r.error(CONFLICT, "lock_timeout");
        assert!(e["message"].as_str().unwrap().contains("left the queue"), "{e}");
        assert!(waited >= Duration::from_millis(300), "answered after {waited:?}");
        // Joining the queue and leaving it took a revision each; the reply reflects the latter.
        assert_eq!(r.rev_header(), before + 2);
        assert_eq!(api.revision().await, before + 2);
        assert_eq!(state(&api, "t").await, held("t", 1, &[&h], &[]));
        assert!(lease_exists(&api, lease).await, "the client's lease is the client's");
        // Its place is gone: the holder's release leaves the lock free.
        release(&api, "t", &h.owner).await.ok();
        assert_eq!(state(&api, "t").await, free("t"));
    })
    .await
}

#[tokio::test]
async fn a_try_once_takes_a_free_lock_or_changes_nothing() {
    with_node(|api| async move {
        let g = take(&api, "once", json!({"ttl": "10s", "wait": "0s"})).await;
        let before = (api.snapshot().await, state(&api, "once").await, lease_counters(&api).await);
        for wait in [json!("0s"), json!(0), json!("0ms"), json!(0.0)] {
            let r = acquire(&api, "once", json!({"ttl": "10s", "wait": wait})).await;
            r.error(CONFLICT, "lock_timeout");
            assert_eq!(r.rev_header(), g.token);
        }
        // Nothing changed: no revision, no queue, no lease made for the refused tries.
        assert_eq!((api.snapshot().await, state(&api, "once").await, lease_counters(&api).await), before);
        release(&api, "once", &g.owner).await.ok();
        take(&api, "once", json!({"ttl": "10s", "wait": 0})).await;
    })
    .await
}

#[tokio::test]
async fn a_semaphore_holds_up_to_its_limit() {
    with_node(|api| async move {
        let a = take(&api, "sem", json!({"ttl": "10s", "limit": 2})).await;
        let b = take(&api, "sem", json!({"ttl": "10s", "limit": 2})).await;
        assert!(a.token < b.token, "two holders, two tokens");
        let c_req = spawn_acquire(&api, "sem", json!({"ttl": "10s"})); // takes the lock's limit
        let s = waiters(&api, "sem", 1).await;
        assert_eq!(s["limit"], json!(2));
        assert_eq!(s["holders"], held("sem", 2, &[&a, &b], &[])["holders"]);
        // Another limit while it is held: 409 limit_mismatch with the lock's, nothing changed.
        let before = api.snapshot().await;
        for limit in [1, 3] {
            let r = acquire(&api, "sem", json!({"ttl": "10s", "limit": limit, "wait": "5s"})).await;
            let e = r.error(CONFLICT, "limit_mismatch");
            assert_eq!(e["limit"], json!(2), "{e}");
            assert!(r.rev_header() >= before.revision);
        }
        assert_eq!(api.snapshot().await, before);
        assert_eq!(state(&api, "sem").await, s);
        // One holder leaves: the waiter takes its place.
        let r = release(&api, "sem", &a.owner).await;
        let c = granted(&c_req.await.unwrap(), "sem");
        assert_eq!(c.token, write_rev(&r) + 1);
        assert_eq!(state(&api, "sem").await, held("sem", 2, &[&b, &c], &[]));
        // Once nobody holds it, the name is forgotten and the next acquirer sets the limit.
        release(&api, "sem", &b.owner).await.ok();
        release(&api, "sem", &c.owner).await.ok();
        take(&api, "sem", json!({"ttl": "10s", "limit": 3})).await;
        assert_eq!(state(&api, "sem").await["limit"], json!(3));
    })
    .await
}

#[tokio::test]
async fn revoking_a_client_lease_releases_its_lock_and_hands_it_off() {
    with_node(|api| async move {
        let lease = client_lease(&api, "1h").await;
        let h = take(&api, "leased", json!({"lease": lease})).await;
        assert_eq!(h.lease, lease);
        api.put("/v1/kv/held/key", json!({"value": "v", "lease": lease})).await.ok();
        let w_req = spawn_acquire(&api, "leased", json!({"ttl": "10s"}));
        waiters(&api, "leased", 1).await;
        let r = api.delete(&format!("/v1/leases/{lease}")).await;
        let revoked = r.ok();
        let at = revoked["revision"].as_u64().unwrap();
        assert_eq!(revoked["deleted"], json!(1));
        // The key and the holder went at one revision; the waiter was granted at the next.
        let w = granted(&w_req.await.unwrap(), "leased");
        assert_eq!(w.token, at + 1);
        assert_eq!(api.revision().await, at + 1);
        let hist = api.get(&format!("/v1/kv/held/key?revision={}", at - 1)).await.ok();
        assert_eq!(hist["kv"]["lease"], json!(lease));
        api.get(&format!("/v1/kv/held/key?revision={at}")).await.error(NOT_FOUND, "key_not_found");
        assert_eq!(state(&api, "leased").await, held("leased", 1, &[&w], &[]));
        release(&api, "leased", &h.owner).await.error(NOT_FOUND, "owner_not_found");
    })
    .await
}

#[tokio::test]
async fn a_waiter_whose_lease_ends_gets_lease_expired() {
    with_node(|api| async move {
        let h = take(&api, "lx", json!({"ttl": "10s"})).await;
        let lease = client_lease(&api, "1h").await;
        let w_req = spawn_acquire(&api, "lx", json!({"lease": lease, "wait": "20s"}));
        waiters(&api, "lx", 1).await;
        let at = api.delete(&format!("/v1/leases/{lease}")).await.ok()["revision"].as_u64().unwrap();
        let r = w_req.await.unwrap();
        let e = r.error(CONFLICT, "lease_expired");
        assert_eq!(e["lease"], json!(lease), "{e}");
        assert!(r.rev_header() >= at);
        // The waiter is gone and was never granted; the holder holds on.
        assert_eq!(state(&api, "lx").await, held("lx", 1, &[&h], &[]));
        assert_eq!(api.revision().await, at);
    })
    .await
}

#[tokio::test]
async fn the_lease_made_for_a_waiting_request_lives_while_it_waits_and_is_revoked_after() {
    with_node_config(short_leases, |api| async move {
        let holder_lease = client_lease(&api, "1h").await;
        let h = take(&api, "kept", json!({"lease": holder_lease})).await;
        let counters = lease_counters(&api).await;
        // A 300 ms lease made for a request that waits up to 1.5 s.
        let w_req = spawn_acquire(&api, "kept", json!({"ttl": "300ms", "wait": "1500ms"}));
        let s = waiters(&api, "kept", 1).await;
        let lease = s["waiters"][0]["lease"].as_u64().unwrap();
        assert_ne!(lease, holder_lease);
        // Three TTLs later the lease is still there, the waiter still in line.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let l = api.get(&format!("/v1/leases/{lease}")).await.ok();
        assert_eq!(l["ttl_ms"], json!(300));
        assert!(l["remaining_ms"].as_u64().unwrap() > 0, "{l}");
        assert_eq!(state(&api, "kept").await, s, "the waiter is still in line");
        // The wait runs out: 409, and the lease made for the request is revoked (not left
        // to expire).
        w_req.await.unwrap().error(CONFLICT, "lock_timeout");
        eventually("the waiting request's lease is revoked", || async {
            lease_counters(&api).await["revoked"] != counters["revoked"]
        })
        .await;
        assert!(!lease_exists(&api, lease).await);
        let after = lease_counters(&api).await;
        assert_eq!(after["expired"], counters["expired"], "the lease did not expire: {after}");
        assert_eq!(state(&api, "kept").await, held("kept", 1, &[&h], &[]));
    })
    .await
}

#[tokio::test]
async fn once_granted_the_lease_is_the_clients_to_keep_alive() {
    with_node_config(short_leases, |api| async move {
        let g = take(&api, "own", json!({"ttl": "300ms"})).await;
        // Kept alive by the client past its TTL: still held.
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            api.post(&format!("/v1/leases/{}/keepalive", g.lease), json!({}), &[]).await.ok();
        }
        assert_eq!(state(&api, "own").await, held("own", 1, &[&g], &[]));
        // Left alone, it expires and the lock is released.
        eventually("the unrenewed lease ends and releases the lock", || async {
            state(&api, "own").await == free("own")
        })
        .await;
        assert!(!lease_exists(&api, g.lease).await);
    })
    .await
}

#[tokio::test]
async fn a_waiting_request_that_goes_away_leaves_the_queue() {
    with_node(|api| async move {
        let h = take(&api, "gone", json!({"ttl": "10s"})).await;
        // With a lease made for it: the lease is revoked.
        let req = spawn_acquire(&api, "gone", json!({"ttl": "10s"}));
        let s = waiters(&api, "gone", 1).await;
        let lease = s["waiters"][0]["lease"].as_u64().unwrap();
        req.abort();
        assert!(req.await.unwrap_err().is_cancelled());
        waiters(&api, "gone", 0).await;
        eventually("the lease made for the request is revoked", || async {
            !lease_exists(&api, lease).await
        })
        .await;
        // With a client's lease, dropped as a future: the owner is released, the lease stays.
        let client = client_lease(&api, "1h").await;
        let dropped = {
            let fut = acquire(&api, "gone", json!({"lease": client}));
            tokio::pin!(fut);
            tokio::select! {
                _ = &mut fut => panic!("the acquire should wait"),
                s = waiters(&api, "gone", 1) => s,
            }
        };
        assert_eq!(dropped["waiters"][0]["lease"], json!(client));
        waiters(&api, "gone", 0).await;
        assert!(lease_exists(&api, client).await, "the client's lease is left alone");
        assert_eq!(state(&api, "gone").await, held("gone", 1, &[&h], &[]));
        // Nothing is granted to a request that went away.
        release(&api, "gone", &h.owner).await.ok();
        assert_eq!(state(&api, "gone").await, free("gone"));
    })
    .await
}

#[tokio::test]
async fn releasing_an_owner_that_neither_holds_nor_waits_is_404() {
    with_node(|api| async move {
        let h = take(&api, "r", json!({"ttl": "10s"})).await;
        let before = api.snapshot().await;
        assert_eq!(h.owner, "1-1");
        for owner in ["ff-ff", "2-1", "1-2", "01-1", "not-an-owner"] {
            let r = release(&api, "r", owner).await;
            let e = r.error(NOT_FOUND, "owner_not_found");
            assert!(e["message"].as_str().unwrap().contains(owner), "{e}");
            assert_eq!(r.rev_header(), before.revision);
        }
        // The owner of another lock, and a lock nobody holds.
        release(&api, "other", &h.owner).await.error(NOT_FOUND, "owner_not_found");
        assert_eq!(api.snapshot().await, before);
        assert_eq!(state(&api, "r").await, held("r", 1, &[&h], &[]));
        // A waiter released by another request: `released: false`, and its acquire is told.
        let w_req = spawn_acquire(&api, "r", json!({"ttl": "10s"}));
        let w = waiter(&waiters(&api, "r", 1).await, 0);
        assert_eq!(release(&api, "r", &w).await.ok()["released"], json!(false));
        let e = w_req.await.unwrap().error(CONFLICT, "lock_timeout");
        assert!(e["message"].as_str().unwrap().contains("released by another request"), "{e}");
        // Released, then released again: the retry is a harmless 404.
        release(&api, "r", &h.owner).await.ok();
        release(&api, "r", &h.owner).await.error(NOT_FOUND, "owner_not_found");
    })
    .await
}

#[tokio::test]
async fn fencing_tokens_strictly_increase_and_are_the_grant_revisions() {
    with_node(|api| async move {
        let mut last = 0;
        for i in 0..6 {
            api.set("/noise", &i.to_string()).await;
            let before = api.revision().await;
            let g = take(&api, "tok", json!({"ttl": "10s"})).await;
            assert_eq!(g.token, before + 1, "the grant is the next revision");
            assert!(g.token > last, "tokens strictly increase");
            last = g.token;
            // Every grant's token is its own, even among a semaphore's holders and across names.
            let other = take(&api, "tok2", json!({"ttl": "10s", "limit": 2})).await;
            assert_eq!(other.token, g.token + 1);
            release(&api, "tok", &g.owner).await.ok();
            release(&api, "tok2", &other.owner).await.ok();
        }
        // A hand-off's token is the revision after the release that let it happen.
        let h = take(&api, "tok", json!({"ttl": "10s"})).await;
        let w_req = spawn_acquire(&api, "tok", json!({"ttl": "10s"}));
        let queued = waiters(&api, "tok", 1).await["waiters"][0]["since_revision"].as_u64().unwrap();
        let r = release(&api, "tok", &h.owner).await;
        let w = granted(&w_req.await.unwrap(), "tok");
        assert_eq!(w.token, write_rev(&r) + 1);
        assert_eq!(w.owner, format!("{:x}-{:x}", w.lease, queued), "a waiter's owner names its queueing");
        assert!(w.token > h.token && h.token > last);
    })
    .await
}

/// Asserts a stale fence check: 409 with `valid: false` and `current_token` at the top
/// level and in the `stale_token` error.
fn stale(r: &Resp, current: Option<u64>) {
    r.expect(CONFLICT);
    let v = r.json();
    assert_eq!(v["valid"], json!(false), "{v}");
    assert_eq!(v["current_token"], json!(current), "{v}");
    assert_eq!(v["error"]["code"], json!("stale_token"), "{v}");
    assert_eq!(v["error"]["current_token"], json!(current), "{v}");
    assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    r.rev_header();
    assert!(r.term_header() > 0);
}

async fn fence(api: &Api, name: &str, token: u64) -> Resp {
    api.post("/v1/fence/check", json!({"name": name, "token": token}), &[]).await
}

#[tokio::test]
async fn the_fence_check_knows_the_current_holders() {
    with_node(|api| async move {
        stale(&fence(&api, "f", 1).await, None);
        api.set("/x", "y").await;
        let a = take(&api, "f", json!({"ttl": "10s", "limit": 2})).await;
        let r = fence(&api, "f", a.token).await;
        assert_eq!(r.ok(), json!({"valid": true, "token": a.token, "revision": a.token}));
        assert_eq!(write_rev(&r), a.token);
        stale(&fence(&api, "f", a.token - 1).await, Some(a.token));
        stale(&fence(&api, "f", a.token + 1000).await, Some(a.token));
        // A semaphore: every holder's token is valid; the newest is the current one.
        let b = take(&api, "f", json!({"ttl": "10s"})).await;
        for t in [a.token, b.token] {
            assert_eq!(fence(&api, "f", t).await.ok()["valid"], json!(true));
        }
        stale(&fence(&api, "f", b.token + 1).await, Some(b.token));
        let r = api
            .post("/v1/fence/check?consistency=serializable", json!({"name": "f", "token": a.token}), &[])
            .await;
        assert_eq!(r.ok()["valid"], json!(true));
        // A released holder's token goes stale; once nobody holds, current_token is null.
        release(&api, "f", &b.owner).await.ok();
        stale(&fence(&api, "f", b.token).await, Some(a.token));
        release(&api, "f", &a.owner).await.ok();
        stale(&fence(&api, "f", a.token).await, None);
        // An election's leadership counts too (same name, the other name space).
        let c = api.post("/v1/elections/f/campaign", json!({"value": "x", "ttl": "10s"}), &[]).await.ok();
        let t = c["fencing_token"].as_u64().unwrap();
        assert_eq!(fence(&api, "f", t).await.ok()["valid"], json!(true));
        stale(&fence(&api, "f", a.token).await, Some(t));
    })
    .await
}

#[tokio::test]
async fn the_txn_fence_compare_lets_only_the_current_holder_write() {
    with_node(|api| async move {
        let fenced = |op: &str, token: u64, value: &str| {
            json!({
                "compare": [{"lock": "guard", "target": "fence", "op": op, "value": token}],
                "success": [{"put": {"key": "/guarded", "value": value}}],
                "failure": [{"get": {"key": "/guarded"}}],
            })
        };
        let a = take(&api, "guard", json!({"ttl": "10s"})).await;
        let t = api.post("/v1/txn", fenced("==", a.token, "by-a"), &[]).await.ok();
        assert_eq!(t["succeeded"], json!(true), "{t}");
        // The holder changes: the old token writes nothing; the new one does.
        let w_req = spawn_acquire(&api, "guard", json!({"ttl": "10s"}));
        waiters(&api, "guard", 1).await;
        release(&api, "guard", &a.owner).await.ok();
        let b = granted(&w_req.await.unwrap(), "guard");
        let before = api.revision().await;
        let t = api.post("/v1/txn", fenced("==", a.token, "late-a"), &[]).await.ok();
        assert_eq!(t["succeeded"], json!(false), "{t}");
        assert_eq!(t["results"][0]["get"]["kvs"][0]["value"], json!("by-a"));
        assert_eq!(api.revision().await, before, "a failed fence compare writes nothing");
        let t = api.post("/v1/txn", fenced("!=", b.token, "not-b"), &[]).await.ok();
        assert_eq!(t["succeeded"], json!(false));
        let t = api.post("/v1/txn", fenced("!=", a.token, "x"), &[]).await.ok();
        assert_eq!(t["succeeded"], json!(true));
        let t = api.post("/v1/txn", fenced("==", b.token, "by-b"), &[]).await.ok();
        assert_eq!(t["succeeded"], json!(true));
        assert_eq!(api.get("/v1/kv/guarded").await.ok()["kv"]["value"], json!("by-b"));
        // Nobody holds it: no token passes `==`.
        release(&api, "guard", &b.owner).await.ok();
        let t = api.post("/v1/txn", fenced("==", b.token, "gone"), &[]).await.ok();
        assert_eq!(t["succeeded"], json!(false));
        let t = api.post("/v1/txn", fenced("==", 0, "zero"), &[]).await.ok();
        assert_eq!(t["succeeded"], json!(false));
    })
    .await
}

#[tokio::test]
async fn an_idempotency_key_replays_the_grant_and_the_release() {
    with_node(|api| async move {
        let k = [("idempotency-key", "acquire-1")];
        let first = api.post("/v1/locks/idem", json!({"ttl": "10s"}), &k).await;
        let g = granted(&first, "idem");
        assert_eq!(first.header("idempotent-replayed"), None);
        let before = api.snapshot().await;
        let retry = api.post("/v1/locks/idem", json!({"ttl": "10s"}), &k).await;
        assert_eq!(granted(&retry, "idem"), g);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(api.snapshot().await, before, "the retry applied nothing");
        assert_eq!(state(&api, "idem").await, held("idem", 1, &[&g], &[]));
        // The same key for another request: 422.
        api.post("/v1/locks/idem", json!({"ttl": "20s"}), &k)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict");
        api.post("/v1/locks/other", json!({"ttl": "10s"}), &k)
            .await
            .error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict");
        // A refusal is replayed too.
        let busy = [("idempotency-key", "acquire-busy")];
        api.post("/v1/locks/idem", json!({"ttl": "10s", "wait": 0}), &busy)
            .await
            .error(CONFLICT, "lock_timeout");
        let r = api.post("/v1/locks/idem", json!({"ttl": "10s", "wait": 0}), &busy).await;
        r.error(CONFLICT, "lock_timeout");
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
        // A retried release answers as the first did (not 404).
        let rk = [("idempotency-key", "release-1")];
        let uri = format!("/v1/locks/idem?owner={}", g.owner);
        let first =
            api.send_with_headers(axum::http::Method::DELETE, &uri, axum::body::Body::empty(), &rk).await;
        let body = first.ok();
        let retry =
            api.send_with_headers(axum::http::Method::DELETE, &uri, axum::body::Body::empty(), &rk).await;
        assert_eq!(retry.ok(), body);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        // An acquire that waited, retried after its grant: the same owner and token.
        let h = take(&api, "idem", json!({"ttl": "10s"})).await;
        let wk = [("idempotency-key", "acquire-waited")];
        let w_req = {
            let api = api.clone();
            tokio::spawn(async move { api.post("/v1/locks/idem", json!({"ttl": "10s"}), &wk).await })
        };
        waiters(&api, "idem", 1).await;
        release(&api, "idem", &h.owner).await.ok();
        let w = granted(&w_req.await.unwrap(), "idem");
        let again = api.post("/v1/locks/idem", json!({"ttl": "10s"}), &wk).await;
        let w2 = granted(&again, "idem");
        assert_eq!((w2.owner, w2.lease, w2.token), (w.owner, w.lease, w.token));
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
    })
    .await
}

#[tokio::test]
async fn a_lease_that_does_not_exist_is_404_and_changes_nothing() {
    with_node(|api| async move {
        let before = api.snapshot().await;
        let r = acquire(&api, "nl", json!({"lease": 777_777})).await;
        r.error(NOT_FOUND, "lease_not_found");
        assert_eq!(r.rev_header(), before.revision);
        assert_eq!(api.snapshot().await, before);
        assert_eq!(state(&api, "nl").await, free("nl"));
    })
    .await
}

#[tokio::test]
async fn waiting_acquires_count_against_the_watcher_limit() {
    with_node_config(
        |cfg| cfg.max_watchers = 1,
        |api| async move {
            let h = take(&api, "w", json!({"ttl": "10s"})).await;
            let w_req = spawn_acquire(&api, "w", json!({"ttl": "10s"}));
            waiters(&api, "w", 1).await;
            let before = (api.snapshot().await, state(&api, "w").await);
            let r = acquire(&api, "w2", json!({"ttl": "10s", "wait": 0})).await;
            r.error(StatusCode::TOO_MANY_REQUESTS, "overloaded");
            assert_eq!(r.header("retry-after"), Some("1"));
            let r = api.post("/v1/elections/e/campaign", json!({"value": "v", "ttl": "10s"}), &[]).await;
            r.error(StatusCode::TOO_MANY_REQUESTS, "overloaded");
            assert_eq!((api.snapshot().await, state(&api, "w").await), before);
            // Reads are not waits.
            state(&api, "w2").await;
            release(&api, "w", &h.owner).await.ok();
            granted(&w_req.await.unwrap(), "w");
            take(&api, "w2", json!({"ttl": "10s", "wait": 0})).await;
        },
    )
    .await
}
