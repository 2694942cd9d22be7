//! Leases through the client API on one node: grants (TTL formats, the node's floor and
//! maximum, client-chosen ids), keepalives, reading one lease and its keys, listing in
//! pages, revoking (every key of the lease deleted at one revision), expiry, the `lease`
//! field of puts, sequential creates and transaction puts, idempotent grants and revokes,
//! the lease quota and `/v1/cluster`'s lease counters. Every refused request is checked to
//! change neither the store nor the lease table.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Method, StatusCode};
use palisade::config::Config;
use serde_json::{json, Value};

use crate::http_api::harness::{with_node, with_node_config, write_rev, Api, Resp, Snapshot};

const BAD: StatusCode = StatusCode::BAD_REQUEST;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
/// The largest lease id (2^53 - 1).
const MAX_ID: u64 = (1 << 53) - 1;
/// The largest id a client may choose.
const MAX_CHOSEN_ID: u64 = 1 << 52;

/// A node whose floor allows short leases: election timeout 60 ms, so TTLs from 120 ms.
fn short_leases(cfg: &mut Config) {
    cfg.heartbeat_ms = 20;
    cfg.election_timeout_ms = 60;
    cfg.lease_min_ttl_ms = 120;
    cfg.lease_checkpoint_ms = 50;
}

/// Everything a refused request must leave as it was.
#[derive(Debug, PartialEq)]
struct Everything {
    store: Snapshot,
    /// `(id, ttl_ms, key_count)` of every lease (the remaining time moves by itself).
    leases: Vec<(u64, u64, u64)>,
    /// `/v1/cluster`'s `leases` object.
    counters: Value,
}

async fn everything(api: &Api) -> Everything {
    let store = api.snapshot().await;
    let list = api.get("/v1/leases").await.ok();
    assert_eq!(list["more"], json!(false), "the lease table fits one page: {list}");
    let leases = list["leases"]
        .as_array()
        .unwrap_or_else(|| panic!("no leases array: {list}"))
        .iter()
        .map(|l| (l["id"].as_u64().unwrap(), l["ttl_ms"].as_u64().unwrap(), l["key_count"].as_u64().unwrap()))
        .collect();
    let counters = api.get("/v1/cluster").await.ok()["leases"].clone();
    Everything { store, leases, counters }
}

/// Sends a request (a JSON body when `body` is given) that must be refused with
/// `status`/`code`, and checks that nothing changed. Returns the error object.
async fn refused(
    api: &Api,
    method: Method,
    uri: &str,
    body: Option<&str>,
    status: StatusCode,
    code: &str,
) -> Value {
    let before = everything(api).await;
    let r = match body {
        Some(b) => api.send(method, uri, Body::from(b.to_string()), Some("application/json")).await,
        None => api.send(method, uri, Body::empty(), None).await,
    };
    let e = r.error(status, code);
    assert_eq!(everything(api).await, before, "{} {body:?}: a refused request changed something", r.what);
    e
}

/// Grants a lease (must answer 201) and returns the reply.
async fn grant(api: &Api, body: Value) -> Resp {
    let r = api.post("/v1/leases", body.clone(), &[]).await;
    r.expect(StatusCode::CREATED);
    let v = r.json();
    assert_eq!(
        v.as_object().map(|o| o.keys().cloned().collect::<Vec<_>>()),
        Some(vec!["id".to_string(), "ttl_ms".to_string()]),
        "a grant answers exactly id and ttl_ms: {v} (for {body})"
    );
    r
}

/// Grants a lease of `ttl` and returns its id.
async fn grant_id(api: &Api, ttl: &str) -> u64 {
    grant(api, json!({ "ttl": ttl })).await.json()["id"].as_u64().unwrap()
}

/// Writes `key` under `lease` (must succeed) and returns the write's revision.
async fn put_leased(api: &Api, key: &str, lease: u64) -> u64 {
    let r = api.put(&format!("/v1/kv{key}"), json!({ "value": "v", "lease": lease })).await;
    r.expect(StatusCode::OK);
    write_rev(&r)
}

/// `GET /v1/leases/{id}` (must succeed).
async fn lease(api: &Api, id: u64) -> Value {
    api.get(&format!("/v1/leases/{id}")).await.ok()
}

/// The keys under `prefix` at revision `rev`, in order.
async fn keys_at(api: &Api, prefix: &str, rev: u64) -> Vec<String> {
    let v = api.get(&format!("/v1/kv{prefix}?recursive&keys_only&revision={rev}")).await.ok();
    v["kvs"].as_array().unwrap().iter().map(|kv| kv["key"].as_str().unwrap().to_string()).collect()
}

async fn counters(api: &Api) -> Value {
    api.get("/v1/cluster").await.ok()["leases"].clone()
}

