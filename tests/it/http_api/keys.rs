//! Single-key reads and writes: round trips, revisions, headers, binary values, `?raw`,
//! `prev_kv`, deletes (plain, missing, recursive) and how the URL maps to a key.

use axum::body::Body;
use axum::http::{Method, StatusCode};
use serde_json::{json, Value};

use crate::http_api::harness::{kv, with_node, write_rev};

#[tokio::test]
async fn put_get_delete_round_trip() {
    with_node(|api| async move {
        let cluster = api.get("/v1/cluster").await.ok();
        let term = cluster["term"].as_u64().expect("term");
        let r0 = cluster["revision"].as_u64().expect("revision");

        // Create: version 1, create = mod = the new revision.
        let r = api.put("/v1/kv/app/db/leader", json!({"value": "node-a"})).await;
        let r1 = write_rev(&r);
        assert_eq!(r1, r0 + 1, "a put takes the next revision");
        assert_eq!(r.term_header(), term);
        assert!(r.header("content-type").unwrap_or("").starts_with("application/json"));
        assert_eq!(r.ok(), json!({"revision": r1, "kv": kv("/app/db/leader", "node-a", r1, r1, 1)}));

        // Read it back, with the headers.
        let r = api.get("/v1/kv/app/db/leader").await;
        assert_eq!(r.ok(), json!({"revision": r1, "kv": kv("/app/db/leader", "node-a", r1, r1, 1)}));
        assert_eq!(r.rev_header(), r1);
        assert_eq!(r.term_header(), term);
        assert_eq!(api.revision().await, r1, "a read changes no revision");

        // Overwrite: version 2, create_revision kept, no prev_kv unless asked.
        let r = api.put("/v1/kv/app/db/leader", json!({"value": "node-b"})).await;
        let r2 = write_rev(&r);
        assert_eq!(r2, r1 + 1);
        assert_eq!(r.ok(), json!({"revision": r2, "kv": kv("/app/db/leader", "node-b", r1, r2, 2)}));

        // ?prev_kv returns the version it replaced.
        let r = api.put("/v1/kv/app/db/leader?prev_kv", json!({"value": "node-c"})).await;
        let r3 = write_rev(&r);
        assert_eq!(
            r.ok(),
            json!({
                "revision": r3,
                "kv": kv("/app/db/leader", "node-c", r1, r3, 3),
                "prev_kv": kv("/app/db/leader", "node-b", r1, r2, 2),
            })
        );
        // ?prev_kv=true on a key that did not exist: no previous kv.
        let r = api.put("/v1/kv/app/db/other?prev_kv=true", json!({"value": "x"})).await;
        let r4 = write_rev(&r);
        let body = r.ok();
        assert!(body.get("prev_kv").is_none_or(Value::is_null), "no prev_kv for a new key: {body}");
        assert_eq!(body["kv"], kv("/app/db/other", "x", r4, r4, 1));

        // Delete: one key, the next revision.
        let r = api.delete("/v1/kv/app/db/leader").await;
        let r5 = write_rev(&r);
        assert_eq!(r5, r4 + 1);
        assert_eq!(r.term_header(), term);
        assert_eq!(r.ok(), json!({"revision": r5, "deleted": 1}));

        // Gone: 404 key_not_found, still with the state headers.
        let r = api.get("/v1/kv/app/db/leader").await;
        let err = r.error(StatusCode::NOT_FOUND, "key_not_found");
        assert!(err.get("current").is_none(), "{err}");
        assert_eq!(r.rev_header(), r5);
        assert_eq!(r.term_header(), term);
        // The sibling is untouched.
        assert_eq!(api.get("/v1/kv/app/db/other").await.ok()["kv"], kv("/app/db/other", "x", r4, r4, 1));

        // Deleting a missing key: 200, deleted 0, no new revision, nothing changed.
        let before = api.snapshot().await;
        let r = api.delete("/v1/kv/app/db/leader").await;
        assert_eq!(r.ok(), json!({"revision": r5, "deleted": 0}));
        assert_eq!(r.rev_header(), r5);
        assert_eq!(r.term_header(), term);
        let r = api.delete("/v1/kv/never/was/here?recursive").await;
        assert_eq!(r.ok(), json!({"revision": r5, "deleted": 0}));
        assert_eq!(api.snapshot().await, before, "a delete of nothing changed the store");

        // Re-creating starts a new life: version 1, new create_revision.
        let r = api.put("/v1/kv/app/db/leader", json!({"value": "node-d"})).await;
        let r6 = write_rev(&r);
        assert_eq!(r6, r5 + 1);
        assert_eq!(r.ok()["kv"], kv("/app/db/leader", "node-d", r6, r6, 1));

        // ?prev_kv on delete returns what was deleted.
        let r = api.delete("/v1/kv/app/db/leader?prev_kv").await;
        let r7 = write_rev(&r);
        assert_eq!(
            r.ok(),
            json!({"revision": r7, "deleted": 1, "prev_kvs": [kv("/app/db/leader", "node-d", r6, r6, 1)]})
        );

        // Empty value is a value.
        let r = api.put("/v1/kv/empty", json!({"value": ""})).await;
        let r8 = write_rev(&r);
        assert_eq!(api.get("/v1/kv/empty").await.ok()["kv"], kv("/empty", "", r8, r8, 1));
    })
    .await;
}

