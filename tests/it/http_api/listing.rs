//! Listings (`?recursive` with paging, `keys_only`, `count_only`; `?children`), history
//! reads (`?revision=N`) and `?consistency`.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::http_api::harness::{with_node, Api};

fn keys_of(kvs: &Value) -> Vec<String> {
    kvs.as_array()
        .expect("kvs is an array")
        .iter()
        .map(|kv| kv["key"].as_str().unwrap().to_string())
        .collect()
}

/// Lists `base` (a `?recursive` URI) from the page token `after` (or the start) and
/// follows `next` until `more` is false; checks every page reflects `revision` and the
/// whole-range `count`. Returns the concatenated kvs and the number of pages.
async fn follow(
    api: &Api,
    base: &str,
    after: Option<&str>,
    revision: u64,
    count: u64,
    limit: usize,
) -> (Vec<Value>, usize) {
    let mut all = Vec::new();
    let mut uri = match after {
        Some(token) => format!("{base}&after={token}"),
        None => base.to_string(),
    };
    let mut pages = 0;
    loop {
        let r = api.get(&uri).await;
        let page = r.ok();
        pages += 1;
        assert!(pages < 100, "paging does not end");
        assert_eq!(page["revision"], json!(revision), "{uri}: a page reflects the pinned revision: {page}");
        assert_eq!(r.rev_header(), revision, "{uri}: header of a pinned page");
        assert_eq!(page["count"], json!(count), "{uri}: count is over the whole range");
        let kvs = page["kvs"].as_array().expect("kvs").clone();
        assert!(kvs.len() <= limit, "{uri}: page over the limit");
        all.extend(kvs);
        match (&page["more"], &page["next"]) {
            (Value::Bool(false), next) => {
                assert!(next.is_null(), "{uri}: next must be null on the last page: {page}");
                return (all, pages);
            }
            (Value::Bool(true), Value::String(next)) => {
                assert!(!page["kvs"].as_array().unwrap().is_empty(), "{uri}: more with an empty page");
                uri = format!("{base}&after={next}");
            }
            _ => panic!("{uri}: bad more/next: {page}"),
        }
    }
}

