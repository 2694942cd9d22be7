//! Proof that a peer request comes from a member holding the cluster secret, and that
//! its answer comes from the member it was sent to.
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

use std::collections::{HashSet, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex};

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

/// Why a peer request (or answer) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
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
}

/// The cluster secret, or none (insecure).
#[derive(Clone, Default)]
pub struct PeerKey {
    secret: Option<Arc<[u8]>>,
}

impl std::fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.secret.is_some() { "PeerKey(secret)" } else { "PeerKey(insecure)" })
    }
}

impl PeerKey {
    /// No secret: requests name their sender but prove nothing.
    pub fn insecure() -> PeerKey {
        PeerKey { secret: None }
    }

    /// A key from the secret's bytes (at least 16).
    pub fn from_secret(secret: &[u8]) -> Result<PeerKey, String> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the peer secret is {} bytes; it must be at least {MIN_SECRET_BYTES}",
                secret.len()
            ));
        }
        Ok(PeerKey { secret: Some(secret.into()) })
    }

    /// Reads the secret from `path` (surrounding whitespace, such as a final newline, is
    /// not part of it).
    pub fn load(path: &Path) -> Result<PeerKey, String> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read the peer secret file {}: {e}", path.display()))?;
        let text = bytes.trim_ascii();
        PeerKey::from_secret(text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Whether requests are signed.
    pub fn is_secure(&self) -> bool {
        self.secret.is_some()
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

    /// The headers for a request from `from` to `to` with `body`, sent at `now_ms`.
    pub fn sign(&self, from: NodeId, to: NodeId, now_ms: u64, body: &[u8]) -> [(&'static str, String); 5] {
        let (digest, signature) = match &self.secret {
            Some(secret) => {
                let digest = hex(&Sha256::digest(body));
                let sig = hex(&Self::request_mac(secret, from, to, now_ms, &digest).finalize().into_bytes());
                (digest, sig)
            }
            None => (String::new(), String::new()),
        };
        let [f, t, ti, d, s] = SIGNATURE_HEADERS;
        [(f, from.to_string()), (t, to.to_string()), (ti, now_ms.to_string()), (d, digest), (s, signature)]
    }

    /// Checks everything the headers can prove, before the body is read: the receiver is
    /// `me`, the time is within the window, and (with a secret) the signature is right.
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
        let Some(secret) = &self.secret else {
            return Ok(Verified { from, signature: String::new(), digest: String::new() });
        };
        let signature = header(s).filter(|v| !v.is_empty()).ok_or_else(|| {
            PeerAuthError::Missing("the request is not signed (this cluster needs the peer secret)".into())
        })?;
        let digest = header(d).unwrap_or_default();
        if time.abs_diff(now_ms) > MAX_SKEW_MS {
            return Err(PeerAuthError::Invalid(format!(
                "the request's time is {} s away from this node's clock (at most {} s are accepted: keep the members' clocks in step)",
                time.abs_diff(now_ms) / 1000,
                MAX_SKEW_MS / 1000
            )));
        }
        let given =
            unhex(signature).ok_or_else(|| PeerAuthError::Invalid("the signature is not hex".into()))?;
        Self::request_mac(secret, from, to, time, digest).verify_slice(&given).map_err(|_| {
            PeerAuthError::Invalid("the signature does not match (a wrong peer secret?)".into())
        })?;
        Ok(Verified { from, signature: signature.to_string(), digest: digest.to_string() })
    }

    /// Checks that `body` is the one the headers signed (after [`Self::check_headers`]).
    pub fn check_body(&self, v: &Verified, body: &[u8]) -> Result<(), PeerAuthError> {
        if self.secret.is_none() {
            return Ok(());
        }
        if hex(&Sha256::digest(body)) != v.digest {
            return Err(PeerAuthError::Invalid("the body does not match its signed digest".into()));
        }
        Ok(())
    }

    /// The signature header value for the answer `body` to the request `v`.
    pub fn sign_response(&self, v: &Verified, body: &[u8]) -> Option<String> {
        let secret = self.secret.as_ref()?;
        Some(hex(&Self::response_mac(secret, &v.signature, body).finalize().into_bytes()))
    }

    /// Checks the answer to a request this node signed with `request_signature`.
    pub fn check_response(
        &self,
        request_signature: &str,
        given: Option<&str>,
        body: &[u8],
    ) -> Result<(), PeerAuthError> {
        let Some(secret) = &self.secret else { return Ok(()) };
        let given =
            given.and_then(unhex).ok_or_else(|| PeerAuthError::Missing("the answer is not signed".into()))?;
        Self::response_mac(secret, request_signature, body)
            .verify_slice(&given)
            .map_err(|_| PeerAuthError::Invalid("the answer's signature does not match".into()))
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
        assert!(matches!(key.check_headers(headers(&unsigned), 1, now), Err(PeerAuthError::Missing(_))));
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
}