#[tokio::test]
async fn bodies_values_and_raw() {
    with_node(|api| async move {
        // `curl -d '{"value":"x"}'` sends no JSON content type; it must work regardless.
        let r = api.put_raw("/v1/kv/curl/none", r#"{"value":"x"}"#).await;
        let rev = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/curl/none", "x", rev, rev, 1));
        let r = api
            .send(
                Method::PUT,
                "/v1/kv/curl/form",
                Body::from(r#"{"value":"y"}"#),
                Some("application/x-www-form-urlencoded"),
            )
            .await;
        let rev = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/curl/form", "y", rev, rev, 1));
        let r = api
            .send(Method::PUT, "/v1/kv/curl/text", Body::from("{\"value\":\"z\"}\n"), Some("text/plain"))
            .await;
        assert_eq!(r.ok()["kv"]["value"], json!("z"));

        // Non-UTF-8 bytes go in and come out as value_base64 (and never as `value`).
        let r = api.put("/v1/kv/bin", json!({"value_base64": "/wD+"})).await;
        let b1 = write_rev(&r);
        let expected = json!({
            "key": "/bin", "value_base64": "/wD+", "create_revision": b1, "mod_revision": b1,
            "version": 1, "lease": null,
        });
        assert_eq!(r.ok(), json!({"revision": b1, "kv": expected}));
        let r = api.get("/v1/kv/bin").await;
        assert_eq!(r.ok(), json!({"revision": b1, "kv": expected}));
        // ?raw: the bare bytes, with the state headers.
        let r = api.get("/v1/kv/bin?raw").await;
        r.expect(StatusCode::OK);
        assert_eq!(&r.body[..], &[0xff, 0x00, 0xfe]);
        assert_eq!(r.header("content-type"), Some("application/octet-stream"));
        assert_eq!(r.rev_header(), b1);
        assert!(r.term_header() >= 1);
        // prev_kv of a binary value is base64 too.
        let r = api.put("/v1/kv/bin?prev_kv", json!({"value": "text now"})).await;
        let b2 = write_rev(&r);
        assert_eq!(r.ok()["prev_kv"], expected);
        assert_eq!(r.ok()["kv"], kv("/bin", "text now", b1, b2, 2));

        // value_base64 whose bytes are UTF-8 comes back as `value`.
        let r = api.put("/v1/kv/utf8", json!({"value_base64": "aMOpbGxv"})).await;
        let u = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/utf8", "héllo", u, u, 1));
        assert_eq!(api.get("/v1/kv/utf8").await.ok()["kv"]["value"], json!("héllo"));
        assert_eq!(api.get("/v1/kv/utf8").await.ok()["kv"].get("value_base64"), None);

        // ?raw on a text value: exactly its bytes, no JSON quoting.
        api.set("/text", "line one\nline \"two\"\n").await;
        for uri in ["/v1/kv/text?raw", "/v1/kv/text?raw=true", "/v1/kv/text?raw="] {
            let r = api.get(uri).await;
            r.expect(StatusCode::OK);
            assert_eq!(r.text(), "line one\nline \"two\"\n", "{uri}");
        }
        // ?raw=false is the JSON reply.
        assert_eq!(
            api.get("/v1/kv/text?raw=false").await.ok()["kv"]["value"],
            json!("line one\nline \"two\"\n")
        );
        // ?raw of an empty value is an empty body.
        api.set("/empty", "").await;
        let r = api.get("/v1/kv/empty?raw").await;
        r.expect(StatusCode::OK);
        assert!(r.body.is_empty());
        // ?raw of a missing key is the JSON 404.
        let r = api.get("/v1/kv/nothing?raw").await;
        r.error(StatusCode::NOT_FOUND, "key_not_found");
        assert!(r.rev_header() >= 1);
        // ?raw with ?revision reads the old bytes.
        let r = api.get(&format!("/v1/kv/bin?raw&revision={b1}")).await;
        r.expect(StatusCode::OK);
        assert_eq!(&r.body[..], &[0xff, 0x00, 0xfe]);
        assert_eq!(r.rev_header(), b1);

        // A value of exactly the limit (1 MiB) is accepted and reads back intact.
        let big = "v".repeat(1024 * 1024);
        let r = api.put("/v1/kv/big", json!({ "value": big })).await;
        let rev = write_rev(&r);
        assert_eq!(r.ok()["kv"]["version"], json!(1));
        let r = api.get("/v1/kv/big?raw").await;
        r.expect(StatusCode::OK);
        assert_eq!(r.body.len(), 1024 * 1024);
        assert_eq!(r.rev_header(), rev);
        assert_eq!(api.delete("/v1/kv/big").await.ok()["deleted"], json!(1));
    })
    .await;
}

#[tokio::test]
async fn url_to_key_mapping() {
    with_node(|api| async move {
        // %2F is decoded before validation: /v1/kv/a%2Fb is the key /a/b.
        let r = api.put("/v1/kv/a%2Fb", json!({"value": "slash"})).await;
        let rev = write_rev(&r);
        assert_eq!(r.ok()["kv"], kv("/a/b", "slash", rev, rev, 1));
        assert_eq!(api.get("/v1/kv/a/b").await.ok()["kv"], kv("/a/b", "slash", rev, rev, 1));
        assert_eq!(api.get("/v1/kv/a%2fb").await.ok()["kv"]["key"], json!("/a/b"));
        api.get("/v1/kv/a").await.error(StatusCode::NOT_FOUND, "key_not_found");

        // Percent-encoded UTF-8, spaces, a literal '+' and dots inside segments.
        for (path, key) in [
            ("/v1/kv/%C3%BC/%E6%97%A5%E6%9C%AC", "/ü/日本"),
            ("/v1/kv/a%20b", "/a b"),
            ("/v1/kv/a+b", "/a+b"),
            ("/v1/kv/a.b/c..d/...", "/a.b/c..d/..."),
            ("/v1/kv/encoded%2Fall%2Fthe%2Fway", "/encoded/all/the/way"),
            ("/v1/kv/colon:and@sign", "/colon:and@sign"),
        ] {
            let r = api.put(path, json!({"value": key})).await;
            assert_eq!(r.ok()["kv"]["key"], json!(key), "{path}");
            let got = api.get(path).await.ok();
            assert_eq!(got["kv"]["key"], json!(key), "{path}");
            assert_eq!(got["kv"]["value"], json!(key), "{path}");
        }
        assert_eq!(
            api.get("/v1/kv/encoded/all/the/way").await.ok()["kv"]["key"],
            json!("/encoded/all/the/way")
        );

        // The size limit is on the decoded key: exactly 1024 bytes is fine, however
        // long its encoding.
        let plain = format!("/{}", "k".repeat(1023));
        let r = api.put(&format!("/v1/kv{plain}"), json!({"value": "max"})).await;
        assert_eq!(r.ok()["kv"]["key"], json!(plain));
        let wide = format!("/{}x", "é".repeat(511));
        assert_eq!(wide.len(), 1024);
        let encoded = format!("/v1/kv/{}x", "%C3%A9".repeat(511));
        let r = api.put(&encoded, json!({"value": "max"})).await;
        assert_eq!(r.ok()["kv"]["key"], json!(wide));
        assert_eq!(api.get(&encoded).await.ok()["kv"]["key"], json!(wide));
    })
    .await;
}

#[tokio::test]
async fn deletes_plain_and_recursive() {
    with_node(|api| async move {
        for k in ["/a", "/a/b", "/a/b/c", "/a/d", "/a.b", "/ab", "/a0", "/b", "/a-"] {
            api.set(k, k).await;
        }
        let all = api.get("/v1/kv/?recursive&keys_only").await.ok();
        let keys: Vec<&str> =
            all["kvs"].as_array().unwrap().iter().map(|kv| kv["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["/a", "/a-", "/a.b", "/a/b", "/a/b/c", "/a/d", "/a0", "/ab", "/b"]);

        // A plain delete of /a removes only /a, not what is below it.
        let rev = api.revision().await;
        let r = api.delete("/v1/kv/a").await;
        assert_eq!(r.ok(), json!({"revision": rev + 1, "deleted": 1}));
        assert_eq!(api.get("/v1/kv/a/b").await.ok()["kv"]["value"], json!("/a/b"));
        api.set("/a", "/a").await;

        // Recursive: /a and its subtree go, at one revision; /a.b, /ab, /a0, /a- and /b stay.
        let rev = api.revision().await;
        let subtree = api.get("/v1/kv/a?recursive").await.ok()["kvs"].clone();
        assert_eq!(subtree.as_array().unwrap().len(), 4, "{subtree}");
        let r = api.delete("/v1/kv/a?recursive&prev_kv").await;
        let body = r.ok();
        assert_eq!(write_rev(&r), rev + 1, "a recursive delete takes one revision");
        assert_eq!(body, json!({"revision": rev + 1, "deleted": 4, "prev_kvs": subtree}));
        for k in ["/a", "/a/b", "/a/b/c", "/a/d"] {
            api.get(&format!("/v1/kv{k}")).await.error(StatusCode::NOT_FOUND, "key_not_found");
        }
        let left = api.get("/v1/kv/?recursive").await.ok();
        let keys: Vec<&str> =
            left["kvs"].as_array().unwrap().iter().map(|kv| kv["key"].as_str().unwrap()).collect();
        assert_eq!(keys, ["/a-", "/a.b", "/a0", "/ab", "/b"]);
        for kv in left["kvs"].as_array().unwrap() {
            assert_eq!(kv["value"], kv["key"], "survivors keep their values: {kv}");
            assert_eq!(kv["version"], json!(1), "survivors were not rewritten: {kv}");
        }

        // A recursive delete of a path that is not itself a key removes what is below it.
        api.set("/p/q/r", "1").await;
        api.set("/p/s", "2").await;
        let r = api.delete("/v1/kv/p?recursive").await;
        assert_eq!(r.ok()["deleted"], json!(2));
        assert_eq!(api.get("/v1/kv/p?recursive").await.ok()["count"], json!(0));

        // Recursive delete of nothing: 200, deleted 0, revision unchanged.
        let before = api.snapshot().await;
        let r = api.delete("/v1/kv/a?recursive").await;
        assert_eq!(r.ok(), json!({"revision": before.revision, "deleted": 0}));
        assert_eq!(r.rev_header(), before.revision);
        assert_eq!(api.snapshot().await, before);

        // History still has the deleted keys.
        let old = api.get(&format!("/v1/kv/a/b/c?revision={rev}")).await.ok();
        assert_eq!(old["revision"], json!(rev));
        assert_eq!(old["kv"]["value"], json!("/a/b/c"));
    })
    .await;
}
