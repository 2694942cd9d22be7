//! [`Verifier`]: turns a bearer token into a [`Caller`], or says why it cannot.
//!
//! Keys: an HS256 shared secret (`--auth-jwt-secret-file`, at least 32 bytes) and/or
//! public keys (`--auth-jwt-public-keys`: PEM blocks, or a JWKS document whose keys are
//! picked by `kid`) for RS256/RS384/RS512, PS256/PS384/PS512, ES256/ES384 and EdDSA. An
//! HS256 token is checked against the secret only, never against a public key's bytes, and
//! a public-key token only against public keys of its algorithm's family, so no key can be
//! confused for another; `alg: none` is refused. A token that names a `kid` is checked
//! against that key alone; one without, against each key of its family that has no `kid`
//! (PEM keys; at most [`MAX_KEYS`]).
//!
//! Claims: `sub` and `exp` are required; `nbf` is honoured; `iss` and `aud` are required
//! and checked when configured; all times with `--auth-jwt-leeway-ms` of slack. The
//! `palisade` claim carries the [`Grants`].
//!
//! Cost: a verified token is cached (by its SHA-256) until its `exp`, so a client that
//! reuses its token pays one hash and one map probe per request, not a signature check.
//! The cache holds at most [`CACHE_ENTRIES`] tokens, each tagged with the generation of the
//! keys that verified it (one verified with keys since replaced is never taken from it).
//! Key files are re-read when they change on disk ([`Verifier::watch`], the same
//! [`Reloading`] the TLS files use); a file that cannot be used keeps the keys in force and
//! is reported.
//!
//! Bounds: a token over [`MAX_TOKEN_BYTES`] is refused before it is decoded. No error
//! message repeats the token or a key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::caller::Caller;
use super::grants::Grants;
use super::MAX_SUBJECT_BYTES;
use crate::error::Error;
use crate::tls::{PemFile, Reloaded, Reloading};

/// Longest bearer token accepted (bytes).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Most public keys in the key file.
pub const MAX_KEYS: usize = 32;
/// Most verified tokens remembered.
pub const CACHE_ENTRIES: usize = 10_000;
/// Shortest HS256 secret (bytes): the hash's own length.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where the keys come from, and what every token must say.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    pub secret_file: Option<PathBuf>,
    pub public_keys: Option<PathBuf>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub leeway_ms: u64,
}

impl AuthSettings {
    /// The settings of a node's config; `None` when client auth is off.
    pub fn of(cfg: &crate::config::Config) -> Option<AuthSettings> {
        if cfg.auth_jwt_secret_file.is_none() && cfg.auth_jwt_public_keys.is_none() {
            return None;
        }
        Some(AuthSettings {
            secret_file: cfg.auth_jwt_secret_file.clone(),
            public_keys: cfg.auth_jwt_public_keys.clone(),
            issuer: cfg.auth_jwt_issuer.clone(),
            audience: cfg.auth_jwt_audience.clone(),
            leeway_ms: cfg.auth_jwt_leeway_ms,
        })
    }

    /// The files the keys are read from.
    pub fn files(&self) -> Vec<PathBuf> {
        self.secret_file.iter().chain(&self.public_keys).cloned().collect()
    }
}

/// One public key.
struct PublicKey {
    kid: Option<String>,
    key: DecodingKey,
}

/// The keys in force.
#[derive(Default)]
struct Keys {
    secret: Option<DecodingKey>,
    public: Vec<PublicKey>,
}

impl Keys {
    fn load(s: &AuthSettings) -> Result<Keys, String> {
        let secret = match &s.secret_file {
            None => None,
            Some(path) => {
                let secret = read_secret(path)?;
                Some(DecodingKey::from_secret(&secret).map_err(|e| format!("{}: {e}", path.display()))?)
            }
        };
        let public = match &s.public_keys {
            None => Vec::new(),
            Some(path) => {
                let text = String::from_utf8(read(path)?)
                    .map_err(|_| format!("{}: not a PEM or JWKS text file", path.display()))?;
                let keys = parse_public_keys(&text).map_err(|e| format!("{}: {e}", path.display()))?;
                if keys.is_empty() {
                    return Err(format!("{}: holds no public key", path.display()));
                }
                keys
            }
        };
        Ok(Keys { secret, public })
    }
}

