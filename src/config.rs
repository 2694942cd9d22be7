//! [`Config`]: every setting of a node, its default, and where it came from.
//!
//! Each setting is declared once, in the table below, with its type, default and help.
//! Layers, weakest first: the defaults, an optional TOML file (`--config palisade.toml`,
//! keys named like the flags with `_`: `data_dir = "..."`), `PALISADE_*` environment
//! variables, then command-line flags. [`Config::validate`] checks every value once,
//! before anything starts; a bad value stops the node with a message naming the setting
//! and where it was set. Nothing is ever silently clamped.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::raft::{Member, NodeId};

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

/// A setting that cannot be used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: &'static str,
    pub source: Source,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flag = self.setting.replace('_', "-");
        let env = format!("PALISADE_{}", self.setting.to_uppercase());
        let from = match self.source {
            Source::Default => "its default".to_string(),
            Source::File => format!("`{}` in the config file", self.setting),
            Source::Env => env,
            Source::Flag => format!("--{flag}"),
        };
        write!(f, "invalid setting {} (from {from}): {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A value a setting can hold, parsed from text (a flag, a variable, a file entry).
trait SettingValue: Sized {
    /// Whether the flag takes no value (`--insecure-peer` alone means true).
    const SWITCH: bool = false;
    fn parse_setting(raw: &str) -> Result<Self, String>;
    /// The value as a flag would give it (`None`: unset).
    fn show(&self) -> Option<String>;
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl SettingValue for $t {
            fn parse_setting(raw: &str) -> Result<Self, String> {
                // Digits only: `+1`, `1e3` and `0x10` are refused, not reinterpreted.
                if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!("{raw:?} is not a non-negative integer"));
                }
                raw.parse().map_err(|_| format!("{raw:?} is too large"))
            }

            fn show(&self) -> Option<String> {
                Some(self.to_string())
            }
        }
    )*};
}
numbers!(u64, usize);

impl SettingValue for bool {
    const SWITCH: bool = true;
    fn parse_setting(raw: &str) -> Result<Self, String> {
        match raw {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{raw:?} is not true or false")),
        }
    }

    fn show(&self) -> Option<String> {
        Some(self.to_string())
    }
}

impl SettingValue for String {
    fn parse_setting(raw: &str) -> Result<Self, String> {
        Ok(raw.to_string())
    }

    fn show(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl SettingValue for PathBuf {
    fn parse_setting(raw: &str) -> Result<Self, String> {
        Ok(PathBuf::from(raw))
    }

    fn show(&self) -> Option<String> {
        Some(self.display().to_string())
    }
}

/// A setting that is one of a few words.
macro_rules! choices {
    ($(#[$doc:meta])* $t:ident { $($variant:ident = $word:literal),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $t { $($variant),* }

        impl SettingValue for $t {
            fn parse_setting(raw: &str) -> Result<Self, String> {
                match raw {
                    $($word => Ok($t::$variant),)*
                    _ => Err(format!("{raw:?} is not one of {}", [$($word),*].join(", "))),
                }
            }

            fn show(&self) -> Option<String> {
                Some(match self { $($t::$variant => $word,)* }.to_string())
            }
        }
    };
}

choices! {
    /// How log lines are written.
    LogFormat { Text = "text", Json = "json" }
}

choices! {
    /// Who may read `GET /metrics`.
    MetricsAccess { Open = "open", Auth = "auth", Off = "off" }
}

impl<T: SettingValue> SettingValue for Option<T> {
    fn parse_setting(raw: &str) -> Result<Self, String> {
        T::parse_setting(raw).map(Some)
    }

    fn show(&self) -> Option<String> {
        self.as_ref().and_then(T::show)
    }
}

/// One setting as the command line and the file know it.
#[derive(Debug, Clone, Copy)]
pub struct Setting {
    /// The name in the config file (`data_dir`); the flag is `--data-dir`, the
    /// environment variable `PALISADE_DATA_DIR`.
    pub name: &'static str,
    pub help: &'static str,
    /// A flag without a value (`--insecure-peer`).
    pub switch: bool,
}

impl Setting {
    pub fn flag(&self) -> String {
        self.name.replace('_', "-")
    }

    pub fn env(&self) -> String {
        format!("PALISADE_{}", self.name.to_uppercase())
    }
}

/// Declares the settings once: the [`Config`] struct, its defaults, and how each setting
/// is parsed from text.
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $name:ident : $ty:ty = $default:expr ;)*) => {
        /// Every setting of a node. Build it with [`Config::new`] (the defaults) or
        /// [`ServeFlags::config`] (defaults < file < environment < flags).
        #[derive(Debug, Clone)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $name: $ty, )*
            /// Where each setting came from (for messages); absent = the default.
            pub sources: BTreeMap<&'static str, Source>,
        }

        /// Every setting, in the order of `palisade serve --help`.
        pub const SETTINGS: &[Setting] = &[
            $( Setting {
                name: stringify!($name),
                help: concat!($($doc, "\n"),*),
                switch: <$ty as SettingValue>::SWITCH,
            }, )*
        ];

        impl Config {
            /// The defaults.
            pub fn defaults() -> Config {
                Config { $( $name: $default, )* sources: BTreeMap::new() }
            }

            /// The value of setting `name` as a flag would give it (`None`: unset or unknown).
            pub fn show(&self, name: &str) -> Option<String> {
                match name {
                    $( stringify!($name) => <$ty as SettingValue>::show(&self.$name), )*
                    _ => None,
                }
            }

            /// Sets `name` from its text form; the error says what is wrong with the value.
            fn set(&mut self, name: &str, raw: &str, source: Source) -> Result<(), String> {
                match name {
                    $( stringify!($name) => {
                        self.$name = <$ty as SettingValue>::parse_setting(raw.trim())?;
                        self.sources.insert(stringify!($name), source);
                        Ok(())
                    } )*
                    _ => Err(format!("there is no setting {name:?}")),
                }
            }
        }
    };
}

