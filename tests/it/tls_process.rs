//! TLS on real processes: a 3-node cluster with TLS on both listeners and peers
//! authenticated by mutual TLS alone (no peer secret), certificate rotation while serving,
//! a would-be member whose certificate another CA signed, and a client listener that
//! requires client certificates. Certificates are made in the test (`support::tls`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support;
use support::process::{
    eventually, free_ports, palisade_command, run_to_exit, Cluster, ClusterOptions, Consistency, Exited, Http,
};
use support::tls::{served_certificate, ClusterTls, TestCa};

fn tls_options(tls: &ClusterTls, nodes: u64) -> ClusterOptions {
    ClusterOptions { nodes, tls: Some(tls.clone()), ..ClusterOptions::default() }
}

fn ok(e: &Exited) -> bool {
    e.status.is_some_and(|s| s.success())
}

/// Runs `palisade <args>` with the given client TLS flags.
fn cli(args: &[&str], tls: &[String]) -> Exited {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend(tls.iter().cloned());
    run_to_exit(&v, Duration::from_secs(30))
}

/// Waits until node `id`'s log contains every one of `words` (on one line).
async fn log_says(c: &Cluster, id: u64, words: &[&str], within: Duration) {
    eventually(c, within, &format!("node {id}'s log to say {words:?}"), || async {
        let log = std::fs::read_to_string(c.log_path(id)).unwrap_or_default();
        if log.lines().any(|l| words.iter().all(|w| l.contains(w))) {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_over_tls_with_peers_authenticated_by_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("palisade test CA");
    let tls = ClusterTls::generate(&ca, dir.path(), 3);
    let c = Cluster::start(tls_options(&tls, 3)).await;
    assert!(
        !c.command_line(1).iter().any(|a| a == "--peer-secret-file"),
        "peers are authenticated by mutual TLS alone"
    );
    let (leader, _) = c.leader().await;

    // A write on each node, read linearizably on the next one.
    for w in c.ids() {
        let r = w % 3 + 1;
        let key = format!("/tls/from{w}");
        let put = c.http().put(&c.client_url(w), &key, &format!("v{w}")).await.unwrap();
        assert_eq!(put.status, 200, "put via node {w}: {}", put.text);
        let got = c.http().get(&c.client_url(r), &key, Consistency::Linearizable).await.unwrap();
        assert_eq!(got.status, 200, "get via node {r}: {}", got.text);
        assert_eq!(got.value(), Some(format!("v{w}").as_str()));
    }
    let view = c.cluster_view(leader).await.unwrap();
    for m in view["members"].as_array().unwrap() {
        assert!(m["peer_url"].as_str().unwrap().starts_with("https://"), "{view}");
    }

    // Plain HTTP to either TLS port gets no HTTP answer.
    let plain = Http::new(Duration::from_secs(3));
    for addr in [c.client_addr(1), c.peer_addr(1)] {
        let r = plain.get_path(&format!("http://{addr}"), "/healthz").await;
        assert!(r.is_err(), "plain HTTP to the TLS port {addr} was answered: {:?}", r.map(|r| r.status));
    }
    // The peer port without a client certificate: refused at the handshake.
    let no_cert = Http::with_tls(Duration::from_secs(3), &tls.ca(), None);
    let r = no_cert.client.post(format!("{}/raft/rpc", c.peer_url(1))).body("{}").send().await;
    assert!(r.is_err(), "a peer request without a certificate was answered: {r:?}");
    // A certificate of the cluster CA that does not name the claimed member's peer host
    // (127.0.0.1) gets through the handshake but not past the peer route.
    let elsewhere = ca.issue_for("not-a-member", &["localhost"], 999, 2040);
    let (ecert, ekey) = (dir.path().join("elsewhere.crt"), dir.path().join("elsewhere.key"));
    elsewhere.write(&ecert, &ekey);
    let impostor = Http::with_tls(Duration::from_secs(3), &tls.ca(), Some((ecert, ekey)));
    let now = palisade::clock::wall_clock_ms().to_string();
    let r = impostor
        .client
        .post(format!("{}/raft/rpc", c.peer_url(1)))
        .header("x-palisade-from", "2")
        .header("x-palisade-to", "1")
        .header("x-palisade-time", &now)
        .body("{}")
        .send()
        .await
        .expect("the handshake passes");
    assert_eq!(r.status().as_u16(), 403, "{:?}", r.text().await);
    log_says(
        &c,
        1,
        &["refused a peer request from node 2", "does not name node 2's peer host"],
        Duration::from_secs(5),
    )
    .await;
    log_says(&c, 1, &["TLS handshakes failed", "listener=\"peer\""], Duration::from_secs(5)).await;
    log_says(&c, 1, &["TLS handshakes failed", "listener=\"client\""], Duration::from_secs(5)).await;

    // The CLI over https, with the CA.
    let ep = c.client_url(2);
    let cacert = vec!["--cacert".to_string(), tls.ca().display().to_string()];
    let e = cli(&["kv", "--endpoints", &ep, "put", "/tls/cli", "over-tls"], &cacert);
    assert!(ok(&e), "put: {e:?}");
    let e = cli(&["kv", "--endpoints", &c.client_url(3), "get", "/tls/cli"], &cacert);
    assert!(ok(&e), "get: {e:?}");
    assert_eq!(e.stdout.trim_end(), "over-tls");
    // Without the CA it says what is missing; with another CA the server is not trusted.
    let e = cli(&["kv", "--endpoints", &ep, "get", "/tls/cli"], &[]);
    assert!(!ok(&e) && e.stderr.contains("--cacert"), "{e:?}");
    let other = TestCa::new("another CA");
    let other_path = dir.path().join("other-ca.pem");
    other.write(&other_path);
    let e = cli(
        &["kv", "--endpoints", &ep, "get", "/tls/cli"],
        &["--cacert".into(), other_path.display().to_string()],
    );
    assert!(!ok(&e), "a server certificate from another CA was trusted: {e:?}");
    // The environment works too.
    let mut cmd =
        palisade_command(&["kv".into(), "--endpoints".into(), ep.clone(), "get".into(), "/tls/cli".into()]);
    let out = cmd.env("PALISADE_CACERT", tls.ca()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), "over-tls");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_are_served_while_the_cluster_keeps_committing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("palisade test CA");
    let tls = ClusterTls::generate(&ca, dir.path(), 3);
    let c = Arc::new(Cluster::start(tls_options(&tls, 3)).await);
    let (leader, term) = c.leader().await;
    let ca_pem = ca.pem.clone();
    let probe = ca.issue("probe", 55, 2040);
    let before = served_certificate(c.client_addr(1), &ca_pem, None).await.unwrap();
    let before_peer = served_certificate(c.peer_addr(1), &ca_pem, Some(&probe)).await.unwrap();

    // A writer through node 1 (forwarding over the peer transport when it follows) and
    // through the leader, all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(Mutex::new(Vec::new())));
    let writer = {
        let (c, stop, acked, failures) = (c.clone(), stop.clone(), acked.clone(), failures.clone());
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let via = if i.is_multiple_of(2) { 1 } else { leader };
                match c.http().put(&c.client_url(via), &format!("/rot/{i}"), "x").await {
                    Ok(r) if r.status == 200 => {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failures.lock().unwrap().push(format!("put {i} via {via}: {} {}", r.status, r.text))
                    }
                    Err(e) => failures.lock().unwrap().push(format!("put {i} via {via}: {e}")),
                }
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            i
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // New certificates for node 1, from the same CA, with new serials and expiry.
    let client_new = ca.issue("node1-rotated", 9001, 2041);
    let peer_new = ca.issue("node1-peer-rotated", 9002, 2041);
    assert_ne!(client_new.der, before);
    client_new.write(&tls.client_cert(1), &tls.client_key(1));
    peer_new.write(&tls.peer_cert(1), &tls.peer_key(1));
    let rotated_at = Instant::now();
    eventually(&c, Duration::from_secs(10), "node 1 to serve its new client certificate", || async {
        let der = served_certificate(c.client_addr(1), &ca_pem, None).await?;
        if der == client_new.der {
            Ok(())
        } else {
            Err(format!("still serves the old one (old: {})", der == before))
        }
    })
    .await;
    eventually(&c, Duration::from_secs(10), "node 1 to serve its new peer certificate", || async {
        let der = served_certificate(c.peer_addr(1), &ca_pem, Some(&probe)).await?;
        if der == peer_new.der {
            Ok(())
        } else {
            Err(format!("still serves the old one (old: {})", der == before_peer))
        }
    })
    .await;
    assert!(rotated_at.elapsed() < Duration::from_secs(5), "rotation took {:?}", rotated_at.elapsed());
    log_says(&c, 1, &["reloaded client listener TLS"], Duration::from_secs(5)).await;
    log_says(&c, 1, &["reloaded peer listener TLS"], Duration::from_secs(5)).await;
    log_says(&c, 1, &["reloaded peer transport TLS"], Duration::from_secs(5)).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = writer.await.unwrap();
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "writes failed during the rotation: {failures:?}");
    assert!(acked.load(Ordering::Relaxed) == sent && sent > 20, "{sent} writes sent");
    let (leader_after, term_after) = c.leader().await;
    assert_eq!((leader_after, term_after), (leader, term), "the rotation disturbed the leadership");
    let last = c
        .http()
        .get(&c.client_url(3), &format!("/rot/{}", sent - 1), Consistency::Linearizable)
        .await
        .unwrap();
    assert_eq!(last.status, 200, "{}", last.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_cannot_take_part() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("palisade test CA");
    let tls = ClusterTls::generate(&ca, dir.path(), 3);
    let c = Cluster::start(tls_options(&tls, 3)).await;
    let (leader, term) = c.leader().await;

    // Node 4: named in its own initial cluster with the three members, trusting the
    // cluster's CA (so it gets as far as showing its certificate), but with a peer
    // certificate another CA signed.
    let rogue_ca = TestCa::new("rogue CA");
    let rogue = rogue_ca.issue("node4", 4, 2040);
    let (rcert, rkey) = (dir.path().join("rogue.crt"), dir.path().join("rogue.key"));
    rogue.write(&rcert, &rkey);
    let ports = free_ports(2);
    let members = (1..=3).map(|id| format!("{id}={}", c.peer_url(id))).collect::<Vec<_>>().join(",");
    let initial = format!("{members},4=https://127.0.0.1:{}", ports[1]);
    let rogue_log = dir.path().join("node4.log");
    let args: Vec<String> = [
        "serve",
        "--node-id",
        "4",
        "--data-dir",
        &dir.path().join("node4").display().to_string(),
        "--listen-client",
        &format!("127.0.0.1:{}", ports[0]),
        "--listen-peer",
        &format!("127.0.0.1:{}", ports[1]),
        "--initial-cluster",
        &initial,
        "--heartbeat-ms",
        "50",
        "--election-timeout-ms",
        "300",
        "--tls-cert-file",
        &rcert.display().to_string(),
        "--tls-key-file",
        &rkey.display().to_string(),
        "--peer-tls-cert-file",
        &rcert.display().to_string(),
        "--peer-tls-key-file",
        &rkey.display().to_string(),
        "--peer-tls-ca-file",
        &tls.ca().display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let log = std::fs::File::create(&rogue_log).unwrap();
    let mut child = palisade_command(&args).stdout(log.try_clone().unwrap()).stderr(log).spawn().unwrap();

    // While it tries (elections every few hundred ms), the cluster goes on unmoved.
    let until = Instant::now() + Duration::from_secs(4);
    let mut i = 0;
    while Instant::now() < until {
        let r = c.http().put(&c.client_url(leader), &format!("/guarded/{i}"), "v").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text);
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "node 4 exited: {}",
        support::process::tail(&rogue_log, 30)
    );
    let (leader_after, term_after) = c.leader().await;
    assert_eq!((leader_after, term_after), (leader, term), "node 4 disturbed the election");
    let view = c.cluster_view(leader).await.unwrap();
    assert_eq!(view["members"].as_array().unwrap().len(), 3, "{view}");

    // Pointed at a member's peer port directly with that certificate: refused at the
    // handshake, before any request is read.
    let direct = Http::with_tls(Duration::from_secs(3), &tls.ca(), Some((rcert.clone(), rkey.clone())));
    let r = direct.client.post(format!("{}/raft/rpc", c.peer_url(leader))).body("{}").send().await;
    assert!(r.is_err(), "a peer request with a foreign certificate was answered: {r:?}");

    // The members say why they refused it; node 4 says why it got nowhere.
    log_says(&c, 1, &["TLS handshakes failed", "listener=\"peer\"", "certificate"], Duration::from_secs(5))
        .await;
    let rogue_said = |words: &[&str]| {
        std::fs::read_to_string(&rogue_log)
            .unwrap_or_default()
            .lines()
            .any(|l| words.iter().all(|w| l.contains(w)))
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !rogue_said(&["peer TLS connection to node", "failed"]) {
        assert!(Instant::now() < deadline, "node 4's log: {}", support::process::tail(&rogue_log, 30));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_ca_makes_the_client_listener_require_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("palisade test CA");
    let mut tls = ClusterTls::generate(&ca, dir.path(), 1);
    tls.client_ca = true;
    let c = Cluster::start(tls_options(&tls, 1)).await;
    c.leader().await;
    let url = c.client_url(1);

    // The harness presents a certificate: served.
    let r = c.http().put(&url, "/mtls/a", "1").await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    // No certificate: refused at the handshake.
    let no_cert = Http::with_tls(Duration::from_secs(3), &tls.ca(), None);
    let r = no_cert.get_path(&url, "/healthz").await;
    assert!(r.is_err(), "a client without a certificate was served: {:?}", r.map(|r| r.status));
    // A certificate another CA signed: refused too.
    let other = TestCa::new("another CA").issue("intruder", 3, 2040);
    let (oc, ok_) = (dir.path().join("other.crt"), dir.path().join("other.key"));
    other.write(&oc, &ok_);
    let intruder = Http::with_tls(Duration::from_secs(3), &tls.ca(), Some((oc.clone(), ok_.clone())));
    assert!(intruder.get_path(&url, "/healthz").await.is_err(), "a certificate from another CA was taken");
    log_says(&c, 1, &["TLS handshakes failed", "listener=\"client\"", "certificate"], Duration::from_secs(5))
        .await;

    // The CLI: --cert/--key (or PALISADE_CERT/PALISADE_KEY) get it in.
    let (cert, key) = tls.harness_identity();
    let ca_flag = vec!["--cacert".to_string(), tls.ca().display().to_string()];
    let e = cli(&["kv", "--endpoints", &url, "get", "/mtls/a"], &ca_flag);
    assert!(!ok(&e), "served without a client certificate: {e:?}");
    let mut with_cert = ca_flag.clone();
    with_cert.extend([
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
    ]);
    let e = cli(&["kv", "--endpoints", &url, "get", "/mtls/a"], &with_cert);
    assert!(ok(&e), "{e:?}");
    assert_eq!(e.stdout.trim_end(), "1");
    let mut cmd =
        palisade_command(&["kv".into(), "--endpoints".into(), url.clone(), "get".into(), "/mtls/a".into()]);
    let out = cmd
        .env("PALISADE_CACERT", tls.ca())
        .env("PALISADE_CERT", &cert)
        .env("PALISADE_KEY", &key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // A certificate without its key is a usage error, said plainly.
    let mut half = ca_flag.clone();
    half.extend(["--cert".into(), cert.display().to_string()]);
    let e = cli(&["kv", "--endpoints", &url, "get", "/mtls/a"], &half);
    assert!(!ok(&e) && e.stderr.contains("--key"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_listener_keeps_its_connection_cap_and_handshake_deadline() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("palisade test CA");
    let tls = ClusterTls::generate(&ca, dir.path(), 1);
    let mut opts = tls_options(&tls, 1);
    opts.extra_args =
        ["--max-client-connections", "1", "--header-timeout-ms", "1500", "--idle-timeout-ms", "200"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    let c = Cluster::start(opts).await;
    let addr = c.client_addr(1).to_string();
    // The harness's keep-alive connection from the start is closed as idle by now.
    tokio::time::sleep(Duration::from_millis(600)).await;

    // A client that connects and never starts the handshake is closed at the header
    // deadline, and the log says so.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf)).await;
    assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "a silent client was not closed: {n:?}");
    assert!(started.elapsed() >= Duration::from_millis(1400), "closed after {:?}", started.elapsed());
    log_says(&c, 1, &["TLS handshakes failed", "no TLS handshake within"], Duration::from_secs(5)).await;

    // One connection holds the only slot: a new one is answered 503 `overloaded`, over TLS.
    let held = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let fresh = Http::with_tls(Duration::from_secs(3), &tls.ca(), None);
    let r = fresh.get_path(&c.client_url(1), "/healthz").await.expect("an HTTP answer over TLS");
    assert_eq!(r.status, 503, "{}", r.text);
    assert_eq!(r.error_code(), Some("overloaded"), "{}", r.text);
    drop(held);
}
