//! Client auth on real processes: the CLI mints tokens (`palisade auth token`, from an
//! HS256 secret or an EC private key) and sends them (`--token`, `--token-file`,
//! `PALISADE_TOKEN`), with the 401 and 403 hints when it has none or may not; and on a
//! three-node cluster a lease belongs to its subject whichever node a request reaches (a
//! follower forwards it to the leader, which decides as the subject it names).

use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use support::process::{palisade_command, run_to_exit, Cluster, ClusterOptions, Exited, Http};

const SECRET: &str = "palisade-process-test-secret-0123456789";

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

fn ok(e: &Exited) -> bool {
    e.status.is_some_and(|s| s.success())
}

fn code(e: &Exited) -> Option<i32> {
    e.status.and_then(|s| s.code())
}

fn run(a: &[&str]) -> Exited {
    run_to_exit(&args(a), Duration::from_secs(30))
}

/// `palisade auth token <a...>`: the token it prints.
fn mint(a: &[&str]) -> String {
    let mut all = vec!["auth", "token"];
    all.extend_from_slice(a);
    let e = run(&all);
    assert!(ok(&e), "auth token {a:?}: {e:?}");
    let t = e.stdout.trim().to_string();
    assert_eq!(t.split('.').count(), 3, "not a JWT: {t:?}");
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_mints_and_sends_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let secret_s = secret.to_str().unwrap();
    let admin = mint(&["--secret-file", secret_s, "--sub", "root", "--admin"]);
    let app = mint(&[
        "--secret-file",
        secret_s,
        "--sub",
        "app",
        "--read",
        "/app/",
        "--write",
        "/app/",
        "--ttl",
        "10m",
    ]);
    // No key: a clear error, no token.
    let e = run(&["auth", "token", "--sub", "x", "--read", "/"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("--secret-file") && e.stderr.contains("--private-key"), "{e:?}");
    assert!(e.stdout.trim().is_empty(), "{e:?}");
    // A bad grant is refused by the minter too.
    let e = run(&["auth", "token", "--secret-file", secret_s, "--sub", "x", "--read", "app/"]);
    assert_eq!(code(&e), Some(1), "{e:?}");

    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        extra_args: args(&["--auth-jwt-secret-file", secret_s]),
        token: Some(admin.clone()),
        ..Default::default()
    })
    .await;
    c.leader().await;
    let ep = c.client_url(1);
    let kv = |extra: &[&str]| {
        let mut a = vec!["kv", "--endpoints", &ep];
        a.extend_from_slice(extra);
        run(&a)
    };
    // --token.
    let e = kv(&["--token", &app, "put", "/app/x", "1"]);
    assert!(ok(&e), "{e:?}");
    let e = kv(&["--token", &app, "get", "/app/x"]);
    assert!(ok(&e), "{e:?}");
    assert_eq!(e.stdout.trim(), "1");
    // --token-file (whitespace around it ignored).
    let file = dir.path().join("token");
    std::fs::write(&file, format!("\n{app}\n")).unwrap();
    let e = kv(&["--token-file", file.to_str().unwrap(), "get", "/app/x"]);
    assert!(ok(&e), "{e:?}");
    assert_eq!(e.stdout.trim(), "1");
    // `auth token --output`: written for --token-file, readable by its owner only, nothing printed.
    let minted = dir.path().join("minted");
    std::fs::write(&minted, "an old token").unwrap();
    let mint_to = |path: &str| {
        run(&[
            "auth",
            "token",
            "--secret-file",
            secret_s,
            "--sub",
            "app",
            "--read",
            "/app/",
            "--output",
            path,
        ])
    };
    let e = run(&["auth", "token", "--secret-file", secret_s, "--sub", "app", "--output"]);
    assert!(code(&e) == Some(2) && e.stderr.contains("--output"), "{e:?}");
    let e = mint_to(minted.to_str().unwrap());
    assert!(ok(&e) && e.stdout.is_empty(), "{e:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&minted).unwrap().permissions().mode() & 0o777, 0o600);
    let e = kv(&["--token-file", minted.to_str().unwrap(), "get", "/app/x"]);
    assert!(ok(&e), "{e:?}");
    assert_eq!(e.stdout.trim(), "1");
    let e = mint_to(dir.path().join("no/such/dir/token").to_str().unwrap());
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("cannot write the token to"), "{e:?}");
    // PALISADE_TOKEN.
    let out = palisade_command(&args(&["kv", "--endpoints", &ep, "put", "/app/y", "2"]))
        .env("PALISADE_TOKEN", &app)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // No token: exit 1 and the 401 hint.
    let e = kv(&["get", "/app/x"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("unauthenticated") && e.stderr.contains("--token"), "{e:?}");
    // A bad token: 401, and the token is not echoed.
    let forged = format!("{}x", &app[..app.len() - 1]);
    let e = kv(&["--token", &forged, "get", "/app/x"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("unauthenticated"), "{e:?}");
    assert!(!e.stderr.contains(&forged) && !e.stderr.contains(app.split('.').nth(1).unwrap()), "{e:?}");
    // A forbidden write: 403 and its hint, nothing written.
    let e = kv(&["--token", &app, "put", "/other", "x"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("permission_denied") && e.stderr.contains("palisade claim"), "{e:?}");
    let r = c.http().get_path(&ep, "/v1/kv/other").await.unwrap();
    assert_eq!(r.status, 404, "{}", r.text);
    drop(c);

    // An EC key pair: the node holds the public key, the CLI signs with the private one.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let (private, public) = (dir.path().join("ec.pem"), dir.path().join("ec.pub.pem"));
    std::fs::write(&private, kp.serialize_pem()).unwrap();
    std::fs::write(&public, kp.public_key_pem()).unwrap();
    let private_s = private.to_str().unwrap();
    let ec_admin = mint(&["--private-key", private_s, "--sub", "root", "--admin"]);
    let ec_app = mint(&["--private-key", private_s, "--sub", "app", "--read", "/", "--write", "/app/"]);
    let header: Value = serde_json::from_slice(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            ec_app.split('.').next().unwrap(),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], json!("ES256"));
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        extra_args: args(&["--auth-jwt-public-keys", public.to_str().unwrap()]),
        token: Some(ec_admin),
        ..Default::default()
    })
    .await;
    c.leader().await;
    let ep = c.client_url(1);
    let e = run(&["kv", "--endpoints", &ep, "--token", &ec_app, "put", "/app/ec", "yes"]);
    assert!(ok(&e), "{e:?}");
    let e = run(&["kv", "--endpoints", &ep, "--token", &ec_app, "get", "/app/ec"]);
    assert_eq!(e.stdout.trim(), "yes", "{e:?}");
    // The HS256 token of the other cluster is no good here.
    let e = run(&["kv", "--endpoints", &ep, "--token", &app, "get", "/app/ec"]);
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("unauthenticated"), "{e:?}");
}