/// The HS256 secret in `path` (surrounding whitespace, such as a final newline, is not
/// part of it), at least [`MIN_SECRET_BYTES`].
pub(super) fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = read(path)?;
    let secret = bytes.trim_ascii();
    if secret.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "{}: the HS256 secret is {} bytes; it must be at least {MIN_SECRET_BYTES}",
            path.display(),
            secret.len()
        ));
    }
    Ok(secret.to_vec())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Public keys from PEM blocks or a JWKS document.
fn parse_public_keys(text: &str) -> Result<Vec<PublicKey>, String> {
    let mut keys = Vec::new();
    if text.trim_start().starts_with('{') {
        let set: jsonwebtoken::jwk::JwkSet =
            serde_json::from_str(text).map_err(|e| format!("not a JWKS document: {e}"))?;
        for (i, jwk) in set.keys.iter().enumerate() {
            if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
                return Err(format!(
                    "key {i} is a symmetric key; shared secrets go in --auth-jwt-secret-file, never with the public keys"
                ));
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
            keys.push(PublicKey { kid: jwk.common.key_id.clone(), key });
        }
    } else {
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN ") {
            let block = &rest[start..];
            let end_marker = block.find("-----END ").ok_or("a PEM block has no END line")?;
            let after = &block[end_marker + "-----END ".len()..];
            let close = after.find("-----").ok_or("a PEM END line is not closed")?;
            let len = end_marker + "-----END ".len() + close + "-----".len();
            let pem = &block[..len];
            let key = DecodingKey::from_rsa_pem(pem.as_bytes())
                .or_else(|_| DecodingKey::from_ec_pem(pem.as_bytes()))
                .or_else(|_| DecodingKey::from_ed_pem(pem.as_bytes()))
                .map_err(|_| {
                    format!("PEM block {} is not an RSA, EC or Ed25519 public key", keys.len() + 1)
                })?;
            keys.push(PublicKey { kid: None, key });
            rest = &block[len..];
        }
    }
    if keys.len() > MAX_KEYS {
        return Err(format!("holds {} keys; at most {MAX_KEYS}", keys.len()));
    }
    Ok(keys)
}

/// The claims a token must carry.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
    #[serde(default)]
    palisade: Option<Grants>,
}

/// A verified token, remembered.
struct Cached {
    caller: Caller,
    /// Its `exp` (seconds since the epoch).
    exp: u64,
    /// The generation of the keys it was verified with: a hit under other keys is none.
    generation: u64,
}

