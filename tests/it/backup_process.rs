//! Backup and restore on real processes: `palisade snapshot save` from a live cluster under
//! a writer, `snapshot status`, `snapshot restore` into new data dirs, and a new cluster
//! started on them that serves everything the backup held (keys with their revisions and
//! versions, the revision, the history floor, a lease, a lock and its fencing token) and
//! goes on from the restored revision.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support;
use support::process::{eventually, free_ports, run_to_exit, Cluster, ClusterOptions, Exited, NodeHost};

fn ok(e: &Exited) -> bool {
    e.status.is_some_and(|s| s.success())
}

fn code(e: &Exited) -> Option<i32> {
    e.status.and_then(|s| s.code())
}

/// `palisade <args>` run to its end, off the async runtime.
async fn palisade(args: Vec<String>) -> Exited {
    tokio::task::spawn_blocking(move || run_to_exit(&args, Duration::from_secs(60))).await.unwrap()
}

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `method path` with a JSON body against `base`: status and JSON reply.
async fn call(
    c: &Cluster,
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = c.http().client.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"));
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Every key (with its create/mod revision and version) at `revision`, following pages.
async fn keys_at(c: &Cluster, base: &str, revision: Option<u64>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    let mut after = String::new();
    loop {
        let mut q = String::from("/v1/kv/?recursive&limit=500");
        if let Some(r) = revision {
            q.push_str(&format!("&revision={r}"));
        }
        if !after.is_empty() {
            q.push_str(&format!("&after={}", support::process::encode_key(&after)));
        }
        let r = c.http().get_path(base, &q).await.unwrap();
        assert_eq!(r.status, 200, "{q}: {}", r.text);
        for kv in r.body["kvs"].as_array().cloned().unwrap_or_default() {
            out.insert(kv["key"].as_str().unwrap().to_string(), kv);
        }
        match r.body["next"].as_str() {
            Some(next) if r.body["more"] == true => after = next.to_string(),
            _ => return out,
        }
    }
}

/// What the source cluster held at the backup's revision.
struct Expected {
    keys: BTreeMap<String, Value>,
    compact_revision: u64,
    lease: u64,
    lock_owner: String,
    lock_token: u64,
}

/// Ports for `n` members on 127.0.0.1, and the `--initial-cluster` naming them.
fn hosts(n: usize) -> (Vec<NodeHost>, String) {
    let ports = free_ports(2 * n);
    let hosts: Vec<NodeHost> = (0..n)
        .map(|i| NodeHost {
            ip: "127.0.0.1".into(),
            client_port: ports[2 * i],
            peer_port: ports[2 * i + 1],
            wrapper: Vec::new(),
        })
        .collect();
    let initial = hosts
        .iter()
        .enumerate()
        .map(|(i, h)| format!("{}=http://127.0.0.1:{}", i + 1, h.peer_port))
        .collect::<Vec<_>>();
    (hosts, initial.join(","))
}

/// Restores `file` into `root/node<id>` for every member of `initial`, then starts them.
async fn restored_cluster(file: &Path, root: &Path, n: usize) -> Cluster {
    let (hosts, initial) = hosts(n);
    for id in 1..=n {
        let dir = root.join(format!("node{id}"));
        let e = palisade(args(&[
            "snapshot",
            "restore",
            &file.to_string_lossy(),
            "--data-dir",
            &dir.to_string_lossy(),
            "--node-id",
            &id.to_string(),
            "--initial-cluster",
            &initial,
        ]))
        .await;
        assert!(ok(&e), "restore node {id}: {e:?}");
        assert!(e.stdout.contains("restored") && e.stdout.contains("checksum ok"), "{e:?}");
    }
    let opts =
        ClusterOptions { nodes: n as u64, hosts, data_root: Some(root.to_path_buf()), ..Default::default() };
    Cluster::start(opts).await
}

/// Checks that the cluster `c` serves exactly what `want` says, and goes on from it.
async fn check_restored(c: &Cluster, revision: u64, want: &Expected) {
    let (leader, _) = c.leader().await;
    let base = c.client_url(leader);
    let (status, cluster) = call(c, &base, reqwest::Method::GET, "/v1/cluster", None).await;
    assert_eq!(status, 200);
    assert_eq!(cluster["revision"], revision, "{cluster}");
    assert_eq!(cluster["compact_revision"], want.compact_revision, "{cluster}");
    let got = keys_at(c, &base, None).await;
    assert_eq!(got.len(), want.keys.len());
    for (key, kv) in &want.keys {
        let g = &got[key];
        for field in ["value", "create_revision", "mod_revision", "version", "lease"] {
            assert_eq!(g[field], kv[field], "{key} {field}: {g} vs {kv}");
        }
    }
    // The history floor travelled too: below it is compacted, above it readable.
    let r = c
        .http()
        .get_path(&base, &format!("/v1/kv/a/0?revision={}", want.compact_revision - 1))
        .await
        .unwrap();
    assert_eq!(r.status, 410, "{}", r.text);
    // The lease and the lock, with its fencing token.
    let (status, lease) =
        call(c, &base, reqwest::Method::GET, &format!("/v1/leases/{}", want.lease), None).await;
    assert_eq!(status, 200, "{lease}");
    assert!(lease["remaining_ms"].as_u64().unwrap() > 30_000, "{lease}");
    let (status, lock) = call(c, &base, reqwest::Method::GET, "/v1/locks/backup-lock", None).await;
    assert_eq!(status, 200, "{lock}");
    assert_eq!(lock["holders"][0]["fencing_token"], want.lock_token, "{lock}");
    assert_eq!(lock["holders"][0]["owner"], want.lock_owner.as_str(), "{lock}");
    // A new write takes the next revision; a new grant of the lock a higher token than any.
    let r = c.http().put(&base, "/after/restore", "new").await.unwrap();
    assert_eq!(r.revision(), Some(revision + 1), "{}", r.text);
    let (status, v) = call(
        c,
        &base,
        reqwest::Method::DELETE,
        &format!("/v1/locks/backup-lock?owner={}", want.lock_owner),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let body = json!({ "lease": want.lease, "wait": "0s" });
    let (status, v) = call(c, &base, reqwest::Method::POST, "/v1/locks/backup-lock", Some(body)).await;
    assert_eq!(status, 200, "{v}");
    assert!(v["fencing_token"].as_u64().unwrap() > revision, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_of_a_live_cluster_restores_into_a_new_cluster() {
    let work = tempfile::tempdir().unwrap();
    let src = Cluster::start(ClusterOptions::default()).await;
    let (leader, _) = src.leader().await;
    let base = src.client_url(leader);
    let endpoints = src.ids().iter().map(|&id| src.client_url(id)).collect::<Vec<_>>().join(",");
    for i in 0..150 {
        let r = src.http().put(&base, &format!("/a/{i}"), &format!("välue {i}")).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
    }
    for i in 0..50 {
        src.http().put(&base, &format!("/a/{i}"), &format!("second {i}")).await.unwrap();
    }
    let (status, v) =
        call(&src, &base, reqwest::Method::POST, "/v1/maintenance/compact", Some(json!({"revision": 120})))
            .await;
    assert_eq!(status, 200, "{v}");
    let (status, lease) =
        call(&src, &base, reqwest::Method::POST, "/v1/leases", Some(json!({"ttl": "120s"}))).await;
    assert_eq!(status, 201, "{lease}");
    let lease = lease["id"].as_u64().unwrap();
    let body = json!({ "value": "leased", "lease": lease });
    let (status, v) = call(&src, &base, reqwest::Method::PUT, "/v1/kv/leased", Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let body = json!({ "lease": lease, "wait": "0s" });
    let (status, v) = call(&src, &base, reqwest::Method::POST, "/v1/locks/backup-lock", Some(body)).await;
    assert_eq!(status, 200, "{v}");
    let (lock_owner, lock_token) =
        (v["owner"].as_str().unwrap().to_string(), v["fencing_token"].as_u64().unwrap());

    // A writer goes on through the backup.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, http, base) =
            (stop.clone(), written.clone(), src.http().client.clone(), base.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let url = format!("{base}/v1/kv/w/{i}");
                if let Ok(r) = http.put(url).json(&json!({"value": "w"})).send().await {
                    if r.status().is_success() {
                        written.fetch_add(1, Ordering::Relaxed);
                    }
                }
                i += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = work.path().join("backup.snap");
    let e = palisade(args(&["snapshot", "save", &file.to_string_lossy(), "--endpoints", &endpoints])).await;
    assert!(ok(&e), "save: {e:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    assert!(written.load(Ordering::Relaxed) > 0, "the writer wrote");
    assert!(!work.path().join("backup.snap.part").exists());
    // saved ... revision=R keys=K bytes=B sha256=H
    let field = |name: &str| {
        e.stdout
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("{name} in {:?}", e.stdout))
            .to_string()
    };
    let revision: u64 = field("revision").parse().unwrap();
    let sha = field("sha256");
    assert_eq!(field("bytes").parse::<u64>().unwrap(), std::fs::metadata(&file).unwrap().len());

    let e = palisade(args(&["snapshot", "status", &file.to_string_lossy(), "-o", "json"])).await;
    assert!(ok(&e), "status: {e:?}");
    let status: Value = serde_json::from_str(&e.stdout).unwrap();
    assert_eq!(status["revision"], revision);
    assert_eq!(status["sha256"], sha.as_str());
    assert_eq!(status["compact_revision"], 120);
    assert_eq!(status["leases"], 1);
    assert_eq!(status["locks"], 1);
    let e = palisade(args(&["snapshot", "status", &file.to_string_lossy()])).await;
    assert!(ok(&e) && e.stdout.contains("checksum ok"), "{e:?}");

    let want = Expected {
        keys: keys_at(&src, &base, Some(revision)).await,
        compact_revision: 120,
        lease,
        lock_owner,
        lock_token,
    };
    assert_eq!(status["keys"], want.keys.len() as u64);
    assert!(want.keys.keys().any(|k| k.starts_with("/w/")), "the backup caught the writer's keys");
    src.stop_all();

    let dst = restored_cluster(&file, &work.path().join("three"), 3).await;
    let (leader, _) = dst.leader().await;
    let (_, cluster) = call(&dst, &dst.client_url(leader), reqwest::Method::GET, "/v1/cluster", None).await;
    assert_ne!(cluster["cluster_id"], Value::Null);
    check_restored(&dst, revision, &want).await;
    // Every member serves it, and goes on serving it after a restart (the restored state
    // is its snapshot, the new log follows it).
    let (leader, _) = dst.leader().await;
    for id in dst.ids() {
        if id != leader {
            dst.kill_9(id);
            dst.restart(id).await;
        }
    }
    for id in dst.ids() {
        let url = dst.client_url(id);
        let dst = &dst;
        let r =
            eventually(dst, Duration::from_secs(20), "a restarted member serves the restored keys", || {
                let url = url.clone();
                async move {
                    let r =
                        dst.http().get_path(&url, "/v1/kv/after/restore").await.map_err(|e| e.to_string())?;
                    if r.status == 200 {
                        Ok(r)
                    } else {
                        Err(format!("{} {}", r.status, r.text))
                    }
                }
            })
            .await;
        assert_eq!(r.body["kv"]["value"], "new");
        let r = dst.http().get_path(&url, "/v1/kv/leased").await.unwrap();
        assert_eq!((r.status, r.body["kv"]["value"].as_str()), (200, Some("leased")), "node {id}");
    }
    dst.stop_all();

    // One member alone, restored from the same file.
    let one = restored_cluster(&file, &work.path().join("one"), 1).await;
    check_restored(&one, revision, &want).await;
    one.stop_all();
}

/// A damaged backup is refused by `status` and `restore` (exit 1, nothing written), and a
/// non-empty data dir is never restored into.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused_by_status_and_restore() {
    let work = tempfile::tempdir().unwrap();
    let src = Cluster::start(ClusterOptions { nodes: 1, ..Default::default() }).await;
    let (leader, _) = src.leader().await;
    for i in 0..20 {
        src.http().put(&src.client_url(leader), &format!("/k/{i}"), "v").await.unwrap();
    }
    let file = work.path().join("b.snap");
    let e = palisade(args(&[
        "snapshot",
        "save",
        &file.to_string_lossy(),
        "--endpoints",
        &src.client_url(leader),
    ]))
    .await;
    assert!(ok(&e), "{e:?}");
    src.stop_all();
    let good = std::fs::read(&file).unwrap();
    let bad = work.path().join("bad.snap");
    let initial = "1=http://127.0.0.1:1";
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", good[..good.len() - 10].to_vec(), "truncated"),
        ("extended", [&good[..], b"x"].concat(), "extended"),
        (
            "flipped",
            {
                let mut b = good.clone();
                b[good.len() / 2] ^= 0x40;
                b
            },
            "checksum mismatch",
        ),
        (
            "wrong magic",
            {
                let mut b = good.clone();
                b[1] = b'X';
                b
            },
            "not a snapshot file",
        ),
        (
            "wrong version",
            {
                let mut b = good.clone();
                b[8] = 7;
                b
            },
            "unknown format version 7",
        ),
        ("empty", Vec::new(), "is empty"),
    ];
    for (what, bytes, says) in cases {
        std::fs::write(&bad, &bytes).unwrap();
        let e = palisade(args(&["snapshot", "status", &bad.to_string_lossy()])).await;
        assert_eq!(code(&e), Some(1), "{what}: {e:?}");
        assert!(e.stderr.contains(says) && e.stderr.contains("bad.snap"), "{what}: {e:?}");
        let e = palisade(args(&["snapshot", "status", &bad.to_string_lossy(), "-o", "json"])).await;
        assert_eq!(code(&e), Some(1), "{what}: {e:?}");
        let dir = work.path().join("data");
        let e = palisade(args(&[
            "snapshot",
            "restore",
            &bad.to_string_lossy(),
            "--data-dir",
            &dir.to_string_lossy(),
            "--node-id",
            "1",
            "--initial-cluster",
            initial,
        ]))
        .await;
        assert_eq!(code(&e), Some(1), "{what}: {e:?}");
        assert!(e.stderr.contains(says), "{what}: {e:?}");
        let left: Vec<_> = std::fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("data"))
            .collect();
        assert!(left.is_empty(), "{what}: a refused restore left {left:?}");
    }
    // A node id not in --initial-cluster, and a data dir in use.
    let dir = work.path().join("data");
    let restore = |node: &str| {
        args(&[
            "snapshot",
            "restore",
            &file.to_string_lossy(),
            "--data-dir",
            &dir.to_string_lossy(),
            "--node-id",
            node,
            "--initial-cluster",
            initial,
        ])
    };
    let e = palisade(restore("2")).await;
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("does not include this node (2)"), "{e:?}");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("identity.json"), b"{}").unwrap();
    let e = palisade(restore("1")).await;
    assert_eq!(code(&e), Some(1), "{e:?}");
    assert!(e.stderr.contains("is not empty"), "{e:?}");
    assert_eq!(std::fs::read(dir.join("identity.json")).unwrap(), b"{}");
}
