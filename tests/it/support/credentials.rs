//! The test process's client credentials: one CA and one JWT secret per test run, and the
//! HTTP clients that present them ([`client_builder`]).
//!
//! A cluster started with [`secured`] options speaks TLS on both listeners (certificates
//! from this CA, peers authenticated by mutual TLS and the peer secret) and requires a
//! bearer token signed with this secret. The fault workloads build every HTTP client with
//! [`client_builder`], which trusts this CA and sends [`Credentials::token`]; against a
//! plain cluster both are inert (no TLS, and a node without client auth ignores the
//! header), so one workload code path serves both kinds of cluster.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use super::process::ClusterOptions;
use super::tls::{ClusterTls, TestCa};

/// What every test client of this process presents.
pub struct Credentials {
    pub ca: TestCa,
    /// Holds `jwt-secret` (and the clusters' TLS files are laid out in their own dirs).
    pub dir: tempfile::TempDir,
    pub jwt_secret: PathBuf,
    /// A token for subject `jepsen` that may read and write every key and use every lock
    /// and election, but is no admin (so apply checks its leases' owners).
    pub token: String,
    /// A token with `admin`.
    pub admin_token: String,
}

/// The credentials of this test process (made on first use).
pub fn credentials() -> &'static Credentials {
    static CREDENTIALS: OnceLock<Credentials> = OnceLock::new();
    CREDENTIALS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temp dir");
        let jwt_secret = dir.path().join("jwt-secret");
        std::fs::write(&jwt_secret, format!("{:064x}\n", rand::random::<u128>()))
            .expect("write the JWT secret");
        let now = palisade::clock::wall_clock_ms() / 1000;
        let mint = |sub: &str, grants: palisade::auth::Grants| {
            let req = palisade::auth::MintRequest {
                subject: sub.into(),
                grants,
                issued_at: now,
                expires_at: now + 24 * 3600,
                ..Default::default()
            };
            palisade::auth::mint(&req, palisade::auth::SigningKey::Secret(&jwt_secret)).expect("a token")
        };
        let everything = palisade::auth::Grants {
            read: vec!["/".into()],
            write: vec!["/".into()],
            locks: vec!["*".into()],
            elections: vec!["*".into()],
            admin: false,
        };
        Credentials {
            ca: TestCa::new("palisade test run CA"),
            token: mint("jepsen", everything),
            admin_token: mint("root", palisade::auth::Grants::everything()),
            jwt_secret,
            dir,
        }
    })
}

/// A reqwest client builder that trusts the test CA and sends the test token.
pub fn client_builder() -> reqwest::ClientBuilder {
    let c = credentials();
    let ca = reqwest::Certificate::from_pem(c.ca.pem.as_bytes()).expect("the CA certificate");
    let mut headers = reqwest::header::HeaderMap::new();
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("Bearer {}", c.token)).expect("a token is ASCII");
    value.set_sensitive(true);
    headers.insert(reqwest::header::AUTHORIZATION, value);
    reqwest::Client::builder().no_proxy().add_root_certificate(ca).default_headers(headers)
}

/// `opts` with TLS on both listeners (this CA; mutual TLS and the peer secret between
/// peers) and client auth (this JWT secret); the cluster's own harness client sends the
/// admin token.
pub fn secured(mut opts: ClusterOptions, tls_dir: &std::path::Path) -> ClusterOptions {
    let c = credentials();
    let mut tls = ClusterTls::generate(&c.ca, tls_dir, opts.nodes);
    tls.peer_secret = true;
    opts.tls = Some(tls);
    opts.token = Some(c.admin_token.clone());
    opts.extra_args.extend(["--auth-jwt-secret-file".to_string(), c.jwt_secret.display().to_string()]);
    opts
}

/// A client for quick probes with the test credentials.
pub fn probe_client(timeout: Duration) -> reqwest::Client {
    client_builder().timeout(timeout).build().expect("a reqwest client")
}

/// The KV helper client ([`Http`](super::process::Http)) with the test credentials.
pub fn http(timeout: Duration) -> super::process::Http {
    super::process::Http { client: probe_client(timeout) }
}
