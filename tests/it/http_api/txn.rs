//! `POST /v1/txn`: compares, branches, one revision, results in order, and every refused
//! shape (400 with nothing applied).

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::http_api::harness::{kv, with_node, with_node_config, write_rev, Api};

const BAD: StatusCode = StatusCode::BAD_REQUEST;

async fn txn(api: &Api, body: Value) -> Value {
    let r = api.post("/v1/txn", body, &[]).await;
    write_rev(&r);
    r.ok()
}

#[tokio::test]
async fn create_if_absent_then_the_failure_branch() {
    with_node(|api| async move {
        let create = json!({
            "compare": [{"key": "/cfg", "target": "version", "op": "==", "value": 0}],
            "success": [
                {"put": {"key": "/cfg", "value": "v1"}},
                {"put": {"key": "/cfg/owner", "value": "me"}},
                {"get": {"key": "/cfg", "recursive": true}},
            ],
            "failure": [{"get": {"key": "/cfg"}}],
        });
        let r = txn(&api, create.clone()).await;
        assert_eq!(r["succeeded"], json!(true));
        assert_eq!(r["revision"], json!(1), "both puts land at one revision");
        assert_eq!(r["results"][0], json!({"put": {"revision": 1, "key": "/cfg"}}));
        assert_eq!(r["results"][1], json!({"put": {"revision": 1, "key": "/cfg/owner"}}));
        // A get in the branch sees the writes made before it.
        assert_eq!(
            r["results"][2],
            json!({"get": {"kvs": [kv("/cfg", "v1", 1, 1, 1), kv("/cfg/owner", "me", 1, 1, 1)], "more": false}})
        );
        let again = txn(&api, create).await;
        assert_eq!(again["succeeded"], json!(false));
        assert_eq!(again["revision"], json!(1), "a branch of reads takes no revision");
        assert_eq!(again["results"], json!([{"get": {"kvs": [kv("/cfg", "v1", 1, 1, 1)], "more": false}}]));
        assert_eq!(api.revision().await, 1);
    })
    .await
}

#[tokio::test]
async fn every_target_and_op() {
    with_node(|api| async move {
        api.set("/a", "m").await; // rev 1
        api.set("/a", "m").await; // rev 2, version 2
        let holds = |compare: Value| {
            let api = api.clone();
            async move {
                let r = txn(&api, json!({"compare": [compare.clone()]})).await;
                r["succeeded"].as_bool().unwrap_or_else(|| panic!("{compare}: {r}"))
            }
        };
        let cases = [
            (json!({"key": "/a", "target": "value", "op": "==", "value": "m"}), true),
            (json!({"key": "/a", "target": "value", "op": "!=", "value": "m"}), false),
            (json!({"key": "/a", "target": "value", "op": "<", "value": "n"}), true),
            (json!({"key": "/a", "target": "value", "op": ">", "value": "l"}), true),
            (json!({"key": "/a", "target": "value", "op": ">", "value": "m"}), false),
            (json!({"key": "/a", "target": "value", "op": "==", "value_base64": "bQ=="}), true),
            (json!({"key": "/a", "target": "version", "op": "==", "value": 2}), true),
            (json!({"key": "/a", "target": "version", "op": ">", "value": 2}), false),
            (json!({"key": "/a", "target": "create_revision", "op": "==", "value": 1}), true),
            (json!({"key": "/a", "target": "mod_revision", "op": "==", "value": 2}), true),
            (json!({"key": "/a", "target": "mod_revision", "op": "<", "value": 2}), false),
            (json!({"key": "/a", "target": "lease", "op": "==", "value": 0}), true),
            // A missing key: numbers are 0; a value compare is false whatever the op.
            (json!({"key": "/none", "target": "version", "op": "==", "value": 0}), true),
            (json!({"key": "/none", "target": "mod_revision", "op": ">", "value": 0}), false),
            (json!({"key": "/none", "target": "value", "op": "!=", "value": "x"}), false),
        ];
        for (compare, want) in cases {
            assert_eq!(holds(compare.clone()).await, want, "{compare}");
        }
        // All compares must hold.
        let two = json!({"compare": [
            {"key": "/a", "target": "version", "op": "==", "value": 2},
            {"key": "/a", "target": "value", "op": "==", "value": "x"},
        ]});
        assert_eq!(txn(&api, two).await["succeeded"], json!(false));
    })
    .await
}