/// Checks bearer tokens. Shared by every request of a node.
pub struct Verifier {
    settings: AuthSettings,
    /// The keys, rebuilt when their files change (see [`Verifier::watch`]).
    keys: Arc<Reloading<Keys, String>>,
    cache: RwLock<HashMap<[u8; 32], Cached>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Verifier {
    /// Loads the keys; the error says which file cannot be used and why.
    pub fn new(settings: AuthSettings) -> Result<Verifier, String> {
        let mut files = Vec::new();
        if let Some(p) = &settings.secret_file {
            files.push(PemFile::new("auth_jwt_secret_file", p));
        }
        if let Some(p) = &settings.public_keys {
            files.push(PemFile::new("auth_jwt_public_keys", p));
        }
        let s = settings.clone();
        let keys = Reloading::load("client auth JWT keys", files, move || Keys::load(&s))?;
        Ok(Verifier { settings, keys, cache: RwLock::default() })
    }

    /// Re-reads the key files about once a second while the node runs (key rotation
    /// without a restart; a file that cannot be used keeps the keys in force, and the log
    /// says why once per change).
    pub fn watch(&self) {
        self.keys.watch(crate::tls::RELOAD_EVERY);
    }

    /// Re-reads the key files if any changed since they were last looked at: `Ok(true)`
    /// when new keys are in force (no token verified with the old ones is taken from the
    /// cache again), `Ok(false)` when nothing changed, `Err(why)` when a changed file
    /// cannot be used (the old keys stay).
    pub fn reload(&self) -> Result<bool, String> {
        match self.keys.check() {
            Reloaded::Unchanged => Ok(false),
            Reloaded::Reloaded => Ok(true),
            Reloaded::Kept(why) => Err(why),
        }
    }

    /// The caller a request's `Authorization` header values name.
    pub fn caller(&self, authorization: Option<&[u8]>, now_s: u64) -> Result<Caller, Error> {
        let header = authorization.ok_or_else(|| {
            Error::Unauthenticated("this request needs a token: send Authorization: Bearer <token>".into())
        })?;
        let token =
            header.strip_prefix(b"Bearer ").or_else(|| header.strip_prefix(b"bearer ")).ok_or_else(|| {
                Error::Unauthenticated("the Authorization header is not `Bearer <token>`".into())
            })?;
        let token = token.trim_ascii();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Error::Unauthenticated(format!(
                "the token is {} bytes; at most {MAX_TOKEN_BYTES} are accepted",
                token.len()
            )));
        }
        let token = std::str::from_utf8(token)
            .map_err(|_| Error::Unauthenticated("the token is not a JWT (not ASCII)".into()))?;
        self.verify(token, now_s)
    }

    /// Verifies `token` (cached until its `exp`).
    pub fn verify(&self, token: &str, now_s: u64) -> Result<Caller, Error> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let leeway = self.settings.leeway_ms.div_ceil(1000);
        // Read before the keys: a verdict reached with keys replaced meanwhile is tagged
        // with the old generation, so it is never taken from the cache.
        let generation = self.keys.generation();
        if let Some(c) = self.cache.read().unwrap_or_else(|e| e.into_inner()).get(&digest) {
            if c.generation == generation {
                if now_s <= c.exp.saturating_add(leeway) {
                    return Ok(c.caller.clone());
                }
                return Err(Error::Unauthenticated("the token has expired".into()));
            }
        }
        let (caller, exp) = self.verify_uncached(token, leeway)?;
        let mut cache = self.cache.write().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_ENTRIES {
            cache.retain(|_, c| c.generation == generation && now_s <= c.exp.saturating_add(leeway));
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(digest, Cached { caller: caller.clone(), exp, generation });
        Ok(caller)
    }

    fn verify_uncached(&self, token: &str, leeway: u64) -> Result<(Caller, u64), Error> {
        let bad = |m: String| Error::Unauthenticated(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            bad(format!("the token is not a well-formed JWT with a supported algorithm ({})", describe(&e)))
        })?;
        let keys = self.keys.current();
        let family = header.alg.family();
        let candidates: Vec<&DecodingKey> = if family == AlgorithmFamily::Hmac {
            if header.alg != Algorithm::HS256 {
                return Err(bad(format!("{:?} tokens are not accepted (HS256 is)", header.alg)));
            }
            let secret = keys.secret.as_ref().ok_or_else(|| {
                bad("HS256 tokens are not accepted by this cluster (it checks public-key signatures)".into())
            })?;
            vec![secret]
        } else {
            let of_family = keys.public.iter().filter(|k| k.key.family() == family);
            let picked: Vec<&DecodingKey> = match &header.kid {
                Some(kid) => of_family.filter(|k| k.kid.as_deref() == Some(kid)).map(|k| &k.key).collect(),
                // Keys with an id are for tokens that name it: a token without one is
                // tried against the keys without one (PEM keys), never against them all.
                None => of_family.filter(|k| k.kid.is_none()).map(|k| &k.key).collect(),
            };
            if picked.is_empty() {
                return Err(bad(match &header.kid {
                    Some(kid) if keys.public.iter().all(|k| k.kid.as_deref() != Some(kid)) => {
                        format!("the token's key id {kid:?} is not among this cluster's keys")
                    }
                    None if keys.public.iter().any(|k| k.kid.is_some()) => {
                        "the token names no key id (kid); this cluster's keys are picked by kid".to_string()
                    }
                    _ => {
                        format!("{:?} tokens are not accepted: no key of that kind is configured", header.alg)
                    }
                }));
            }
            picked
        };
        let mut v = Validation::new(header.alg);
        v.leeway = leeway;
        v.validate_exp = true;
        v.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &self.settings.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.settings.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        let mut last = None;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(data) => return self.caller_of(data.claims),
                Err(e) if matches!(e.kind(), jsonwebtoken::errors::ErrorKind::InvalidSignature) => {
                    last = Some(e)
                }
                Err(e) => return Err(bad(describe(&e))),
            }
        }
        Err(bad(last.map_or_else(|| "the signature does not match".into(), |e| describe(&e))))
    }

    fn caller_of(&self, claims: Claims) -> Result<(Caller, u64), Error> {
        let bad = |m: String| Error::Unauthenticated(m);
        if claims.sub.is_empty() || claims.sub.len() > MAX_SUBJECT_BYTES {
            return Err(bad(format!(
                "the token's sub is {} bytes; 1 to {MAX_SUBJECT_BYTES}",
                claims.sub.len()
            )));
        }
        let grants = claims.palisade.unwrap_or_default();
        grants.validate().map_err(|e| bad(format!("the token's palisade claim: {e}")))?;
        Ok((Caller::authenticated(claims.sub, grants, claims.exp), claims.exp))
    }
}