const MIB: usize = 1024 * 1024;

settings! {
    /// This node's id (unique in the cluster, never reused).
    node_id: NodeId = 1;
    /// Take the node id from the number ending the host name, as a StatefulSet names its
    /// pods: `palisade-2` is node 3 (the ordinal plus 1). Not with node_id. A pod that joins
    /// (join) where its ordinal's id was used before (a member scaled away) takes the next
    /// free id of its ordinal's series, ordinal + 1 + 1000 x k (`palisade-2`: 3, 1003,
    /// 2003, ...); a data dir keeps the id it was given. The host name is HOSTNAME, else
    /// the system's; ordinals go up to 999.
    node_id_from_hostname: bool = false;
    /// Where the Raft log, snapshots and identity live.
    data_dir: PathBuf = PathBuf::from("./palisade-data");
    /// Address of the client API listener.
    listen_client: String = "127.0.0.1:7379".into();
    /// Address of the peer (Raft) listener.
    listen_peer: String = "127.0.0.1:7380".into();
    /// Client URL the other members and clients use for this node (default: from listen_client).
    advertise_client: Option<String> = None;
    /// Peer URL the other members use for this node (default: from listen_peer).
    advertise_peer: Option<String> = None;
    /// Initial members: `1=http://127.0.0.1:7380,2=http://127.0.0.1:17380,...` (a member's
    /// client URL may follow its peer URL after `|`). Default: this node alone.
    initial_cluster: Option<String> = None;
    /// Join a running cluster on the first start: peer URLs of some of its members
    /// (`http://10.0.0.1:7380,http://10.0.0.2:7380`). The node asks to be added as a learner
    /// (proven by the peer secret or peer certificate, like every peer request), catches
    /// up, then asks to be promoted to a voter. Once the data dir holds this node's state
    /// it is not asked again. Cannot be given with initial_cluster. This node's own peer URL
    /// may be among them (it is skipped), so every member can be given the same list.
    join: Option<String> = None;
    /// A file holding the cluster's shared peer secret (at least 16 bytes); every member
    /// needs the same one. A peer listener not on a loopback address needs it, or peer
    /// mutual TLS (peer_tls_cert_file, peer_tls_key_file and peer_tls_ca_file), or both.
    /// Several secrets, one a line, rotate it: the first signs, any is accepted; the file
    /// is re-read when it changes on disk.
    peer_secret_file: Option<PathBuf> = None;
    /// Run the peer listener on a non-loopback address without a peer secret or peer mutual
    /// TLS (anyone who reaches the peer port can then rewrite the store).
    insecure_peer: bool = false;
    /// The client listener's TLS certificate chain (PEM); with tls_key_file, the client
    /// listener speaks HTTPS only. Re-read when it changes on disk.
    tls_cert_file: Option<PathBuf> = None;
    /// The private key (PEM) of tls_cert_file. Re-read when it changes on disk.
    tls_key_file: Option<PathBuf> = None;
    /// CA certificates (PEM): clients of the client listener must present a certificate
    /// signed by one of them. Re-read when it changes on disk.
    tls_client_ca_file: Option<PathBuf> = None;
    /// The peer listener's TLS certificate chain (PEM), also this node's client certificate
    /// towards the other members; needs peer_tls_key_file and peer_tls_ca_file, and every
    /// member's peer URL is then https://. Re-read when it changes on disk.
    peer_tls_cert_file: Option<PathBuf> = None;
    /// The private key (PEM) of peer_tls_cert_file. Re-read when it changes on disk.
    peer_tls_key_file: Option<PathBuf> = None;
    /// The cluster CA (PEM): members' peer certificates must be signed by it, both ways
    /// (mutual TLS; it is the only root trusted). With it, peer requests are authenticated
    /// by certificate, and peer_secret_file is optional. Re-read when it changes on disk.
    peer_tls_ca_file: Option<PathBuf> = None;
    /// HS256: a file holding the shared secret client tokens are signed with (at least 32
    /// bytes). Setting any auth_jwt key turns client authentication on. Re-read when it
    /// changes on disk.
    auth_jwt_secret_file: Option<PathBuf> = None;
    /// RS256/ES256/EdDSA: a file of public keys (PEM, or a JWKS JSON document with several
    /// keys picked by `kid`) client tokens are checked against. Re-read when it changes.
    auth_jwt_public_keys: Option<PathBuf> = None;
    /// The `iss` every client token must carry (unchecked when unset).
    auth_jwt_issuer: Option<String> = None;
    /// The `aud` every client token must include (unchecked when unset).
    auth_jwt_audience: Option<String> = None;
    /// How far past `exp` or before `nbf` a token is still taken, for clock skew (ms).
    auth_jwt_leeway_ms: u64 = 10_000;
    /// Log filter (`info`, `debug`, `palisade=debug,openraft=warn`); RUST_LOG wins if set.
    log_level: String = "info,openraft=warn".into();
    /// Log lines as `text` (for people) or `json` (one object a line, for log pipelines).
    log_format: LogFormat = LogFormat::Text;
    /// A request slower than this is logged (route, status, duration; never its key, value
    /// or token) and counted (ms; 0: never). Waits that are the request's point (a
    /// long-poll, a lock or election wait, a watch) are not counted.
    slow_request_ms: u64 = 1_000;
    /// `GET /metrics` (Prometheus text) is `open` to anyone, needs a valid token (`auth`,
    /// the same as open while client auth is off), or is not served (`off`).
    metrics: MetricsAccess = MetricsAccess::Auth;
    /// On SIGTERM or Ctrl-C: how long requests being served have to finish (ms), after
    /// /readyz turns false and before a leader hands leadership over and the node exits.
    shutdown_timeout_ms: u64 = 10_000;
    /// How long a request may wait for a leader, quorum or commit (ms).
    request_timeout_ms: u64 = 5000;
    /// Raft heartbeat interval (ms).
    heartbeat_ms: u64 = 100;
    /// Minimum election timeout (ms, at least 3 heartbeats); the maximum is twice this.
    election_timeout_ms: u64 = 1000;
    /// Serve every linearizable read after a quorum round (a read index), never from the
    /// leader's read lease. The lease (on by default) lets a leader whose quorum has
    /// acknowledged it within the shortest election timeout answer without a round: safe
    /// as long as the members' clocks run at about the same rate, since followers refuse
    /// to vote for another leader for the longest election timeout.
    read_index_only: bool = false;
    /// Take a snapshot every this many log entries (at least 100).
    snapshot_every: u64 = 10_000;
    /// Longest key (bytes).
    max_key_bytes: usize = 1024;
    /// Largest value (bytes).
    max_value_bytes: usize = MIB;
    /// Largest request body (bytes).
    max_body_bytes: usize = 2 * MIB;
    /// Refuse writes once the store holds this many bytes over all versions.
    quota_bytes: u64 = 1024 * 1024 * 1024;
    /// Largest page of a listing (and the default page size).
    max_list_limit: usize = 10_000;
    /// Key and value bytes after which a listing page stops.
    max_page_bytes: usize = 4 * MIB;
    /// Most compares in one transaction.
    max_txn_compares: usize = 128;
    /// Most operations in one transaction (`success` and `failure` together).
    max_txn_ops: usize = 128;
    /// How long an idempotency key is remembered after its write (ms, at least 1 s).
    idempotency_window_ms: u64 = 600_000;
    /// Most idempotency keys remembered; past it the oldest are forgotten first.
    idempotency_max_keys: u64 = 100_000;
    /// Most bytes of remembered outcomes; past it the oldest keys are forgotten first.
    idempotency_max_bytes: u64 = 64 * MIB as u64;
    /// Automatic compaction keeps this much history (ms; 0 turns it off, and only
    /// `POST /v1/maintenance/compact` drops history).
    auto_compact_retention_ms: u64 = 600_000;
    /// Automatic compaction also keeps no more than this many revisions, however young
    /// (bounds memory under a fast writer).
    auto_compact_max_revisions: u64 = 200_000;
    /// Shortest lease TTL (ms). At least the longest election timeout (twice
    /// election_timeout_ms): a shorter lease would be shorter than the time it takes just to
    /// notice that a leader has failed.
    lease_min_ttl_ms: u64 = 2_000;
    /// Longest lease TTL (ms).
    lease_max_ttl_ms: u64 = 24 * 3600 * 1000;
    /// The leader stamps its lease clock into the log at least this often while leases
    /// exist (ms). After a restart of the whole cluster, a lease's time left is what it was
    /// when the cluster stopped, give or take this.
    lease_checkpoint_ms: u64 = 500;
    /// Most leases the leader ends per second when many expire at once (their key deletes
    /// share the log with the writes, which this keeps flowing).
    lease_revoke_rate: u64 = 5_000;
    /// Most leases that may exist at once; a grant past it is refused (507).
    max_leases: u64 = 1_000_000;
    /// Most lock holders and waiters and election candidates at once over the cluster; an
    /// acquire or campaign past it is refused (507).
    max_lock_owners: u64 = 100_000;
    /// Client requests served at once; more are refused with 429 `overloaded`.
    max_inflight_requests: usize = 2048;
    /// Watch streams and long-polls open at once on this node; more are refused with 429
    /// `overloaded`.
    max_watchers: usize = 20_000;
    /// Open client connections; a connection past this is answered 503 and closed.
    max_client_connections: usize = 10_000;
    /// Time a client has to send a request's headers (ms).
    header_timeout_ms: u64 = 10_000;
    /// Time a client has to send a request's body (ms).
    body_timeout_ms: u64 = 30_000;
    /// An idle keep-alive connection is closed after this long (ms).
    idle_timeout_ms: u64 = 120_000;
    /// Largest peer message (bytes); bigger appends are split, snapshots travel in chunks
    /// (of at most 1 MiB). At least 4 times the largest write (key and value, encoded).
    max_peer_message_bytes: usize = 16 * MIB;
    /// Snapshot downloads (`GET /v1/maintenance/snapshot`) served at once by this node; one
    /// more is refused with 429 `overloaded`.
    max_snapshot_downloads: usize = 2;
    /// Peer requests served at once; more are refused (the sender backs off).
    max_peer_inflight: usize = 256;
    /// Size of a write-ahead log segment (bytes, preallocated; at least 64 KiB).
    wal_segment_bytes: u64 = 64 << 20;
    /// Start this member on an empty data dir and rebuild its state from its peers (after
    /// its disk was lost or damaged); it votes again only once it has caught up.
    rebuild_from_peers: bool = false;
}