#[tokio::test]
async fn grants_take_every_ttl_format_and_no_revision() {
    with_node(|api| async move {
        api.set("/a", "x").await; // revision 1
        let cases = [
            (json!("10s"), 10_000),
            (json!("2500ms"), 2_500),
            (json!("2000ms"), 2_000), // exactly the floor
            (json!("1.5m"), 90_000),
            (json!("2m"), 120_000),
            (json!("1h"), 3_600_000),
            (json!("24h"), 86_400_000), // exactly the maximum
            (json!("2.25s"), 2_250),
            (json!(5), 5_000),
            (json!(2.5), 2_500),
            (json!(3.0), 3_000),
        ];
        for (i, (ttl, ms)) in cases.iter().enumerate() {
            let r = grant(&api, json!({ "ttl": ttl })).await;
            assert_eq!(r.json(), json!({"id": i + 1, "ttl_ms": ms}), "ttl {ttl}");
            assert_eq!(r.rev_header(), 1, "a grant takes no revision ({ttl})");
            assert!(r.header("content-type").unwrap_or("").starts_with("application/json"));
            let l = lease(&api, i as u64 + 1).await;
            assert_eq!(l["ttl_ms"], json!(ms), "{l}");
            let remaining = l["remaining_ms"].as_u64().unwrap();
            assert!(remaining > 0 && remaining <= *ms, "{l}");
            assert_eq!(l["key_count"], json!(0), "{l}");
            assert_eq!(l["keys"], json!([]), "{l}");
        }
        assert_eq!(api.revision().await, 1, "grants took no revision");
        let n = cases.len();
        assert_eq!(counters(&api).await, json!({"alive": n, "granted": n, "expired": 0, "revoked": 0}));
    })
    .await
}

