//! `palisade serve`: flags (each also a `PALISADE_*` variable), logging, listeners, and
//! graceful shutdown on SIGTERM or Ctrl-C.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::node::{Limits, Node, NodeConfig};
use crate::raft::network::Transport;
use crate::raft::{Member, NodeId};

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// This node's id (unique in the cluster, never reused).
    #[arg(long, env = "PALISADE_NODE_ID", default_value_t = 1)]
    pub node_id: NodeId,
    /// Where the Raft log, snapshots and identity live.
    #[arg(long, env = "PALISADE_DATA_DIR", default_value = "./palisade-data")]
    pub data_dir: PathBuf,
    /// Address of the client API listener.
    #[arg(long, env = "PALISADE_LISTEN_CLIENT", default_value = "127.0.0.1:7379")]
    pub listen_client: String,
    /// Address of the peer (Raft) listener.
    #[arg(long, env = "PALISADE_LISTEN_PEER", default_value = "127.0.0.1:7380")]
    pub listen_peer: String,
    /// Client URL the other members and clients use for this node (default: from --listen-client).
    #[arg(long, env = "PALISADE_ADVERTISE_CLIENT")]
    pub advertise_client: Option<String>,
    /// Peer URL the other members use for this node (default: from --listen-peer).
    #[arg(long, env = "PALISADE_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Initial members: `1=http://127.0.0.1:7380,2=http://127.0.0.1:17380,...`
    /// (a member's client URL may follow its peer URL after `|`). Default: this node alone.
    #[arg(long, env = "PALISADE_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Log filter (`info`, `debug`, `palisade=debug,openraft=warn`); RUST_LOG wins if set.
    #[arg(long, env = "PALISADE_LOG_LEVEL", default_value = "info,openraft=warn")]
    pub log_level: String,
    /// How long a request may wait for a leader, quorum or commit (ms).
    #[arg(long, env = "PALISADE_REQUEST_TIMEOUT_MS", default_value_t = 5000)]
    pub request_timeout_ms: u64,
    /// Raft heartbeat interval (ms).
    #[arg(long, env = "PALISADE_HEARTBEAT_MS", default_value_t = 100)]
    pub heartbeat_ms: u64,
    /// Minimum election timeout (ms); the maximum is twice this.
    #[arg(long, env = "PALISADE_ELECTION_TIMEOUT_MS", default_value_t = 1000)]
    pub election_timeout_ms: u64,
    /// Take a snapshot every this many log entries.
    #[arg(long, env = "PALISADE_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,
    /// Longest key (bytes).
    #[arg(long, env = "PALISADE_MAX_KEY_BYTES", default_value_t = 1024)]
    pub max_key_bytes: usize,
    /// Largest value (bytes).
    #[arg(long, env = "PALISADE_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    /// Largest request body (bytes).
    #[arg(long, env = "PALISADE_MAX_BODY_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Refuse writes once the store holds this many bytes over all versions.
    #[arg(long, env = "PALISADE_QUOTA_BYTES", default_value_t = 1024 * 1024 * 1024)]
    pub quota_bytes: u64,
    /// Client requests served at once; more are refused with 429 `overloaded`.
    #[arg(long, env = "PALISADE_MAX_INFLIGHT_REQUESTS", default_value_t = 2048)]
    pub max_inflight_requests: usize,
}

fn url_of(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

/// Parses `1=http://a:7380,2=http://b:7380|http://b:7379`.
pub fn parse_cluster(s: &str) -> anyhow::Result<BTreeMap<NodeId, Member>> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, urls) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {part:?} is not ID=PEER_URL"))?;
        let id: NodeId =
            id.trim().parse().with_context(|| format!("--initial-cluster: {id:?} is not a node id"))?;
        if id == 0 {
            anyhow::bail!("--initial-cluster: node ids start at 1");
        }
        let (peer, client) = match urls.split_once('|') {
            Some((p, c)) => (url_of(p.trim()), url_of(c.trim())),
            None => (url_of(urls.trim()), String::new()),
        };
        if out.insert(id, Member { client_url: client, peer_url: peer }).is_some() {
            anyhow::bail!("--initial-cluster names node {id} twice");
        }
    }
    if out.is_empty() {
        anyhow::bail!("--initial-cluster is empty");
    }
    Ok(out)
}

impl ServeArgs {
    /// The node config these flags describe.
    pub fn node_config(&self) -> anyhow::Result<NodeConfig> {
        if self.node_id == 0 {
            anyhow::bail!("--node-id must be at least 1");
        }
        let advertise = Member {
            client_url: url_of(self.advertise_client.as_deref().unwrap_or(&self.listen_client)),
            peer_url: url_of(self.advertise_peer.as_deref().unwrap_or(&self.listen_peer)),
        };
        let initial_cluster = match &self.initial_cluster {
            None => None,
            Some(s) => {
                let mut c = parse_cluster(s)?;
                let me = c.get_mut(&self.node_id).with_context(|| {
                    format!("--initial-cluster {s:?} does not include this node (--node-id {})", self.node_id)
                })?;
                if me.peer_url != advertise.peer_url {
                    anyhow::bail!(
                        "--initial-cluster gives node {} the peer URL {}, but this node advertises {} (set --advertise-peer)",
                        self.node_id,
                        me.peer_url,
                        advertise.peer_url
                    );
                }
                // Every member must bootstrap with the same membership, so this node's
                // client URL is not filled in here; it is published once a leader exists.
                Some(c)
            }
        };
        if self.heartbeat_ms == 0 || self.election_timeout_ms < 3 * self.heartbeat_ms {
            anyhow::bail!(
                "--election-timeout-ms must be at least 3 x --heartbeat-ms (and the heartbeat above 0)"
            );
        }
        let mut cfg = NodeConfig::new(self.node_id, &self.data_dir, advertise);
        cfg.initial_cluster = initial_cluster;
        cfg.request_timeout = Duration::from_millis(self.request_timeout_ms.max(1));
        cfg.heartbeat_ms = self.heartbeat_ms;
        cfg.election_timeout_ms = self.election_timeout_ms;
        cfg.snapshot_every = self.snapshot_every.max(100);
        cfg.limits = Limits {
            max_key_bytes: self.max_key_bytes,
            max_value_bytes: self.max_value_bytes,
            max_body_bytes: self.max_body_bytes,
            quota_bytes: self.quota_bytes,
            max_inflight_requests: self.max_inflight_requests.max(1),
            ..Limits::default()
        };
        Ok(cfg)
    }
}

/// Runs a node until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> ExitCode {
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| args.log_level.clone());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("palisade serve: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.node_config()?;
    let client = tokio::net::TcpListener::bind(&args.listen_client)
        .await
        .with_context(|| format!("cannot listen on {} (--listen-client)", args.listen_client))?;
    let peer = tokio::net::TcpListener::bind(&args.listen_peer)
        .await
        .with_context(|| format!("cannot listen on {} (--listen-peer)", args.listen_peer))?;
    let node = Node::start(cfg.clone(), Transport::http()).await?;
    tracing::info!(
        node_id = cfg.id,
        client = %args.listen_client,
        peer = %args.listen_peer,
        data_dir = %cfg.data_dir.display(),
        "palisade node serving"
    );
    crate::http::serve(node.clone(), client, peer, shutdown_signal()).await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
