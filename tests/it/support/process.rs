//! A harness around real `palisade serve` processes.
//!
//! [`Cluster::start`] picks free ports on 127.0.0.1 (the OS chooses them), creates one temp
//! dir per cluster with a data dir and a log file per node, and starts every node with
//! `--initial-cluster "1=http://127.0.0.1:P1,2=...,3=..."`. A node's stdout and stderr go
//! to its log file (a restart appends to it); when a test panics, the [`Drop`] of the
//! cluster prints the tail of every log, kills every child and removes the temp dir
//! (set `PALISADE_TEST_KEEP=1` to keep the dir for a post-mortem).
//!
//! Nodes are addressed by their node id (1..=n), never by a 0-based index.
//!
//! ```ignore
//! let c = Cluster::start(ClusterOptions::default()).await;
//! let (leader, term) = c.leader().await;
//! let r = c.http().put(&c.client_url(leader), "/a/b", "v").await.unwrap();
//! assert_eq!(r.status, 200);
//! c.kill_9(leader);
//! c.restart(leader).await; // the same command line as before
//! ```
//!
//! [`ClusterOptions::hosts`] places nodes elsewhere (their own IP addresses, launched
//! through a wrapper such as `ip netns exec NS`: see `support::netns`);
//! [`Cluster::pause`]/[`Cluster::resume`] SIGSTOP/SIGCONT a node.
//!
//! [`Http`] is a thin reqwest wrapper: every call returns `Ok(Reply)` for any HTTP status
//! (status, headers, JSON body) and `Err` only when no HTTP answer came back (refused,
//! reset, client timeout), which a test usually counts as "outcome unknown".

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::tls::ClusterTls;

/// The `palisade` binary Cargo built for this test run.
pub const BIN: &str = env!("CARGO_BIN_EXE_palisade");

/// How a cluster is started. The defaults keep elections fast so tests stay short.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of members (ids 1..=nodes).
    pub nodes: u64,
    pub heartbeat_ms: u64,
    pub election_timeout_ms: u64,
    /// `--request-timeout-ms`: how long a request may wait for a leader, quorum or commit.
    pub request_timeout_ms: u64,
    pub log_level: String,
    /// Appended to every node's command line.
    pub extra_args: Vec<String>,
    /// How long [`Cluster::start`] and [`Cluster::restart`] wait for `/healthz`.
    pub start_timeout: Duration,
    /// Where each node lives, one entry per node (id 1 first). Empty (the default): every
    /// node on 127.0.0.1 with ports the OS picks, run directly.
    pub hosts: Vec<NodeHost>,
    /// Members not started with the others (start them with [`Cluster::start_node`]).
    pub delayed: Vec<u64>,
    /// Where the nodes' data dirs go (`<root>/node<id>`); default: the cluster's temp dir.
    pub data_root: Option<PathBuf>,
    /// TLS on both listeners, with the files of [`ClusterTls::generate`]: URLs are then
    /// `https://`, the harness's client trusts the test CA and presents its certificate, and
    /// the peer secret is left out unless [`ClusterTls::peer_secret`].
    pub tls: Option<ClusterTls>,
    /// A bearer token the cluster's own client ([`Cluster::http`], [`Cluster::leader`])
    /// sends with every request: needed when the nodes run with client auth.
    pub token: Option<String>,
    /// Members that are not in `--initial-cluster`: they start with `--join` and the peer
    /// URLs of the initial members instead (put them in `delayed` too, to start them once
    /// the cluster runs).
    pub joiners: Vec<u64>,
}

/// Where one node listens and how it is launched, for a cluster that is not on 127.0.0.1
/// (e.g. one network namespace per node: see `support::netns`).
#[derive(Debug, Clone)]
pub struct NodeHost {
    /// The IP address both listeners bind (and the node advertises).
    pub ip: String,
    pub client_port: u16,
    pub peer_port: u16,
    /// A command the binary is run through, e.g. `["ip", "netns", "exec", "ns1"]`. It must
    /// `exec` the binary, so that the child's pid is palisade's own (kill -9, SIGSTOP).
    pub wrapper: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            heartbeat_ms: 50,
            election_timeout_ms: 300,
            request_timeout_ms: 1000,
            log_level: "info,openraft=warn".into(),
            extra_args: Vec::new(),
            start_timeout: Duration::from_secs(20),
            hosts: Vec::new(),
            delayed: Vec::new(),
            data_root: None,
            tls: None,
            token: None,
            joiners: Vec::new(),
        }
    }
}