#[tokio::test]
async fn recursive_listing_and_paging() {
    with_node(|api| async move {
        api.set("/l", "root").await;
        for i in 0..25 {
            api.set(&format!("/l/k{i:02}"), &format!("v{i:02}")).await;
        }
        // Neighbours that share the prefix string but are not below /l.
        for k in ["/l.x", "/lx", "/l0", "/k"] {
            api.set(k, "outside").await;
        }

        let r = api.get("/v1/kv/l?recursive").await;
        let full = r.ok();
        let rev = api.revision().await;
        assert_eq!(full["revision"], json!(rev));
        assert_eq!(r.rev_header(), rev);
        assert!(r.term_header() >= 1);
        assert_eq!(full["count"], json!(26));
        assert_eq!(full["more"], json!(false));
        assert!(full["next"].is_null(), "{full}");
        let mut expected = vec!["/l".to_string()];
        expected.extend((0..25).map(|i| format!("/l/k{i:02}")));
        assert_eq!(keys_of(&full["kvs"]), expected, "the key and its subtree, sorted");
        assert_eq!(full["kvs"][0]["value"], json!("root"));
        assert_eq!(full["kvs"][25]["value"], json!("v24"));
        assert_eq!(full["kvs"][3]["version"], json!(1));
        let full_kvs = full["kvs"].as_array().unwrap().clone();

        // `?recursive=true` is the same listing.
        assert_eq!(api.get("/v1/kv/l?recursive=true").await.ok(), full);

        // Paging: the pages concatenate to the full listing.
        let (paged, pages) = follow(&api, "/v1/kv/l?recursive&limit=7", None, rev, 26, 7).await;
        assert_eq!(paged, full_kvs);
        assert_eq!(pages, 4);
        let (paged, pages) = follow(&api, "/v1/kv/l?recursive&limit=1", None, rev, 26, 1).await;
        assert_eq!(paged, full_kvs);
        assert_eq!(pages, 26);
        let (paged, pages) = follow(&api, "/v1/kv/l?recursive&limit=26", None, rev, 26, 26).await;
        assert_eq!((paged, pages), (full_kvs.clone(), 1));

        // A page token stays pinned to its revision: change the range between pages.
        let first = api.get("/v1/kv/l?recursive&limit=10").await.ok();
        assert_eq!(first["more"], json!(true));
        let token = first["next"].as_str().expect("a next token").to_string();
        api.set("/l/k000", "new").await;
        api.set("/l/k15", "changed").await;
        api.set("/l/k99", "new").await;
        assert_eq!(api.delete("/v1/kv/l/k24").await.ok()["deleted"], json!(1));
        let rev2 = api.revision().await;
        assert_eq!(rev2, rev + 4);
        let base = "/v1/kv/l?recursive&limit=10";
        let (rest, _) = follow(&api, base, Some(&token), rev, 26, 10).await;
        let mut old: Vec<Value> = first["kvs"].as_array().unwrap().clone();
        old.extend(rest);
        assert_eq!(old, full_kvs, "pages after a change still show the pinned revision");
        // The same token with its own revision spelled out is fine; another is refused.
        let r = api.get(&format!("{base}&after={token}&revision={rev}")).await.ok();
        assert_eq!(r["revision"], json!(rev));
        api.refused_get(
            &format!("{base}&after={token}&revision={rev2}"),
            StatusCode::BAD_REQUEST,
            "invalid_argument",
        )
        .await;
        // A fresh listing shows the new state.
        let now = api.get("/v1/kv/l?recursive").await.ok();
        assert_eq!(now["revision"], json!(rev2));
        assert_eq!(now["count"], json!(27));
        let keys = keys_of(&now["kvs"]);
        assert_eq!(keys[1..3], ["/l/k00".to_string(), "/l/k000".to_string()]);
        assert!(!keys.contains(&"/l/k24".to_string()));
        assert_eq!(keys.last().unwrap(), "/l/k99");

        // A history listing at the old revision equals the old listing.
        assert_eq!(api.get(&format!("/v1/kv/l?recursive&revision={rev}")).await.ok(), full);

        // keys_only: same keys and metadata, no values.
        let ko = api.get("/v1/kv/l?recursive&keys_only").await.ok();
        assert_eq!(ko["revision"], json!(rev2));
        assert_eq!(ko["count"], json!(27));
        assert_eq!(keys_of(&ko["kvs"]), keys);
        for (a, b) in ko["kvs"].as_array().unwrap().iter().zip(now["kvs"].as_array().unwrap()) {
            assert!(
                a.get("value").is_none() && a.get("value_base64").is_none(),
                "keys_only has a value: {a}"
            );
            for f in ["key", "create_revision", "mod_revision", "version", "lease"] {
                assert_eq!(a[f], b[f], "keys_only {f}");
            }
        }
        let (paged, _) = follow(&api, "/v1/kv/l?recursive&keys_only&limit=5", None, rev2, 27, 5).await;
        assert_eq!(paged, ko["kvs"].as_array().unwrap().clone());

        // count_only: just the revision and the count.
        let r = api.get("/v1/kv/l?recursive&count_only").await;
        assert_eq!(r.ok(), json!({"revision": rev2, "count": 27}));
        assert_eq!(r.rev_header(), rev2);
        assert_eq!(api.get("/v1/kv/?recursive&count_only").await.ok()["count"], json!(31));
        assert_eq!(api.get("/v1/kv/nothing?recursive&count_only").await.ok()["count"], json!(0));

        // Listing a path with nothing under it: an empty page.
        let empty = api.get("/v1/kv/nothing/here?recursive").await.ok();
        assert_eq!(empty, json!({"revision": rev2, "kvs": [], "count": 0, "more": false, "next": null}));

        // The root lists everything.
        let root = api.get("/v1/kv/?recursive").await.ok();
        assert_eq!(api.get("/v1/kv?recursive").await.ok(), root);
        let mut all = keys_of(&root["kvs"]);
        assert_eq!(all.len(), 31);
        let sorted = {
            let mut s = all.clone();
            s.sort();
            s
        };
        assert_eq!(all, sorted, "the root listing is sorted");
        all.retain(|k| !k.starts_with("/l/"));
        assert_eq!(all, ["/k", "/l", "/l.x", "/l0", "/lx"]);
    })
    .await;
}

