//! Client authentication and authorisation: bearer JWTs ([`Verifier`]), the permissions
//! they carry ([`Grants`]), the caller every route checks ([`Caller`]), and the minting of
//! tokens for operators ([`mint`]).
//!
//! Off by default (the quick start); on as soon as a JWT key is configured
//! (`--auth-jwt-secret-file` or `--auth-jwt-public-keys`). Knows no HTTP: the HTTP layer
//! turns [`Error::Unauthenticated`](crate::error::Error::Unauthenticated) into 401 and
//! [`Error::PermissionDenied`](crate::error::Error::PermissionDenied) into 403.

mod caller;
mod grants;
mod minter;
mod verifier;

pub use caller::{Caller, Identity};
pub use grants::{covers, glob, Grants, MAX_PATTERNS, MAX_PATTERN_BYTES};
pub use minter::{mint, MintRequest, SigningKey};
pub use verifier::{AuthSettings, Verifier, CACHE_ENTRIES, MAX_KEYS, MAX_TOKEN_BYTES, MIN_SECRET_BYTES};

/// Longest subject (`sub`) a token may carry (bytes): it is stored with every lease the
/// subject grants.
pub const MAX_SUBJECT_BYTES: usize = 256;