/// A token error as a client may read it (never the token itself).
fn describe(e: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidSignature => "the signature does not match".into(),
        K::InvalidAudience => "the token is not for this audience (aud)".into(),
        K::InvalidIssuer => "the token's issuer (iss) is not accepted".into(),
        K::MissingRequiredClaim(c) => format!("the token has no {c} claim"),
        K::InvalidClaimFormat(c) => format!("the token's {c} claim is malformed"),
        K::InvalidAlgorithm | K::MissingAlgorithm | K::InvalidAlgorithmName | K::UnsupportedAlgorithm => {
            "the token's algorithm is not accepted".into()
        }
        K::InvalidToken | K::Base64(_) | K::Utf8(_) => "the token is malformed".into(),
        K::Json(e) => format!("the token's claims are malformed: {e}"),
        _ => "the token cannot be checked with this cluster's keys".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{mint, MintRequest, SigningKey};

    fn setup(secret: &str) -> (tempfile::TempDir, PathBuf, Verifier) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, secret).unwrap();
        let v = Verifier::new(AuthSettings {
            secret_file: Some(path.clone()),
            leeway_ms: 2_000,
            ..Default::default()
        })
        .unwrap();
        (dir, path, v)
    }

    fn token(path: &Path, now: u64, ttl: u64) -> String {
        let req = MintRequest {
            subject: "s".into(),
            grants: Grants::everything(),
            issued_at: now,
            expires_at: now + ttl,
            ..Default::default()
        };
        mint(&req, SigningKey::Secret(path)).unwrap()
    }

    #[test]
    fn a_cached_token_still_expires() {
        let (_d, path, v) = setup("a-secret-of-at-least-thirty-two-bytes");
        let now = crate::clock::wall_clock_ms() / 1000;
        let t = token(&path, now, 60);
        assert!(v.verify(&t, now).is_ok());
        assert!(v.verify(&t, now + 62).is_ok(), "within the leeway (2 s)");
        let e = v.verify(&t, now + 63).unwrap_err();
        assert!(matches!(e, Error::Unauthenticated(ref m) if m.contains("expired")), "{e:?}");
    }

    #[test]
    fn new_keys_forget_the_tokens_verified_with_the_old() {
        let (_d, path, v) = setup("a-secret-of-at-least-thirty-two-bytes");
        let now = crate::clock::wall_clock_ms() / 1000;
        let old = token(&path, now, 600);
        assert!(v.verify(&old, now).is_ok());
        std::fs::write(&path, "another-secret-of-at-least-thirty-two-bytes").unwrap();
        assert_eq!(v.reload(), Ok(true));
        assert!(v.verify(&old, now).is_err(), "a cached token of the old key is refused");
        assert!(v.verify(&token(&path, now, 600), now).is_ok());
        // A file that cannot be used keeps the keys in force.
        std::fs::write(&path, "short").unwrap();
        assert!(v.reload().unwrap_err().contains("at least 32"));
        assert!(v
            .verify(&token_with(&path, "another-secret-of-at-least-thirty-two-bytes", now), now)
            .is_ok());
        assert_eq!(v.reload(), Ok(false), "an unchanged file is not read again");
    }

    fn token_with(path: &Path, secret: &str, now: u64) -> String {
        let other = path.with_extension("signing");
        std::fs::write(&other, secret).unwrap();
        token(&other, now, 600)
    }

    #[test]
    fn oversized_and_malformed_headers_are_refused_before_decoding() {
        let (_d, _path, v) = setup("a-secret-of-at-least-thirty-two-bytes");
        let big = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert!(
            matches!(v.caller(Some(big.as_bytes()), 0), Err(Error::Unauthenticated(m)) if m.contains("at most"))
        );
        assert!(v.caller(None, 0).is_err());
        assert!(v.caller(Some(b"Basic eDp5"), 0).is_err());
        assert!(v.caller(Some(b"Bearer \xff\xfe"), 0).is_err());
    }
}