#[tokio::test]
async fn deletes_gets_and_sequential_puts_in_one_branch() {
    with_node(|api| async move {
        for k in ["/q/a", "/q/b", "/q/c", "/r"] {
            api.set(k, "x").await;
        }
        let r = txn(
            &api,
            json!({"success": [
                {"get": {"key": "/q", "recursive": true, "limit": 2, "keys_only": true}},
                {"delete": {"key": "/q", "recursive": true, "prev_kv": true}},
                {"put": {"key": "/jobs", "value": "j", "sequential": true}},
                {"put": {"key": "/jobs", "value": "k", "sequential": true}},
                {"put": {"key": "/r", "value": "y", "prev_kv": true}},
                {"get": {"key": "/q", "recursive": true}},
            ]}),
        )
        .await;
        assert_eq!(r["revision"], json!(5));
        let res = r["results"].as_array().unwrap();
        let page = &res[0]["get"];
        assert_eq!(page["more"], json!(true));
        assert_eq!(page["kvs"].as_array().unwrap().len(), 2);
        assert!(page["kvs"][0].get("value").is_none(), "keys_only: {page}");
        assert_eq!(res[1]["delete"]["deleted"], json!(3));
        assert_eq!(res[1]["delete"]["prev_kvs"][0], kv("/q/a", "x", 1, 1, 1));
        assert_eq!(res[2]["put"]["key"], json!("/jobs/00000000000000000001"));
        assert_eq!(res[3]["put"]["key"], json!("/jobs/00000000000000000002"));
        assert_eq!(res[4]["put"]["prev_kv"], kv("/r", "x", 4, 4, 1));
        assert_eq!(res[5], json!({"get": {"kvs": [], "more": false}}));
        let r = api.get("/v1/kv/jobs/00000000000000000002").await.ok();
        assert_eq!(r["kv"], kv("/jobs/00000000000000000002", "k", 5, 5, 1));
    })
    .await
}

