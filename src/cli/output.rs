//! What every client subcommand shares: the connection flags, the output format, writing
//! to stdout (a closed pipe ends the command quietly), and turning errors into messages
//! on stderr and exit codes.
//!
//! Exit codes: 0 success; 1 the server refused or the request failed (an `error:` line on
//! stderr); 2 no endpoint could be reached (clap also uses 2 for bad usage).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::client::{self, Client, KeyValue};

/// Flags of the client subcommands.
#[derive(Args, Debug, Clone)]
pub struct ClientArgs {
    /// Comma-separated client URLs of cluster members (`http://` is assumed when left out;
    /// `https://` needs --cacert).
    #[arg(
        long,
        global = true,
        help_heading = "Client options",
        env = "PALISADE_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7379"
    )]
    pub endpoints: Vec<String>,
    /// Output format: `table` (for people) or `json` (the server's JSON).
    #[arg(short = 'o', long, global = true, help_heading = "Client options", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// How long one request may take (`5s`, `500ms`, `1m`; a bare number is seconds).
    #[arg(long, global = true, help_heading = "Client options", value_parser = parse_duration, default_value = "10s")]
    pub timeout: Duration,
    /// A token (JWT) for a cluster with client auth on, sent as `Authorization: Bearer`.
    // Its id is not `token`: subcommands have positional arguments of that name (the
    // fencing token of `fence check`).
    #[arg(
        long = "token",
        id = "auth_token",
        global = true,
        help_heading = "Client options",
        env = "PALISADE_TOKEN",
        value_name = "JWT",
        hide_env_values = true,
        conflicts_with = "auth_token_file"
    )]
    pub token: Option<Token>,
    /// A file holding the token (read at start; surrounding whitespace is ignored).
    #[arg(
        long = "token-file",
        id = "auth_token_file",
        global = true,
        help_heading = "Client options",
        env = "PALISADE_TOKEN_FILE",
        value_name = "FILE"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// The CA (PEM) that signed the cluster's certificates: the only root trusted for
    /// `https://` endpoints (needed for them).
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        help_heading = "Client options",
        env = "PALISADE_CACERT",
        value_name = "FILE"
    )]
    pub tls_cacert: Option<PathBuf>,
    /// A client certificate (PEM) to present, for a cluster that requires one; with --key.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        help_heading = "Client options",
        env = "PALISADE_CERT",
        value_name = "FILE"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        help_heading = "Client options",
        env = "PALISADE_KEY",
        value_name = "FILE"
    )]
    pub tls_key: Option<PathBuf>,
}

/// A token given on the command line or in the environment; never shown by `Debug`.
#[derive(Clone)]
pub struct Token(String);

impl std::str::FromStr for Token {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Token, Self::Err> {
        Ok(Token(s.to_string()))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

/// The output format.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

/// Parses `5s`, `750ms`, `2m`, `1h` or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (try 5s or 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use ms, s, m or h)")),
    };
    let d = Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?} is out of range"))?;
    if d.is_zero() {
        return Err("the timeout must be above zero".into());
    }
    Ok(d)
}

/// Why a command stopped early.
#[derive(Debug)]
pub enum Failure {
    /// The client's error: reported on stderr.
    Client(client::Error),
    /// A local problem (bad input): `error: <text>` on stderr, exit 1.
    Local(String),
    /// Stdout went away (`| head`): stop quietly.
    Closed,
    /// The command said what happened already; exit with this code (a failed compare).
    Exit(u8),
}

impl From<client::Error> for Failure {
    fn from(e: client::Error) -> Failure {
        Failure::Client(e)
    }
}

impl ClientArgs {
    pub fn client(&self) -> Result<Client, Failure> {
        let tls = client::ClientTls {
            ca_file: self.tls_cacert.clone(),
            cert_file: self.tls_cert.clone(),
            key_file: self.tls_key.clone(),
        };
        Client::builder(self.endpoints.clone())
            .timeout(self.timeout)
            .tls(tls)
            .token(self.token()?)
            .build()
            .map_err(Failure::Client)
    }

