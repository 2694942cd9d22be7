//! TLS for the client listener, the peer listener, the peer transport and the client
//! library: rustls with the `ring` provider (never aws-lc, never OpenSSL), from PEM files.
//!
//! What it owns: reading PEM files (certificate chains; PKCS#8, PKCS#1 or SEC1 keys; CA
//! bundles), turning them into rustls configs, and [`Reloading`], which keeps a value built
//! from files current while the files change on disk (cert-manager rotates them).
//!
//! Invariants:
//! - only HTTP/1.1 is spoken: every config offers exactly the ALPN protocol `http/1.1`;
//! - a certificate and its key are checked to belong together when a config is built, so a
//!   pair that does not match is refused there, never at the first handshake;
//! - no error or log line ever carries key material (or any PEM payload): messages name
//!   the file, the setting that named it, and what is wrong in general terms;
//! - a CA file is the only trust root of what it guards: a peer's certificate, a client's
//!   certificate, or (in the client library) the server's. There are no built-in roots.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

mod reload;

pub use reload::{Reloaded, Reloading, Stamp};

/// How often a watched set of files is looked at (stat only; read when they changed).
pub const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The only application protocol any of our TLS configs offers.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS file that cannot be used, and why. The text names the file and the setting
/// (or flag) it came from; it never quotes the file's content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting} {}: {message}", path.display())]
pub struct TlsError {
    /// The setting or flag that named the file (`tls_key_file`, `--cacert`).
    pub setting: &'static str,
    pub path: PathBuf,
    pub message: String,
}

/// A PEM file and the setting (or flag) that named it, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemFile {
    pub setting: &'static str,
    pub path: PathBuf,
}

impl PemFile {
    pub fn new(setting: &'static str, path: impl Into<PathBuf>) -> PemFile {
        PemFile { setting, path: path.into() }
    }

    fn error(&self, message: impl Into<String>) -> TlsError {
        TlsError { setting: self.setting, path: self.path.clone(), message: message.into() }
    }

    fn read(&self) -> Result<Vec<u8>, TlsError> {
        std::fs::read(&self.path).map_err(|e| self.error(format!("cannot read it: {e}")))
    }

    /// Every certificate in the file (at least one).
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let pem = self.read()?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(pem_problem(&e)))?;
        if certs.is_empty() {
            return Err(self.error("holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
        }
        Ok(certs)
    }

    /// The first private key in the file (PKCS#8, PKCS#1 or SEC1).
    pub fn private_key(&self) -> Result<PrivateKeyDer<'static>, TlsError> {
        let pem = self.read()?;
        PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => self.error(
                "holds no PEM private key (PKCS#8 `PRIVATE KEY`, PKCS#1 `RSA PRIVATE KEY` or SEC1 `EC PRIVATE KEY`)",
            ),
            e => self.error(pem_problem(&e)),
        })
    }

    /// The certificates of the file as trust roots.
    pub fn roots(&self) -> Result<RootCertStore, TlsError> {
        let mut roots = RootCertStore::empty();
        for cert in self.certificates()? {
            roots
                .add(cert)
                .map_err(|e| self.error(format!("holds a certificate that cannot be a trust root: {e}")))?;
        }
        Ok(roots)
    }
}

/// What is wrong with a PEM file, without quoting any of it.
fn pem_problem(e: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error as E;
    match e {
        E::MissingSectionEnd { .. } => "a PEM section has no END line (is the file half-written?)".into(),
        E::IllegalSectionStart { .. } => "a PEM BEGIN line is malformed".into(),
        E::Base64Decode(_) => "a PEM section is not valid base64 (is the file half-written?)".into(),
        E::Io(e) => format!("cannot read it: {e}"),
        E::NoItemsFound => "holds no PEM section of the expected kind".into(),
        E::SectionTooLarge => "a PEM section is over 256 MB".into(),
        _ => "is not valid PEM".into(),
    }
}

/// The crypto provider of every config we build (explicit, so no process-wide default is
/// needed and no other provider can slip in).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What a TLS listener serves: its certificate and key, and the CA its clients'
/// certificates must be signed by (`None`: no client certificate is asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PemFile,
    pub key: PemFile,
    pub client_ca: Option<PemFile>,
}

impl ServerFiles {
    /// The client listener's files, if it speaks TLS (`validate` has checked they go together).
    pub fn client_listener(cfg: &Config) -> Option<ServerFiles> {
        Some(ServerFiles {
            cert: PemFile::new("tls_cert_file", cfg.tls_cert_file.clone()?),
            key: PemFile::new("tls_key_file", cfg.tls_key_file.clone()?),
            client_ca: cfg.tls_client_ca_file.clone().map(|p| PemFile::new("tls_client_ca_file", p)),
        })
    }

    /// The peer listener's files, if it speaks TLS: with a peer CA, a client certificate
    /// signed by it is required (mutual TLS).
    pub fn peer_listener(cfg: &Config) -> Option<ServerFiles> {
        Some(ServerFiles {
            cert: PemFile::new("peer_tls_cert_file", cfg.peer_tls_cert_file.clone()?),
            key: PemFile::new("peer_tls_key_file", cfg.peer_tls_key_file.clone()?),
            client_ca: cfg.peer_tls_ca_file.clone().map(|p| PemFile::new("peer_tls_ca_file", p)),
        })
    }