impl Config {
    /// The defaults for node `node_id` with its data in `data_dir`.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>) -> Config {
        Config { node_id, data_dir: data_dir.into(), ..Config::defaults() }
    }

    fn source(&self, setting: &'static str) -> Source {
        self.sources.get(setting).copied().unwrap_or(Source::Default)
    }

    fn error(&self, setting: &'static str, message: impl Into<String>) -> ConfigError {
        ConfigError { setting, source: self.source(setting), message: message.into() }
    }

    /// Checks every setting; the first bad one is the error.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let at_least = |setting: &'static str, value: u64, min: u64| {
            if value < min {
                Err(self.error(setting, format!("must be at least {min}, not {value}")))
            } else {
                Ok(())
            }
        };
        at_least("node_id", self.node_id, 1)?;
        if self.data_dir.as_os_str().is_empty() {
            return Err(self.error("data_dir", "must not be empty"));
        }
        at_least("request_timeout_ms", self.request_timeout_ms, 1)?;
        at_least("heartbeat_ms", self.heartbeat_ms, 1)?;
        at_least("election_timeout_ms", self.election_timeout_ms, 3 * self.heartbeat_ms)
            .map_err(|e| ConfigError { message: format!("{} (3 x heartbeat_ms)", e.message), ..e })?;
        at_least("snapshot_every", self.snapshot_every, 100)?;
        at_least("max_key_bytes", self.max_key_bytes as u64, 2)?;
        at_least("max_value_bytes", self.max_value_bytes as u64, 1)?;
        at_least("max_body_bytes", self.max_body_bytes as u64, 64)?;
        at_least("max_list_limit", self.max_list_limit as u64, 1)?;
        at_least("max_page_bytes", self.max_page_bytes as u64, 1)?;
        at_least("max_txn_compares", self.max_txn_compares as u64, 1)?;
        at_least("max_txn_ops", self.max_txn_ops as u64, 1)?;
        at_least("idempotency_window_ms", self.idempotency_window_ms, 1000)?;
        at_least("idempotency_max_keys", self.idempotency_max_keys, 1)?;
        at_least("idempotency_max_bytes", self.idempotency_max_bytes, 1)?;
        at_least("auto_compact_max_revisions", self.auto_compact_max_revisions, 1)?;
        at_least("max_inflight_requests", self.max_inflight_requests as u64, 1)?;
        at_least("max_client_connections", self.max_client_connections as u64, 1)?;
        at_least("max_watchers", self.max_watchers as u64, 1)?;
        at_least("header_timeout_ms", self.header_timeout_ms, 1)?;
        at_least("body_timeout_ms", self.body_timeout_ms, 1)?;
        at_least("idle_timeout_ms", self.idle_timeout_ms, 1)?;
        at_least("max_peer_inflight", self.max_peer_inflight as u64, 1)?;
        at_least("max_snapshot_downloads", self.max_snapshot_downloads as u64, 1)?;
        at_least("wal_segment_bytes", self.wal_segment_bytes, 64 << 10)?;
        // One write (key, value, JSON and base64 overhead) must fit a peer message with
        // room to spare, or it could never be replicated.
        let one_write = (self.max_key_bytes + self.max_value_bytes) as u64 * 2 + 4096;
        at_least(
            "max_peer_message_bytes",
            self.max_peer_message_bytes as u64,
            (one_write * 4).max(self.max_body_bytes as u64 * 3).max(MIB as u64),
        )?;
        at_least("quota_bytes", self.quota_bytes, 1)?;
        at_least("lease_min_ttl_ms", self.lease_min_ttl_ms, 2 * self.election_timeout_ms).map_err(|e| {
            ConfigError {
                message: format!(
                    "{} (the longest election timeout, 2 x election_timeout_ms: a shorter lease would be \
                     shorter than the time it takes to notice that a leader has failed)",
                    e.message
                ),
                ..e
            }
        })?;
        at_least("lease_max_ttl_ms", self.lease_max_ttl_ms, self.lease_min_ttl_ms)?;
        if self.lease_max_ttl_ms > 365 * 24 * 3600 * 1000 {
            return Err(self.error("lease_max_ttl_ms", "must be at most a year"));
        }
        at_least("lease_checkpoint_ms", self.lease_checkpoint_ms, self.heartbeat_ms)?;
        if self.lease_checkpoint_ms > 3_600_000 {
            return Err(self.error("lease_checkpoint_ms", "must be at most an hour (3600000)"));
        }
        at_least("lease_revoke_rate", self.lease_revoke_rate, 1)?;
        at_least("max_leases", self.max_leases, 1)?;
        at_least("max_lock_owners", self.max_lock_owners, 1)?;
        let auth_on = self.auth_jwt_secret_file.is_some() || self.auth_jwt_public_keys.is_some();
        for (setting, set) in [
            ("auth_jwt_issuer", self.auth_jwt_issuer.is_some()),
            ("auth_jwt_audience", self.auth_jwt_audience.is_some()),
        ] {
            if set && !auth_on {
                return Err(self.error(
                    setting,
                    "is set, but client auth is off: give the key too (auth_jwt_secret_file or auth_jwt_public_keys)",
                ));
            }
        }
        if self.auth_jwt_leeway_ms > 300_000 {
            return Err(self.error("auth_jwt_leeway_ms", "must be at most 300000 (5 minutes)"));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log_level) {
            return Err(self.error("log_level", format!("{:?} is not a log filter: {e}", self.log_level)));
        }
        for (setting, addr) in [("listen_client", &self.listen_client), ("listen_peer", &self.listen_peer)] {
            addr.parse::<std::net::SocketAddr>()
                .map_err(|_| self.error(setting, format!("{addr:?} is not an IP:port address")))?;
        }
        for (setting, url) in
            [("advertise_client", &self.advertise_client), ("advertise_peer", &self.advertise_peer)]
        {
            if let Some(url) = url {
                check_url(url).map_err(|m| self.error(setting, m))?;
            }
        }
        if self.listen_client == self.listen_peer {
            return Err(self.error("listen_peer", "must differ from listen_client"));
        }
        if let Some(c) = &self.initial_cluster {
            let members = parse_cluster(c).map_err(|m| self.error("initial_cluster", m))?;
            let me = members.get(&self.node_id).ok_or_else(|| {
                self.error(
                    "initial_cluster",
                    format!("{c:?} does not include this node (node_id {})", self.node_id),
                )
            })?;
            let advertised = self.advertise().peer_url;
            if me.peer_url != advertised {
                return Err(self.error(
                    "initial_cluster",
                    format!(
                        "gives node {} the peer URL {}, but this node advertises {advertised} (set advertise_peer)",
                        self.node_id, me.peer_url
                    ),
                ));
            }
        }
        if let Some(join) = &self.join {
            if self.initial_cluster.is_some() {
                return Err(self.error(
                    "join",
                    "cannot be given with initial_cluster: a node either starts a cluster or joins a running one",
                ));
            }
            let urls = parse_join(join).map_err(|m| self.error("join", m))?;
            let scheme = if self.peer_tls_cert_file.is_some() { "https://" } else { "http://" };
            if let Some(u) = urls.iter().find(|u| !u.starts_with(scheme)) {
                return Err(self.error(
                    "join",
                    format!("{u} is not {scheme}, as this node's peer listener (every member's speaks TLS, or none)"),
                ));
            }
            let own = self.advertise().peer_url;
            if urls.iter().all(|u| *u == own) {
                return Err(self.error(
                    "join",
                    "names only this node's own peer URL: give the peer URLs of running members",
                ));
            }
        }
        self.validate_tls()?;
        if self.peer_secret_file.is_none()
            && !self.peer_mutual_tls()
            && !self.insecure_peer
            && !self.peer_is_loopback()
        {
            return Err(self.error(
                "listen_peer",
                format!(
                    "{} is not a loopback address, and neither a peer_secret_file nor peer mutual TLS is set: \
                     anyone who reaches the peer port could rewrite the store. Give every member the same secret \
                     (--peer-secret-file), or peer certificates signed by the cluster CA (--peer-tls-cert-file, \
                     --peer-tls-key-file and --peer-tls-ca-file), or accept the risk with --insecure-peer",
                    self.listen_peer
                ),
            ));
        }
        Ok(())
    }

    /// The TLS settings: a certificate and its key go together, a CA needs both, peer TLS
    /// needs its CA (the only root the peer transport trusts), and the advertised URLs
    /// speak what the listeners speak. The files themselves are read by `tls`, at start.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let listeners = [
            (
                "tls_cert_file",
                &self.tls_cert_file,
                "tls_key_file",
                &self.tls_key_file,
                "tls_client_ca_file",
                &self.tls_client_ca_file,
            ),
            (
                "peer_tls_cert_file",
                &self.peer_tls_cert_file,
                "peer_tls_key_file",
                &self.peer_tls_key_file,
                "peer_tls_ca_file",
                &self.peer_tls_ca_file,
            ),
        ];
        for (cert_name, cert, key_name, key, ca_name, ca) in listeners {
            for (name, path) in [(cert_name, cert), (key_name, key), (ca_name, ca)] {
                if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                    return Err(self.error(name, "must not be empty"));
                }
            }
            match (cert, key) {
                (Some(_), None) => {
                    return Err(self.error(cert_name, format!("needs {key_name} (its private key)")))
                }
                (None, Some(_)) => {
                    return Err(self.error(key_name, format!("needs {cert_name} (its certificate)")))
                }
                _ => {}
            }
            if ca.is_some() && cert.is_none() {
                return Err(self.error(
                    ca_name,
                    format!(
                        "needs {cert_name} and {key_name}: client certificates are only asked for over TLS"
                    ),
                ));
            }
        }
        if self.peer_tls_cert_file.is_some() && self.peer_tls_ca_file.is_none() {
            return Err(self.error(
                "peer_tls_cert_file",
                "needs peer_tls_ca_file: the cluster CA is the only root members trust each other's \
                 certificates by, and the peer listener requires a certificate signed by it",
            ));
        }
        let advertised = self.advertise();
        for (setting, url, tls, listener) in [
            ("advertise_client", &advertised.client_url, self.tls_cert_file.is_some(), "client"),
            ("advertise_peer", &advertised.peer_url, self.peer_tls_cert_file.is_some(), "peer"),
        ] {
            let https = url.starts_with("https://");
            if tls && !https {
                return Err(self.error(
                    setting,
                    format!("{url} is not https://, but the {listener} listener speaks TLS"),
                ));
            }
            if !tls && https {
                return Err(self.error(
                    setting,
                    format!("{url} is https://, but the {listener} listener has no TLS certificate"),
                ));
            }
        }
        if let Some(members) = self.initial_members() {
            let scheme = if self.peer_tls_cert_file.is_some() { "https://" } else { "http://" };
            if let Some((id, m)) = members.iter().find(|(_, m)| !m.peer_url.starts_with(scheme)) {
                return Err(self.error(
                    "initial_cluster",
                    format!(
                        "gives node {id} the peer URL {}, but this node's peers speak {scheme} (every member's \
                         peer listener must speak TLS, or none)",
                        m.peer_url
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether peer requests are authenticated by mutual TLS (a certificate signed by the
    /// cluster CA, both ways).
    pub fn peer_mutual_tls(&self) -> bool {
        self.peer_tls_cert_file.is_some()
            && self.peer_tls_key_file.is_some()
            && self.peer_tls_ca_file.is_some()
    }

    /// Whether the peer listener only listens on a loopback address.
    fn peer_is_loopback(&self) -> bool {
        self.listen_peer.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
    }

    /// This node's addresses, as the others reach it.
    /// A URL without a scheme gets `https://` when its listener speaks TLS.
    pub fn advertise(&self) -> Member {
        let with_scheme = |addr: &str, tls: bool| {
            if tls && !addr.contains("://") {
                format!("https://{}", addr.trim_end_matches('/'))
            } else {
                url_of(addr)
            }
        };
        Member {
            client_url: with_scheme(
                self.advertise_client.as_deref().unwrap_or(&self.listen_client),
                self.tls_cert_file.is_some(),
            ),
            peer_url: with_scheme(
                self.advertise_peer.as_deref().unwrap_or(&self.listen_peer),
                self.peer_tls_cert_file.is_some(),
            ),
            incarnation: 0,
        }
    }

    /// The peer URLs to join through, if given, without this node's own (validated:
    /// `validate` has checked them).
    pub fn join_urls(&self) -> Option<Vec<String>> {
        let own = self.advertise().peer_url;
        self.join
            .as_deref()
            .and_then(|j| parse_join(j).ok())
            .map(|urls| urls.into_iter().filter(|u| *u != own).collect())
    }

    /// With node_id_from_hostname: the ids this pod may have, its ordinal's series
    /// (`node_id`, then `node_id` + 1000, ...; see [`ORDINAL_ID_STEP`]).
    pub fn ordinal_ids(&self) -> Option<impl Iterator<Item = NodeId>> {
        let first = self.node_id;
        self.node_id_from_hostname.then(|| (0..ORDINAL_SERIES_LEN).map(move |k| first + k * ORDINAL_ID_STEP))
    }

    /// Sets node_id from the host name's ordinal (node_id_from_hostname).
    fn resolve_hostname_id(&mut self) -> Result<(), String> {
        if !self.node_id_from_hostname {
            return Ok(());
        }
        if self.sources.contains_key("node_id") {
            return Err("invalid setting node_id_from_hostname: it cannot be given with node_id".into());
        }
        let host = match std::env::var("HOSTNAME") {
            Ok(h) if !h.trim().is_empty() => h.trim().to_string(),
            _ => std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).map_err(
                |e| format!("node_id_from_hostname: cannot read the host name (set HOSTNAME): {e}"),
            )?,
        };
        self.node_id =
            ordinal_of(&host).map_err(|m| format!("invalid setting node_id_from_hostname: {m}"))? + 1;
        Ok(())
    }

    /// The initial members, if given (validated: `validate` has checked it parses).
    pub fn initial_members(&self) -> Option<BTreeMap<NodeId, Member>> {
        self.initial_cluster.as_deref().and_then(|c| parse_cluster(c).ok())
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The settings given to `palisade serve` on its command line and in its environment,
/// still as text: [`ServeFlags::config`] layers them over the file and the defaults.
#[derive(Debug, Clone, Default)]
pub struct ServeFlags {
    /// `--config FILE` (or `PALISADE_CONFIG`).
    pub config: Option<PathBuf>,
    /// `(setting, value, source)` for every setting given.
    pub given: Vec<(&'static str, String, Source)>,
}

impl ServeFlags {
    /// Flags as a test or a program would give them: `[("heartbeat_ms", "50")]`.
    pub fn from_flags(config: Option<PathBuf>, flags: &[(&'static str, &str)]) -> ServeFlags {
        ServeFlags { config, given: flags.iter().map(|(n, v)| (*n, v.to_string(), Source::Flag)).collect() }
    }

    /// The config these settings describe: defaults < `--config` file < environment <
    /// flags, validated.
    pub fn config(&self) -> Result<Config, String> {
        let mut c = Config::defaults();
        if let Some(path) = &self.config {
            load_file(path, &mut c)?;
        }
        // The environment first, so a flag given too wins.
        for source in [Source::Env, Source::Flag] {
            for (name, raw, _) in self.given.iter().filter(|(_, _, s)| *s == source) {
                let setting = SETTINGS.iter().find(|s| s.name == *name).expect("flags come from SETTINGS");
                c.set(name, raw, source).map_err(|m| {
                    let from =
                        if source == Source::Env { setting.env() } else { format!("--{}", setting.flag()) };
                    format!("invalid setting {name} (from {from}): {m}")
                })?;
            }
        }
        c.resolve_hostname_id()?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }
}

/// The ids a pod's ordinal may take are this far apart (see node_id_from_hostname).
pub const ORDINAL_ID_STEP: NodeId = 1000;

/// How many ids of an ordinal's series a joining pod tries.
const ORDINAL_SERIES_LEN: NodeId = 1000;

/// The ordinal a StatefulSet's pod name ends with: `palisade-2` is 2 (at most 999).
pub fn ordinal_of(host: &str) -> Result<NodeId, String> {
    let tail = host.rsplit('-').next().unwrap_or_default();
    match tail.parse::<NodeId>() {
        Ok(n) if host.contains('-') && n < ORDINAL_ID_STEP && !tail.starts_with('+') => Ok(n),
        Ok(n) if n >= ORDINAL_ID_STEP => {
            Err(format!("the host name {host:?} ends with {n}; ordinals go up to 999"))
        }
        _ => Err(format!("the host name {host:?} does not end with `-N`, as a StatefulSet's pod name does")),
    }
}

impl clap::FromArgMatches for ServeFlags {
    fn from_arg_matches(m: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags =
            ServeFlags { config: m.get_one::<String>("config").map(PathBuf::from), given: Vec::new() };
        for s in SETTINGS {
            if let Some(v) = m.get_one::<String>(s.name) {
                let source = match m.value_source(s.name) {
                    Some(clap::parser::ValueSource::EnvVariable) => Source::Env,
                    _ => Source::Flag,
                };
                flags.given.push((s.name, v.clone(), source));
            }
        }
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, m: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl clap::Args for ServeFlags {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        let mut cmd = cmd.arg(
            clap::Arg::new("config")
                .long("config")
                .env("PALISADE_CONFIG")
                .value_name("FILE")
                .help("A TOML file of settings (keys named like the flags, with `_`); the environment and flags override it"),
        );
        let defaults = Config::defaults();
        for s in SETTINGS {
            let mut help =
                s.help.split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
            if let Some(d) = defaults.show(s.name) {
                help.push_str(&format!(" [default: {d}]"));
            }
            let mut arg = clap::Arg::new(s.name)
                .long(s.flag())
                .env(s.env())
                .value_name(s.name.to_uppercase())
                .help(help);
            if s.switch {
                arg = arg.num_args(0..=1).default_missing_value("true").value_name("BOOL");
            }
            cmd = cmd.arg(arg);
        }
        cmd.after_help("Every flag is also an environment variable (--data-dir is PALISADE_DATA_DIR) and a key of the --config file (data_dir). Flags win over the environment, which wins over the file.")
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

fn load_file(path: &Path, c: &mut Config) -> Result<(), String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the config file {}: {e}", path.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("the config file {} is not valid TOML: {e}", path.display()))?;
    for (key, value) in table {
        let raw = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            other => {
                return Err(format!(
                    "the config file {}: {key} must be a string, an integer or a boolean, not {}",
                    path.display(),
                    other.type_str()
                ))
            }
        };
        c.set(&key, &raw, Source::File).map_err(|m| {
            format!("invalid setting {key} (from `{key}` in the config file {}): {m}", path.display())
        })?;
    }
    Ok(())
}

fn url_of(addr: &str) -> String {
    if addr.starts_with("http://") || addr.starts_with("https://") {
        addr.trim_end_matches('/').to_string()
    } else {
        format!("http://{addr}")
    }
}

fn check_url(url: &str) -> Result<(), String> {
    normalize_url(url).map(drop)
}

/// `url` as members store it (`http://` added when there is no scheme, no trailing `/`),
/// if it is an http(s) URL with a host and a port.
pub(crate) fn normalize_url(url: &str) -> Result<String, String> {
    let full = url_of(url);
    match reqwest::Url::parse(&full) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host().is_some()
                && u.port_or_known_default().is_some()
                && u.path() == "/"
                && u.query().is_none() =>
        {
            Ok(full)
        }
        _ => Err(format!("{url:?} is not a URL with a host and port")),
    }
}

/// Parses `http://a:7380,http://b:7380` (at most 16 URLs, none twice).
pub fn parse_join(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let url = normalize_url(part)?;
        if out.contains(&url) {
            return Err(format!("names {url} twice"));
        }
        out.push(url);
    }
    if out.is_empty() {
        return Err("give the peer URL of at least one running member".into());
    }
    if out.len() > 16 {
        return Err(format!("names {} URLs; at most 16", out.len()));
    }
    Ok(out)
}

/// Parses `1=http://a:7380,2=http://b:7380|http://b:7379`.
pub fn parse_cluster(s: &str) -> Result<BTreeMap<NodeId, Member>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, urls) = part.split_once('=').ok_or_else(|| format!("entry {part:?} is not ID=PEER_URL"))?;
        let id: NodeId = id.trim().parse().map_err(|_| format!("{id:?} is not a node id"))?;
        if id == 0 {
            return Err("node ids start at 1".into());
        }
        let (peer, client) = match urls.split_once('|') {
            Some((p, c)) => (p.trim(), c.trim()),
            None => (urls.trim(), ""),
        };
        check_url(peer).map_err(|m| format!("node {id}: {m}"))?;
        if !client.is_empty() {
            check_url(client).map_err(|m| format!("node {id}: {m}"))?;
        }
        let client_url = if client.is_empty() { String::new() } else { url_of(client) };
        if out.insert(id, Member { client_url, peer_url: url_of(peer), incarnation: 0 }).is_some() {
            return Err(format!("names node {id} twice"));
        }
    }
    if out.is_empty() {
        return Err("is empty".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::defaults().validate().unwrap();
        Config::new(3, "/tmp/x").validate().unwrap();
    }

    #[test]
    fn bad_values_name_the_setting_and_its_source() {
        let mut c = Config::defaults();
        c.heartbeat_ms = 0;
        c.sources.insert("heartbeat_ms", Source::Flag);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("heartbeat_ms") && e.contains("--heartbeat-ms"), "{e}");
        let mut c = Config::defaults();
        c.snapshot_every = 10;
        c.sources.insert("snapshot_every", Source::Env);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("PALISADE_SNAPSHOT_EVERY") && e.contains("at least 100"), "{e}");
        let mut c = Config::defaults();
        c.election_timeout_ms = 200;
        assert!(c.validate().unwrap_err().to_string().contains("3 x heartbeat_ms"));
        let mut c = Config::defaults();
        c.listen_peer = "0.0.0.0:7380".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("peer-secret-file") && e.contains("insecure-peer"), "{e}");
        c.insecure_peer = true;
        c.validate().unwrap();
        let mut c = Config::defaults();
        c.initial_cluster = Some("1=http://127.0.0.1:9999".into());
        assert!(c.validate().unwrap_err().to_string().contains("advertises"));
        c.initial_cluster = Some("2=http://127.0.0.1:7380".into());
        assert!(c.validate().unwrap_err().to_string().contains("does not include this node"));
        let mut c = Config::defaults();
        c.listen_client = "localhost".into();
        assert!(c.validate().unwrap_err().to_string().contains("listen_client"));
    }

    #[test]
    fn join_urls_are_checked() {
        let err = |c: &Config| c.validate().unwrap_err().to_string();
        let mut c = Config::defaults();
        c.join = Some("http://127.0.0.1:9001, 127.0.0.1:9002".into());
        c.validate().unwrap();
        assert_eq!(c.join_urls().unwrap(), ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]);
        c.initial_cluster = Some("1=http://127.0.0.1:7380".into());
        assert!(err(&c).contains("either starts a cluster or joins"), "{}", err(&c));
        c.initial_cluster = None;
        for bad in ["", " , ", "http://a:1,http://a:1", "ftp://x:1", "http://127.0.0.1:7380"] {
            c.join = Some(bad.into());
            assert!(err(&c).contains("join"), "{bad}: {}", err(&c));
        }
        c.join = Some("https://127.0.0.1:9001".into());
        assert!(err(&c).contains("not http://"), "{}", err(&c));
        // Every member may be given the same list: its own URL is skipped.
        c.join = Some("http://127.0.0.1:7380,http://127.0.0.1:9001".into());
        c.validate().unwrap();
        assert_eq!(c.join_urls().unwrap(), ["http://127.0.0.1:9001"]);
    }

    #[test]
    fn node_ids_from_the_hostname_ordinal() {
        assert_eq!(ordinal_of("palisade-0"), Ok(0));
        assert_eq!(ordinal_of("my-release-palisade-12"), Ok(12));
        assert_eq!(ordinal_of("p-999"), Ok(999));
        for bad in ["palisade", "palisade-", "palisade-x", "7", "p-1000", "p-+1"] {
            assert!(ordinal_of(bad).is_err(), "{bad}");
        }
        let mut c = Config::defaults();
        c.node_id_from_hostname = true;
        c.node_id = 3;
        let ids: Vec<NodeId> = c.ordinal_ids().unwrap().take(3).collect();
        assert_eq!(ids, [3, 1003, 2003]);
        assert!(Config::defaults().ordinal_ids().is_none());
        // Not with an explicit node id.
        let flags = ServeFlags::from_flags(None, &[("node_id_from_hostname", "true"), ("node_id", "2")]);
        assert!(flags.config().unwrap_err().contains("cannot be given with node_id"));
    }

    #[test]
    fn tls_settings_go_together() {
        let p = |s: &str| Some(PathBuf::from(s));
        let err = |c: &Config| c.validate().unwrap_err().to_string();
        let mut c = Config::defaults();
        c.tls_cert_file = p("c.pem");
        assert!(err(&c).contains("needs tls_key_file"), "{}", err(&c));
        c.tls_key_file = p("k.pem");
        c.validate().unwrap();
        assert_eq!(c.advertise().client_url, "https://127.0.0.1:7379", "a TLS listener advertises https");
        c.advertise_client = Some("http://10.0.0.1:7379".into());
        assert!(err(&c).contains("not https://"), "{}", err(&c));
        c.advertise_client = Some("10.0.0.1:7379".into());
        assert_eq!(c.advertise().client_url, "https://10.0.0.1:7379");
        c.validate().unwrap();
        let mut c = Config::defaults();
        c.tls_client_ca_file = p("ca.pem");
        assert!(
            err(&c).contains("tls_client_ca_file") && err(&c).contains("needs tls_cert_file"),
            "{}",
            err(&c)
        );
        let mut c = Config::defaults();
        c.advertise_client = Some("https://127.0.0.1:7379".into());
        assert!(err(&c).contains("no TLS certificate"), "{}", err(&c));

        // Peer TLS needs its CA, and every member's peer URL is https.
        let mut c = Config::defaults();
        c.peer_tls_key_file = p("k.pem");
        assert!(err(&c).contains("needs peer_tls_cert_file"), "{}", err(&c));
        c.peer_tls_cert_file = p("c.pem");
        assert!(err(&c).contains("needs peer_tls_ca_file"), "{}", err(&c));
        c.peer_tls_ca_file = p("ca.pem");
        c.validate().unwrap();
        assert_eq!(c.advertise().peer_url, "https://127.0.0.1:7380");
        c.initial_cluster = Some("1=https://127.0.0.1:7380,2=http://127.0.0.1:7390".into());
        assert!(err(&c).contains("node 2") && err(&c).contains("https://"), "{}", err(&c));
        c.initial_cluster = Some("1=https://127.0.0.1:7380,2=https://127.0.0.1:7390".into());
        c.validate().unwrap();

        // Off loopback: a secret, or peer mutual TLS, or --insecure-peer.
        c.listen_peer = "0.0.0.0:7380".into();
        c.advertise_peer = Some("127.0.0.1:7380".into());
        c.validate().unwrap();
        c.peer_tls_ca_file = None;
        c.peer_tls_cert_file = None;
        c.peer_tls_key_file = None;
        c.initial_cluster = None;
        let e = err(&c);
        assert!(
            e.contains("peer-secret-file") && e.contains("peer-tls-ca-file") && e.contains("insecure-peer"),
            "{e}"
        );
        c.peer_secret_file = p("secret");
        c.validate().unwrap();
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("palisade.toml");
        std::fs::write(&file, "heartbeat_ms = 50\nelection_timeout_ms = 400\ndata_dir = \"/var/lib/p\"\n")
            .unwrap();
        let flags = ServeFlags::from_flags(Some(file.clone()), &[("election_timeout_ms", "600")]);
        let c = flags.config().unwrap();
        assert_eq!(c.heartbeat_ms, 50);
        assert_eq!(c.election_timeout_ms, 600);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/p"));
        assert_eq!(c.request_timeout_ms, 5000);
        assert_eq!(c.sources.get("heartbeat_ms"), Some(&Source::File));
        assert_eq!(c.sources.get("election_timeout_ms"), Some(&Source::Flag));
        std::fs::write(&file, "heartbeat_ms = 50\nheartbeat = 5\n").unwrap();
        let e = flags.config().unwrap_err();
        assert!(e.contains("no setting \"heartbeat\"") && e.contains(&file.display().to_string()), "{e}");
        std::fs::write(&file, "heartbeat_ms = \"fast\"\n").unwrap();
        assert!(flags.config().unwrap_err().contains("not a non-negative integer"));
        std::fs::write(&file, "heartbeat_ms = 0\n").unwrap();
        let e = ServeFlags::from_flags(Some(file.clone()), &[]).config().unwrap_err();
        assert!(e.contains("in the config file"), "{e}");
        let e = ServeFlags::from_flags(None, &[("heartbeat_ms", "+1")]).config().unwrap_err();
        assert!(e.contains("--heartbeat-ms") && e.contains("not a non-negative integer"), "{e}");
        let mut env = ServeFlags::from_flags(None, &[("node_id", "4")]);
        env.given.push(("node_id", "3".into(), Source::Env));
        assert_eq!(env.config().unwrap().node_id, 4, "a flag wins over the environment");
    }

    #[test]
    fn clusters_parse() {
        let c = parse_cluster("1=http://a:7380, 2=b:7380|b:7379").unwrap();
        assert_eq!(c[&1].peer_url, "http://a:7380");
        assert_eq!(c[&2].client_url, "http://b:7379");
        for bad in ["", "x", "0=http://a:1", "1=http://a:1,1=http://b:1", "a=http://a:1", "1=", "1=http://"] {
            assert!(parse_cluster(bad).is_err(), "{bad}");
        }
    }
}