#[tokio::test]
async fn refused_transactions_change_nothing() {
    with_node(|api| async move {
        api.set("/a", "x").await;
        api.set("/a/b", "y").await;
        let put = |k: &str| json!({"put": {"key": k, "value": "v"}});
        let many_compares: Vec<Value> =
            (0..129).map(|i| json!({"key": format!("/k{i}"), "target": "version", "op": "==", "value": 0})).collect();
        let many_ops: Vec<Value> = (0..129).map(|i| put(&format!("/k{i}"))).collect();
        let cases: Vec<(Value, StatusCode, &str)> = vec![
            (json!({"compare": [{"key": "/a", "target": "color", "op": "==", "value": 1}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "version", "op": "=", "value": 1}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "version", "op": "==", "value": "1"}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "version", "op": "==", "value": -1}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "version", "op": "==", "value": 1.5}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "version", "op": "=="}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "value", "op": "==", "value": 5}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "value", "op": "==", "value_base64": "!!"}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"target": "version", "op": "==", "value": 0}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"lock": "db", "target": "fence", "op": "<", "value": 3}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "/a", "target": "fence", "op": "==", "value": 3}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"lock": "a/b", "target": "fence", "op": "==", "value": 3}]}), BAD, "invalid_argument"),
            (json!({"compare": [{"key": "a", "target": "version", "op": "==", "value": 0}]}), BAD, "invalid_key"),
            (json!({"compare": [{"key": "/a", "target": "version", "op": "==", "value": 0, "extra": 1}]}), BAD, "invalid_argument"),
            (json!({"compare": many_compares}), BAD, "invalid_argument"),
            (json!({"success": many_ops}), BAD, "invalid_argument"),
            (json!({"success": [{"watch": {"key": "/a"}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/a"}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/a", "value": "v", "value_base64": "dg=="}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/a", "value": "v", "ttl": 5}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/a", "value": 5}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/a", "value": "v"}, "get": {"key": "/a"}}]}), BAD, "invalid_argument"),
            (json!({"success": [put("/"), ]}), BAD, "invalid_key"),
            (json!({"success": [put("/a/")]}), BAD, "invalid_key"),
            (json!({"success": [put("/x"), put("/x")]}), BAD, "invalid_argument"),
            (json!({"failure": [put("/x"), {"delete": {"key": "/x"}}]}), BAD, "invalid_argument"),
            (json!({"success": [put("/a/b/c"), {"delete": {"key": "/a", "recursive": true}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"delete": {"key": "/a/b", "recursive": true}}, {"delete": {"key": "/a", "recursive": true}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/a", "value": "v", "sequential": true}}, {"delete": {"key": "/a", "recursive": true}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/a", "value": "v", "sequential": true, "prev_kv": true}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"put": {"key": "/q", "value": "v", "sequential": true}}, put("/q/00000000000000000001")]}), BAD, "invalid_argument"),
            (json!({"success": [{"delete": {"key": "/q/00000000000000000007", "recursive": true}}, {"put": {"key": "/q", "value": "v", "sequential": true}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"get": {"key": "/a", "recursive": true, "limit": 0}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"get": {"key": "/a", "recursive": true, "limit": 10001}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"get": {"key": "/a", "limit": 2}}]}), BAD, "invalid_argument"),
            (json!({"success": [{"get": {"key": "/"}}]}), BAD, "invalid_key"),
            (json!({"success": [{"put": {"key": "/a", "value": "v", "lease": 7}}]}), StatusCode::NOT_FOUND, "lease_not_found"),
            (json!({"success": [{"put": {"key": "/a", "value": "x".repeat(1024 * 1024 + 1)}}]}), StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            (json!({"compare": [], "succes": []}), BAD, "invalid_argument"),
            (json!([]), BAD, "invalid_argument"),
        ];
        for (body, status, code) in cases {
            let r = api.refused_post("/v1/txn", body.to_string(), status, code).await;
            assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
        }
        api.refused_post("/v1/txn", "{", BAD, "invalid_json").await;
        api.refused_post("/v1/txn", "", BAD, "invalid_json").await;
        api.refused_post("/v1/txn?dry_run", "{}", BAD, "invalid_argument").await;
    })
    .await
}

#[tokio::test]
async fn reads_stop_at_the_transaction_read_budget() {
    with_node_config(
        |cfg| cfg.max_page_bytes = 100,
        |api| async move {
            let v = "v".repeat(40);
            for k in ["/r/a", "/r/b", "/r/c"] {
                api.set(k, &v).await;
            }
            // 3 bytes of key + 40 of value each: two fit the 100-byte budget, the third not.
            let r = txn(&api, json!({"success": [{"get": {"key": "/r", "recursive": true}}]})).await;
            assert_eq!(r["results"][0]["get"]["kvs"].as_array().unwrap().len(), 2, "{r}");
            assert_eq!(r["results"][0]["get"]["more"], json!(true));
            // The budget is shared by every get of the branch.
            let r = txn(
                &api,
                json!({"success": [{"get": {"key": "/r/a"}}, {"get": {"key": "/r/b"}}, {"get": {"key": "/r/c"}}]}),
            )
            .await;
            let res = &r["results"];
            assert_eq!(res[0]["get"]["kvs"][0]["key"], json!("/r/a"));
            assert_eq!(res[1]["get"]["kvs"][0]["key"], json!("/r/b"));
            assert_eq!(res[2]["get"], json!({"kvs": [], "more": true}), "{r}");
        },
    )
    .await
}
