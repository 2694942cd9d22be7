//! Stuck and greedy clients against a real `palisade serve`: none of them may take the node
//! down, starve its health checks, or keep a connection or an in-flight slot past the
//! deadlines (`--header-timeout-ms`, `--body-timeout-ms`, `--idle-timeout-ms`) and caps
//! (`--max-client-connections`, `--max-inflight-requests`), and running out of file
//! descriptors must show in `/readyz` and heal by itself.
//!
//! These clients are raw TCP sockets ([`Raw`]): reqwest will not stall, trickle or hoard
//! connections on purpose. Every error reply they get must be our JSON error shape.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::process::{free_ports, Cluster, ClusterOptions, Consistency, NodeHost};

/// One node with `args` added to its command line.
async fn node(args: &[&str]) -> Cluster {
    node_via(args, Vec::new()).await
}

/// [`node`], run through `wrapper` (which must exec the binary).
async fn node_via(args: &[&str], wrapper: Vec<String>) -> Cluster {
    let hosts = if wrapper.is_empty() {
        Vec::new()
    } else {
        let ports = free_ports(2);
        vec![NodeHost { ip: "127.0.0.1".into(), client_port: ports[0], peer_port: ports[1], wrapper }]
    };
    let c = Cluster::start(ClusterOptions {
        nodes: 1,
        extra_args: args.iter().map(|a| a.to_string()).collect(),
        hosts,
        ..ClusterOptions::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut conn = Raw::connect(&addr(&c)).await;
        if conn.get("/readyz").await.is_ok_and(|r| r.status == 200) {
            return c;
        }
        assert!(Instant::now() < deadline, "the node did not become ready\n{}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `127.0.0.1:PORT` of the node's client listener.
fn addr(c: &Cluster) -> String {
    c.client_url(1).trim_start_matches("http://").to_string()
}

/// An HTTP reply as read off the socket.
#[derive(Debug)]
struct RawReply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Value,
}

impl RawReply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Asserts an error reply in our shape: `{"error": {"code": code, "message": "..."}}`.
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(self.header("content-type"), Some("application/json"), "{self:?}");
        let error = self.body["error"].as_object().unwrap_or_else(|| panic!("not our error shape: {self:?}"));
        assert_eq!(error.get("code").and_then(Value::as_str), Some(code), "{self:?}");
        assert!(error.get("message").and_then(Value::as_str).is_some_and(|m| !m.is_empty()), "{self:?}");
    }
}

/// A raw HTTP/1.1 client connection.
struct Raw {
    tcp: TcpStream,
    /// Read but not yet consumed.
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: &str) -> Raw {
        Raw { tcp: TcpStream::connect(addr).await.expect("connect"), buf: Vec::new() }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// `GET path` on this connection (kept alive), and its reply within 5 s.
    async fn get(&mut self, path: &str) -> Result<RawReply, String> {
        self.send(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        self.reply(Duration::from_secs(5)).await
    }

    /// `PUT /v1/kv{key}` of `{"value": value}` on this connection, and its reply within 5 s.
    async fn put(&mut self, key: &str, value: &str) -> Result<RawReply, String> {
        let (head, body) = put_request(key, value);
        self.send(&head).await.map_err(|e| e.to_string())?;
        self.send(&body).await.map_err(|e| e.to_string())?;
        self.reply(Duration::from_secs(5)).await
    }

    /// `POST path` with a JSON `body` on this connection (its reply is read separately).
    async fn send_post(&mut self, path: &str, body: &str) -> std::io::Result<()> {
        let head = format!("POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len());
        self.send(head.as_bytes()).await?;
        self.send(body.as_bytes()).await
    }

    /// Reads more bytes; `Ok(0)` at end of stream.
    async fn fill(&mut self, until: Instant) -> Result<usize, String> {
        let mut chunk = [0u8; 4096];
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.tcp.read(&mut chunk)).await {
            Err(_) => Err("no reply in time".into()),
            Ok(Err(e)) => Err(format!("read failed: {e}")),
            Ok(Ok(n)) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(n)
            }
        }
    }

    /// The next reply (with a `content-length` body) within `within`.
    async fn reply(&mut self, within: Duration) -> Result<RawReply, String> {
        let until = Instant::now() + within;
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill(until).await? == 0 {
                return Err("closed before a reply".into());
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or(head.clone())?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while self.buf.len() < head_end + len {
            if self.fill(until).await? == 0 {
                return Err("closed in the middle of a reply".into());
            }
        }
        let body = serde_json::from_slice(&self.buf[head_end..head_end + len]).unwrap_or(Value::Null);
        self.buf.drain(..head_end + len);
        Ok(RawReply { status, headers, body })
    }

    /// Whether the server closes the connection within `within` (reading and dropping
    /// whatever it sends first).
    async fn closed_within(&mut self, within: Duration) -> bool {
        let until = Instant::now() + within;
        loop {
            match self.fill(until).await {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) => return e.starts_with("read failed"),
            }
        }
    }
}

/// A `PUT /v1/kv{key}` request: its head and its body.
fn put_request(key: &str, value: &str) -> (Vec<u8>, Vec<u8>) {
    let body = serde_json::json!({ "value": value }).to_string().into_bytes();
    let head = format!(
        "PUT /v1/kv{key} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    (head.into_bytes(), body)
}

/// Whether `key` exists, read serializably (no quorum round, no in-flight slot needed
/// beyond one).
async fn exists(c: &Cluster, key: &str) -> bool {
    let r = c.http().get(&c.client_url(1), key, Consistency::Serializable).await.expect("a reply");
    assert!(r.status == 200 || r.status == 404, "{r:?}");
    r.status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_free_their_slots_and_never_block_health_checks() {
    let c = node(&["--max-inflight-requests", "4", "--body-timeout-ms", "1000"]).await;
    let a = addr(&c);
    // Eight PUTs that send their head and half their body, then stall: four take every
    // in-flight slot (their handlers wait for the rest of the body), four get 429.
    let started = Instant::now();
    let mut stalled = Vec::new();
    for i in 0..8 {
        let mut conn = Raw::connect(&a).await;
        let (head, body) = put_request(&format!("/stalled/{i}"), "never-written");
        conn.send(&head).await.unwrap();
        conn.send(&body[..body.len() / 2]).await.unwrap();
        stalled.push(conn);
    }
    // A ninth trickles its body, a byte every 200 ms: it may not outlast the deadline.
    let mut trickle = Raw::connect(&a).await;
    let (head, body) = put_request("/stalled/trickle", "never-written");
    trickle.send(&head).await.unwrap();
    let (mut trickle_read, mut trickle_write) = trickle.tcp.into_split();
    let trickler = tokio::spawn(async move {
        for b in body {
            if trickle_write.write_all(&[b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Health checks answer at once; the API sheds load with 429 in our shape.
    for path in ["/healthz", "/readyz"] {
        let t = Instant::now();
        let r = Raw::connect(&a).await.get(path).await.unwrap();
        assert_eq!(r.status, 200, "{path} while the slots are held: {r:?}");
        assert!(t.elapsed() < Duration::from_millis(500), "{path} took {:?}", t.elapsed());
    }
    Raw::connect(&a).await.get("/v1/kv/some/key").await.unwrap().assert_error(429, "overloaded");
    Raw::connect(&a).await.put("/some/key", "v").await.unwrap().assert_error(429, "overloaded");

    // At the body deadline the four holders get 408 and are closed; the others had their
    // 429 at once (which of the nine got the slots depends on the order the server read
    // their heads in). Either way every stalled connection is closed.
    let mut statuses = Vec::new();
    for conn in &mut stalled {
        let r = conn.reply(Duration::from_secs(3)).await.unwrap();
        match r.status {
            408 => {
                r.assert_error(408, "request_timeout");
                assert_eq!(r.header("connection"), Some("close"), "{r:?}");
                assert!(started.elapsed() >= Duration::from_millis(900), "408 before the deadline");
            }
            _ => r.assert_error(429, "overloaded"),
        }
        statuses.push(r.status);
        assert!(conn.closed_within(Duration::from_secs(3)).await, "a stalled connection stayed open");
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), trickle_read.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the trickling connection was still open 3 s after its body deadline");
    let answer = String::from_utf8_lossy(&answer);
    match answer.get(..12) {
        Some("HTTP/1.1 408") => statuses.push(408),
        Some("HTTP/1.1 429") => statuses.push(429),
        _ => panic!("the trickling connection got {answer:?}"),
    }
    statuses.sort();
    assert_eq!(statuses, [408, 408, 408, 408, 429, 429, 429, 429, 429], "four slots, nine stalled requests");
    trickler.abort();
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(4), "stalled clients were closed only after {elapsed:?}");

    // The slots are free again, and nothing of the stalled writes took effect.
    let r = Raw::connect(&a).await.put("/after", "ok").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    for i in 0..8 {
        assert!(!exists(&c, &format!("/stalled/{i}")).await, "a stalled PUT was written");
    }
    assert!(!exists(&c, "/stalled/trickle").await, "the trickled PUT was written");
    assert!(c.is_live(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_is_cut_off_at_the_header_timeout() {
    let c = node(&["--header-timeout-ms", "1000"]).await;
    let a = addr(&c);
    // A head sent in three pieces well within the deadline is served.
    let mut ok = Raw::connect(&a).await;
    for piece in ["GET /hea", "lthz HTTP/1.1\r\nho", "st: x\r\n\r\n"] {
        ok.send(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(ok.reply(Duration::from_secs(2)).await.unwrap().status, 200);

    // One byte every 300 ms: closed about a header timeout after the accept, unanswered.
    let started = Instant::now();
    let (mut read, mut write) = TcpStream::connect(&a).await.unwrap().into_split();
    let trickler = tokio::spawn(async move {
        for b in b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n" {
            if write.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut got)).await;
    let closed = started.elapsed();
    trickler.abort();
    assert!(got.is_empty(), "the trickled head was answered: {}", String::from_utf8_lossy(&got));
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2000),
        "closed after {closed:?}, not about 1 s"
    );
    assert!(c.is_live(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let c = node(&["--idle-timeout-ms", "1000"]).await;
    let mut conn = Raw::connect(&addr(&c)).await;
    // Requests every 400 ms keep it open past the timeout.
    for _ in 0..5 {
        assert_eq!(conn.get("/healthz").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(conn.get("/healthz").await.unwrap().status, 200);
    let idle = Instant::now();
    assert!(conn.closed_within(Duration::from_secs(3)).await, "the idle connection stayed open");
    let closed = idle.elapsed();
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_millis(2000),
        "closed after {closed:?} idle, not about 1 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_get_503_and_the_rest_are_left_alone() {
    let c = node(&["--max-client-connections", "20", "--max-peer-inflight", "2"]).await;
    let a = addr(&c);
    // Hold connections until one is refused. The harness's own client may hold one of the
    // 20 (its pool keeps the connection it polled /healthz on).
    let mut held = Vec::new();
    let refused = loop {
        let mut conn = Raw::connect(&a).await;
        let r = conn.get("/healthz").await.unwrap();
        if r.status != 200 {
            break (conn, r);
        }
        held.push(conn);
        assert!(held.len() <= 20, "more than 20 connections were accepted");
    };
    assert!(held.len() >= 18, "refused at {} connections", held.len());
    let (mut conn, r) = refused;
    r.assert_error(503, "overloaded");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert!(conn.closed_within(Duration::from_secs(2)).await, "a refused connection stayed open");

    // The connections already open are served as before.
    for conn in &mut held {
        assert_eq!(conn.get("/healthz").await.unwrap().status, 200);
    }
    // Closing a few makes room again.
    held.truncate(held.len() - 3);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let r = Raw::connect(&a).await.get("/readyz").await.unwrap();
        if r.status == 200 {
            break;
        }
        r.assert_error(503, "overloaded");
        assert!(Instant::now() < deadline, "no room after closing connections");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The peer listener has its own cap (--max-peer-inflight): a third connection is refused.
    let peer = c.peer_url(1).trim_start_matches("http://").to_string();
    let _peers = [Raw::connect(&peer).await, Raw::connect(&peer).await];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = Raw::connect(&peer).await.get("/raft/rpc").await.unwrap();
    r.assert_error(503, "overloaded");
    assert!(c.is_live(1));
}

/// A signed `POST /raft/rpc` from node 1 to itself: its head, and its body.
fn peer_request(c: &Cluster, body: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let key = palisade::peer::PeerKey::load(&c.peer_secret_path()).expect("the cluster's peer secret");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let mut head = format!(
        "POST /raft/rpc HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in key.sign(1, 1, now, body) {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    (head.into_bytes(), body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_peer_bodies_get_408_and_free_the_peer_slots() {
    let c = node(&["--max-peer-inflight", "2", "--body-timeout-ms", "500"]).await;
    let peer = c.peer_url(1).trim_start_matches("http://").to_string();
    // Two signed requests that stall half-way hold both peer slots (and connections).
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let (head, body) = peer_request(&c, br#"{"not": "a peer request, and never sent in full"}"#);
        let mut conn = Raw::connect(&peer).await;
        conn.send(&head).await.unwrap();
        conn.send(&body[..body.len() / 2]).await.unwrap();
        stalled.push(conn);
    }
    for conn in &mut stalled {
        let r = conn.reply(Duration::from_secs(3)).await.unwrap();
        r.assert_error(408, "request_timeout");
        assert!(conn.closed_within(Duration::from_secs(1)).await);
    }
    // The slots are free: a complete request reaches the JSON check.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (head, body) = peer_request(&c, b"{}");
        let mut conn = Raw::connect(&peer).await;
        conn.send(&head).await.unwrap();
        conn.send(&body).await.unwrap();
        let r = conn.reply(Duration::from_secs(3)).await.unwrap();
        if r.status == 400 {
            r.assert_error(400, "invalid_json");
            break;
        }
        // (The stalled connections may not be closed on the server's side yet.)
        r.assert_error(503, "overloaded");
        assert!(Instant::now() < deadline, "the peer slots stayed taken");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_shows_in_readyz_and_heals_by_itself() {
    assert!(
        std::process::Command::new("prlimit").arg("--version").output().is_ok(),
        "this test needs prlimit (util-linux; .ci/run installs it)"
    );
    let wrapper = vec!["prlimit".to_string(), "--nofile=64:64".to_string()];
    let c = node_via(&[], wrapper).await;
    let a = addr(&c);
    // Open connections until the node stops accepting: the kernel still completes the
    // handshakes (the backlog), but nobody answers them.
    let mut held = Vec::new();
    let mut waiting = Vec::new();
    while waiting.len() < 3 {
        let mut conn = Raw::connect(&a).await;
        conn.send(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        match conn.reply(Duration::from_millis(500)).await {
            Ok(r) => {
                assert_eq!(r.status, 200, "{r:?}");
                held.push(conn);
            }
            Err(_) => waiting.push(conn),
        }
        assert!(held.len() < 64, "a node limited to 64 files accepted {} connections", held.len());
    }
    println!("out of file descriptors after {} connections", held.len());
    assert!(c.is_live(1), "the node died when it ran out of file descriptors\n{}", c.logs());

    // Connections already open are served, and readiness tells the truth.
    let r = held[0].get("/readyz").await.unwrap();
    r.assert_error(503, "unavailable");
    let message = r.body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("cannot accept connections") && message.contains("file descriptors"),
        "{message}"
    );
    assert_eq!(held[1].get("/healthz").await.unwrap().status, 200);
    let r = held[2].put("/during", "exhaustion").await.unwrap();
    println!("a write during the exhaustion: {} {}", r.status, r.body);

    // Give the files back: the waiting connections are accepted and answered, and the
    // node is ready and writable again, without a restart.
    held.clear();
    for conn in &mut waiting {
        assert_eq!(conn.reply(Duration::from_secs(5)).await.unwrap().status, 200);
    }
    waiting.clear();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = Raw::connect(&a).await.get("/readyz").await.unwrap();
        if r.status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still not ready after the connections closed: {r:?}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = Raw::connect(&a).await.put("/after", "recovered").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(c.is_live(1));
    assert!(c.log_tail(1, 200).contains("accepting connections again"), "{}", c.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_but_does_not_wait_for_stalled_clients() {
    // The body timeout (30 s by default) is far beyond the grace period (1 s here).
    let c = node(&["--shutdown-timeout-ms", "1000"]).await;
    let a = addr(&c);
    let mut idle = Raw::connect(&a).await;
    assert_eq!(idle.get("/healthz").await.unwrap().status, 200);
    let mut busy = Raw::connect(&a).await;
    assert_eq!(busy.get("/healthz").await.unwrap().status, 200);
    let (head, body) = put_request("/finished", "during-shutdown");
    let mut finishing = Raw::connect(&a).await;
    finishing.send(&head).await.unwrap();
    finishing.send(&body[..body.len() / 2]).await.unwrap();
    let mut stalled = Raw::connect(&a).await;
    stalled.send(&put_request("/stalled", "never-written").0).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let t = Instant::now();
    c.signal(1, "TERM");
    // A request in flight finishes (and its connection closes after the reply).
    tokio::time::sleep(Duration::from_millis(100)).await;
    finishing.send(&body[body.len() / 2..]).await.unwrap();
    let r = finishing.reply(Duration::from_secs(2)).await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(finishing.closed_within(Duration::from_millis(500)).await);
    // An idle keep-alive connection lingers a second: a request its client sends meanwhile
    // (it may have been on its way as the shutdown began) is answered, and the reply closes
    // the connection. One that stays idle is closed after the second.
    let r = busy.get("/healthz").await.unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("connection"), Some("close"), "{r:?}");
    assert!(busy.closed_within(Duration::from_millis(500)).await);
    assert!(
        idle.closed_within(Duration::from_millis(1500)).await,
        "an idle connection outlived the shutdown"
    );
    // No new connection is served.
    if let Ok(tcp) = TcpStream::connect(&a).await {
        let mut late = Raw { tcp, buf: Vec::new() };
        assert!(late.get("/healthz").await.is_err(), "a connection was served after the shutdown began");
    }
    // A stalled one is cut off at the end of the grace period, and the node exits.
    while c.is_live(1) {
        assert!(t.elapsed() < Duration::from_secs(5), "the node did not exit within 5 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("exited {:?} after SIGTERM", t.elapsed());
    assert!(c.stop(1, Duration::ZERO).is_some_and(|s| s.success()), "the node did not exit cleanly");
    assert!(stalled.closed_within(Duration::from_millis(100)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_watches_long_polls_lock_waits_and_observers_at_once() {
    // Watches never end by themselves: without ending them, shutdown would wait out the
    // grace period (3 s here) and cut them off. Nor do an election's observers, and a lock
    // wait may last minutes.
    let c = node(&["--shutdown-timeout-ms", "3000"]).await;
    let a = addr(&c);
    let mut holder = Raw::connect(&a).await;
    holder.send_post("/v1/locks/held", r#"{"ttl":"60s"}"#).await.unwrap();
    assert_eq!(holder.reply(Duration::from_secs(5)).await.unwrap().status, 200);
    let mut waiter = Raw::connect(&a).await;
    waiter.send_post("/v1/locks/held", r#"{"ttl":"60s","wait":"10m"}"#).await.unwrap();
    let mut observer = Raw::connect(&a).await;
    observer.send(b"GET /v1/elections/e/observe HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let head = observer.reply(Duration::from_secs(5)).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let mut watch = Raw::connect(&a).await;
    watch.send(b"GET /v1/watch/app?recursive HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let head = watch.reply(Duration::from_secs(5)).await.unwrap();
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-type"), Some("text/event-stream"));
    let mut poll = Raw::connect(&a).await;
    poll.send(b"GET /v1/kv/app?wait&timeout=60s HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let t = Instant::now();
    c.signal(1, "TERM");
    let r = poll.reply(Duration::from_millis(500)).await.unwrap();
    r.assert_error(503, "unavailable");
    let r = waiter.reply(Duration::from_millis(500)).await.unwrap();
    r.assert_error(503, "unavailable");
    assert!(watch.closed_within(Duration::from_millis(500)).await, "a watch outlived the shutdown");
    assert!(observer.closed_within(Duration::from_millis(500)).await, "an observer outlived the shutdown");
    while c.is_live(1) {
        assert!(t.elapsed() < Duration::from_secs(5), "the node did not exit within 5 s of SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // (The holder's idle keep-alive connection lingers a second; the grace is three.)
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "the shutdown waited for the watches: {:?}",
        t.elapsed()
    );
    assert!(c.stop(1, Duration::ZERO).is_some_and(|s| s.success()), "the node did not exit cleanly");
}