#[tokio::test]
async fn count_only_at_a_history_revision() {
    with_node(|api| async move {
        api.set("/h/a", "1").await;
        api.set("/h/b", "2").await;
        let rev = api.revision().await;
        api.set("/h/c", "3").await;
        // A history read reports revision = N (API.md, Precise rules: Reads).
        let r = api.get(&format!("/v1/kv/h?recursive&count_only&revision={rev}")).await;
        assert_eq!(r.ok(), json!({"revision": rev, "count": 2}), "count_only at revision {rev}");
        assert_eq!(r.rev_header(), rev);
    })
    .await;
}

#[tokio::test]
async fn children_listing() {
    with_node(|api| async move {
        // `/c/x.y` sorts between `/c/x` and `/c/x/y`: names must still come out in order.
        for k in ["/c/x", "/c/x/y", "/c/x.y", "/c/y/z", "/c/z", "/c/z.w", "/c.d", "/c0"] {
            api.set(k, k).await;
        }
        let rev = api.revision().await;
        let kv_of = |k: &'static str| {
            let api = api.clone();
            async move { api.get(&format!("/v1/kv{k}")).await.ok()["kv"].clone() }
        };
        let r = api.get("/v1/kv/c?children").await;
        let body = r.ok();
        assert_eq!(r.rev_header(), rev);
        assert!(r.term_header() >= 1);
        assert_eq!(body["revision"], json!(rev));
        assert_eq!(body["more"], json!(false));
        assert!(body["next"].is_null());
        let expected = json!([
            {"name": "x", "key": "/c/x", "has_children": true, "kv": kv_of("/c/x").await},
            {"name": "x.y", "key": "/c/x.y", "has_children": false, "kv": kv_of("/c/x.y").await},
            {"name": "y", "key": "/c/y", "has_children": true, "kv": null},
            {"name": "z", "key": "/c/z", "has_children": false, "kv": kv_of("/c/z").await},
            {"name": "z.w", "key": "/c/z.w", "has_children": false, "kv": kv_of("/c/z.w").await},
        ]);
        assert_eq!(body["children"], expected);
        assert_eq!(api.get("/v1/kv/c?children=true").await.ok(), body);

        // Nothing under a path (missing, or a leaf key): 200 with children [].
        for uri in [
            "/v1/kv/nothing?children",
            "/v1/kv/c/z?children",
            "/v1/kv/c/y/z?children",
            "/v1/kv/c/x/y?children",
        ] {
            let r = api.get(uri).await;
            let body = r.ok();
            assert_eq!(body["children"], json!([]), "{uri}: {body}");
            assert_eq!(body["revision"], json!(rev), "{uri}");
            assert_eq!(r.rev_header(), rev, "{uri}");
            assert_eq!(body["more"], json!(false), "{uri}");
            assert!(body["next"].is_null(), "{uri}");
        }

        // The root's children.
        let root = api.get("/v1/kv/?children").await.ok();
        assert_eq!(api.get("/v1/kv?children").await.ok(), root);
        let names: Vec<&str> =
            root["children"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["c", "c.d", "c0"]);
        assert_eq!(root["children"][0]["has_children"], json!(true));
        assert_eq!(root["children"][0]["key"], json!("/c"));
        assert!(root["children"][0]["kv"].is_null());
        assert_eq!(root["children"][1]["kv"]["value"], json!("/c.d"));

        // Paging, pinned to the first page's revision.
        let first = api.get("/v1/kv/c?children&limit=2").await.ok();
        assert_eq!(first["revision"], json!(rev));
        assert_eq!(first["children"], json!([expected[0], expected[1]]));
        assert_eq!(first["more"], json!(true));
        let token = first["next"].as_str().expect("next").to_string();
        api.set("/c/zz", "late").await;
        api.set("/c/z", "changed").await;
        api.set("/c/y", "now a key").await;
        let second = api.get(&format!("/v1/kv/c?children&limit=2&after={token}")).await.ok();
        assert_eq!(second["revision"], json!(rev));
        assert_eq!(second["children"], json!([expected[2], expected[3]]));
        assert_eq!(second["more"], json!(true));
        let token = second["next"].as_str().expect("next").to_string();
        let third = api.get(&format!("/v1/kv/c?children&limit=2&after={token}")).await.ok();
        assert_eq!(third["revision"], json!(rev));
        assert_eq!(third["children"], json!([expected[4]]));
        assert_eq!(third["more"], json!(false));
        assert!(third["next"].is_null());
        // Now: the new child is there, the changed ones changed.
        let now = api.get("/v1/kv/c?children").await.ok();
        let names: Vec<&str> =
            now["children"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["x", "x.y", "y", "z", "z.w", "zz"]);
        assert_eq!(now["children"][2]["kv"]["value"], json!("now a key"));
        assert_eq!(now["children"][2]["has_children"], json!(true));
        assert_eq!(now["children"][3]["kv"]["value"], json!("changed"));

        // At an old revision.
        let old = api.get(&format!("/v1/kv/c?children&revision={rev}")).await.ok();
        assert_eq!(old["revision"], json!(rev));
        assert_eq!(old["children"], expected);
    })
    .await;
}

