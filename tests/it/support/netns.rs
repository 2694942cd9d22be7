//! A private test network of N hosts for fault tests: each node in its own network
//! namespace with its own address, so that `iptables` can cut, delay or drop the traffic
//! between any two of them.
//!
//! Layout of one [`Net`] (`k` is a number from 1 to 250, distinct for every network that
//! exists at the same time on the machine, across processes: it is claimed with an
//! exclusive `flock` on `/tmp/palisade-netns/k<k>.lock`, which the kernel releases when
//! the process dies):
//!
//! ```text
//!   root namespace (the test process)         hub namespace pal<pid>-k<k>-hub
//!   palk<k> 10.213.<k>.254/24  <--veth-->  up0 --+
//!                                                br0 (bridge)
//!   pal<pid>-k<k>-n1: eth0 10.213.<k>.1/24 <--veth--> h1 --+
//!   pal<pid>-k<k>-n2: eth0 10.213.<k>.2/24 <--veth--> h2 --+
//!   ...
//! ```
//!
//! Nodes run as `ip netns exec pal<pid>-k<k>-n<i> palisade serve --listen-client
//! 10.213.<k>.<i>:7379 --listen-peer 10.213.<k>.<i>:7380 ...` ([`Net::hosts`] gives the
//! `NodeHost`s for `ClusterOptions::hosts`); `ip netns exec` execs, so the child's pid is
//! palisade's own. The test process reaches every node's client port through `palk<k>`.
//!
//! Faults are `iptables` rules in the nodes' namespaces only (the root namespace is never
//! touched), always on the *receiving* side's INPUT chain, so a dropped packet vanishes
//! silently as on a real network (a DROP in OUTPUT would fail the sender's syscall at once).
//! Traffic between the test process (10.213.<k>.254) and the nodes is never dropped.
//! Faults accumulate until [`Net::heal`].
//!
//! [`Drop`] kills whatever still runs in the namespaces and deletes them (which deletes
//! the veths, the bridge and every rule), also when the test panics. [`Net::new`] first
//! removes leftovers of crashed runs: namespaces `pal<pid>-k<k>-*` whose process is gone,
//! or whose `k` it has just claimed.
//!
//! Needs root, iproute2 and iptables; without them [`Net::new`] returns the reason (tests
//! must fail with it, never pass silently).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::process::NodeHost;

/// The client and peer ports every node listens on (each has its own address).
pub const CLIENT_PORT: u16 = 7379;
pub const PEER_PORT: u16 = 7380;

const LOCK_DIR: &str = "/tmp/palisade-netns";

/// One test network. See the module docs.
pub struct Net {
    k: u8,
    hub: String,
    /// Namespace of node i at index i-1.
    nodes: Vec<String>,
    /// The veth end in the root namespace.
    root_if: String,
    /// Holds the claim on `k`; declared last, so it is released after `drop` tore down.
    _lock: File,
}

/// Runs a command, returns its stdout, or an error with the command line and its stderr.
fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Like [`run`], feeding `input` on stdin.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    child.stdin.take().expect("stdin").write_all(input.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}\ninput:\n{input}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Every network namespace name (`ip netns list` prints `name (id: N)` or `name`).
fn namespaces() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// `(pid, k)` of a namespace named `pal<pid>-k<k>-...`.
fn parse_name(ns: &str) -> Option<(u32, u8)> {
    let rest = ns.strip_prefix("pal")?;
    let (pid, rest) = rest.split_once("-k")?;
    let (k, _) = rest.split_once('-')?;
    Some((pid.parse().ok()?, k.parse().ok()?))
}

/// Kills whatever runs in namespace `ns` (only processes this suite started there) and
/// deletes it. Errors are ignored: this is cleanup.
fn remove_namespace(ns: &str) {
    if let Ok(pids) = run("ip", &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = run("kill", &["-9", pid]);
        }
    }
    let _ = run("ip", &["netns", "del", ns]);
}

/// Removes leftovers of crashed runs: namespaces of processes that are gone, and any with
/// number `k` (which the caller has just claimed, so nobody alive owns them).
fn remove_stale(k: u8) {
    for ns in namespaces() {
        if let Some((pid, kk)) = parse_name(&ns) {
            let owner_alive = Path::new(&format!("/proc/{pid}")).exists();
            if kk == k || !owner_alive {
                eprintln!("netns: removing the stale namespace {ns} of an earlier run");
                remove_namespace(&ns);
            }
        }
    }
    let _ = run("ip", &["link", "del", &format!("palk{k}")]);
}