/// One member: its addresses, files and (when running) its process.
struct NodeProc {
    id: u64,
    /// `ip:port` of the client listener.
    client_addr: String,
    /// `ip:port` of the peer listener.
    peer_addr: String,
    /// Run the binary through this command (empty: directly).
    wrapper: Vec<String>,
    data_dir: PathBuf,
    log_path: PathBuf,
    /// The command line (a test may change it between runs: [`Cluster::set_command_line`]).
    args: Mutex<Vec<String>>,
    child: Mutex<Option<Child>>,
}

/// What a process run to completion by [`run_to_exit`] left behind.
#[derive(Debug)]
pub struct Exited {
    /// `None` if it was still running at the timeout (it was killed then).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// A set of `palisade serve` processes forming one cluster. Every method takes `&self`, so
/// a cluster can be shared (`Arc<Cluster>`) between tasks.
pub struct Cluster {
    opts: ClusterOptions,
    nodes: Vec<NodeProc>,
    http: Http,
    // Declared last: dropped after the children are killed.
    dir: Option<tempfile::TempDir>,
}

/// Binds `n` listeners on 127.0.0.1:0 at once (so the ports are distinct), reads the
/// ports back and closes them.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

/// Replaces the value of `--flag` in `args` (or appends `--flag value` if it is absent).
pub fn with_flag(args: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = args.to_vec();
    match out.iter().position(|a| a == flag) {
        Some(i) => out[i + 1] = value.to_string(),
        None => out.extend([flag.to_string(), value.to_string()]),
    }
    out
}

/// Removes `--flag value` from `args`.
pub fn without_flag(args: &[String], flag: &str) -> Vec<String> {
    let mut out = args.to_vec();
    if let Some(i) = out.iter().position(|a| a == flag) {
        out.drain(i..i + 2);
    }
    out
}

/// A `Command` for the palisade binary with an environment that cannot change its
/// behaviour behind the test's back (no `PALISADE_*`, `RUST_LOG` or proxy variables), and
/// `NO_COLOR=1` so log files carry no ANSI escapes.
pub fn palisade_command(args: &[String]) -> Command {
    palisade_command_via(&[], args)
}

/// [`palisade_command`] run through `wrapper` (e.g. `ip netns exec NS`): the command is
/// `wrapper... BIN args...`. Empty `wrapper`: the binary itself.
pub fn palisade_command_via(wrapper: &[String], args: &[String]) -> Command {
    let mut cmd = match wrapper.split_first() {
        None => Command::new(BIN),
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(BIN);
            c
        }
    };
    cmd.args(args).stdin(Stdio::null()).env("NO_COLOR", "1");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().to_string();
        let upper = k.to_ascii_uppercase();
        if upper.starts_with("PALISADE_") || upper == "RUST_LOG" || upper.ends_with("_PROXY") {
            cmd.env_remove(&k);
        }
    }
    cmd
}