#[tokio::test]
async fn paging_over_unusual_keys() {
    with_node(|api| async move {
        // Keys whose names hold ':' (the token's separator), non-ASCII, '.' and '-'.
        let keys = ["/u", "/u/a:b", "/u/a:b/c", "/u/a-", "/u/a.b", "/u/ü", "/u/日本", "/u/z:"];
        for k in keys {
            api.set(k, k).await;
        }
        let rev = api.revision().await;
        let full = api.get("/v1/kv/u?recursive").await.ok();
        let mut sorted: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        sorted.sort();
        assert_eq!(keys_of(&full["kvs"]), sorted);
        let full_kvs = full["kvs"].as_array().unwrap().clone();
        for limit in [1, 2, 3] {
            let (paged, _) = follow(
                &api,
                &format!("/v1/kv/u?recursive&limit={limit}"),
                None,
                rev,
                keys.len() as u64,
                limit,
            )
            .await;
            assert_eq!(paged, full_kvs, "limit {limit}");
        }
        // Children paging over the same names, one at a time.
        let mut names = Vec::new();
        let mut uri = "/v1/kv/u?children&limit=1".to_string();
        loop {
            let page = api.get(&uri).await.ok();
            assert_eq!(page["revision"], json!(rev));
            for c in page["children"].as_array().unwrap() {
                names.push(c["name"].as_str().unwrap().to_string());
            }
            assert!(names.len() <= 10, "children paging does not end: {names:?}");
            match page["next"].as_str() {
                Some(next) => uri = format!("/v1/kv/u?children&limit=1&after={next}"),
                None => break,
            }
        }
        assert_eq!(names, ["a-", "a.b", "a:b", "z:", "ü", "日本"]);
    })
    .await;
}

/// A page also stops at the byte bound (4 MiB of keys and values by default), and says so
/// with `more` and `next`.
#[tokio::test]
async fn pages_are_bounded_in_bytes() {
    with_node(|api| async move {
        let mib = 1024 * 1024;
        for i in 0..5 {
            api.put(&format!("/v1/kv/big/{i}"), json!({"value": "v".repeat(mib)})).await.ok();
        }
        let rev = api.revision().await;
        let first = api.get("/v1/kv/big?recursive").await.ok();
        let n = first["kvs"].as_array().unwrap().len();
        assert!((1..5).contains(&n), "a page of 5 MiB is cut short, got {n} kvs");
        assert_eq!(first["more"], json!(true));
        assert_eq!(first["count"], json!(5));
        let (all, pages) = follow(&api, "/v1/kv/big?recursive", None, rev, 5, 10_000).await;
        assert!(pages >= 2);
        let expected: Vec<String> = (0..5).map(|i| format!("/big/{i}")).collect();
        assert_eq!(keys_of(&Value::Array(all.clone())), expected);
        assert!(all.iter().all(|kv| kv["value"].as_str().map(str::len) == Some(mib)));
        // Without values the same keys fit in one page.
        let ko = api.get("/v1/kv/big?recursive&keys_only").await.ok();
        assert_eq!(ko["more"], json!(false));
        assert_eq!(keys_of(&ko["kvs"]), expected);
    })
    .await;
}