#[tokio::test]
async fn the_floor_follows_the_election_timeout_setting() {
    with_node_config(short_leases, |api| async move {
        for (ttl, ms) in
            [(json!("750ms"), 750), (json!("120ms"), 120), (json!(0.12), 120), (json!("0.5s"), 500)]
        {
            assert_eq!(grant(&api, json!({ "ttl": ttl })).await.json()["ttl_ms"], json!(ms), "{ttl}");
        }
        let e =
            refused(&api, Method::POST, "/v1/leases", Some(r#"{"ttl":"119ms"}"#), BAD, "invalid_argument")
                .await;
        assert!(e["message"].as_str().unwrap().contains("120"), "the message names the floor: {e}");
    })
    .await;
    // The defaults: a floor of 2 s, so 750 ms is refused, and a maximum of 24 h.
    with_node(|api| async move {
        let e =
            refused(&api, Method::POST, "/v1/leases", Some(r#"{"ttl":"750ms"}"#), BAD, "invalid_argument")
                .await;
        assert!(e["message"].as_str().unwrap().contains("2000 ms"), "the message names the floor: {e}");
    })
    .await;
}

#[tokio::test]
async fn bad_grants_are_refused_and_change_nothing() {
    with_node(|api| async move {
        // Something in the store and the lease table, so "nothing changed" means something.
        api.set("/a", "x").await;
        let id = grant_id(&api, "10s").await;
        put_leased(&api, "/held", id).await;
        let ttls = [
            json!(0),
            json!(0.0),
            json!("0s"),
            json!("0ms"),
            json!(-1),
            json!(-0.5),
            json!("-1s"),
            json!("-2000ms"),
            json!("ten"),
            json!("10"),   // no unit
            json!("2000"), // no unit
            json!("s"),
            json!("ms"),
            json!(""),
            json!("10 s"),
            json!(" 10s"),
            json!("10s "),
            json!("10S"),
            json!("10sec"),
            json!("1d"),
            json!("1e3s"),
            json!(".5s"),
            json!("5.s"),
            json!("1..5s"),
            json!("+10s"),
            json!("0x10s"),
            json!("2.0005s"),    // not a whole number of milliseconds
            json!("2000.5ms"),   // not a whole number of milliseconds
            json!(2.0005),       // not a whole number of milliseconds
            json!("1s"),         // below the floor (2000 ms)
            json!("1999ms"),     // below the floor
            json!(1),            // below the floor
            json!("25h"),        // above the maximum (24 h)
            json!("86400001ms"), // above the maximum
            json!(86401),        // above the maximum
            json!("1000000h"),   // far too long
            json!(1e300),
            json!(null),
            json!(true),
            json!(["10s"]),
            json!({"s": 10}),
        ];
        for ttl in ttls {
            let body = json!({ "ttl": ttl }).to_string();
            refused(&api, Method::POST, "/v1/leases", Some(&body), BAD, "invalid_argument").await;
        }
        let bodies = [
            r#"{}"#,                              // no ttl
            r#"{"id": 5}"#,                       // no ttl
            r#"{"ttl": "10s", "extra": 1}"#,      // unknown field
            r#"{"ttl": "10s", "ID": 5}"#,         // unknown field (names are exact)
            r#"{"ttl": "10s", "lease": 5}"#,      // unknown field
            r#"{"ttl": "10s", "ttl_ms": 10000}"#, // unknown field
            r#"{"ttl": "10s", "id": 0}"#,
            r#"{"ttl": "10s", "id": -1}"#,
            r#"{"ttl": "10s", "id": 4503599627370497}"#, // 2^52 + 1: above the ids a client may choose
            r#"{"ttl": "10s", "id": 9007199254740991}"#, // 2^53 - 1: the cluster's
            r#"{"ttl": "10s", "id": 9007199254740992}"#, // 2^53
            r#"{"ttl": "10s", "id": 18446744073709551615}"#,
            r#"{"ttl": "10s", "id": 1e20}"#,
            r#"{"ttl": "10s", "id": 1.5}"#,
            r#"{"ttl": "10s", "id": "5"}"#,
            r#"{"ttl": "10s", "id": true}"#,
            r#"["10s"]"#,
            r#""10s""#,
            r#"10"#,
        ];
        for body in bodies {
            refused(&api, Method::POST, "/v1/leases", Some(body), BAD, "invalid_argument").await;
        }
        for body in ["", "   ", "{", r#"{"ttl": "10s""#, "ttl=10s"] {
            refused(&api, Method::POST, "/v1/leases", Some(body), BAD, "invalid_json").await;
        }
        // Query parameters: a grant takes none.
        for uri in ["/v1/leases?ttl=10s", "/v1/leases?id=5", "/v1/leases?limit=1"] {
            refused(&api, Method::POST, uri, Some(r#"{"ttl":"10s"}"#), BAD, "invalid_argument").await;
        }
        // The largest id a client may choose is fine, and the cluster's own ids go on above
        // it; a whole number written as a float is that number.
        let r = grant(&api, json!({"ttl": "10s", "id": MAX_CHOSEN_ID})).await;
        assert_eq!(r.json(), json!({"id": MAX_CHOSEN_ID, "ttl_ms": 10_000}));
        assert_eq!(grant_id(&api, "10s").await, MAX_CHOSEN_ID + 1);
        let r = grant(&api, json!({"ttl": "10s", "id": 7.0})).await;
        assert_eq!(r.json(), json!({"id": 7, "ttl_ms": 10_000}));
    })
    .await
}

#[tokio::test]
async fn a_chosen_id_is_granted_once() {
    with_node(|api| async move {
        let r = grant(&api, json!({"ttl": "10s", "id": 42})).await;
        assert_eq!(r.json(), json!({"id": 42, "ttl_ms": 10_000}));
        put_leased(&api, "/k", 42).await;
        // The id is taken: 409, and the lease keeps its TTL and its keys.
        let e = refused(
            &api,
            Method::POST,
            "/v1/leases",
            Some(r#"{"ttl":"1h","id":42}"#),
            StatusCode::CONFLICT,
            "lease_exists",
        )
        .await;
        assert!(e["message"].as_str().unwrap().contains("42"), "{e}");
        let l = lease(&api, 42).await;
        assert_eq!((l["ttl_ms"].clone(), l["key_count"].clone()), (json!(10_000), json!(1)), "{l}");
        // The ids the cluster picks are above every id granted before, chosen ones
        // included, so it never picks one a client may still hold.
        assert_eq!(grant_id(&api, "10s").await, 43);
        grant(&api, json!({"ttl": "10s", "id": 2})).await;
        assert_eq!(grant_id(&api, "10s").await, 44, "a chosen id below the last changes nothing");
        grant(&api, json!({"ttl": "10s", "id": 45})).await;
        api.delete("/v1/leases/45").await.ok();
        assert_eq!(grant_id(&api, "10s").await, 46, "an ended chosen id is not picked");
        // An id revoked is free again for a client that names it.
        api.delete("/v1/leases/42").await.ok();
        assert_eq!(
            grant(&api, json!({"ttl": "5s", "id": 42})).await.json(),
            json!({"id": 42, "ttl_ms": 5_000})
        );
        assert_eq!(lease(&api, 42).await["key_count"], json!(0), "a new lease under an old id owns nothing");
    })
    .await
}

#[tokio::test]
async fn bad_lease_ids_and_queries_are_400() {
    with_node(|api| async move {
        api.set("/a", "x").await;
        let id = grant_id(&api, "10s").await;
        put_leased(&api, "/held", id).await;
        for bad in [
            "abc",
            "0",
            "-1",
            "1.5",
            "1e3",
            "+1",
            "0x10",
            "%20",
            "1%20",
            "9007199254740992",
            "18446744073709551616",
            "99999999999999999999999",
        ] {
            refused(&api, Method::GET, &format!("/v1/leases/{bad}"), None, BAD, "invalid_argument").await;
            refused(&api, Method::DELETE, &format!("/v1/leases/{bad}"), None, BAD, "invalid_argument").await;
            refused(
                &api,
                Method::POST,
                &format!("/v1/leases/{bad}/keepalive"),
                None,
                BAD,
                "invalid_argument",
            )
            .await;
        }
        // Routes on one lease take no query parameters.
        for q in ["?foo", "?limit=1", "?id=1"] {
            refused(&api, Method::GET, &format!("/v1/leases/{id}{q}"), None, BAD, "invalid_argument").await;
            refused(&api, Method::DELETE, &format!("/v1/leases/{id}{q}"), None, BAD, "invalid_argument")
                .await;
            refused(
                &api,
                Method::POST,
                &format!("/v1/leases/{id}/keepalive{q}"),
                None,
                BAD,
                "invalid_argument",
            )
            .await;
        }
        for q in [
            "limit=0",
            "limit=-1",
            "limit=abc",
            "limit=",
            "limit=10001", // above --max-list-limit
            "after=abc",
            "after=-1",
            "after=1.5",
            "limit=1&limit=2",
            "foo",
            "recursive",
        ] {
            refused(&api, Method::GET, &format!("/v1/leases?{q}"), None, BAD, "invalid_argument").await;
        }
        // The `lease` of a write: an id out of range is 400 (not 404).
        for lease in ["0", "-1", "9007199254740992", "1.5", "\"1\"", "true"] {
            let body = format!(r#"{{"value": "v", "lease": {lease}}}"#);
            refused(&api, Method::PUT, "/v1/kv/new", Some(&body), BAD, "invalid_argument").await;
            refused(&api, Method::POST, "/v1/kv/q?sequential", Some(&body), BAD, "invalid_argument").await;
            let txn =
                format!(r#"{{"success": [{{"put": {{"key": "/new", "value": "v", "lease": {lease}}}}}]}}"#);
            refused(&api, Method::POST, "/v1/txn", Some(&txn), BAD, "invalid_argument").await;
        }
    })
    .await
}

#[tokio::test]
async fn an_unknown_lease_is_404_and_nothing_is_written() {
    with_node(|api| async move {
        api.set("/a", "orig").await;
        let live = grant_id(&api, "10s").await;
        put_leased(&api, "/held", live).await;
        let (s, c) = (NOT_FOUND, "lease_not_found");
        for unknown in [999, MAX_ID] {
            let put = format!(r#"{{"value": "new", "lease": {unknown}}}"#);
            refused(&api, Method::PUT, "/v1/kv/x", Some(&put), s, c).await;
            refused(&api, Method::PUT, "/v1/kv/a", Some(&put), s, c).await;
            // Even onto a key another lease holds: that key stays with its lease.
            refused(&api, Method::PUT, "/v1/kv/held", Some(&put), s, c).await;
            refused(&api, Method::POST, "/v1/kv/q?sequential", Some(&put), s, c).await;
            // A transaction whose chosen branch names it: refused whole.
            let txn = json!({"success": [
                {"put": {"key": "/t1", "value": "v"}},
                {"put": {"key": "/t2", "value": "v", "lease": unknown}},
                {"delete": {"key": "/a"}},
            ]})
            .to_string();
            refused(&api, Method::POST, "/v1/txn", Some(&txn), s, c).await;
            let failing = json!({
                "compare": [{"key": "/a", "target": "value", "op": "==", "value": "other"}],
                "failure": [{"put": {"key": "/t3", "value": "v", "lease": unknown}}],
            })
            .to_string();
            refused(&api, Method::POST, "/v1/txn", Some(&failing), s, c).await;
            refused(&api, Method::POST, &format!("/v1/leases/{unknown}/keepalive"), None, s, c).await;
            refused(&api, Method::GET, &format!("/v1/leases/{unknown}"), None, s, c).await;
            refused(&api, Method::DELETE, &format!("/v1/leases/{unknown}"), None, s, c).await;
        }
        // The sequence was not consumed by the refused sequential creates.
        let r = api.post("/v1/kv/q?sequential", json!({"value": "v", "lease": live}), &[]).await;
        r.expect(StatusCode::CREATED);
        assert_eq!(r.json()["kv"]["key"], json!("/q/00000000000000000001"));
        assert_eq!(r.json()["kv"]["lease"], json!(live));
        // A branch not taken may name any lease: it is never applied.
        let txn = json!({
            "compare": [{"key": "/a", "target": "value", "op": "==", "value": "orig"}],
            "success": [{"put": {"key": "/t4", "value": "v", "lease": live}}],
            "failure": [{"put": {"key": "/t5", "value": "v", "lease": 999}}],
        });
        let r = api.post("/v1/txn", txn, &[]).await.ok();
        assert_eq!(r["succeeded"], json!(true), "{r}");
        assert_eq!(api.get("/v1/kv/t4").await.ok()["kv"]["lease"], json!(live));
        // A revoked lease is unknown from then on.
        api.delete(&format!("/v1/leases/{live}")).await.ok();
        let put = format!(r#"{{"value": "new", "lease": {live}}}"#);
        refused(&api, Method::PUT, "/v1/kv/x", Some(&put), s, c).await;
        refused(&api, Method::POST, &format!("/v1/leases/{live}/keepalive"), None, s, c).await;
        refused(&api, Method::GET, &format!("/v1/leases/{live}"), None, s, c).await;
        refused(&api, Method::DELETE, &format!("/v1/leases/{live}"), None, s, c).await;
    })
    .await
}

#[tokio::test]
async fn a_keepalive_gives_the_whole_ttl_again() {
    with_node_config(short_leases, |api| async move {
        let id = grant_id(&api, "2s").await;
        let rev = api.revision().await;
        // Wait until at least 800 ms of the lease are gone.
        let before = loop {
            let remaining = lease(&api, id).await["remaining_ms"].as_u64().unwrap();
            if remaining <= 1_200 {
                break remaining;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let r = api.post(&format!("/v1/leases/{id}/keepalive"), json!({}), &[]).await;
        // A keepalive has no body to speak of; a `{}` or none are both fine.
        let k = r.ok();
        assert_eq!(k["id"], json!(id), "{k}");
        assert_eq!(k["ttl_ms"], json!(2_000), "{k}");
        assert_eq!(k.as_object().unwrap().len(), 3, "exactly id, ttl_ms, remaining_ms: {k}");
        let after = k["remaining_ms"].as_u64().unwrap();
        assert!(
            after > before && after <= 2_000,
            "remaining {before} ms before the keepalive, {after} ms after"
        );
        assert_eq!(r.rev_header(), rev, "a keepalive takes no revision");
        let r = api.send(Method::POST, &format!("/v1/leases/{id}/keepalive"), Body::empty(), None).await.ok();
        let again = r["remaining_ms"].as_u64().unwrap();
        assert!(again <= 2_000, "{r}");
        let read = lease(&api, id).await["remaining_ms"].as_u64().unwrap();
        assert!(read <= again, "time left only goes down between keepalives: {again} then {read}");
        assert_eq!(api.revision().await, rev);
    })
    .await
}

#[tokio::test]
async fn a_lease_read_shows_its_keys() {
    with_node(|api| async move {
        let id = grant_id(&api, "1h").await;
        let other = grant_id(&api, "1h").await;
        put_leased(&api, "/k/b", id).await;
        let r = api.post("/v1/kv/k/seq?sequential", json!({"value": "s", "lease": id}), &[]).await;
        r.expect(StatusCode::CREATED);
        let txn = json!({"success": [
            {"put": {"key": "/k/a", "value": "v", "lease": id}},
            {"put": {"key": "/k/c", "value": "v", "lease": id}},
            {"put": {"key": "/k/d", "value": "v", "lease": id}},
            {"put": {"key": "/k/free", "value": "v"}},
        ]});
        api.post("/v1/txn", txn, &[]).await.ok();
        let l = lease(&api, id).await;
        assert_eq!(l["key_count"], json!(5), "{l}");
        assert_eq!(
            l["keys"],
            json!(["/k/a", "/k/b", "/k/c", "/k/d", "/k/seq/00000000000000000001"]),
            "in key order"
        );
        assert_eq!(
            l.as_object().unwrap().keys().cloned().collect::<Vec<_>>(),
            vec!["id", "key_count", "keys", "locks", "remaining_ms", "ttl_ms"]
        );
        let kv = api.get("/v1/kv/k/a").await.ok();
        assert_eq!(kv["kv"]["lease"], json!(id), "{kv}");
        // Rewritten without the lease: no longer its key. Moved to another lease: that
        // lease's. Deleted: gone from it.
        api.set("/k/b", "detached").await;
        put_leased(&api, "/k/c", other).await;
        api.delete("/v1/kv/k/d").await.ok();
        let l = lease(&api, id).await;
        assert_eq!(l["keys"], json!(["/k/a", "/k/seq/00000000000000000001"]), "{l}");
        assert_eq!(l["key_count"], json!(2));
        // Its locks and elections, held or awaited, are listed too.
        assert_eq!(l["locks"], json!([]), "{l}");
        let held = api.post("/v1/locks/db", json!({"lease": id}), &[]).await.ok();
        let led = api.post("/v1/elections/e/campaign", json!({"lease": id, "value": "v"}), &[]).await.ok();
        assert_eq!(
            lease(&api, id).await["locks"],
            json!([{"kind": "lock", "name": "db", "owner": held["owner"]},
                   {"kind": "election", "name": "e", "owner": led["owner"]}])
        );
        let owner = held["owner"].as_str().unwrap();
        api.delete(&format!("/v1/locks/db?owner={owner}")).await.ok();
        let owner = led["owner"].as_str().unwrap();
        api.delete(&format!("/v1/elections/e/leader?owner={owner}")).await.ok();
        assert_eq!(lease(&api, id).await["locks"], json!([]));
        assert_eq!(lease(&api, other).await["keys"], json!(["/k/c"]));
        assert_eq!(api.get("/v1/kv/k/b").await.ok()["kv"]["lease"], json!(null));
        // Writing the key again under the same lease keeps it (no double count).
        put_leased(&api, "/k/a", id).await;
        assert_eq!(lease(&api, id).await["key_count"], json!(2));

        // A read lists at most 1000 keys; key_count counts them all.
        let many = 1_010;
        for chunk in (0..many).collect::<Vec<_>>().chunks(100) {
            let ops: Vec<Value> = chunk
                .iter()
                .map(|i| json!({"put": {"key": format!("/m/{i:05}"), "value": "v", "lease": other}}))
                .collect();
            api.post("/v1/txn", json!({ "success": ops }), &[]).await.ok();
        }
        let l = lease(&api, other).await;
        assert_eq!(l["key_count"], json!(many + 1), "the /m keys and /k/c");
        let keys = l["keys"].as_array().unwrap();
        assert_eq!(keys.len(), 1000);
        assert_eq!(keys[0], json!("/k/c"));
        assert_eq!(keys[999], json!("/m/00998"), "the first 1000 in key order");
        let list = api.get("/v1/leases").await.ok();
        let counts: Vec<(Value, Value)> = list["leases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["id"].clone(), l["key_count"].clone()))
            .collect();
        assert_eq!(counts, vec![(json!(id), json!(2)), (json!(other), json!(many + 1))]);
    })
    .await
}

#[tokio::test]
async fn leases_list_in_pages() {
    with_node(|api| async move {
        let empty = api.get("/v1/leases").await.ok();
        assert_eq!(empty, json!({"leases": [], "count": 0, "more": false}));
        assert_eq!(grant_id(&api, "2m").await, 1);
        for id in [40, 10, 30, 20, 50] {
            grant(&api, json!({"ttl": "1h", "id": id})).await;
        }
        put_leased(&api, "/k", 30).await;
        let ids = |v: &Value| -> Vec<u64> {
            v["leases"].as_array().unwrap().iter().map(|l| l["id"].as_u64().unwrap()).collect()
        };
        let all = api.get("/v1/leases").await.ok();
        assert_eq!(ids(&all), vec![1, 10, 20, 30, 40, 50]);
        assert_eq!(
            (all["count"].clone(), all["more"].clone(), all.get("next")),
            (json!(6), json!(false), None)
        );
        let first = &all["leases"][0];
        assert_eq!(
            first.as_object().unwrap().keys().cloned().collect::<Vec<_>>(),
            vec!["id", "key_count", "remaining_ms", "ttl_ms"]
        );
        assert_eq!(first["ttl_ms"], json!(120_000));
        assert_eq!(all["leases"][3]["key_count"], json!(1));

        // Follow the pages: each `next` is the `after` of the next one.
        let mut after: Option<u64> = None;
        let mut pages = Vec::new();
        loop {
            let uri = match after {
                Some(a) => format!("/v1/leases?limit=2&after={a}"),
                None => "/v1/leases?limit=2".to_string(),
            };
            let page = api.get(&uri).await.ok();
            assert_eq!(page["count"], json!(ids(&page).len()), "{page}");
            pages.push(ids(&page));
            if page["more"] == json!(true) {
                let next = page["next"].as_u64().unwrap_or_else(|| panic!("more without next: {page}"));
                assert_eq!(Some(&next), pages.last().unwrap().last(), "next is the last id of the page");
                after = Some(next);
            } else {
                assert_eq!(page.get("next"), None, "no next on the last page: {page}");
                break;
            }
        }
        assert_eq!(pages, vec![vec![1, 10], vec![20, 30], vec![40, 50]]);
        // `after` need not be a lease id; past the end is an empty last page.
        assert_eq!(ids(&api.get("/v1/leases?after=15&limit=1").await.ok()), vec![20]);
        let end = api.get("/v1/leases?after=50").await.ok();
        assert_eq!(end, json!({"leases": [], "count": 0, "more": false}));
        // A revoked lease leaves the listing.
        api.delete("/v1/leases/20").await.ok();
        assert_eq!(ids(&api.get("/v1/leases?after=10&limit=2").await.ok()), vec![30, 40]);
    })
    .await
}

#[tokio::test]
async fn a_revoke_deletes_every_key_at_one_revision() {
    with_node(|api| async move {
        api.set("/other", "o").await;
        let id = grant_id(&api, "1h").await;
        for k in ["/r/1", "/r/2", "/r/3", "/r/4", "/r/5"] {
            put_leased(&api, k, id).await;
        }
        api.set("/r/4", "detached").await; // rewritten without the lease: survives
        api.delete("/v1/kv/r/5").await.ok(); // deleted before: not counted
        let before = api.revision().await;
        let r = api.delete(&format!("/v1/leases/{id}")).await;
        let body = r.ok();
        assert_eq!(body, json!({"revision": before + 1, "id": id, "deleted": 3}));
        assert_eq!(write_rev(&r), before + 1);
        assert_eq!(api.revision().await, before + 1, "one revision for the three keys");
        // At the revision before, all three were there; at the revoke's, none is.
        assert_eq!(keys_at(&api, "/r", before).await, vec!["/r/1", "/r/2", "/r/3", "/r/4"]);
        assert_eq!(keys_at(&api, "/r", before + 1).await, vec!["/r/4"]);
        assert_eq!(api.get("/v1/kv/r/4").await.ok()["kv"]["value"], json!("detached"));
        assert_eq!(api.get("/v1/kv/other").await.ok()["kv"]["value"], json!("o"));
        api.get(&format!("/v1/leases/{id}")).await.error(NOT_FOUND, "lease_not_found");
        // Revoked twice: 404, nothing changed.
        refused(&api, Method::DELETE, &format!("/v1/leases/{id}"), None, NOT_FOUND, "lease_not_found").await;
        // A lease that owns no key ends without a revision.
        let bare = grant_id(&api, "1h").await;
        let r = api.delete(&format!("/v1/leases/{bare}")).await;
        assert_eq!(r.ok(), json!({"revision": before + 1, "id": bare, "deleted": 0}));
        assert_eq!(api.revision().await, before + 1);
        assert_eq!(counters(&api).await, json!({"alive": 0, "granted": 2, "expired": 0, "revoked": 2}));
    })
    .await
}

#[tokio::test]
async fn an_unrenewed_lease_expires_with_its_keys() {
    with_node_config(short_leases, |api| async move {
        let ttl_ms = 300;
        let kept = grant_id(&api, "1s").await;
        put_leased(&api, "/e/kept", kept).await;
        api.set("/e/plain", "p").await;
        let sent = Instant::now();
        let id = grant_id(&api, &format!("{ttl_ms}ms")).await;
        let granted = Instant::now();
        put_leased(&api, "/e/a", id).await;
        put_leased(&api, "/e/b", id).await;
        let rev_with_keys = api.revision().await;
        // Poll until the keys are gone, keeping the other lease alive meanwhile.
        let gone = loop {
            let r = api.get("/v1/kv/e/a").await;
            let at = Instant::now();
            if r.status == NOT_FOUND {
                break at;
            }
            r.expect(StatusCode::OK);
            assert!(at < granted + Duration::from_secs(10), "the lease never expired");
            api.post(&format!("/v1/leases/{kept}/keepalive"), json!({}), &[]).await.ok();
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        let (early, late) = (gone.duration_since(sent), gone.duration_since(granted));
        eprintln!(
            "a {ttl_ms} ms lease's key was seen gone {} ms after the grant was sent",
            early.as_millis()
        );
        assert!(early >= Duration::from_millis(ttl_ms), "the lease ended {early:?} after its grant was sent");
        // The failover rule's upper bound (no leader change here): TTL + slack (commit,
        // apply, polling) after the grant was acknowledged.
        let bound = Duration::from_millis(ttl_ms + 1_000);
        assert!(late <= bound, "the lease ended {late:?} after its grant was acknowledged (bound {bound:?})");
        // Both keys went at one revision, the keys of other leases and no lease stayed.
        let rev = api.revision().await;
        assert_eq!(rev, rev_with_keys + 1, "the expiry took one revision");
        assert_eq!(keys_at(&api, "/e", rev - 1).await, vec!["/e/a", "/e/b", "/e/kept", "/e/plain"]);
        assert_eq!(keys_at(&api, "/e", rev).await, vec!["/e/kept", "/e/plain"]);
        for (method, uri) in [
            (Method::GET, format!("/v1/leases/{id}")),
            (Method::POST, format!("/v1/leases/{id}/keepalive")),
            (Method::DELETE, format!("/v1/leases/{id}")),
        ] {
            refused(&api, method, &uri, None, NOT_FOUND, "lease_not_found").await;
        }
        assert_eq!(counters(&api).await, json!({"alive": 1, "granted": 2, "expired": 1, "revoked": 0}));
        // An expired lease with no keys takes no revision.
        let bare = grant_id(&api, "150ms").await;
        loop {
            let r = api.get(&format!("/v1/leases/{bare}")).await;
            if r.status == NOT_FOUND {
                break;
            }
            api.post(&format!("/v1/leases/{kept}/keepalive"), json!({}), &[]).await.ok();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // The lease read says 404 once its time is up; the expiry itself follows.
        loop {
            if counters(&api).await["expired"] == json!(2) {
                break;
            }
            api.post(&format!("/v1/leases/{kept}/keepalive"), json!({}), &[]).await.ok();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(api.revision().await, rev, "an expiry without keys takes no revision");
    })
    .await
}

#[tokio::test]
async fn idempotent_grants_and_revokes_replay_the_first_reply() {
    with_node(|api| async move {
        api.set("/a", "x").await;
        let g1 = [("idempotency-key", "grant-1")];
        let first = api.post("/v1/leases", json!({"ttl": "10s"}), &g1).await;
        first.expect(StatusCode::CREATED);
        assert_eq!(first.header("idempotent-replayed"), None);
        let id = first.json()["id"].as_u64().unwrap();
        let retry = api.post("/v1/leases", json!({"ttl": "10s"}), &g1).await;
        retry.expect(StatusCode::CREATED);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.json(), first.json(), "the same lease, not a second one");
        assert_eq!(counters(&api).await, json!({"alive": 1, "granted": 1, "expired": 0, "revoked": 0}));
        // Another grant under the same key: 422, nothing granted.
        let e = api.post("/v1/leases", json!({"ttl": "20s"}), &g1).await;
        e.error(StatusCode::UNPROCESSABLE_ENTITY, "idempotency_conflict");
        assert_eq!(counters(&api).await["granted"], json!(1));
        // A chosen id: the retry is the first reply, not 409.
        let g2 = [("idempotency-key", "grant-2")];
        let first = api.post("/v1/leases", json!({"ttl": "10s", "id": 77}), &g2).await;
        first.expect(StatusCode::CREATED);
        let retry = api.post("/v1/leases", json!({"ttl": "10s", "id": 77}), &g2).await;
        retry.expect(StatusCode::CREATED);
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.json(), json!({"id": 77, "ttl_ms": 10_000}));
        // A 409 is remembered as well.
        let g3 = [("idempotency-key", "grant-3")];
        let taken = api.post("/v1/leases", json!({"ttl": "10s", "id": id}), &g3).await;
        taken.error(StatusCode::CONFLICT, "lease_exists");
        let again = api.post("/v1/leases", json!({"ttl": "10s", "id": id}), &g3).await;
        again.error(StatusCode::CONFLICT, "lease_exists");
        assert_eq!(again.header("idempotent-replayed"), Some("true"));
        // A revoke retried: the first reply, one revision.
        put_leased(&api, "/held", 77).await;
        let rev = api.revision().await;
        let r1 = [("idempotency-key", "revoke-1")];
        let first = api.send_with_headers(Method::DELETE, "/v1/leases/77", Body::empty(), &r1).await;
        assert_eq!(first.ok(), json!({"revision": rev + 1, "id": 77, "deleted": 1}));
        let retry = api.send_with_headers(Method::DELETE, "/v1/leases/77", Body::empty(), &r1).await;
        assert_eq!(retry.header("idempotent-replayed"), Some("true"));
        assert_eq!(retry.ok(), first.json());
        assert_eq!(api.revision().await, rev + 1);
        assert_eq!(counters(&api).await, json!({"alive": 1, "granted": 2, "expired": 0, "revoked": 1}));
        // A malformed key: 400, nothing granted.
        let before = everything(&api).await;
        let r = api.post("/v1/leases", json!({"ttl": "10s"}), &[("idempotency-key", "has space")]).await;
        r.error(BAD, "invalid_argument");
        assert_eq!(everything(&api).await, before);
    })
    .await
}

#[tokio::test]
async fn too_many_leases_is_507() {
    with_node_config(
        |cfg| cfg.max_leases = 2,
        |api| async move {
            let a = grant_id(&api, "10s").await;
            grant_id(&api, "10s").await;
            refused(
                &api,
                Method::POST,
                "/v1/leases",
                Some(r#"{"ttl":"10s"}"#),
                StatusCode::INSUFFICIENT_STORAGE,
                "quota_exceeded",
            )
            .await;
            api.delete(&format!("/v1/leases/{a}")).await.ok();
            grant_id(&api, "10s").await;
        },
    )
    .await
}
