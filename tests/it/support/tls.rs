//! Test certificates made with rcgen: a CA ([`TestCa`]) and the certificates it signs
//! ([`Issued`]), for 127.0.0.1 and localhost, good for both server and client use; and
//! [`served_certificate`], which connects to a TLS port and returns the certificate it
//! served (to see a rotation take effect).
//!
//! [`ClusterTls::generate`] lays out the files a TLS cluster (`ClusterOptions::tls`) is
//! started with: `ca.pem`, and per node `node{id}.crt`/`.key` (client listener) and
//! `node{id}-peer.crt`/`.key` (peer listener), and `client.crt`/`.key` for the harness's
//! own client.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SerialNumber,
};

/// A certificate authority that signs test certificates.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A certificate and its key, as PEM, and the certificate's DER.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        let key = KeyPair::generate().expect("a CA key");
        let cert = params.self_signed(&key).expect("a self-signed CA");
        TestCa { issuer: Issuer::new(params, key), pem: cert.pem() }
    }

    /// A certificate for `name` with SANs 127.0.0.1 and localhost, for server and client
    /// authentication, with the given serial number, valid until January 1st of `until_year`.
    pub fn issue(&self, name: &str, serial: u64, until_year: i32) -> Issued {
        self.issue_for(name, &["127.0.0.1", "localhost"], serial, until_year)
    }

    /// The same, for the subject alternative names `sans` (IP addresses or DNS names).
    pub fn issue_for(&self, name: &str, sans: &[&str], serial: u64, until_year: i32) -> Issued {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("params");
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        params.distinguished_name = dn;
        params.serial_number = Some(SerialNumber::from(serial));
        params.not_after = rcgen::date_time_ymd(until_year, 1, 1);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages =
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().expect("a key");
        let cert = params.signed_by(&key, &self.issuer).expect("a signed certificate");
        Issued { cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().to_vec() }
    }

    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.pem).expect("write the CA");
    }
}

impl Issued {
    /// Writes the key, then the certificate, each by a rename (as a rotation would).
    pub fn write(&self, cert: &Path, key: &Path) {
        for (path, text) in [(key, &self.key_pem), (cert, &self.cert_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).expect("write a PEM file");
            std::fs::rename(&tmp, path).expect("rename a PEM file into place");
        }
    }
}

/// The TLS files of a test cluster (see the module docs).
#[derive(Debug, Clone)]
pub struct ClusterTls {
    pub dir: PathBuf,
    /// Also run with the peer secret (else peers are authenticated by mutual TLS alone).
    pub peer_secret: bool,
    /// Run the client listener with `--tls-client-ca-file ca.pem` (clients need a certificate).
    pub client_ca: bool,
}

impl ClusterTls {
    /// Writes `ca.pem` and every node's certificates (serials `100 * id + 1` for the
    /// client listener, `+ 2` for the peer listener) and the harness client's.
    pub fn generate(ca: &TestCa, dir: &Path, nodes: u64) -> ClusterTls {
        ca.write(&dir.join("ca.pem"));
        let t = ClusterTls { dir: dir.to_path_buf(), peer_secret: false, client_ca: false };
        for id in 1..=nodes {
            ca.issue(&format!("node{id}"), 100 * id + 1, 2040).write(&t.client_cert(id), &t.client_key(id));
            ca.issue(&format!("node{id}-peer"), 100 * id + 2, 2040).write(&t.peer_cert(id), &t.peer_key(id));
        }
        ca.issue("client", 7, 2040).write(&t.dir.join("client.crt"), &t.dir.join("client.key"));
        t
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn client_cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.crt"))
    }
    pub fn client_key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}.key"))
    }
    pub fn peer_cert(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}-peer.crt"))
    }
    pub fn peer_key(&self, id: u64) -> PathBuf {
        self.dir.join(format!("node{id}-peer.key"))
    }
    /// The harness client's certificate and key.
    pub fn harness_identity(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.crt"), self.dir.join("client.key"))
    }

    /// The serve flags of node `id`.
    pub fn serve_args(&self, id: u64) -> Vec<String> {
        let mut args = vec![
            "--tls-cert-file".to_string(),
            self.client_cert(id).display().to_string(),
            "--tls-key-file".into(),
            self.client_key(id).display().to_string(),
            "--peer-tls-cert-file".into(),
            self.peer_cert(id).display().to_string(),
            "--peer-tls-key-file".into(),
            self.peer_key(id).display().to_string(),
            "--peer-tls-ca-file".into(),
            self.ca().display().to_string(),
        ];
        if self.client_ca {
            args.extend(["--tls-client-ca-file".to_string(), self.ca().display().to_string()]);
        }
        args
    }
}

/// Connects to `addr` over TLS trusting `ca_pem` (presenting `identity` if given) and
/// returns the DER of the certificate the server presented.
pub async fn served_certificate(
    addr: &str,
    ca_pem: &str,
    identity: Option<&Issued>,
) -> Result<Vec<u8>, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some(i) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(i.cert_pem.as_bytes()).map_err(|e| e.to_string())?],
                PrivateKeyDer::from_pem_slice(i.key_pem.as_bytes()).map_err(|e| e.to_string())?,
            )
            .map_err(|e| e.to_string())?,
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let name = ServerName::try_from("127.0.0.1").expect("an IP server name");
    let conn = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
    let certs = conn.get_ref().1.peer_certificates().ok_or("no certificate served")?;
    Ok(certs[0].as_ref().to_vec())
}
