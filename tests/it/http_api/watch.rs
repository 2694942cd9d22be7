//! Watches (`GET /v1/watch/{key}`) and long-polls (`GET /v1/kv/{key}?wait`) on one node:
//! both stream formats, one message per revision, history boundaries (the floor, one
//! below it, the next revision, the far future), resuming, filters, progress, a lagging
//! watcher overtaken by compaction, a revision too big for one page, a stalled watcher
//! beside writes, the watcher limit, and every bad parameter refused before the stream.

use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use crate::http_api::harness::{with_node, with_node_config, write_rev, Api, Resp};

/// How long a message may take to arrive before a test fails.
const PATIENCE: Duration = Duration::from_secs(10);

/// One message of a stream.
#[derive(Debug, Clone, PartialEq)]
struct Msg {
    /// SSE `id:` (none in NDJSON).
    id: Option<u64>,
    /// SSE `event:` (none in NDJSON).
    event: Option<String>,
    data: Value,
}

impl Msg {
    fn revision(&self) -> u64 {
        self.data["revision"].as_u64().unwrap_or_else(|| panic!("not a change: {self:?}"))
    }

    /// `(type, key)` of each event.
    fn events(&self) -> Vec<(String, String)> {
        let evs = self.data["events"].as_array().unwrap_or_else(|| panic!("not a change: {self:?}"));
        evs.iter()
            .map(|e| (e["type"].as_str().unwrap().to_string(), e["kv"]["key"].as_str().unwrap().to_string()))
            .collect()
    }
}

/// A watch stream being read.
struct Stream {
    body: Body,
    buf: Vec<u8>,
    sse: bool,
    what: String,
    ended: bool,
}

impl Stream {
    /// The next message; `None` once the stream ended.
    async fn next(&mut self) -> Option<Msg> {
        match tokio::time::timeout(PATIENCE, self.read()).await {
            Ok(m) => m,
            Err(_) => panic!("{}: no message within {PATIENCE:?}", self.what),
        }
    }

    /// Asserts that no message comes for a while (and the stream stays open).
    async fn quiet(&mut self, d: Duration) {
        if let Ok(m) = tokio::time::timeout(d, self.read()).await {
            panic!("{}: expected silence, got {m:?}", self.what);
        }
    }

    async fn read(&mut self) -> Option<Msg> {
        let sep: &[u8] = if self.sse { b"\n\n" } else { b"\n" };
        loop {
            if let Some(i) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let raw: Vec<u8> = self.buf.drain(..i + sep.len()).collect();
                let text = String::from_utf8(raw).expect("a stream is UTF-8");
                return Some(self.parse(text.trim_end_matches('\n')));
            }
            if self.ended {
                assert!(
                    self.buf.is_empty(),
                    "{}: the stream ended inside a message: {:?}",
                    self.what,
                    self.buf
                );
                return None;
            }
            match self.body.frame().await {
                None => self.ended = true,
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => panic!("{}: the stream failed: {e}", self.what),
            }
        }
    }

    fn parse(&self, text: &str) -> Msg {
        if !self.sse {
            let data = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{}: bad line {text:?}: {e}", self.what));
            return Msg { id: None, event: None, data };
        }
        let (mut id, mut event, mut data) = (None, None, None);
        for line in text.lines() {
            let (field, value) =
                line.split_once(": ").unwrap_or_else(|| panic!("{}: bad SSE line {line:?}", self.what));
            match field {
                "id" => id = Some(value.parse().unwrap()),
                "event" => event = Some(value.to_string()),
                "data" => {
                    assert!(data.is_none(), "{}: one data line per message: {text:?}", self.what);
                    data = Some(
                        serde_json::from_str(value)
                            .unwrap_or_else(|e| panic!("{}: bad data {value:?}: {e}", self.what)),
                    );
                }
                _ => panic!("{}: unknown SSE field in {text:?}", self.what),
            }
        }
        Msg { id, event, data: data.unwrap_or_else(|| panic!("{}: no data in {text:?}", self.what)) }
    }

    /// The next message, which must be a change; returns it.
    async fn change(&mut self) -> Msg {
        let m = self.next().await.unwrap_or_else(|| panic!("{}: ended, expected a change", self.what));
        assert!(m.data.get("events").is_some(), "{}: expected a change, got {m:?}", self.what);
        if self.sse {
            assert_eq!(m.event.as_deref(), Some("change"));
            assert_eq!(m.id, Some(m.revision()), "the SSE id is the revision");
        }
        m
    }

    /// The next message, which must be progress; returns its revision.
    async fn progress(&mut self) -> u64 {
        let m = self.next().await.unwrap_or_else(|| panic!("{}: ended, expected progress", self.what));
        let rev = m.data["progress"]["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: expected progress, got {m:?}", self.what));
        if self.sse {
            assert_eq!((m.event.as_deref(), m.id), (Some("progress"), Some(rev)));
        }
        rev
    }

    /// The next message must be `compacted`, then the stream ends; returns the floor.
    async fn compacted(&mut self) -> u64 {
        let m = self.next().await.unwrap_or_else(|| panic!("{}: ended, expected compacted", self.what));
        let c = m.data["compacted"]["compact_revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("{}: expected compacted, got {m:?}", self.what));
        if self.sse {
            assert_eq!((m.event.as_deref(), m.id), (Some("compacted"), None));
        }
        assert_eq!(self.next().await, None, "{}: the stream ends after compacted", self.what);
        c
    }
}