/// A client for `sub` with these grants, minted in-process.
fn client(sub: &str, grants: Value) -> Http {
    let req = palisade::auth::MintRequest {
        subject: sub.into(),
        grants: serde_json::from_value(grants).unwrap(),
        issued_at: palisade::clock::wall_clock_ms() / 1000,
        expires_at: palisade::clock::wall_clock_ms() / 1000 + 3600,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s");
    std::fs::write(&f, SECRET).unwrap();
    let t = palisade::auth::mint(&req, palisade::auth::SigningKey::Secret(&f)).unwrap();
    Http::build(Duration::from_secs(10), None, Some(&t))
}

async fn send(h: &Http, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
    let mut req = h.client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("the node answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_its_subjects_through_every_node() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt.secret");
    std::fs::write(&secret, SECRET).unwrap();
    let all = json!({"read": ["/"], "write": ["/"]});
    let (alice, bob, admin) =
        (client("alice", all.clone()), client("bob", all), client("root", json!({"admin": true})));
    let admin_token = {
        let req = palisade::auth::MintRequest {
            subject: "root".into(),
            grants: palisade::auth::Grants::everything(),
            issued_at: palisade::clock::wall_clock_ms() / 1000,
            expires_at: palisade::clock::wall_clock_ms() / 1000 + 3600,
            ..Default::default()
        };
        palisade::auth::mint(&req, palisade::auth::SigningKey::Secret(&secret)).unwrap()
    };
    let c = Cluster::start(ClusterOptions {
        extra_args: args(&["--auth-jwt-secret-file", secret.to_str().unwrap()]),
        token: Some(admin_token),
        ..Default::default()
    })
    .await;
    let (leader, _) = c.leader().await;
    let followers: Vec<u64> = c.ids().into_iter().filter(|&i| i != leader).collect();
    // Granted by alice through the first node (leader or not).
    let (s, g) =
        send(&alice, Method::POST, format!("{}/v1/leases", c.client_url(1)), Some(json!({"ttl": "60s"})))
            .await;
    assert_eq!(s, 201, "{g}");
    let id = g["id"].as_u64().unwrap();
    let (s, _) = send(
        &alice,
        Method::PUT,
        format!("{}/v1/kv/a", c.client_url(1)),
        Some(json!({"value": "1", "lease": id})),
    )
    .await;
    assert_eq!(s, 200);
    let rev = c.cluster_view(leader).await.unwrap()["revision"].as_u64().unwrap();
    for node in c.ids() {
        let base = c.client_url(node);
        let what = if node == leader { "the leader" } else { "a follower" };
        let (s, e) = send(&bob, Method::POST, format!("{base}/v1/leases/{id}/keepalive"), None).await;
        assert_eq!(
            (s, e["error"]["code"].clone()),
            (403, json!("permission_denied")),
            "keepalive via {what} {node}: {e}"
        );
        let (s, e) = send(&bob, Method::GET, format!("{base}/v1/leases/{id}"), None).await;
        assert_eq!(s, 403, "get via {what} {node}: {e}");
        let (s, e) = send(&bob, Method::DELETE, format!("{base}/v1/leases/{id}"), None).await;
        assert_eq!(
            (s, e["error"]["code"].clone()),
            (403, json!("permission_denied")),
            "revoke via {what} {node}: {e}"
        );
        let (s, e) = send(
            &bob,
            Method::PUT,
            format!("{base}/v1/kv/b{node}"),
            Some(json!({"value": "x", "lease": id})),
        )
        .await;
        assert_eq!(
            (s, e["error"]["code"].clone()),
            (403, json!("permission_denied")),
            "put via {what} {node}: {e}"
        );
        let (s, e) = send(
            &bob,
            Method::POST,
            format!("{base}/v1/txn"),
            Some(json!({"success": [{"put": {"key": "/t", "value": "x", "lease": id}}]})),
        )
        .await;
        assert_eq!(s, 403, "txn via {what} {node}: {e}");
    }
    // Nothing changed, on any node.
    for node in c.ids() {
        let v = c.cluster_view(node).await.unwrap();
        assert!(v["revision"].as_u64().unwrap() <= rev, "node {node}: {v}");
    }
    let (s, e) = send(&admin, Method::GET, format!("{}/v1/kv/?recursive", c.client_url(leader)), None).await;
    assert_eq!(s, 200);
    assert_eq!(e["kvs"].as_array().unwrap().len(), 1, "{e}");
    assert_eq!(e["revision"].as_u64(), Some(rev), "{e}");
    // alice may, through any node.
    for node in followers.iter().chain([&leader]) {
        let base = c.client_url(*node);
        let (s, e) = send(&alice, Method::POST, format!("{base}/v1/leases/{id}/keepalive"), None).await;
        assert_eq!(s, 200, "keepalive via {node}: {e}");
        let (s, e) = send(&alice, Method::GET, format!("{base}/v1/leases/{id}"), None).await;
        assert_eq!((s, e["owner"].clone()), (200, json!("alice")), "get via {node}: {e}");
        let (s, e) = send(
            &alice,
            Method::PUT,
            format!("{base}/v1/kv/k{node}"),
            Some(json!({"value": "x", "lease": id})),
        )
        .await;
        assert_eq!(s, 200, "put via {node}: {e}");
    }
    let (s, e) =
        send(&alice, Method::DELETE, format!("{}/v1/leases/{id}", c.client_url(followers[0])), None).await;
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["deleted"], json!(4), "{e}");
}