#[tokio::test]
async fn history_reads_and_consistency() {
    with_node(|api| async move {
        let v1 = api.set("/h", "one").await;
        let r1 = v1["revision"].as_u64().unwrap();
        let r2 = api.set("/h", "two").await["revision"].as_u64().unwrap();
        api.delete("/v1/kv/h").await.ok();
        let r3 = api.revision().await;

        // ?revision=N reads the value as of N and reports revision N.
        let r = api.get(&format!("/v1/kv/h?revision={r1}")).await;
        assert_eq!(r.ok(), v1);
        assert_eq!(r.rev_header(), r1);
        let old = api.get(&format!("/v1/kv/h?revision={r2}")).await.ok();
        assert_eq!(old["revision"], json!(r2));
        assert_eq!(old["kv"]["value"], json!("two"));
        assert_eq!(old["kv"]["version"], json!(2));
        // Before it existed and after it was deleted: 404 with the read's revision.
        if r1 > 1 {
            let r = api.get(&format!("/v1/kv/h?revision={}", r1 - 1)).await;
            r.error(StatusCode::NOT_FOUND, "key_not_found");
            assert_eq!(r.rev_header(), r1 - 1);
        }
        let r = api.get(&format!("/v1/kv/h?revision={r3}")).await;
        r.error(StatusCode::NOT_FOUND, "key_not_found");
        assert_eq!(r.rev_header(), r3);

        // A future revision is refused, on every kind of read.
        for uri in [
            format!("/v1/kv/h?revision={}", r3 + 1),
            format!("/v1/kv/h?revision={}", u64::MAX),
            format!("/v1/kv/h?recursive&revision={}", r3 + 1),
            format!("/v1/kv/h?recursive&count_only&revision={}", r3 + 1),
            format!("/v1/kv/h?children&revision={}", r3 + 1),
            format!("/v1/kv/h?raw&revision={}", r3 + 1),
        ] {
            api.refused_get(&uri, StatusCode::BAD_REQUEST, "future_revision").await;
        }
        // The current revision itself is not in the future.
        api.get(&format!("/v1/kv/?recursive&revision={r3}")).await.ok();

        // Consistency: serializable reads the local replica; linearizable is the default.
        api.set("/s", "here").await;
        let lin = api.get("/v1/kv/s").await.ok();
        for q in ["consistency=serializable", "consistency=linearizable"] {
            let r = api.get(&format!("/v1/kv/s?{q}")).await;
            assert_eq!(r.ok(), lin, "{q}");
            assert!(r.rev_header() >= 1);
            assert!(r.term_header() >= 1);
            let list = api.get(&format!("/v1/kv/?recursive&{q}")).await.ok();
            assert_eq!(keys_of(&list["kvs"]), ["/s"], "{q}");
            let children = api.get(&format!("/v1/kv/?children&{q}")).await.ok();
            assert_eq!(children["children"][0]["name"], json!("s"), "{q}");
            let count = api.get(&format!("/v1/kv/?recursive&count_only&{q}")).await.ok();
            assert_eq!(count["count"], json!(1), "{q}");
        }
        let r = api.get("/v1/kv/missing?consistency=serializable").await;
        r.error(StatusCode::NOT_FOUND, "key_not_found");
        for q in ["consistency=bogus", "consistency=", "consistency=Serializable", "consistency"] {
            api.refused_get(&format!("/v1/kv/s?{q}"), StatusCode::BAD_REQUEST, "invalid_argument").await;
        }
    })
    .await;
}