/// Runs `palisade <args>` to completion (killing it after `timeout`) and captures its output.
pub fn run_to_exit(args: &[String], timeout: Duration) -> Exited {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (out_path, err_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let mut child = palisade_command(args)
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn palisade");
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Exited { status, stdout: read(&out_path), stderr: read(&err_path) }
}

/// The last `lines` lines of the file at `path` (reads at most the last 64 KiB).
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else { return format!("(no log at {})", path.display()) };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

enum StartError {
    /// A listener could not bind (another process took the port between our pick and the
    /// node's bind): pick new ports and try again.
    PortTaken,
}

impl Cluster {
    /// Starts `opts.nodes` members and waits until each answers `/healthz` (not for a
    /// leader: see [`Cluster::leader`]). Retries with new ports if one was taken meanwhile.
    pub async fn start(opts: ClusterOptions) -> Cluster {
        for _attempt in 0..3 {
            match Self::try_start(opts.clone()).await {
                Ok(c) => return c,
                Err(StartError::PortTaken) => continue,
            }
        }
        panic!("could not start a cluster: ports kept being taken");
    }

    async fn try_start(opts: ClusterOptions) -> Result<Cluster, StartError> {
        let n = opts.nodes as usize;
        assert!(n >= 1, "a cluster needs at least one node");
        let dir = tempfile::Builder::new().prefix("palisade-test-").tempdir().expect("a temp dir");
        let hosts: Vec<NodeHost> = if opts.hosts.is_empty() {
            let ports = free_ports(2 * n);
            (0..n)
                .map(|i| NodeHost {
                    ip: "127.0.0.1".into(),
                    client_port: ports[2 * i],
                    peer_port: ports[2 * i + 1],
                    wrapper: Vec::new(),
                })
                .collect()
        } else {
            assert_eq!(opts.hosts.len(), n, "ClusterOptions::hosts needs one entry per node");
            opts.hosts.clone()
        };
        // Every cluster runs with a peer secret, as a real deployment off loopback must.
        let secret_path = dir.path().join("peer-secret");
        let secret: String = (0..32).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect();
        std::fs::write(&secret_path, format!("{secret}\n")).expect("write the peer secret");
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let initial_cluster = (1..=n)
            .filter(|id| !opts.joiners.contains(&(*id as u64)))
            .map(|id| format!("{id}={scheme}://{}:{}", hosts[id - 1].ip, hosts[id - 1].peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let join_urls = (1..=n)
            .filter(|id| !opts.joiners.contains(&(*id as u64)))
            .map(|id| format!("{scheme}://{}:{}", hosts[id - 1].ip, hosts[id - 1].peer_port))
            .collect::<Vec<_>>()
            .join(",");
        let nodes = (1..=n)
            .map(|id| {
                let host = &hosts[id - 1];
                let client_addr = format!("{}:{}", host.ip, host.client_port);
                let peer_addr = format!("{}:{}", host.ip, host.peer_port);
                let data_dir = opts.data_root.as_deref().unwrap_or(dir.path()).join(format!("node{id}"));
                let log_path = dir.path().join(format!("node{id}.log"));
                let mut args: Vec<String> = [
                    "serve",
                    "--node-id",
                    &id.to_string(),
                    "--data-dir",
                    &data_dir.to_string_lossy(),
                    "--listen-client",
                    &client_addr,
                    "--listen-peer",
                    &peer_addr,
                    if opts.joiners.contains(&(id as u64)) { "--join" } else { "--initial-cluster" },
                    if opts.joiners.contains(&(id as u64)) { &join_urls } else { &initial_cluster },
                    "--heartbeat-ms",
                    &opts.heartbeat_ms.to_string(),
                    "--election-timeout-ms",
                    &opts.election_timeout_ms.to_string(),
                    "--request-timeout-ms",
                    &opts.request_timeout_ms.to_string(),
                    "--log-level",
                    &opts.log_level,
                ]
                .iter()
                .map(|s| s.to_string())
                .collect();
                if opts.tls.as_ref().is_none_or(|t| t.peer_secret) {
                    args.extend([
                        "--peer-secret-file".to_string(),
                        secret_path.to_string_lossy().to_string(),
                    ]);
                }
                if let Some(tls) = &opts.tls {
                    args.extend(tls.serve_args(id as u64));
                }
                args.extend(opts.extra_args.iter().cloned());
                NodeProc {
                    id: id as u64,
                    client_addr,
                    peer_addr,
                    wrapper: host.wrapper.clone(),
                    data_dir,
                    log_path,
                    args: Mutex::new(args),
                    child: Mutex::new(None),
                }
            })
            .collect();
        let tls = opts.tls.as_ref().map(|t| (t.ca(), Some(t.harness_identity())));
        let http = Http::build(Duration::from_secs(5), tls, opts.token.as_deref());
        let cluster = Cluster { opts, nodes, http, dir: Some(dir) };
        let first: Vec<u64> =
            cluster.ids().into_iter().filter(|id| !cluster.opts.delayed.contains(id)).collect();
        for &id in &first {
            cluster.spawn(id);
        }
        for id in first {
            if let Err(why) = cluster.wait_healthy(id).await {
                if tail(cluster.log_path(id), 50).contains("cannot listen") {
                    cluster.kill_all_9();
                    return Err(StartError::PortTaken);
                }
                panic!("node {id} did not start: {why}\n{}", cluster.logs());
            }
        }
        Ok(cluster)
    }

    fn node(&self, id: u64) -> &NodeProc {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id} in this cluster (ids are 1..={})", self.nodes.len()))
    }

    fn spawn(&self, id: u64) {
        let n = self.node(id);
        let mut slot = n.child.lock().unwrap();
        assert!(slot.is_none(), "node {id} is already running");
        let mut log = OpenOptions::new().create(true).append(true).open(&n.log_path).expect("open the log");
        let via = n.wrapper.iter().map(|w| format!("{w} ")).collect::<String>();
        let args = n.args.lock().unwrap().clone();
        let _ = writeln!(log, "=== harness: starting node {id}: {via}{BIN} {}", args.join(" "));
        let child = palisade_command_via(&n.wrapper, &args)
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn palisade serve");
        *slot = Some(child);
    }

    /// Polls `/healthz` until it answers 200; fails if the process exits or the start
    /// timeout passes.
    async fn wait_healthy(&self, id: u64) -> Result<(), String> {
        let deadline = Instant::now() + self.opts.start_timeout;
        let url = format!("{}/healthz", self.client_url(id));
        loop {
            if let Some(status) = self.exit_status(id) {
                return Err(format!("node {id} exited with {status}"));
            }
            if let Ok(r) = self.http.client.get(&url).timeout(Duration::from_secs(1)).send().await {
                if r.status().as_u16() == 200 {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "node {id} did not answer /healthz within {:?}",
                    self.opts.start_timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }

    /// If node `id` was started and has exited since, its exit status (reaping it).
    fn exit_status(&self, id: u64) -> Option<ExitStatus> {
        let mut slot = self.node(id).child.lock().unwrap();
        let status = slot.as_mut()?.try_wait().ok()??;
        *slot = None;
        Some(status)
    }

    /// The options the cluster was started with.
    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// Every member's id, running or not.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Whether node `id`'s process is running.
    pub fn is_live(&self, id: u64) -> bool {
        let mut slot = self.node(id).child.lock().unwrap();
        match slot.as_mut() {
            None => false,
            Some(c) => matches!(c.try_wait(), Ok(None)),
        }
    }

    /// The ids of the running members.
    pub fn live_ids(&self) -> Vec<u64> {
        self.ids().into_iter().filter(|&id| self.is_live(id)).collect()
    }

    /// `http://127.0.0.1:PORT` of node `id`'s client API (`http://IP:PORT` with [`NodeHost`]s;
    /// `https://` with [`ClusterOptions::tls`]).
    pub fn client_url(&self, id: u64) -> String {
        format!("{}://{}", self.scheme(), self.node(id).client_addr)
    }

    /// `http://127.0.0.1:PORT` of node `id`'s peer listener (as in `--initial-cluster`).
    pub fn peer_url(&self, id: u64) -> String {
        format!("{}://{}", self.scheme(), self.node(id).peer_addr)
    }

    /// `ip:port` of node `id`'s client listener.
    pub fn client_addr(&self, id: u64) -> &str {
        &self.node(id).client_addr
    }

    /// `ip:port` of node `id`'s peer listener.
    pub fn peer_addr(&self, id: u64) -> &str {
        &self.node(id).peer_addr
    }

    fn scheme(&self) -> &'static str {
        if self.opts.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The pid of node `id`'s process, if it is running (palisade's own pid, also when
    /// it runs through a wrapper that execs it).
    pub fn pid(&self, id: u64) -> Option<u32> {
        let mut slot = self.node(id).child.lock().unwrap();
        let c = slot.as_mut()?;
        match c.try_wait() {
            Ok(None) => Some(c.id()),
            _ => None,
        }
    }

    /// Sends `signal` (a name for `kill -s`, e.g. `STOP`) to node `id`. Panics if the node
    /// is not running or the signal cannot be sent.
    pub fn signal(&self, id: u64, signal: &str) {
        let pid = self.pid(id).unwrap_or_else(|| panic!("signal {signal}: node {id} is not running"));
        let st = Command::new("kill").args(["-s", signal, &pid.to_string()]).status().expect("run kill");
        assert!(st.success(), "kill -s {signal} {pid} (node {id}) failed: {st}");
    }

    /// SIGSTOPs node `id` (it keeps its sockets, but answers nothing) until [`Cluster::resume`].
    pub fn pause(&self, id: u64) {
        self.signal(id, "STOP");
    }

    /// SIGCONTs node `id` after [`Cluster::pause`].
    pub fn resume(&self, id: u64) {
        self.signal(id, "CONT");
    }

    /// The file with the cluster's peer secret (every node runs with `--peer-secret-file`).
    pub fn peer_secret_path(&self) -> PathBuf {
        self.dir.as_ref().expect("the cluster dir lives as long as the cluster").path().join("peer-secret")
    }

    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }

    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).log_path
    }

    /// The arguments node `id` is started with (after the binary name; starts with `serve`).
    /// Replaces node `id`'s command line for its next start.
    pub fn set_command_line(&self, id: u64, args: Vec<String>) {
        *self.node(id).args.lock().unwrap() = args;
    }

    pub fn command_line(&self, id: u64) -> Vec<String> {
        self.node(id).args.lock().unwrap().clone()
    }

    /// The shared HTTP client.
    pub fn http(&self) -> &Http {
        &self.http
    }

    /// SIGKILLs node `id` (no chance to flush or shut down) and reaps it. No-op if not running.
    pub fn kill_9(&self, id: u64) {
        let mut slot = self.node(id).child.lock().unwrap();
        if let Some(mut c) = slot.take() {
            let _ = c.kill(); // SIGKILL on Unix
            let _ = c.wait();
        }
    }

    /// SIGKILLs every running node.
    pub fn kill_all_9(&self) {
        for id in self.ids() {
            self.kill_9(id);
        }
    }

    /// Stops node `id` gracefully (SIGTERM), SIGKILLs it if it has not exited within
    /// `grace`, and returns its exit status (`None` if it had to be killed or was not running).
    pub fn stop(&self, id: u64, grace: Duration) -> Option<ExitStatus> {
        let mut slot = self.node(id).child.lock().unwrap();
        let mut c = slot.take()?;
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        // A paused (SIGSTOPped) node only acts on SIGTERM once it runs again.
        let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                let _ = c.kill();
                let _ = c.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops every running node (SIGTERM, then SIGKILL after 5 s).
    pub fn stop_all(&self) {
        for id in self.ids() {
            self.stop(id, Duration::from_secs(5));
        }
    }

    /// Starts node `id` again with exactly the command line it was first started with,
    /// and waits until it answers `/healthz`. Panics (with the logs) if it does not.
    pub async fn restart(&self, id: u64) {
        assert!(!self.is_live(id), "restart({id}): node {id} is still running; kill or stop it first");
        // Reap a process that exited by itself, so spawn() finds the slot empty.
        let _ = self.exit_status(id);
        self.node(id).child.lock().unwrap().take();
        self.spawn(id);
        if let Err(why) = self.wait_healthy(id).await {
            panic!("node {id} did not restart: {why}\n{}", self.logs());
        }
    }

    /// Starts node `id` (one of [`ClusterOptions::delayed`], or one that exited) and waits
    /// until it answers `/healthz`.
    pub async fn start_node(&self, id: u64) {
        self.restart(id).await
    }

    /// Starts node `id` with its command line and waits (at most `within`) for it to exit
    /// by itself; returns its exit status and the tail of its log. Panics if it keeps running.
    pub async fn start_expecting_exit(&self, id: u64, within: Duration) -> (ExitStatus, String) {
        assert!(!self.is_live(id), "node {id} is still running");
        let _ = self.exit_status(id);
        self.node(id).child.lock().unwrap().take();
        self.spawn(id);
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.exit_status(id) {
                return (status, self.log_tail(id, 40));
            }
            if Instant::now() >= deadline {
                self.kill_9(id);
                panic!("node {id} kept running for {within:?}; its log:\n{}", self.log_tail(id, 60));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET /v1/cluster` on node `id`.
    pub async fn cluster_view(&self, id: u64) -> Result<Value, String> {
        let r = self.http.get_path(&self.client_url(id), "/v1/cluster").await.map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("GET /v1/cluster on node {id}: {} {}", r.status, r.text));
        }
        Ok(r.body)
    }

    /// Waits (up to 20 s) until every running node names the same leader, that leader is
    /// running and names itself. Returns `(leader id, the leader's term)`.
    pub async fn leader(&self) -> (u64, u64) {
        self.leader_within(Duration::from_secs(20)).await
    }

    /// [`Cluster::leader`] with a deadline of `within`. Panics (with the logs) at the deadline.
    pub async fn leader_within(&self, within: Duration) -> (u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            let live = self.live_ids();
            let mut views = BTreeMap::new();
            for &id in &live {
                match self.cluster_view(id).await {
                    Ok(v) => views.insert(id, v),
                    Err(e) => views.insert(id, Value::String(e)),
                };
            }
            let leaders: Vec<Option<u64>> = views.values().map(|v| v["leader"].as_u64()).collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && live.contains(l) {
                    let term = views[l]["term"].as_u64().expect("a term in /v1/cluster");
                    return (*l, term);
                }
            }
            if Instant::now() >= deadline {
                panic!(
                    "the running nodes {live:?} did not agree on a running leader within {within:?}; last views: {views:#?}\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The tail (last `lines` lines) of node `id`'s log.
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        tail(self.log_path(id), lines)
    }

    /// The tail of every node's log, for a failure message.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&format!(
                "\n----- node {} log ({}), last 40 lines -----\n{}\n",
                n.id,
                n.log_path.display(),
                tail(&n.log_path, 40)
            ));
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_all_9();
        if std::thread::panicking() {
            eprintln!("palisade test cluster: a test failed; node logs follow{}", self.logs());
        }
        if std::env::var_os("PALISADE_TEST_KEEP").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!("palisade test cluster: kept {}", dir.keep().display());
            }
        }
    }
}

/// Which read path a GET takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// The default: a read index confirmed by a quorum.
    Linearizable,
    /// `?consistency=serializable`: the local replica, possibly stale.
    Serializable,
}

impl Consistency {
    fn query(self) -> &'static str {
        match self {
            Consistency::Linearizable => "",
            Consistency::Serializable => "consistency=serializable",
        }
    }
}

