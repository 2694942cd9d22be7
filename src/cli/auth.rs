//! `palisade auth token`: mints a client token (JWT) for an operator, signed with the key
//! the cluster checks tokens with: the HS256 secret file (`--auth-jwt-secret-file` on the
//! servers) or the private half of one of its public keys (RS256, ES256 or EdDSA).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::output::parse_duration;
use crate::auth::{mint, Grants, MintRequest, SigningKey};

#[derive(Args, Debug)]
pub struct AuthArgs {
    #[command(subcommand)]
    pub command: AuthCommand,
}

#[derive(Subcommand, Debug)]
pub enum AuthCommand {
    /// Mint a token and print it: `palisade auth token --sub deployer --read /app/ --write
    /// /app/config/ --locks 'db-*' --ttl 1h`.
    Token(TokenArgs),
}

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The subject (`sub`): who the token speaks for; the leases it grants are its own.
    #[arg(long)]
    pub sub: String,
    /// A key prefix it may read (repeat for more; `/` is every key).
    #[arg(long, value_name = "PREFIX")]
    pub read: Vec<String>,
    /// A key prefix it may write (repeat for more).
    #[arg(long, value_name = "PREFIX")]
    pub write: Vec<String>,
    /// A lock name pattern it may use (`*` matches any run of characters; repeat for more).
    #[arg(long, value_name = "PATTERN")]
    pub locks: Vec<String>,
    /// An election name pattern it may use (repeat for more).
    #[arg(long, value_name = "PATTERN")]
    pub elections: Vec<String>,
    /// Everything, including compaction and every lease.
    #[arg(long)]
    pub admin: bool,
    /// How long it is valid (`30m`, `1h`, `720h`; at most a year).
    #[arg(long, value_parser = parse_duration, default_value = "1h")]
    pub ttl: Duration,
    /// The HS256 secret file (the servers' --auth-jwt-secret-file).
    #[arg(long, env = "PALISADE_AUTH_JWT_SECRET_FILE", value_name = "FILE", conflicts_with = "private_key")]
    pub secret_file: Option<PathBuf>,
    /// A PEM private key (RSA, EC P-256 or Ed25519) whose public key the servers hold.
    #[arg(long, env = "PALISADE_AUTH_JWT_PRIVATE_KEY", value_name = "FILE")]
    pub private_key: Option<PathBuf>,
    /// The `kid` header, to pick one key of the servers' JWKS.
    #[arg(long)]
    pub kid: Option<String>,
    /// The issuer (`iss`), if the servers check one.
    #[arg(long, env = "PALISADE_AUTH_JWT_ISSUER")]
    pub iss: Option<String>,
    /// The audience (`aud`), if the servers check one.
    #[arg(long, env = "PALISADE_AUTH_JWT_AUDIENCE")]
    pub aud: Option<String>,
    /// Write the token to this file (readable by its owner only, replaced whole) instead
    /// of printing it, for `--token-file`.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

pub fn run(args: AuthArgs) -> ExitCode {
    match args.command {
        AuthCommand::Token(a) => match token(&a).and_then(|t| match &a.output {
            Some(path) => write_private(path, &t),
            None => {
                println!("{t}");
                Ok(())
            }
        }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// Writes `token` to `path` with mode 0600: a temporary file beside it, renamed over it.
fn write_private(path: &std::path::Path, token: &str) -> Result<(), String> {
    use std::io::Write;
    let name = path.file_name().ok_or_else(|| format!("--output {} names no file", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp", name.to_string_lossy()));
    let write = || -> std::io::Result<()> {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp)?;
        f.write_all(token.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write the token to {}: {e}", path.display()))
}

fn token(a: &TokenArgs) -> Result<String, String> {
    if a.ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err("--ttl must be at most a year".into());
    }
    let key = match (&a.secret_file, &a.private_key) {
        (Some(f), _) => SigningKey::Secret(f),
        (None, Some(f)) => SigningKey::PrivateKey(f),
        (None, None) => {
            return Err("give the signing key: --secret-file (HS256) or --private-key (PEM)".into());
        }
    };
    let now = crate::clock::wall_clock_ms() / 1000;
    let req = MintRequest {
        subject: a.sub.clone(),
        grants: Grants {
            read: a.read.clone(),
            write: a.write.clone(),
            locks: a.locks.clone(),
            elections: a.elections.clone(),
            admin: a.admin,
        },
        issued_at: now,
        expires_at: now + a.ttl.as_secs().max(1),
        issuer: a.iss.clone(),
        audience: a.aud.clone(),
        key_id: a.kid.clone(),
    };
    mint(&req, key)
}
