//! [`mint`]: signs a token for an operator (`palisade auth token`), with the same key
//! files a cluster checks tokens with: an HS256 secret, or an RSA, EC (P-256) or Ed25519
//! private key in PEM (RS256, ES256 or EdDSA, picked by the key).

use std::path::Path;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

use super::grants::Grants;
use super::verifier::read_secret;

/// What to put in a token.
#[derive(Debug, Clone, Default)]
pub struct MintRequest {
    pub subject: String,
    pub grants: Grants,
    /// Seconds since the epoch it is issued at (`iat`, `nbf`) and expires at (`exp`).
    pub issued_at: u64,
    pub expires_at: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// The `kid` header (to pick one key of a JWKS).
    pub key_id: Option<String>,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    nbf: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    palisade: &'a Grants,
}

/// Where the signing key comes from.
pub enum SigningKey<'a> {
    /// An HS256 secret file (the server's `--auth-jwt-secret-file`).
    Secret(&'a Path),
    /// A PEM private key file.
    PrivateKey(&'a Path),
}

/// Signs `req` with the key in `key`; the error says what is wrong (never the key).
pub fn mint(req: &MintRequest, key: SigningKey<'_>) -> Result<String, String> {
    req.grants.validate()?;
    if req.subject.is_empty() || req.subject.len() > super::MAX_SUBJECT_BYTES {
        return Err(format!("the subject must be 1 to {} bytes", super::MAX_SUBJECT_BYTES));
    }
    let (alg, encoding) = match key {
        SigningKey::Secret(path) => {
            let secret = read_secret(path)?;
            let key = EncodingKey::from_secret(&secret).map_err(|e| format!("{}: {e}", path.display()))?;
            (Algorithm::HS256, key)
        }
        SigningKey::PrivateKey(path) => {
            let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            if let Ok(k) = EncodingKey::from_rsa_pem(&pem) {
                (Algorithm::RS256, k)
            } else if let Ok(k) = EncodingKey::from_ec_pem(&pem) {
                (Algorithm::ES256, k)
            } else if let Ok(k) = EncodingKey::from_ed_pem(&pem) {
                (Algorithm::EdDSA, k)
            } else {
                return Err(format!(
                    "{}: not an RSA, EC (P-256) or Ed25519 private key in PEM",
                    path.display()
                ));
            }
        }
    };
    let mut header = Header::new(alg);
    header.kid = req.key_id.clone();
    let claims = Claims {
        sub: &req.subject,
        iat: req.issued_at,
        nbf: req.issued_at,
        exp: req.expires_at,
        iss: req.issuer.as_deref(),
        aud: req.audience.as_deref(),
        palisade: &req.grants,
    };
    jsonwebtoken::encode(&header, &claims, &encoding).map_err(|e| format!("cannot sign the token: {e}"))
}
