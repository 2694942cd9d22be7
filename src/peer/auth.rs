//! Proof that a peer request comes from a member holding the cluster secret, and that
//! its answer comes from the member it was sent to; the secrets themselves, and their
//! reload when their file changes.
//!
//! Every request names its sender and receiver, the sender's wall-clock time and the
//! SHA-256 of its body, and carries an HMAC-SHA256 of those, keyed with the shared secret:
//!
//! ```text
//! x-palisade-from: 2
//! x-palisade-to: 1
//! x-palisade-time: 1764570000000          (ms since the Unix epoch)
//! x-palisade-digest: <hex SHA-256 of the body>
//! x-palisade-signature: <hex HMAC-SHA256(secret, "palisade-peer-v2\n2\n1\n1764570000000\n<digest>")>
//! ```
//!
//! The receiver checks the signature before it reads a byte of the body (so a stranger
//! cannot make it buffer anything), then checks that the body matches the digest. The
//! answer carries `x-palisade-signature` too: an HMAC of the request's signature and the
//! answer's body, so nobody on the path can forge an acknowledgement or a vote. The secret
//! itself never travels, signatures are compared in constant time, and a request more than
//! [`MAX_SKEW_MS`] away from the receiver's clock is refused. A forwarded write is also
//! remembered by its signature for that long ([`ReplayGuard`]), so a captured one cannot be
//! applied twice. Without a secret (an insecure cluster, e.g. the single-node quick start on
//! loopback) the sender's id is still sent and checked for membership, but nothing is
//! proven. Confidentiality needs TLS on the peer listener.
//!
//! # Several secrets, and rotating them without downtime
//!
//! The secret file (`--peer-secret-file`) holds one secret a line, at most
//! [`MAX_SECRETS`]; blank lines and the whitespace around a secret are ignored, and each is
//! at least 16 bytes. The FIRST signs this node's requests; a request signed with ANY of
//! them is accepted; an answer is signed with the secret that verified its request, and an
//! answer signed with any of them is accepted. To rotate from `OLD` to `NEW`, with no
//! restart and no refused call:
//!
//! 1. on every member, add `NEW` as a second line (`OLD` still signs; both are accepted);
//! 2. once every member has reloaded, move `NEW` first on every member (it signs now; every
//!    member already accepts it);
//! 3. once every member has reloaded again, remove `OLD`.
//!
//! A member reloads its file about a second after it changes ([`PeerKey::watch_file`];
//! its log says `peer secrets reloaded`). Every clone of a [`PeerKey`] (the transport's,
//! the peer route's) sees the new secrets at once. A file that cannot be used (unreadable,
//! empty, a secret too short, too many) changes nothing: the secrets in use stay, and one
//! warning names the file and why. A key made without a secret stays without one, and a
//! key with secrets never loses them all: checks are never turned off by a file.
//!
//! Invariant: no secret, and no signature, ever appears in an error, a log line or a
//! `Debug` output.

use std::collections::{HashSet, VecDeque};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::raft::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// The headers a signed request carries, in the order of [`PeerKey::sign`]'s output.
pub const SIGNATURE_HEADERS: [&str; 5] =
    ["x-palisade-from", "x-palisade-to", "x-palisade-time", "x-palisade-digest", "x-palisade-signature"];

/// The header of an answer's signature.
pub const RESPONSE_SIGNATURE_HEADER: &str = "x-palisade-signature";

/// How far a request's time may be from the receiver's clock (clocks of members are
/// expected to be kept in step, e.g. by NTP).
pub const MAX_SKEW_MS: u64 = 60_000;

/// The shortest secret accepted (bytes).
const MIN_SECRET_BYTES: usize = 16;

/// The most secrets a file may hold (the one signing, and those accepted during a rotation).
pub const MAX_SECRETS: usize = 8;

/// The largest secret file read (bytes): far more than [`MAX_SECRETS`] secrets need.
const MAX_FILE_BYTES: u64 = 64 << 10;

/// A file modified this recently is read again at every look even if its size and time
/// did not change (a rewrite within the file system's time granularity keeps both).
const RECENT: Duration = Duration::from_secs(2);