/// An HTTP answer: the status, headers, and the body (parsed as JSON when it is JSON).
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    /// The body as JSON, or `Value::Null` if it is not JSON.
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// `revision` from the body.
    pub fn revision(&self) -> Option<u64> {
        self.body["revision"].as_u64()
    }

    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `error.code` from an error body.
    pub fn error_code(&self) -> Option<&str> {
        self.body["error"]["code"].as_str()
    }

    /// `kv.value` from a single-key reply.
    pub fn value(&self) -> Option<&str> {
        self.body["kv"]["value"].as_str()
    }
}

/// A listing of a subtree: the revision it reflects and every key's kv object.
#[derive(Debug, Clone)]
pub struct Listing {
    pub revision: u64,
    pub kvs: BTreeMap<String, Value>,
}

/// Percent-encodes a key for the URL path, keeping `/` and unreserved characters.
pub fn encode_key(key: &str) -> String {
    let mut out = String::new();
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A small client for the KV API. Cheap to clone (it shares one connection pool).
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
}

impl Http {
    /// A client whose every request gives up after `timeout` (set it well above the
    /// server's request deadline, so a server that hangs shows up as `Err`).
    pub fn new(timeout: Duration) -> Http {
        Http::build(timeout, None, None)
    }

    /// [`Http::new`] over TLS: `ca` (PEM) is the only trusted root; `identity` (certificate
    /// and key PEM files) is presented as the client certificate.
    pub fn with_tls(timeout: Duration, ca: &Path, identity: Option<(PathBuf, PathBuf)>) -> Http {
        Http::build(timeout, Some((ca.to_path_buf(), identity)), None)
    }