    /// Every file, for [`Reloading`].
    pub fn files(&self) -> Vec<PemFile> {
        [Some(self.cert.clone()), Some(self.key.clone()), self.client_ca.clone()]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Builds the rustls server config (HTTP/1.1 only).
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let chain = self.cert.certificates()?;
        let key = self.key.private_key()?;
        let builder = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.cert.error(format!("no TLS version available: {e}")))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.roots()?), provider())
                    .build()
                    .map_err(|e| ca.error(format!("cannot verify client certificates with it: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_single_cert(chain, key).map_err(|e| key_problem(&self.cert, &self.key, &e))?;
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(config)
    }
}

/// The error of a certificate and key rustls refused together.
fn key_problem(cert: &PemFile, key: &PemFile, e: &rustls::Error) -> TlsError {
    match e {
        rustls::Error::InconsistentKeys(_) => key.error(format!(
            "is not the private key of the certificate in {} {}",
            cert.setting,
            cert.path.display()
        )),
        e => key.error(format!(
            "cannot be used with the certificate in {} {}: {e}",
            cert.setting,
            cert.path.display()
        )),
    }
}

/// What a TLS client trusts and presents: the CA that signed the servers' certificates
/// (the only trust root) and, optionally, a client certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFiles {
    pub ca: PemFile,
    pub identity: Option<(PemFile, PemFile)>,
}

impl ClientFiles {
    /// The peer transport's files, if peer TLS is on: the cluster CA, and this node's peer
    /// certificate as its client certificate (`validate` has checked all three are set).
    pub fn peer_transport(cfg: &Config) -> Option<ClientFiles> {
        Some(ClientFiles {
            ca: PemFile::new("peer_tls_ca_file", cfg.peer_tls_ca_file.clone()?),
            identity: Some((
                PemFile::new("peer_tls_cert_file", cfg.peer_tls_cert_file.clone()?),
                PemFile::new("peer_tls_key_file", cfg.peer_tls_key_file.clone()?),
            )),
        })
    }

    /// Every file, for [`Reloading`].
    pub fn files(&self) -> Vec<PemFile> {
        let mut out = vec![self.ca.clone()];
        if let Some((c, k)) = &self.identity {
            out.extend([c.clone(), k.clone()]);
        }
        out
    }

    /// Builds the rustls client config (HTTP/1.1 only).
    pub fn load(&self) -> Result<ClientConfig, TlsError> {
        let roots = Arc::new(self.ca.roots()?);
        let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| self.ca.error(format!("cannot verify server certificates with it: {e}")))?;
        let builder = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| self.ca.error(format!("no TLS version available: {e}")))?
            .with_webpki_verifier(verifier);
        let mut config = match &self.identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(cert.certificates()?, key.private_key()?)
                .map_err(|e| key_problem(cert, key, &e))?,
        };
        config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        Ok(config)
    }
}

/// A server config that follows its files (see [`Reloading`]).
pub type ServerTls = Arc<Reloading<ServerConfig>>;

/// The TLS of a node's two listeners (`None`: plain HTTP).
#[derive(Clone, Default)]
pub struct ListenerTls {
    pub client: Option<ServerTls>,
    pub peer: Option<ServerTls>,
}

impl ListenerTls {
    /// Loads the listeners' TLS files (an error names the setting and the file). The
    /// configs are re-read when the files change once [`ListenerTls::watch`] runs.
    pub fn load(cfg: &Config) -> Result<ListenerTls, TlsError> {
        let server =
            |name: &'static str, files: Option<ServerFiles>| -> Result<Option<ServerTls>, TlsError> {
                let Some(files) = files else { return Ok(None) };
                let watched = files.files();
                Reloading::load(name, watched, move || files.load()).map(Some)
            };
        Ok(ListenerTls {
            client: server("client listener TLS", ServerFiles::client_listener(cfg))?,
            peer: server("peer listener TLS", ServerFiles::peer_listener(cfg))?,
        })
    }

    /// Starts following the files (a background task per listener, ending with them).
    pub fn watch(&self) {
        for tls in [&self.client, &self.peer].into_iter().flatten() {
            tls.watch(RELOAD_EVERY);
        }
    }
}

/// Whether the certificate `der` (already verified against the CA by the handshake) names
/// `host` (an IP address or a DNS name) among its subject alternative names: peer mutual
/// TLS uses it to tie a certificate to the member it claims to be.
pub fn certificate_names(der: &[u8], host: &str) -> bool {
    let cert = CertificateDer::from(der);
    let Ok(cert) = webpki::EndEntityCert::try_from(&cert) else { return false };
    let Ok(name) = rustls_pki_types::ServerName::try_from(host) else { return false };
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

#[cfg(test)]
mod names_tests {
    #[test]
    fn a_certificate_names_the_hosts_of_its_alternative_names_only() {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "node-1.palisade".to_string()])
                .unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert!(super::certificate_names(&der, "127.0.0.1"));
        assert!(super::certificate_names(&der, "node-1.palisade"));
        for other in ["127.0.0.2", "node-2.palisade", "localhost", "", "not a name"] {
            assert!(!super::certificate_names(&der, other), "{other:?}");
        }
        assert!(!super::certificate_names(b"not a certificate", "127.0.0.1"));
    }

    #[test]
    fn a_wildcard_names_one_label_below_it() {
        // As the Helm chart's peer certificate names every member (`*.<fullname>-peer...`).
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["*.p-peer.ns.svc.cluster.local".to_string()]).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert!(super::certificate_names(&der, "p-0.p-peer.ns.svc.cluster.local"));
        assert!(super::certificate_names(&der, "p-12.p-peer.ns.svc.cluster.local"));
        for other in [
            "p-peer.ns.svc.cluster.local",
            "a.p-0.p-peer.ns.svc.cluster.local",
            "p-0.q-peer.ns.svc.cluster.local",
        ] {
            assert!(!super::certificate_names(&der, other), "{other:?}");
        }
    }
}