/// Why a peer request (or answer) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    /// A header is missing or malformed, or the request is for another node.
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
    /// Not signed, and this node holds a secret.
    #[error("not signed: this cluster needs the peer secret")]
    Unsigned,
    /// The request's time is this far (seconds) from the receiver's clock.
    #[error(
        "the request's time is {0} s away from this node's clock (at most {max} s are accepted: keep the members' clocks in step)",
        max = MAX_SKEW_MS / 1000
    )]
    Skewed(u64),
    /// No secret this node holds made the signature.
    #[error("the signature does not match (a wrong peer secret?)")]
    WrongSecret,
}

impl PeerAuthError {
    /// A short name of the kind of refusal (e.g. for rate-limiting its log lines).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerAuthError::Missing(_) => "missing",
            PeerAuthError::Invalid(_) => "invalid",
            PeerAuthError::Unsigned => "unsigned",
            PeerAuthError::Skewed(_) => "skewed",
            PeerAuthError::WrongSecret => "wrong_secret",
        }
    }

    /// What the receiver's log says about a request refused for this, claimed to come
    /// from `from`.
    pub fn explain(&self, from: Option<NodeId>) -> String {
        match (self, from) {
            (PeerAuthError::WrongSecret, Some(from)) => {
                format!("the signature does not match: this node and node {from} hold different peer secrets")
            }
            (PeerAuthError::WrongSecret, None) => {
                "the signature does not match: the sender holds a different peer secret".into()
            }
            (other, _) => other.to_string(),
        }
    }
}

/// One secret. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
struct Secret(Arc<[u8]>);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What the headers of a request established.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub from: NodeId,
    /// The signature (empty without a secret): what the answer's signature covers, and the
    /// request's identity for [`ReplayGuard`].
    pub signature: String,
    /// The body's SHA-256 the sender signed (empty without a secret).
    digest: String,
    /// The secret that verified the request (none without a secret): it signs the answer,
    /// even if the secrets are reloaded meanwhile.
    secret: Option<Secret>,
}

/// The cluster secrets (the first signs, any verifies), or none (insecure). Clones share
/// the secrets: a reload is seen by every clone at once.
#[derive(Clone, Default)]
pub struct PeerKey {
    /// `None`: insecure, for good.
    shared: Option<Arc<Shared>>,
}

/// The secrets every clone of a secure key shares.
struct Shared {
    /// Never empty; the first signs.
    secrets: RwLock<Arc<[Secret]>>,
    /// The file they came from, and what was last seen of it (`None`: not from a file).
    file: Option<Mutex<FileWatch>>,
}

/// What a reload compares the file with.
struct FileWatch {
    path: PathBuf,
    /// Size, time and inode when last read.
    stamp: Option<Stamp>,
    /// The SHA-256 of the content last read (used or not).
    content: [u8; 32],
    /// The read error last warned about, so a file that stays unreadable is warned about
    /// once (a content that cannot be used is warned about once by `content`).
    read_problem: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        #[cfg(unix)]
        let inode = std::os::unix::fs::MetadataExt::ino(m);
        #[cfg(not(unix))]
        let inode = 0;
        Stamp { modified: m.modified().ok(), len: m.len(), inode }
    }

    /// Whether the file changed so recently that a rewrite might keep the same stamp.
    fn is_recent(&self) -> bool {
        self.modified.is_none_or(|t| SystemTime::now().duration_since(t).map_or(true, |age| age < RECENT))
    }
}

/// What a [`PeerKey::reload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Nothing new to use, or nothing new to say.
    Unchanged,
    /// The file's secrets are now in use.
    Reloaded { secrets: usize },
    /// The file changed but cannot be used: the secrets in use stay (said once per problem).
    Kept { why: String },
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.current() {
            Some(s) => write!(f, "PeerKey({} secrets)", s.len()),
            None => f.write_str("PeerKey(insecure)"),
        }
    }
}

/// The secrets in `text`: one a line, blank lines and surrounding whitespace ignored.
fn parse_secrets(text: &[u8]) -> Result<Vec<Secret>, String> {
    let mut out = Vec::new();
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        if line.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the secret on line {} is {} bytes; each must be at least {MIN_SECRET_BYTES}",
                i + 1,
                line.len()
            ));
        }
        out.push(Secret(line.into()));
    }
    if out.is_empty() {
        return Err("it holds no secret (at least one line of at least 16 bytes is needed)".into());
    }
    if out.len() > MAX_SECRETS {
        return Err(format!(
            "it holds {} secrets; at most {MAX_SECRETS} are accepted (the first signs, the others are accepted \
             while a new secret is rolled out)",
            out.len()
        ));
    }
    Ok(out)
}