    /// [`Http::new`], over TLS when `tls` (the CA, and a client certificate and key) is
    /// given, sending `token` as `Authorization: Bearer` when given.
    pub fn build(
        timeout: Duration,
        tls: Option<(PathBuf, Option<(PathBuf, PathBuf)>)>,
        token: Option<&str>,
    ) -> Http {
        let mut builder =
            reqwest::Client::builder().timeout(timeout).connect_timeout(Duration::from_secs(1)).no_proxy();
        if let Some((ca, identity)) = tls {
            let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).expect("read the CA"))
                .expect("a CA certificate");
            builder = builder.tls_built_in_root_certs(false).add_root_certificate(ca);
            if let Some((cert, key)) = identity {
                let mut pem = std::fs::read(cert).expect("read the client certificate");
                pem.extend(std::fs::read(key).expect("read the client key"));
                builder = builder.identity(reqwest::Identity::from_pem(&pem).expect("a client identity"));
            }
        }
        if let Some(token) = token {
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).expect("a token is ASCII");
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Http { client: builder.build().expect("a reqwest client") }
    }

    async fn reply(resp: reqwest::Response) -> Result<Reply, reqwest::Error> {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await?;
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, headers, body, text })
    }

    fn kv_url(base: &str, key: &str, query: &str) -> String {
        let q = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("{}/v1/kv{}{q}", base.trim_end_matches('/'), encode_key(key))
    }

    /// `{method} {base}{path_and_query}` with `body` as JSON (none: no body).
    pub async fn send(
        &self,
        method: reqwest::Method,
        base: &str,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.client.request(method, format!("{}{path_and_query}", base.trim_end_matches('/')));
        if let Some(b) = body {
            req = req.json(b);
        }
        Self::reply(req.send().await?).await
    }

    /// `GET {base}{path_and_query}`.
    pub async fn get_path(&self, base: &str, path_and_query: &str) -> Result<Reply, reqwest::Error> {
        Self::reply(self.client.get(format!("{}{path_and_query}", base.trim_end_matches('/'))).send().await?)
            .await
    }

    /// `PUT /v1/kv{key}` with `{"value": value}`.
    pub async fn put(&self, base: &str, key: &str, value: &str) -> Result<Reply, reqwest::Error> {
        let body = serde_json::json!({ "value": value });
        Self::reply(self.client.put(Self::kv_url(base, key, "")).json(&body).send().await?).await
    }

    /// `GET /v1/kv{key}` with the given consistency.
    pub async fn get(&self, base: &str, key: &str, c: Consistency) -> Result<Reply, reqwest::Error> {
        Self::reply(self.client.get(Self::kv_url(base, key, c.query())).send().await?).await
    }

    /// `DELETE /v1/kv{key}`.
    pub async fn delete(&self, base: &str, key: &str) -> Result<Reply, reqwest::Error> {
        Self::reply(self.client.delete(Self::kv_url(base, key, "")).send().await?).await
    }

    /// Every key under `prefix` (`?recursive`), following pages; all pages are pinned to
    /// the first page's revision. `Err` carries the failing reply or transport error.
    pub async fn list(&self, base: &str, prefix: &str, c: Consistency) -> Result<Listing, String> {
        let mut kvs = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let mut q = String::from("recursive");
            if !c.query().is_empty() {
                q.push('&');
                q.push_str(c.query());
            }
            if let Some(a) = &after {
                q.push_str(&format!("&after={}", encode_key(a)));
            }
            let r = self
                .client
                .get(Self::kv_url(base, prefix, &q))
                .send()
                .await
                .map_err(|e| format!("list {prefix} on {base}: {e}"))?;
            let r = Self::reply(r).await.map_err(|e| format!("list {prefix} on {base}: {e}"))?;
            if r.status != 200 {
                return Err(format!("list {prefix} on {base}: {} {}", r.status, r.text));
            }
            let revision = r.revision().ok_or_else(|| format!("list without a revision: {}", r.text))?;
            for kv in r.body["kvs"].as_array().cloned().unwrap_or_default() {
                let key = kv["key"].as_str().unwrap_or_default().to_string();
                kvs.insert(key, kv);
            }
            match (r.body["more"].as_bool(), r.body["next"].as_str()) {
                (Some(true), Some(next)) => after = Some(next.to_string()),
                _ => return Ok(Listing { revision, kvs }),
            }
        }
    }
}

/// Polls `f` every 50 ms until it returns `Ok`, panicking with the last error (and the
/// cluster's logs) after `within`.
pub async fn eventually<T, F, Fut>(c: &Cluster, within: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + within;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("{what}: not within {within:?}; last: {e}\n{}", c.logs())
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