/// Opens a watch that must start (200).
async fn watch(api: &Api, uri: &str) -> Stream {
    watch_with(api, uri, &[]).await
}

async fn watch_with(api: &Api, uri: &str, headers: &[(&str, &str)]) -> Stream {
    let resp = api.open(uri, headers).await;
    let (parts, body) = resp.into_parts();
    if parts.status != StatusCode::OK {
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        panic!("GET {uri}: {} {}", parts.status, String::from_utf8_lossy(&bytes));
    }
    let ct = parts.headers["content-type"].to_str().unwrap().to_string();
    let sse = ct == "text/event-stream";
    assert!(sse || ct == "application/x-ndjson", "GET {uri}: content-type {ct}");
    assert!(
        parts.headers.contains_key("x-palisade-revision") && parts.headers.contains_key("x-palisade-term")
    );
    Stream { body, buf: Vec::new(), sse, what: format!("GET {uri}"), ended: false }
}

/// A watch that must be refused before it starts.
async fn refused(api: &Api, uri: &str, headers: &[(&str, &str)], status: StatusCode, code: &str) -> Value {
    let resp = api.open(uri, headers).await;
    let (parts, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    Resp { status: parts.status, headers: parts.headers, body, what: format!("GET {uri}") }
        .error(status, code)
}

async fn put(api: &Api, key: &str, value: &str) -> u64 {
    write_rev(&api.put(&format!("/v1/kv{key}"), json!({ "value": value })).await)
}

async fn del(api: &Api, uri: &str) -> u64 {
    write_rev(&api.delete(uri).await)
}

async fn compact(api: &Api, revision: u64) {
    api.post("/v1/maintenance/compact", json!({ "revision": revision }), &[]).await.ok();
}

fn ev(kind: &str, key: &str) -> (String, String) {
    (kind.to_string(), key.to_string())
}

#[tokio::test]
async fn a_watch_from_now_sends_one_message_per_revision() {
    with_node(|api| async move {
        for ndjson in [false, true] {
            let before = put(&api, "/app/x", "0").await;
            let headers: &[(&str, &str)] = if ndjson { &[("accept", "application/x-ndjson")] } else { &[] };
            let head = api.revision().await;
            let mut w = watch_with(&api, "/v1/watch/app?recursive", headers).await;
            // The first message says where the watch starts.
            assert_eq!(w.progress().await, head);
            let r1 = put(&api, "/app/a", "1").await;
            let m = w.change().await;
            assert_eq!(m.revision(), r1);
            assert_eq!(
                m.data["events"],
                json!([{"type": "put", "kv": {"key": "/app/a", "value": "1", "create_revision": r1,
                    "mod_revision": r1, "version": 1, "lease": null}}])
            );
            // A transaction's events arrive together, in key order.
            let t = api
                .post(
                    "/v1/txn",
                    json!({"success": [{"put": {"key": "/app/z", "value": "z"}}, {"put": {"key": "/app/b", "value": "b"}},
                        {"put": {"key": "/other", "value": "o"}}]}),
                    &[],
                )
                .await
                .ok();
            let r2 = t["revision"].as_u64().unwrap();
            let m = w.change().await;
            assert_eq!((m.revision(), m.events()), (r2, vec![ev("put", "/app/b"), ev("put", "/app/z")]));
            // A recursive delete: one message, the deletes carry the key and revision only.
            let r3 = del(&api, "/v1/kv/app?recursive").await;
            let m = w.change().await;
            assert_eq!(m.revision(), r3);
            assert_eq!(m.events(), vec![ev("delete", "/app/a"), ev("delete", "/app/b"), ev("delete", "/app/x"), ev("delete", "/app/z")]);
            assert_eq!(m.data["events"][0]["kv"], json!({"key": "/app/a", "mod_revision": r3}));
            // Changes elsewhere send nothing.
            put(&api, "/other", "2").await;
            put(&api, "/app.b", "2").await;
            w.quiet(Duration::from_millis(300)).await;
            assert!(before < r1);
        }
    })
    .await;
}

#[tokio::test]
async fn a_single_key_watch_sees_that_key_only() {
    with_node(|api| async move {
        let mut w = watch(&api, "/v1/watch/a/b").await;
        w.progress().await;
        put(&api, "/a/bc", "x").await;
        put(&api, "/a/b/c", "x").await;
        put(&api, "/a", "x").await;
        let r = put(&api, "/a/b", "1").await;
        let m = w.change().await;
        assert_eq!((m.revision(), m.events()), (r, vec![ev("put", "/a/b")]));
        // The root watches everything.
        let mut all = watch(&api, "/v1/watch/?recursive").await;
        all.progress().await;
        let r = put(&api, "/q", "1").await;
        assert_eq!(all.change().await.revision(), r);
    })
    .await;
}

#[tokio::test]
async fn history_boundaries_floor_below_next_and_future() {
    with_node(|api| async move {
        let mut revs = Vec::new();
        for i in 1..=6 {
            revs.push(put(&api, &format!("/h/k{i}"), &i.to_string()).await);
        }
        let head = *revs.last().unwrap();
        let floor = revs[2];
        compact(&api, floor).await;
        // At the floor: everything from it on, then live.
        let mut w = watch(&api, &format!("/v1/watch/h?recursive&start_revision={floor}")).await;
        for r in &revs[2..] {
            assert_eq!(w.change().await.revision(), *r);
        }
        let live = put(&api, "/h/k7", "7").await;
        assert_eq!(w.change().await.revision(), live);
        // One below the floor: compacted, in the stream, then the end.
        let mut w = watch(&api, &format!("/v1/watch/h?recursive&start_revision={}", floor - 1)).await;
        assert_eq!(w.compacted().await, floor);
        let mut w =
            watch_with(&api, "/v1/watch/h?recursive&start_revision=1", &[("accept", "application/x-ndjson")])
                .await;
        assert_eq!(w.compacted().await, floor);
        // The next revision: nothing until it happens, and no progress first.
        let head = head.max(live);
        let mut w = watch(&api, &format!("/v1/watch/h?recursive&start_revision={}", head + 1)).await;
        w.quiet(Duration::from_millis(200)).await;
        let r = put(&api, "/h/k8", "8").await;
        assert_eq!(w.change().await.revision(), r);
        // Past that: the future is refused before the stream starts, as are 0 and garbage.
        let far = r + 2;
        let e = refused(
            &api,
            &format!("/v1/watch/h?start_revision={far}"),
            &[],
            StatusCode::BAD_REQUEST,
            "future_revision",
        )
        .await;
        assert_eq!(e["revision"], json!(r));
        refused(
            &api,
            "/v1/watch/h?start_revision=99999999999",
            &[],
            StatusCode::BAD_REQUEST,
            "future_revision",
        )
        .await;
        refused(&api, "/v1/watch/h?start_revision=0", &[], StatusCode::BAD_REQUEST, "invalid_argument").await;
        refused(&api, "/v1/watch/h?start_revision=-1", &[], StatusCode::BAD_REQUEST, "invalid_argument")
            .await;
        refused(&api, "/v1/watch/h?start_revision=x", &[], StatusCode::BAD_REQUEST, "invalid_argument").await;
    })
    .await;
}

#[tokio::test]
async fn a_delete_at_the_compaction_revision_is_not_lost() {
    with_node(|api| async move {
        put(&api, "/d/k", "v").await;
        put(&api, "/d/j", "v").await;
        let gone = del(&api, "/v1/kv/d?recursive").await;
        put(&api, "/d/after", "v").await;
        compact(&api, gone).await;
        for uri in [
            format!("/v1/watch/d?recursive&start_revision={gone}"),
            format!("/v1/watch/d/k?start_revision={gone}"),
        ] {
            let mut w = watch(&api, &uri).await;
            let m = w.change().await;
            assert_eq!(m.revision(), gone, "{uri}");
            assert!(m.events().contains(&ev("delete", "/d/k")), "{uri}: {m:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn resuming_with_last_event_id_neither_repeats_nor_skips() {
    with_node(|api| async move {
        let mut revs = Vec::new();
        for i in 0..5 {
            revs.push(put(&api, "/r/k", &i.to_string()).await);
        }
        let mut w = watch(&api, &format!("/v1/watch/r/k?start_revision={}", revs[0])).await;
        let first = w.change().await;
        let second = w.change().await;
        assert_eq!((first.revision(), second.revision()), (revs[0], revs[1]));
        drop(w);
        // A reconnecting EventSource sends the last id it got; it wins over start_revision.
        let last = second.id.unwrap().to_string();
        let mut w = watch_with(
            &api,
            &format!("/v1/watch/r/k?start_revision={}", revs[0]),
            &[("last-event-id", &last)],
        )
        .await;
        for r in &revs[2..] {
            assert_eq!(w.change().await.revision(), *r);
        }
        // The id of a progress message resumes just as well.
        let mut p = watch(&api, "/v1/watch/r/k").await;
        let at = p.progress().await.to_string();
        drop(p);
        let next = put(&api, "/r/k", "again").await;
        let mut w = watch_with(&api, "/v1/watch/r/k", &[("last-event-id", &at)]).await;
        assert_eq!(w.change().await.revision(), next);
        refused(
            &api,
            "/v1/watch/r/k",
            &[("last-event-id", "forty")],
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        )
        .await;
        let twice = [("last-event-id", "1"), ("last-event-id", "2")];
        refused(&api, "/v1/watch/r/k", &twice, StatusCode::BAD_REQUEST, "invalid_argument").await;
        refused(
            &api,
            "/v1/watch/r/k",
            &[("last-event-id", &(next + 5).to_string())],
            StatusCode::BAD_REQUEST,
            "future_revision",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn filters_and_previous_values() {
    with_node(|api| async move {
        let start = api.revision().await + 1;
        let p1 = put(&api, "/f/a", "1").await;
        let p2 = put(&api, "/f/a", "2").await;
        let d = del(&api, "/v1/kv/f/a").await;
        let p3 = put(&api, "/f/a", "3").await;
        let base = format!("/v1/watch/f?recursive&start_revision={start}");
        let mut puts = watch(&api, &format!("{base}&types=put")).await;
        for r in [p1, p2, p3] {
            let m = puts.change().await;
            assert_eq!((m.revision(), m.events()), (r, vec![ev("put", "/f/a")]));
        }
        let mut dels = watch(&api, &format!("{base}&types=delete&prev_kv")).await;
        let m = dels.change().await;
        assert_eq!((m.revision(), m.events()), (d, vec![ev("delete", "/f/a")]));
        assert_eq!(m.data["events"][0]["prev_kv"]["value"], json!("2"));
        dels.quiet(Duration::from_millis(200)).await;
        let mut both = watch(&api, &format!("{base}&types=put,delete&prev_kv")).await;
        let first = both.change().await;
        assert!(
            first.data["events"][0].get("prev_kv").is_none(),
            "a creation has no previous value: {first:?}"
        );
        let second = both.change().await;
        assert_eq!(second.data["events"][0]["prev_kv"]["value"], json!("1"));
        // Without prev_kv there is none.
        let mut plain = watch(&api, &base).await;
        assert!(plain.change().await.data["events"][0].get("prev_kv").is_none());
        assert!(plain.change().await.data["events"][0].get("prev_kv").is_none());
        for bad in ["types=", "types=update", "types=put,", "types=PUT"] {
            refused(&api, &format!("/v1/watch/f?{bad}"), &[], StatusCode::BAD_REQUEST, "invalid_argument")
                .await;
        }
    })
    .await;
}

#[tokio::test]
async fn an_idle_watch_is_told_its_progress() {
    with_node(|api| async move {
        let mut w = watch(&api, "/v1/watch/p?recursive&progress=200ms").await;
        let start = w.progress().await;
        // Changes elsewhere move the progress revision on (nothing was left out).
        let elsewhere = put(&api, "/q", "1").await;
        let mut seen = start;
        while seen < elsewhere {
            let p = w.progress().await;
            assert!(p >= seen, "progress went back from {seen} to {p}");
            seen = p;
        }
        assert_eq!(seen, elsewhere);
        // Progress never claims past a change it has not sent.
        let mine = put(&api, "/p/a", "1").await;
        loop {
            let m = w.next().await.unwrap();
            if m.data.get("events").is_some() {
                assert_eq!(m.revision(), mine);
                break;
            }
            let p = m.data["progress"]["revision"].as_u64().unwrap();
            assert!(p < mine, "progress {p} before the change of {mine} was sent");
        }
    })
    .await;
}

#[tokio::test]
async fn a_lagging_watch_overtaken_by_compaction_gets_compacted() {
    with_node(|api| async move {
        let mut w = watch(&api, "/v1/watch/l?recursive").await;
        w.progress().await;
        // The watch is not read while its history is written and compacted away.
        let mut last = 0;
        for i in 0..10 {
            last = put(&api, "/l/k", &i.to_string()).await;
        }
        compact(&api, last - 2).await;
        assert_eq!(w.compacted().await, last - 2);
    })
    .await;
}

#[tokio::test]
async fn a_revision_bigger_than_a_page_is_still_one_message() {
    with_node(|api| async move {
        let value = "v".repeat(400);
        let n = 1500;
        for chunk in 0..n / 100 {
            let ops: Vec<Value> = (0..100)
                .map(|i| json!({"put": {"key": format!("/big/k{:05}", chunk * 100 + i), "value": value}}))
                .collect();
            api.post("/v1/txn", json!({ "success": ops }), &[]).await.ok();
        }
        for (uri, ndjson) in
            [("/v1/watch/big?recursive&prev_kv", false), ("/v1/watch/big?recursive&prev_kv", true)]
        {
            let headers: &[(&str, &str)] = if ndjson { &[("accept", "application/x-ndjson")] } else { &[] };
            let mut w = watch_with(&api, uri, headers).await;
            w.progress().await;
            let gone = del(&api, "/v1/kv/big?recursive").await;
            let m = w.change().await;
            assert_eq!(m.revision(), gone);
            let keys: Vec<String> = m
                .events()
                .into_iter()
                .map(|(t, k)| {
                    assert_eq!(t, "delete");
                    k
                })
                .collect();
            let want: Vec<String> = (0..n).map(|i| format!("/big/k{i:05}")).collect();
            assert_eq!(keys, want, "every delete, once, in key order");
            assert!(m.data["events"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["prev_kv"]["value"] == json!(value)));
            // Put them back for the other format.
            for chunk in 0..n / 100 {
                let ops: Vec<Value> = (0..100)
                    .map(|i| json!({"put": {"key": format!("/big/k{:05}", chunk * 100 + i), "value": value}}))
                    .collect();
                api.post("/v1/txn", json!({ "success": ops }), &[]).await.ok();
            }
        }
    })
    .await;
}

#[tokio::test]
async fn a_stalled_watch_holds_up_no_write_and_loses_nothing() {
    with_node(|api| async move {
        let mut stalled = watch(&api, "/v1/watch/s?recursive").await;
        stalled.progress().await;
        let mut revs = Vec::new();
        for i in 0..500 {
            revs.push(put(&api, &format!("/s/k{}", i % 7), &i.to_string()).await);
        }
        // Read at last: every revision, in order, once.
        for r in revs {
            assert_eq!(stalled.change().await.revision(), r);
        }
    })
    .await;
}

#[tokio::test]
async fn a_lease_ending_is_one_delete_message() {
    with_node(|api| async move {
        let lease = api.post("/v1/leases", json!({"ttl": "60s"}), &[]).await;
        let id = lease.json()["id"].as_u64().unwrap();
        for k in ["/e/a", "/e/b", "/e/c"] {
            api.put(&format!("/v1/kv{k}"), json!({"value": "x", "lease": id})).await.ok();
        }
        let mut w = watch(&api, "/v1/watch/e?recursive").await;
        w.progress().await;
        api.delete(&format!("/v1/leases/{id}")).await.ok();
        let m = w.change().await;
        assert_eq!(m.events(), vec![ev("delete", "/e/a"), ev("delete", "/e/b"), ev("delete", "/e/c")]);
    })
    .await;
}

#[tokio::test]
async fn many_watchers_each_get_their_own_keys() {
    with_node(|api| async move {
        let mut ws = Vec::new();
        for i in 0..50 {
            let mut w = watch(&api, &format!("/v1/watch/m/{i}")).await;
            w.progress().await;
            ws.push(w);
        }
        let mut sub = watch(&api, "/v1/watch/m?recursive").await;
        sub.progress().await;
        let mut revs = Vec::new();
        for i in 0..50 {
            revs.push(put(&api, &format!("/m/{i}"), "v").await);
        }
        for (i, w) in ws.iter_mut().enumerate() {
            let m = w.change().await;
            assert_eq!((m.revision(), m.events()), (revs[i], vec![ev("put", &format!("/m/{i}"))]));
            w.quiet(Duration::from_millis(5)).await;
        }
        for r in revs {
            assert_eq!(sub.change().await.revision(), r);
        }
    })
    .await;
}

#[tokio::test]
async fn bad_watch_parameters_are_refused_before_the_stream() {
    with_node(|api| async move {
        let bad = StatusCode::BAD_REQUEST;
        for (uri, code) in [
            ("/v1/watch/a?recurisve", "invalid_argument"),
            ("/v1/watch/a?recursive=maybe", "invalid_argument"),
            ("/v1/watch/a?progress=2x", "invalid_argument"),
            ("/v1/watch/a?progress=0", "invalid_argument"),
            ("/v1/watch/a?progress=50ms", "invalid_argument"),
            ("/v1/watch/a?progress=2h", "invalid_argument"),
            ("/v1/watch/a?progress=.5", "invalid_argument"),
            ("/v1/watch/a?progress=5.", "invalid_argument"),
            ("/v1/watch/a?progress=1.5.1", "invalid_argument"),
            ("/v1/watch/a?consistency=eventual", "invalid_argument"),
            ("/v1/watch/a?prev_kv=2", "invalid_argument"),
            ("/v1/watch/a/", "invalid_key"),
            ("/v1/watch/a//b", "invalid_key"),
            ("/v1/watch/a/../b", "invalid_key"),
            ("/v1/watch/%FF", "invalid_key"),
            // The root is not a key: only its subtree can be watched.
            ("/v1/watch/", "invalid_key"),
            ("/v1/watch", "invalid_key"),
        ] {
            refused(&api, uri, &[], bad, code).await;
        }
        let r = api.send(Method::POST, "/v1/watch/a", Body::empty(), None).await;
        r.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        // Good ones start.
        for uri in [
            "/v1/watch/a?progress=2s",
            "/v1/watch/a?progress=1.5",
            "/v1/watch/?recursive&consistency=serializable",
        ] {
            watch(&api, uri).await.progress().await;
        }
    })
    .await;
}

#[tokio::test]
async fn watches_and_long_polls_are_limited() {
    with_node_config(
        |cfg| cfg.max_watchers = 2,
        |api| async move {
            let a = watch(&api, "/v1/watch/a").await;
            let b = watch(&api, "/v1/watch/b?recursive").await;
            refused(&api, "/v1/watch/c", &[], StatusCode::TOO_MANY_REQUESTS, "overloaded").await;
            api.get("/v1/kv/c?wait&timeout=1s").await.error(StatusCode::TOO_MANY_REQUESTS, "overloaded");
            drop(a);
            let mut c = watch(&api, "/v1/watch/c").await;
            c.progress().await;
            drop((b, c));
            let r = api.get("/v1/kv/c?wait&timeout=100ms").await.ok();
            assert_eq!(r["changed"], json!(false));
        },
    )
    .await;
}

#[tokio::test]
async fn a_long_poll_answers_once_something_changed() {
    with_node(|api| async move {
        let r1 = put(&api, "/lp/a", "1").await;
        let r2 = put(&api, "/lp/a", "2").await;
        // Changed already: at once, with the state now.
        let v = api.get(&format!("/v1/kv/lp/a?wait&after_revision={r1}")).await.ok();
        assert_eq!(
            (v["changed"].clone(), v["kv"]["value"].clone(), v["revision"].clone()),
            (json!(true), json!("2"), json!(r2))
        );
        // Nothing after r2: the timeout, with the state as it is.
        let v = api.get(&format!("/v1/kv/lp/a?wait&after_revision={r2}&timeout=200ms")).await.ok();
        assert_eq!((v["changed"].clone(), v["kv"]["value"].clone()), (json!(false), json!("2")));
        // A missing key is null, never 404.
        let v = api.get("/v1/kv/lp/none?wait&timeout=100ms").await.ok();
        assert_eq!((v["changed"].clone(), v["kv"].clone()), (json!(false), Value::Null));
        // A write wakes a waiting long-poll (key and subtree).
        let waiter = {
            let api = api.clone();
            tokio::spawn(async move {
                api.get(&format!("/v1/kv/lp/a?wait&after_revision={r2}&timeout=20s")).await.ok()
            })
        };
        let sub = {
            let api = api.clone();
            tokio::spawn(async move {
                api.get(&format!("/v1/kv/lp?recursive&wait&after_revision={r2}&timeout=20s")).await.ok()
            })
        };
        let other = {
            let api = api.clone();
            tokio::spawn(async move {
                api.get(&format!("/v1/kv/lp/b?wait&after_revision={r2}&timeout=1s")).await.ok()
            })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r3 = del(&api, "/v1/kv/lp/a").await;
        let v = waiter.await.unwrap();
        assert_eq!(
            (v["changed"].clone(), v["kv"].clone(), v["revision"].clone()),
            (json!(true), Value::Null, json!(r3))
        );
        let v = sub.await.unwrap();
        assert_eq!((v["changed"].clone(), v["count"].clone()), (json!(true), json!(0)));
        assert_eq!(other.await.unwrap()["changed"], json!(false), "a change to another key does not answer");
        // Count and children listings wait on the subtree too.
        let v = api.get(&format!("/v1/kv/lp?children&wait&after_revision={r2}")).await.ok();
        assert_eq!(v["changed"], json!(true));
        let v = api
            .get(&format!("/v1/kv/lp?recursive&count_only&wait&after_revision={r3}&timeout=100ms"))
            .await
            .ok();
        assert_eq!(v, json!({"revision": r3, "count": 0, "changed": false}));
    })
    .await;
}

#[tokio::test]
async fn bad_long_polls_are_refused() {
    with_node(|api| async move {
        let head = put(&api, "/lp/a", "1").await;
        put(&api, "/lp/a", "2").await;
        let head = head + 1;
        compact(&api, head).await;
        let bad = StatusCode::BAD_REQUEST;
        api.refused_get(&format!("/v1/kv/lp/a?wait&after_revision={}", head + 1), bad, "future_revision")
            .await;
        let e = api.refused_get("/v1/kv/lp/a?wait&after_revision=0", StatusCode::GONE, "compacted").await;
        assert_eq!(e.json()["error"]["compact_revision"], json!(head));
        for uri in [
            "/v1/kv/lp/a?wait&timeout=0",
            "/v1/kv/lp/a?wait&timeout=11m",
            "/v1/kv/lp/a?wait&timeout=soon",
            "/v1/kv/lp/a?wait&after_revision=x",
            "/v1/kv/lp/a?after_revision=1",
            "/v1/kv/lp/a?timeout=1s",
            "/v1/kv/lp/a?wait&revision=1",
            "/v1/kv/lp/a?wait&raw",
            "/v1/kv/lp/a?wait=soon",
        ] {
            api.refused_get(uri, bad, "invalid_argument").await;
        }
        // The root is not a key: refused at once, not after the wait (30 s by default).
        for uri in ["/v1/kv/?wait", "/v1/kv?wait&consistency=serializable"] {
            tokio::time::timeout(Duration::from_secs(5), api.refused_get(uri, bad, "invalid_key"))
                .await
                .unwrap_or_else(|_| panic!("GET {uri}: not refused at once"));
        }
    })
    .await;
}

#[tokio::test]
async fn long_polls_hold_no_in_flight_slot() {
    with_node_config(
        |cfg| cfg.max_inflight_requests = 1,
        |api| async move {
            let polls: Vec<_> = (0..3)
                .map(|i| {
                    let api = api.clone();
                    tokio::spawn(async move { api.get(&format!("/v1/kv/ip/{i}?wait&timeout=2s")).await.ok() })
                })
                .collect();
            tokio::time::sleep(Duration::from_millis(200)).await;
            // The one slot is free for a plain read and a write while three long-polls wait.
            api.get("/v1/kv/ip?recursive").await.ok();
            put(&api, "/ip/0", "x").await;
            for (i, p) in polls.into_iter().enumerate() {
                assert_eq!(p.await.unwrap()["changed"], json!(i == 0));
            }
            // `wait=false` is a plain read.
            api.get("/v1/kv/ip/0?wait=false").await.ok();
        },
    )
    .await;
}