/// The stamp and the content of the file at `path` (at most [`MAX_FILE_BYTES`]).
fn read_file(path: &Path) -> Result<(Stamp, Vec<u8>), String> {
    let cannot = |e: std::io::Error| format!("cannot read the peer secret file {}: {e}", path.display());
    let file = std::fs::File::open(path).map_err(cannot)?;
    let stamp = Stamp::of(&file.metadata().map_err(cannot)?);
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(cannot)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!(
            "the peer secret file {} is over {} KiB: it should hold at most {MAX_SECRETS} secrets, one a line",
            path.display(),
            MAX_FILE_BYTES >> 10
        ));
    }
    Ok((stamp, bytes))
}

impl PeerKey {
    /// No secret: requests name their sender but prove nothing.
    pub fn insecure() -> PeerKey {
        PeerKey { shared: None }
    }

    fn with(secrets: Vec<Secret>, file: Option<FileWatch>) -> PeerKey {
        PeerKey {
            shared: Some(Arc::new(Shared {
                secrets: RwLock::new(secrets.into()),
                file: file.map(Mutex::new),
            })),
        }
    }

    /// A key from one secret's bytes (at least 16).
    pub fn from_secret(secret: &[u8]) -> Result<PeerKey, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the peer secret is {} bytes; it must be at least {MIN_SECRET_BYTES}",
                secret.len()
            ));
        }
        Ok(PeerKey::with(vec![Secret(secret.into())], None))
    }

    /// A key from the text of a secret file: one secret a line, the first signs.
    pub fn from_lines(text: &[u8]) -> Result<PeerKey, String> {
        Ok(PeerKey::with(parse_secrets(text)?, None))
    }

    /// Reads the secrets from `path` (one a line; blank lines and the whitespace around a
    /// secret, such as a final newline, are ignored). The key remembers the file for
    /// [`PeerKey::reload`].
    pub fn load(path: &Path) -> Result<PeerKey, String> {
        let (stamp, bytes) = read_file(path)?;
        let secrets =
            parse_secrets(&bytes).map_err(|e| format!("the peer secret file {}: {e}", path.display()))?;
        let watch = FileWatch {
            path: path.to_path_buf(),
            stamp: Some(stamp),
            content: Sha256::digest(&bytes).into(),
            read_problem: None,
        };
        Ok(PeerKey::with(secrets, Some(watch)))
    }

    /// Whether requests are signed.
    pub fn is_secure(&self) -> bool {
        self.shared.is_some()
    }

    /// How many secrets are in use (0: insecure).
    pub fn secret_count(&self) -> usize {
        self.current().map_or(0, |s| s.len())
    }

    /// The file the secrets come from, if any.
    pub fn file(&self) -> Option<PathBuf> {
        let file = self.shared.as_ref()?.file.as_ref()?;
        Some(file.lock().unwrap_or_else(|e| e.into_inner()).path.clone())
    }

    /// The secrets in use now (never empty), or `None` without a secret.
    fn current(&self) -> Option<Arc<[Secret]>> {
        let shared = self.shared.as_ref()?;
        Some(shared.secrets.read().unwrap_or_else(|e| e.into_inner()).clone())
    }

    /// Reads the file again if it changed (by size, time and inode; a file changed in the
    /// last two seconds is read anyway, and its content compared), and uses its secrets if
    /// they can be used. Keeps the secrets in use otherwise, and says why once per problem.
    /// Blocking file I/O: [`PeerKey::watch_file`] calls it off the async threads.
    pub fn reload(&self) -> Reload {
        let Some(shared) = &self.shared else { return Reload::Unchanged };
        let Some(file) = &shared.file else { return Reload::Unchanged };
        let mut w = file.lock().unwrap_or_else(|e| e.into_inner());
        let stat = std::fs::metadata(&w.path).map(|m| Stamp::of(&m));
        let unchanged = matches!((&stat, &w.stamp), (Ok(now), Some(then)) if now == then && !now.is_recent());
        if unchanged {
            return Reload::Unchanged;
        }
        let read = stat
            .map_err(|e| format!("cannot read the peer secret file {}: {e}", w.path.display()))
            .and_then(|_| read_file(&w.path));
        let (stamp, bytes) = match read {
            Ok(read) => read,
            // Warned about once, however long the file stays unreadable.
            Err(why) if w.read_problem.as_ref() == Some(&why) => return Reload::Unchanged,
            Err(why) => {
                w.read_problem = Some(why.clone());
                return Reload::Kept { why };
            }
        };
        w.read_problem = None;
        w.stamp = Some(stamp);
        let content: [u8; 32] = Sha256::digest(&bytes).into();
        if content == w.content {
            // Touched, or written again as it was (used or refused): nothing new to say.
            return Reload::Unchanged;
        }
        w.content = content;
        match parse_secrets(&bytes) {
            Ok(secrets) => {
                let n = secrets.len();
                let mut current = shared.secrets.write().unwrap_or_else(|e| e.into_inner());
                if current[..] == secrets[..] {
                    return Reload::Unchanged;
                }
                *current = secrets.into();
                Reload::Reloaded { secrets: n }
            }
            Err(e) => Reload::Kept { why: format!("the peer secret file {}: {e}", w.path.display()) },
        }
    }

    /// Reloads the secret file every `every` on a background task (see [`PeerKey::reload`])
    /// and logs what changed; the task ends once every clone of this key is gone. Nothing
    /// to do for a key without a file. Needs a Tokio runtime.
    pub fn watch_file(&self, every: Duration) {
        let Some(shared) = &self.shared else { return };
        if shared.file.is_none() {
            return;
        }
        crate::file_poll::poll_files(shared, every, |shared| {
            let key = PeerKey { shared: Some(shared.clone()) };
            let file = key.file().unwrap_or_default();
            match key.reload() {
                Reload::Unchanged => {}
                Reload::Reloaded { secrets } => tracing::info!(
                    file = %file.display(),
                    secrets,
                    "peer secrets reloaded from {}: {secrets} secret(s); the first signs this node's \
                     requests, any is accepted",
                    file.display()
                ),
                Reload::Kept { why } => tracing::warn!(
                    file = %file.display(),
                    "the peer secret file changed but cannot be used: {why}; keeping the {} secret(s) \
                     in use",
                    key.secret_count()
                ),
            }
        });
    }

    fn mac(secret: &[u8]) -> HmacSha256 {
        HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length")
    }

    fn request_mac(secret: &[u8], from: NodeId, to: NodeId, time_ms: u64, digest: &str) -> HmacSha256 {
        let mut mac = Self::mac(secret);
        mac.update(format!("palisade-peer-v2\n{from}\n{to}\n{time_ms}\n{digest}").as_bytes());
        mac
    }

    fn response_mac(secret: &[u8], request_signature: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = Self::mac(secret);
        mac.update(format!("palisade-peer-response-v1\n{request_signature}\n").as_bytes());
        mac.update(body);
        mac
    }

    /// The headers for a request from `from` to `to` with `body`, sent at `now_ms`, signed
    /// with the first secret.
    pub fn sign(&self, from: NodeId, to: NodeId, now_ms: u64, body: &[u8]) -> [(&'static str, String); 5] {
        let (digest, signature) = match self.current() {
            Some(secrets) => {
                let digest = hex(&Sha256::digest(body));
                let sig =
                    hex(&Self::request_mac(&secrets[0].0, from, to, now_ms, &digest).finalize().into_bytes());
                (digest, sig)
            }
            None => (String::new(), String::new()),
        };
        let [f, t, ti, d, s] = SIGNATURE_HEADERS;
        [(f, from.to_string()), (t, to.to_string()), (ti, now_ms.to_string()), (d, digest), (s, signature)]
    }

    /// Checks everything the headers can prove, before the body is read: the receiver is
    /// `me`, the time is within the window, and (with secrets) one of them made the
    /// signature.
    pub fn check_headers<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        me: NodeId,
        now_ms: u64,
    ) -> Result<Verified, PeerAuthError> {
        let [f, t, ti, d, s] = SIGNATURE_HEADERS;
        let num = |name: &str| -> Result<u64, PeerAuthError> {
            let v = header(name)
                .ok_or_else(|| PeerAuthError::Missing(format!("the {name} header is missing")))?;
            v.parse().map_err(|_| PeerAuthError::Invalid(format!("{name} is not a number")))
        };
        let from = num(f)?;
        let to = num(t)?;
        let time = num(ti)?;
        if to != me {
            return Err(PeerAuthError::Invalid(format!("the request is for node {to}, this is node {me}")));
        }
        let Some(secrets) = self.current() else {
            return Ok(Verified { from, signature: String::new(), digest: String::new(), secret: None });
        };
        let signature = header(s).filter(|v| !v.is_empty()).ok_or(PeerAuthError::Unsigned)?;
        let digest = header(d).unwrap_or_default();
        if time.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(PeerAuthError::Skewed(time.abs_diff(now_ms) / 1000));
        }
        let given =
            unhex(signature).ok_or_else(|| PeerAuthError::Invalid("the signature is not hex".into()))?;
        let secret = secrets
            .iter()
            .find(|secret| Self::request_mac(&secret.0, from, to, time, digest).verify_slice(&given).is_ok())
            .ok_or(PeerAuthError::WrongSecret)?;
        Ok(Verified {
            from,
            signature: signature.to_string(),
            digest: digest.to_string(),
            secret: Some(secret.clone()),
        })
    }

    /// Checks that `body` is the one the headers signed (after [`Self::check_headers`]).
    pub fn check_body(&self, v: &Verified, body: &[u8]) -> Result<(), PeerAuthError> {
        if self.shared.is_none() || v.secret.is_none() {
            return Ok(());
        }
        if hex(&Sha256::digest(body)) != v.digest {
            return Err(PeerAuthError::Invalid("the body does not match its signed digest".into()));
        }
        Ok(())
    }

    /// The signature header value for the answer `body` to the request `v`, made with the
    /// secret that verified the request.
    pub fn sign_response(&self, v: &Verified, body: &[u8]) -> Option<String> {
        self.shared.as_ref()?;
        let secret = v.secret.as_ref()?;
        Some(hex(&Self::response_mac(&secret.0, &v.signature, body).finalize().into_bytes()))
    }

    /// Checks the answer to a request this node signed with `request_signature`: any
    /// secret in use may have signed it.
    pub fn check_response(
        &self,
        request_signature: &str,
        given: Option<&str>,
        body: &[u8],
    ) -> Result<(), PeerAuthError> {
        let Some(secrets) = self.current() else { return Ok(()) };
        let given =
            given.and_then(unhex).ok_or_else(|| PeerAuthError::Missing("the answer is not signed".into()))?;
        if secrets
            .iter()
            .any(|secret| Self::response_mac(&secret.0, request_signature, body).verify_slice(&given).is_ok())
        {
            Ok(())
        } else {
            Err(PeerAuthError::Invalid("the answer's signature does not match".into()))
        }
    }
}