    /// The token given, by flag, variable or file.
    fn token(&self) -> Result<Option<String>, Failure> {
        if let Some(Token(t)) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        let Some(path) = &self.token_file else { return Ok(None) };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Local(format!("cannot read the token file {}: {e}", path.display())))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(Failure::Local(format!("the token file {} is empty", path.display())));
        }
        Ok(Some(token.to_string()))
    }
}

/// Runs `f` on a fresh runtime and maps its outcome to an exit code.
pub fn run<F>(f: F) -> ExitCode
where
    F: std::future::Future<Output = Result<(), Failure>>,
{
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) | Err(Failure::Closed) => ExitCode::SUCCESS,
        Err(Failure::Exit(code)) => ExitCode::from(code),
        Err(Failure::Local(m)) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
        Err(Failure::Client(e)) => report(&e),
    }
}

/// Prints a client error on stderr and returns its exit code.
pub fn report(e: &client::Error) -> ExitCode {
    match e {
        client::Error::Api { code, message, status, .. } => {
            eprintln!("error: {code}: {message}");
            match status {
                401 => eprintln!(
                    "hint: this cluster needs a valid token: give one with --token, --token-file or PALISADE_TOKEN \
                     (an operator mints them with `palisade auth token`)"
                ),
                403 => eprintln!("hint: the token is valid, but its palisade claim does not allow this"),
                _ => {}
            }
            ExitCode::from(1)
        }
        client::Error::Connect(m) => {
            eprintln!("error: {m}");
            ExitCode::from(2)
        }
        client::Error::Other(m) => {
            eprintln!("error: {m}");
            ExitCode::from(1)
        }
    }
}

/// Writes bytes to stdout; a closed stdout stops the command quietly.
pub fn write_out(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::Closed),
        Err(e) => Err(Failure::Local(format!("cannot write to stdout: {e}"))),
    }
}

/// Writes one line of text to stdout.
pub fn line(s: &str) -> Result<(), Failure> {
    let mut b = Vec::with_capacity(s.len() + 1);
    b.extend_from_slice(s.as_bytes());
    b.push(b'\n');
    write_out(&b)
}

/// Writes `v` as pretty JSON to stdout.
pub fn json<T: Serialize>(v: &T) -> Result<(), Failure> {
    let s =
        serde_json::to_string_pretty(v).map_err(|e| Failure::Local(format!("cannot encode JSON: {e}")))?;
    line(&s)
}

/// Writes `v` as JSON on one line to stdout (one line per event of a command that goes on).
pub fn json_line<T: Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string(v).map_err(|e| Failure::Local(format!("cannot encode JSON: {e}")))?;
    line(&s)
}

/// A value for a one-line display: the text when UTF-8, else `base64:<...>`.
pub fn display_value(kv: &KeyValue) -> String {
    use base64::Engine;
    match kv.value_str() {
        Some(s) => s.to_string(),
        None => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(kv.value_bytes())),
    }
}

/// A key-value's metadata on one line.
pub fn describe(kv: &KeyValue) -> String {
    let lease = kv.lease.map_or_else(|| "none".to_string(), |l| l.to_string());
    let mut s = format!("key={}", kv.key);
    if kv.value.is_some() {
        s.push_str(&format!(" value={:?}", display_value(kv)));
    }
    s.push_str(&format!(
        " version={} mod_revision={} create_revision={} lease={lease}",
        kv.version, kv.mod_revision, kv.create_revision
    ));
    s
}

/// A table with left-aligned columns separated by two spaces.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let fmt_row = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = fmt_row(header.to_vec());
    for row in rows {
        out.push('\n');
        out.push_str(&fmt_row(row.iter().map(String::as_str).collect()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("750ms").unwrap(), Duration::from_millis(750));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn tables() {
        let t =
            table(&["ID", "ROLE"], &[vec!["1".into(), "voter".into()], vec!["12".into(), "learner".into()]]);
        assert_eq!(t, "ID  ROLE\n1   voter\n12  learner");
    }
}
