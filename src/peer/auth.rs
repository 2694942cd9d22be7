//! Proof that a peer request comes from a member holding the cluster secret.
//!
//! Every request names its sender and receiver and the sender's wall-clock time, and
//! carries an HMAC-SHA256, keyed with the shared secret, over those and the whole body:
//!
//! ```text
//! x-palisade-from: 2
//! x-palisade-to: 1
//! x-palisade-time: 1764570000000          (ms since the Unix epoch)
//! x-palisade-signature: <hex HMAC-SHA256(secret, "palisade-peer-v1\n2\n1\n1764570000000\n" ++ body)>
//! ```
//!
//! The secret itself never travels, the signature is compared in constant time, and a
//! request whose time is more than [`MAX_SKEW_MS`] away from the receiver's clock is
//! refused, so a captured request cannot be replayed later than that. Without a secret
//! (an insecure cluster, e.g. the single-node quick start on loopback) the sender's id is
//! still sent and checked for membership, but nothing is proven. Confidentiality and
//! replay within the time window need TLS on the peer listener.

use std::path::Path;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::raft::NodeId;

type HmacSha256 = Hmac<Sha256>;

/// The headers a signed request carries, in the order of [`PeerKey::sign`]'s output.
pub const SIGNATURE_HEADERS: [&str; 4] =
    ["x-palisade-from", "x-palisade-to", "x-palisade-time", "x-palisade-signature"];

/// How far a request's time may be from the receiver's clock (clocks of members are
/// expected to be kept in step, e.g. by NTP).
pub const MAX_SKEW_MS: u64 = 120_000;

/// The shortest secret accepted (bytes).
const MIN_SECRET_BYTES: usize = 16;

/// Why a peer request was refused before it was read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerAuthError {
    #[error("{0}")]
    Missing(String),
    #[error("{0}")]
    Invalid(String),
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

    fn mac(secret: &[u8], from: NodeId, to: NodeId, time_ms: u64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes a key of any length");
        mac.update(format!("palisade-peer-v1\n{from}\n{to}\n{time_ms}\n").as_bytes());
        mac.update(body);
        mac
    }

    /// The headers for a request from `from` to `to` with `body`, sent at `now_ms`.
    pub fn sign(&self, from: NodeId, to: NodeId, now_ms: u64, body: &[u8]) -> [(&'static str, String); 4] {
        let signature = match &self.secret {
            Some(secret) => hex(&Self::mac(secret, from, to, now_ms, body).finalize().into_bytes()),
            None => String::new(),
        };
        let [f, t, ti, s] = SIGNATURE_HEADERS;
        [(f, from.to_string()), (t, to.to_string()), (ti, now_ms.to_string()), (s, signature)]
    }

    /// Checks the headers that can be checked before the body is read, and returns the
    /// sender and the request's time: the receiver is `me`, the time is within the window.
    pub fn check_headers<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        me: NodeId,
        now_ms: u64,
    ) -> Result<(NodeId, u64), PeerAuthError> {
        let [f, t, ti, s] = SIGNATURE_HEADERS;
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
        if self.secret.is_some() {
            if header(s).is_none_or(str::is_empty) {
                return Err(PeerAuthError::Missing(
                    "the request is not signed (this cluster needs the peer secret)".into(),
                ));
            }
            if time.abs_diff(now_ms) > MAX_SKEW_MS {
                return Err(PeerAuthError::Invalid(format!(
                    "the request's time is {} s away from this node's clock (at most {} s are accepted: keep the members' clocks in step)",
                    time.abs_diff(now_ms) / 1000,
                    MAX_SKEW_MS / 1000
                )));
            }
        }
        Ok((from, time))
    }

    /// Verifies the signature over `body` (after [`Self::check_headers`]).
    pub fn verify<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        from: NodeId,
        me: NodeId,
        time_ms: u64,
        body: &[u8],
    ) -> Result<(), PeerAuthError> {
        let Some(secret) = &self.secret else { return Ok(()) };
        let given = header(SIGNATURE_HEADERS[3])
            .and_then(unhex)
            .ok_or_else(|| PeerAuthError::Invalid("the signature is not hex".into()))?;
        Self::mac(secret, from, me, time_ms, body)
            .verify_slice(&given)
            .map_err(|_| PeerAuthError::Invalid("the signature does not match (a wrong peer secret?)".into()))
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
        let h = key.sign(2, 1, now, b"{\"read_index\":null}");
        let (from, time) = key.check_headers(headers(&h), 1, now + 5).unwrap();
        assert_eq!((from, time), (2, now));
        key.verify(headers(&h), from, 1, time, b"{\"read_index\":null}").unwrap();
        // Another body, another receiver, another sender, another key: refused.
        assert!(key.verify(headers(&h), from, 1, time, b"{\"read_index\":1}").is_err());
        assert!(key.check_headers(headers(&h), 3, now).is_err());
        assert!(key.verify(headers(&h), 3, 1, time, b"{\"read_index\":null}").is_err());
        let other = PeerKey::from_secret(b"another secret of 16+").unwrap();
        assert!(other.verify(headers(&h), from, 1, time, b"{\"read_index\":null}").is_err());
        // Too old or too far in the future.
        assert!(key.check_headers(headers(&h), 1, now + MAX_SKEW_MS + 1).is_err());
        assert!(key.check_headers(headers(&h), 1, now - MAX_SKEW_MS - 1).is_err());
        // Unsigned requests are refused when there is a secret.
        let unsigned = PeerKey::insecure().sign(2, 1, now, b"x");
        assert!(matches!(key.check_headers(headers(&unsigned), 1, now), Err(PeerAuthError::Missing(_))));
        // Garbage signatures do not panic.
        let mut bad = h.clone();
        bad[3].1 = "zz".repeat(40);
        assert!(key.verify(headers(&bad), 2, 1, now, b"x").is_err());
        bad[3].1 = "é".into();
        assert!(key.verify(headers(&bad), 2, 1, now, b"x").is_err());
    }

    #[test]
    fn insecure_keys_still_need_the_sender() {
        let key = PeerKey::insecure();
        let h = key.sign(2, 1, 5, b"x");
        assert_eq!(key.check_headers(headers(&h), 1, 10_000_000).unwrap().0, 2);
        key.verify(headers(&h), 2, 1, 5, b"anything").unwrap();
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