/// Remembers the signatures of recent requests, so a captured one is not served twice
/// within the time window. Bounded: past `capacity` entries the oldest are forgotten (then
/// only replays of requests older than the remembered span could get through).
pub struct ReplayGuard {
    seen: Mutex<Seen>,
    capacity: usize,
}

/// The signatures remembered, and when each was seen (oldest first).
#[derive(Default)]
struct Seen {
    set: HashSet<String>,
    order: VecDeque<(u64, String)>,
}

impl ReplayGuard {
    pub fn new(capacity: usize) -> ReplayGuard {
        ReplayGuard { seen: Mutex::default(), capacity: capacity.max(1) }
    }

    /// Records `signature` (seen at `now_ms`); false if it was seen within the window.
    pub fn first_time(&self, signature: &str, now_ms: u64) -> bool {
        if signature.is_empty() {
            return true;
        }
        let mut guard = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let Seen { set, order } = &mut *guard;
        while let Some((at, _)) = order.front() {
            if now_ms.saturating_sub(*at) <= 2 * MAX_SKEW_MS && order.len() < self.capacity {
                break;
            }
            let (_, old) = order.pop_front().expect("front exists");
            set.remove(&old);
        }
        if !set.insert(signature.to_string()) {
            return false;
        }
        order.push_back((now_ms, signature.to_string()));
        true
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(h: &'a [(&'static str, String)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn signed_requests_verify_and_tampering_fails() {
        let key = PeerKey::from_secret(b"0123456789abcdef0123").unwrap();
        let now = 1_764_570_000_000;
        let body = b"{\"read_index\":null}";
        let h = key.sign(2, 1, now, body);
        let v = key.check_headers(headers(&h), 1, now + 5).unwrap();
        assert_eq!(v.from, 2);
        key.check_body(&v, body).unwrap();
        // Another body, another receiver, another key: refused.
        assert!(key.check_body(&v, b"{\"read_index\":1}").is_err());
        assert!(key.check_headers(headers(&h), 3, now).is_err());
        let other = PeerKey::from_secret(b"another secret of 16+").unwrap();
        assert!(other.check_headers(headers(&h), 1, now).is_err());
        // A changed sender, time or digest breaks the signature.
        for (i, value) in [(0, "3".to_string()), (2, (now + 1).to_string()), (3, "00".repeat(32))] {
            let mut forged = h.clone();
            forged[i].1 = value;
            assert!(key.check_headers(headers(&forged), 1, now).is_err(), "header {i}");
        }
        // Too old or too far in the future.
        assert!(key.check_headers(headers(&h), 1, now + MAX_SKEW_MS + 1).is_err());
        assert!(key.check_headers(headers(&h), 1, now - MAX_SKEW_MS - 1).is_err());
        // Unsigned requests are refused when there is a secret.
        let unsigned = PeerKey::insecure().sign(2, 1, now, body);
        assert!(matches!(key.check_headers(headers(&unsigned), 1, now), Err(PeerAuthError::Unsigned)));
        // Garbage signatures do not panic.
        let mut bad = h.clone();
        bad[4].1 = "zz".repeat(40);
        assert!(key.check_headers(headers(&bad), 1, now).is_err());
        bad[4].1 = "é".into();
        assert!(key.check_headers(headers(&bad), 1, now).is_err());
    }

    #[test]
    fn answers_are_bound_to_their_request() {
        let key = PeerKey::from_secret(b"0123456789abcdef0123").unwrap();
        let now = 1_764_570_000_000;
        let h = key.sign(2, 1, now, b"req");
        let v = key.check_headers(headers(&h), 1, now).unwrap();
        let sig = key.sign_response(&v, b"answer").unwrap();
        key.check_response(&v.signature, Some(&sig), b"answer").unwrap();
        assert!(key.check_response(&v.signature, Some(&sig), b"forged").is_err());
        assert!(key.check_response(&v.signature, None, b"answer").is_err());
        let other = key.sign(2, 1, now + 1, b"req");
        let v2 = key.check_headers(headers(&other), 1, now).unwrap();
        assert!(
            key.check_response(&v2.signature, Some(&sig), b"answer").is_err(),
            "an answer to another request"
        );
        // Without a secret nothing is signed or checked.
        assert_eq!(PeerKey::insecure().sign_response(&v, b"x"), None);
        PeerKey::insecure().check_response("", None, b"x").unwrap();
    }

    #[test]
    fn replays_are_caught_within_the_window_and_memory_stays_bounded() {
        let g = ReplayGuard::new(3);
        assert!(g.first_time("a", 1000));
        assert!(!g.first_time("a", 2000));
        assert!(g.first_time("b", 2000));
        assert!(g.first_time("c", 2000));
        assert!(g.first_time("d", 2000), "past capacity the oldest is forgotten");
        assert!(!g.first_time("d", 2000));
        assert!(g.first_time("a", 2000), "forgotten");
        assert!(g.first_time("", 0) && g.first_time("", 0), "unsigned requests are not tracked");
        // Entries older than the window go.
        assert!(g.first_time("e", 10 * MAX_SKEW_MS));
        assert_eq!(g.seen.lock().unwrap().set.len(), 1);
    }

    #[test]
    fn insecure_keys_still_need_the_sender() {
        let key = PeerKey::insecure();
        let h = key.sign(2, 1, 5, b"x");
        assert_eq!(key.check_headers(headers(&h), 1, 10_000_000).unwrap().from, 2);
        assert!(key.check_headers(|_| None, 1, 0).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(PeerKey::from_secret(b"short").is_err());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "  0123456789abcdef\n").unwrap();
        assert!(PeerKey::load(&path).unwrap().is_secure());
        std::fs::write(&path, "tiny\n").unwrap();
        assert!(PeerKey::load(&path).unwrap_err().contains("at least 16"));
        assert!(PeerKey::load(&dir.path().join("missing")).unwrap_err().contains("cannot read"));
    }
    fn lines(secrets: &[&str]) -> String {
        secrets.iter().map(|s| format!("{s}\n")).collect()
    }

    const OLD: &str = "the old secret, 0123456789";
    const NEW: &str = "the new secret, abcdefghij";

    #[test]
    fn secret_files_hold_one_secret_a_line() {
        let key = PeerKey::from_lines(format!("\n  {OLD}  \r\n\n\t{NEW}\n\n").as_bytes()).unwrap();
        assert_eq!(key.secret_count(), 2);
        assert_eq!(format!("{key:?}"), "PeerKey(2 secrets)", "Debug shows no secret");
        let e = PeerKey::from_lines(format!("{OLD}\nshort\n").as_bytes()).unwrap_err();
        assert!(e.contains("line 2 is 5 bytes") && e.contains("at least 16"), "{e}");
        assert!(!e.contains("short"), "the error shows the secret: {e}");
        assert!(PeerKey::from_lines(b"").unwrap_err().contains("no secret"));
        assert!(PeerKey::from_lines(b" \n\n \t\n").unwrap_err().contains("no secret"));
        let nine: Vec<String> = (0..9).map(|i| format!("{OLD}{i}")).collect();
        let refs: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert!(PeerKey::from_lines(lines(&refs).as_bytes()).unwrap_err().contains("at most 8"));
        assert_eq!(PeerKey::from_lines(lines(&refs[..8]).as_bytes()).unwrap().secret_count(), 8);
    }

    #[test]
    fn the_first_secret_signs_and_any_verifies() {
        let now = 1_764_570_000_000;
        let both = PeerKey::from_lines(lines(&[NEW, OLD]).as_bytes()).unwrap();
        let old = PeerKey::from_lines(OLD.as_bytes()).unwrap();
        let new = PeerKey::from_lines(NEW.as_bytes()).unwrap();
        let old_first = PeerKey::from_lines(lines(&[OLD, NEW]).as_bytes()).unwrap();
        // A key with both signs with the first: only holders of NEW accept it.
        let h = both.sign(2, 1, now, b"body");
        assert_eq!(h, new.sign(2, 1, now, b"body"));
        assert_ne!(h, old.sign(2, 1, now, b"body"));
        new.check_headers(headers(&h), 1, now).unwrap();
        old_first.check_headers(headers(&h), 1, now).unwrap();
        assert_eq!(old.check_headers(headers(&h), 1, now), Err(PeerAuthError::WrongSecret));
        // It accepts requests signed with either.
        for signer in [&old, &new, &old_first] {
            let h = signer.sign(3, 1, now, b"x");
            let v = both.check_headers(headers(&h), 1, now).unwrap();
            both.check_body(&v, b"x").unwrap();
        }
        let stranger = PeerKey::from_secret(b"neither of them, 0123").unwrap();
        let h = stranger.sign(3, 1, now, b"x");
        let e = both.check_headers(headers(&h), 1, now).unwrap_err();
        assert_eq!(e, PeerAuthError::WrongSecret);
        assert!(e.explain(Some(3)).contains("this node and node 3 hold different peer secrets"));
    }

    #[test]
    fn answers_are_signed_with_the_secret_that_verified_the_request() {
        let now = 1_764_570_000_000;
        let old = PeerKey::from_lines(OLD.as_bytes()).unwrap();
        let both = PeerKey::from_lines(lines(&[NEW, OLD]).as_bytes()).unwrap();
        // A member still signing with OLD asks one that signs with NEW: the answer is
        // signed with OLD, which the asker holds.
        let h = old.sign(2, 1, now, b"req");
        let sig = h[4].1.clone();
        let v = both.check_headers(headers(&h), 1, now).unwrap();
        let answer = both.sign_response(&v, b"answer").unwrap();
        old.check_response(&sig, Some(&answer), b"answer").unwrap();
        // The asker accepts an answer signed with any secret it holds: it signed the request
        // with OLD, then reloaded [NEW, OLD] before the answer (signed with OLD) came back.
        let h = old.sign(1, 2, now, b"req");
        let sig = h[4].1.clone();
        let v =
            PeerKey::from_lines(lines(&[OLD, NEW]).as_bytes()).unwrap().check_headers(headers(&h), 2, now);
        let answer = both.sign_response(&v.unwrap(), b"a").unwrap();
        both.check_response(&sig, Some(&answer), b"a").unwrap();
        let new = PeerKey::from_lines(NEW.as_bytes()).unwrap();
        assert!(new.check_response(&sig, Some(&answer), b"a").is_err(), "OLD is not held");
        // An answer signed with a secret the asker does not hold is refused.
        let v = Verified {
            from: 1,
            signature: sig.clone(),
            digest: String::new(),
            secret: Some(Secret(b"neither of them, 0123".as_slice().into())),
        };
        let forged = both.sign_response(&v, b"a").unwrap();
        assert!(both.check_response(&sig, Some(&forged), b"a").is_err());
    }

    /// Writes `text` to `path` as a new file (a new inode: the stamp changes even within
    /// the file system's time granularity).
    fn rewrite(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    #[test]
    fn reloads_use_a_changed_file_and_keep_the_old_secrets_on_a_bad_one() {
        let now = 1_764_570_000_000;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, lines(&[OLD])).unwrap();
        let key = PeerKey::load(&path).unwrap();
        let clone = key.clone();
        assert_eq!(key.reload(), Reload::Unchanged);
        let signed_by = |k: &PeerKey| {
            let h = k.sign(1, 2, now, b"x");
            if PeerKey::from_lines(OLD.as_bytes()).unwrap().check_headers(headers(&h), 2, now).is_ok() {
                "old"
            } else if PeerKey::from_lines(NEW.as_bytes()).unwrap().check_headers(headers(&h), 2, now).is_ok()
            {
                "new"
            } else {
                "neither"
            }
        };
        // Step 1, 2 and 3 of a rotation: every clone sees each at once.
        rewrite(&path, &lines(&[OLD, NEW]));
        assert_eq!(key.reload(), Reload::Reloaded { secrets: 2 });
        assert_eq!((clone.secret_count(), signed_by(&clone)), (2, "old"));
        rewrite(&path, &lines(&[NEW, OLD]));
        assert_eq!(key.reload(), Reload::Reloaded { secrets: 2 });
        assert_eq!(signed_by(&clone), "new");
        rewrite(&path, &lines(&[NEW]));
        assert_eq!(clone.reload(), Reload::Reloaded { secrets: 1 });
        assert_eq!((key.secret_count(), signed_by(&key)), (1, "new"));
        let h = PeerKey::from_lines(OLD.as_bytes()).unwrap().sign(3, 1, now, b"x");
        assert_eq!(key.check_headers(headers(&h), 1, now), Err(PeerAuthError::WrongSecret));
        // The same secrets written again, or only whitespace changed: nothing to do.
        rewrite(&path, &format!("\n{NEW}  \n"));
        assert_eq!(key.reload(), Reload::Unchanged);

        // Bad files keep the secrets in use, and are reported once each.
        for (bad, why) in [
            ("", "no secret"),
            ("\n \n", "no secret"),
            ("tiny\n", "at least 16"),
            (&*format!("{NEW}\ntiny\n"), "line 2 is 4 bytes"),
            ("tiny\n", "at least 16"),
        ] {
            rewrite(&path, bad);
            match key.reload() {
                Reload::Kept { why: w } => {
                    assert!(w.contains(why) && w.contains(&*path.to_string_lossy()), "{w}");
                    assert!(!w.contains(NEW) && !w.contains("tiny"), "a secret in the warning: {w}");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
            assert_eq!(key.reload(), Reload::Unchanged, "warned twice about {bad:?}");
            assert_eq!((key.secret_count(), signed_by(&key)), (1, "new"), "after {bad:?}");
        }
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(key.reload(), Reload::Kept { why } if why.contains("cannot read")));
        assert_eq!(key.reload(), Reload::Unchanged);
        assert_eq!(signed_by(&key), "new");
        // A good file again is used again.
        rewrite(&path, &lines(&[OLD]));
        assert_eq!(key.reload(), Reload::Reloaded { secrets: 1 });
        assert_eq!(signed_by(&clone), "old");

        // A rewrite in place that keeps the size, within the time granularity, is seen too.
        std::fs::write(&path, lines(&[NEW])).unwrap();
        assert_eq!(key.reload(), Reload::Reloaded { secrets: 1 });
        assert_eq!(signed_by(&key), "new");

        // Without a file (or a secret) there is nothing to reload; insecure stays insecure.
        assert_eq!(PeerKey::insecure().reload(), Reload::Unchanged);
        assert!(!PeerKey::insecure().is_secure());
        assert_eq!(PeerKey::from_lines(OLD.as_bytes()).unwrap().reload(), Reload::Unchanged);
    }

    #[tokio::test]
    async fn the_watcher_reloads_in_the_background() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, lines(&[OLD])).unwrap();
        let key = PeerKey::load(&path).unwrap();
        key.watch_file(Duration::from_millis(20));
        rewrite(&path, &lines(&[OLD, NEW]));
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while key.secret_count() != 2 {
            assert!(std::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