/// Whether anything on this machine's root namespace already uses 10.213.<k>.0/24.
fn subnet_in_use(k: u8) -> bool {
    let needle = format!("10.213.{k}.");
    let addrs = run("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default();
    let routes = run("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default();
    addrs.contains(&needle) || routes.contains(&needle)
}

impl Net {
    /// Builds a network of `n` hosts (n <= 200). Returns why not if the machine cannot
    /// (not root, no `ip netns`, no iptables, no free subnet).
    pub fn new(n: usize) -> Result<Net, String> {
        assert!((1..=200).contains(&n), "a Net has 1..=200 hosts");
        let uid = run("id", &["-u"])?;
        if uid.trim() != "0" {
            return Err(format!("network namespaces need root; this process runs as uid {}", uid.trim()));
        }
        run("ip", &["-V"]).map_err(|e| format!("iproute2 (`ip`) is needed: {e}"))?;
        run("iptables", &["-V"]).map_err(|e| format!("iptables is needed: {e}"))?;
        std::fs::create_dir_all(LOCK_DIR).map_err(|e| format!("cannot create {LOCK_DIR}: {e}"))?;
        let pid = std::process::id();
        for k in 1..=250u8 {
            let path = format!("{LOCK_DIR}/k{k}.lock");
            let lock = OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(|e| format!("cannot open {path}: {e}"))?;
            if lock.try_lock().is_err() {
                continue; // another live network has k
            }
            remove_stale(k);
            if subnet_in_use(k) {
                continue; // dropping `lock` releases k
            }
            let prefix = format!("pal{pid}-k{k}");
            let net = Net {
                k,
                hub: format!("{prefix}-hub"),
                nodes: (1..=n).map(|i| format!("{prefix}-n{i}")).collect(),
                root_if: format!("palk{k}"),
                _lock: lock,
            };
            // On an error, dropping `net` removes whatever was created.
            net.build()?;
            return Ok(net);
        }
        Err(format!("no free test subnet 10.213.<k>.0/24 (k = 1..=250 are all taken; see {LOCK_DIR})"))
    }

    fn build(&self) -> Result<(), String> {
        let hub = self.hub.as_str();
        let ip = |args: &[&str]| run("ip", args).map(|_| ());
        ip(&["netns", "add", hub]).map_err(|e| format!("cannot create a network namespace: {e}"))?;
        ip(&["-n", hub, "link", "set", "lo", "up"])?;
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        for (idx, ns) in self.nodes.iter().enumerate() {
            let i = idx + 1;
            let hv = format!("h{i}");
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", hub, "link", "add", &hv, "type", "veth", "peer", "name", "eth0", "netns", ns])?;
            ip(&["-n", hub, "link", "set", &hv, "master", "br0"])?;
            ip(&["-n", hub, "link", "set", &hv, "up"])?;
            ip(&["-n", ns, "addr", "add", &format!("{}/24", self.ip(i)), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        let root_if = self.root_if.as_str();
        ip(&["link", "add", root_if, "type", "veth", "peer", "name", "up0", "netns", hub])?;
        ip(&["-n", hub, "link", "set", "up0", "master", "br0"])?;
        ip(&["-n", hub, "link", "set", "up0", "up"])?;
        ip(&["addr", "add", &format!("{}/24", self.host_ip()), "dev", root_if])?;
        ip(&["link", "set", root_if, "up"])?;
        for ns in &self.nodes {
            run("ip", &["netns", "exec", ns, "iptables", "-w", "-S"])
                .map_err(|e| format!("iptables does not work inside a network namespace: {e}"))?;
        }
        // Reachable: a connection to a port nobody listens on is refused at once (RST);
        // an unreachable host times out instead.
        for i in 1..=self.nodes.len() {
            let addr: SocketAddr = format!("{}:{CLIENT_PORT}", self.ip(i)).parse().expect("an address");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("the test network is up but {addr} is unreachable: {e}"));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
        Ok(())
    }

    /// The number of hosts.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The subnet number: hosts are 10.213.<k>.1..=n.
    pub fn k(&self) -> u8 {
        self.k
    }

    /// Host `i`'s (1-based) address.
    pub fn ip(&self, i: usize) -> String {
        assert!((1..=self.nodes.len()).contains(&i), "no host {i} (hosts are 1..={})", self.nodes.len());
        format!("10.213.{}.{i}", self.k)
    }

    /// The root namespace's address on the test network (where client requests come from).
    pub fn host_ip(&self) -> String {
        format!("10.213.{}.254", self.k)
    }

    /// Host `i`'s namespace.
    pub fn ns(&self, i: usize) -> &str {
        assert!((1..=self.nodes.len()).contains(&i), "no host {i} (hosts are 1..={})", self.nodes.len());
        &self.nodes[i - 1]
    }

    /// The command that runs a program in host `i`'s namespace: `ip netns exec NS`.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i).to_string()]
    }

    /// One `NodeHost` per host, for `ClusterOptions::hosts` (node id i on host i).
    pub fn hosts(&self) -> Vec<NodeHost> {
        (1..=self.nodes.len())
            .map(|i| NodeHost {
                ip: self.ip(i),
                client_port: CLIENT_PORT,
                peer_port: PEER_PORT,
                wrapper: self.wrapper(i),
            })
            .collect()
    }

    /// Appends INPUT rules (`-s ADDR ... -j DROP` bodies) in host `i`'s namespace, at once.
    fn add_input_rules(&self, i: usize, rules: &[String]) {
        if rules.is_empty() {
            return;
        }
        let mut input = String::from("*filter\n");
        for r in rules {
            input.push_str(&format!("-A INPUT {r}\n"));
        }
        input.push_str("COMMIT\n");
        run_with_input("ip", &["netns", "exec", self.ns(i), "iptables-restore", "-w", "--noflush"], &input)
            .unwrap_or_else(|e| panic!("netns: cannot add rules on host {i}: {e}"));
    }

    /// Cuts every link between hosts of different groups, both ways. A host in no group
    /// is cut off from every other host.
    pub fn partition(&self, groups: &[Vec<usize>]) {
        let n = self.nodes.len();
        let group_of = |i: usize| groups.iter().position(|g| g.contains(&i));
        for g in groups {
            for &i in g {
                assert!((1..=n).contains(&i), "partition: no host {i}");
            }
        }
        for i in 1..=n {
            let rules: Vec<String> = (1..=n)
                .filter(|&j| j != i && (group_of(i).is_none() || group_of(i) != group_of(j)))
                .map(|j| format!("-s {} -j DROP", self.ip(j)))
                .collect();
            self.add_input_rules(i, &rules);
        }
    }

    /// Cuts host `i` off from every other host (the test process still reaches it).
    pub fn isolate(&self, i: usize) {
        let others: Vec<usize> = (1..=self.nodes.len()).filter(|&j| j != i).collect();
        self.partition(&[vec![i], others]);
    }

    /// Drops every packet from host `from` to host `to` (only that direction).
    pub fn drop_one_way(&self, from: usize, to: usize) {
        assert_ne!(from, to, "drop_one_way: a host to itself");
        self.add_input_rules(to, &[format!("-s {} -j DROP", self.ip(from))]);
    }

    /// Drops each packet between host `i` and every other host, in both directions, with
    /// probability `p`.
    pub fn lossy(&self, i: usize, p: f64) {
        assert!((0.0..=1.0).contains(&p), "lossy: p = {p} is not a probability");
        let rule = |src: &str| format!("-s {src} -m statistic --mode random --probability {p:.4} -j DROP");
        let n = self.nodes.len();
        let inbound: Vec<String> = (1..=n).filter(|&j| j != i).map(|j| rule(&self.ip(j))).collect();
        self.add_input_rules(i, &inbound);
        for j in (1..=n).filter(|&j| j != i) {
            self.add_input_rules(j, &[rule(&self.ip(i))]);
        }
    }

    /// Removes every fault (flushes the filter table of every host).
    pub fn heal(&self) {
        for i in 1..=self.nodes.len() {
            run("ip", &["netns", "exec", self.ns(i), "iptables", "-w", "-F"])
                .unwrap_or_else(|e| panic!("netns: cannot heal host {i}: {e}"));
        }
    }

    /// The rules in force on every host (`iptables -S`), for a failure message.
    pub fn rules(&self) -> String {
        let mut out = String::new();
        for i in 1..=self.nodes.len() {
            let s = run("ip", &["netns", "exec", self.ns(i), "iptables", "-w", "-S", "INPUT"])
                .unwrap_or_else(|e| e);
            out.push_str(&format!("host {i} ({}):\n{s}", self.ip(i)));
        }
        out
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            remove_namespace(ns);
        }
        // Gone with the hub's end of the pair already; this is for a half-built network.
        let _ = run("ip", &["link", "del", &self.root_if]);
        let left: Vec<String> =
            namespaces().into_iter().filter(|ns| self.nodes.contains(ns) || *ns == self.hub).collect();
        if !left.is_empty() {
            eprintln!("netns: could not remove the namespaces {left:?}");
        }
    }
}
