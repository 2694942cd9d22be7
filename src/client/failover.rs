//! The failover of a long-lived stream (a watch, an election observer): which endpoint to
//! try next, the pause between attempts, and when to give up on a stream that was never
//! established.
//!
//! Rules: a stream moves to the next endpoint after every failed attempt and every lost
//! connection, after a pause that grows while attempts keep giving nothing (100 ms,
//! doubling, at most 2 s); a message resets it. Before the stream was first established,
//! it gives up once every endpoint refused the connection in a row, or once its patience
//! is spent and every endpoint had a chance (even one that hangs); after that it retries
//! for as long as the caller reads it. An error that another attempt cannot mend (the
//! request was refused) ends it at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::ACCEPT;

use super::{chain, root_cause, Error};

/// The longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The pause after `failures` attempts in a row that gave nothing.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100 << failures.saturating_sub(1).min(5)).min(MAX_BACKOFF)
}

/// Where a stream stands in its failover.
#[derive(Debug)]
pub(super) struct Failover {
    endpoints: Arc<Vec<String>>,
    /// How long a stream never established is retried.
    patience: Duration,
    /// The endpoint in use or to try next (modulo their number).
    idx: usize,
    /// A connection was open once.
    established: bool,
    /// Attempts and connections in a row that gave nothing.
    failures: u32,
    /// Failed attempts since the last connection was lost.
    retries: u32,
    /// Endpoints that refused a connection in a row, before the stream was established.
    refused: Vec<String>,
    first_attempt: Option<Instant>,
    /// The pause before the next attempt.
    wait: Option<Duration>,
}

impl Failover {
    /// A stream over `endpoints`, starting at the one of index `start`.
    pub fn new(endpoints: Arc<Vec<String>>, start: usize, patience: Duration) -> Failover {
        Failover {
            endpoints,
            patience,
            idx: start,
            established: false,
            failures: 0,
            retries: 0,
            refused: Vec::new(),
            first_attempt: None,
            wait: None,
        }
    }

    /// The endpoint in use (or to be tried next).
    pub fn endpoint(&self) -> &str {
        &self.endpoints[self.idx % self.endpoints.len()]
    }

    /// Whether a connection was open once.
    pub fn established(&self) -> bool {
        self.established
    }

    /// The pause before the next attempt, if any.
    pub fn pending_wait(&self) -> Duration {
        self.wait.unwrap_or_default()
    }

    /// Waits out the pause before an attempt.
    pub async fn before_attempt(&mut self) {
        if let Some(wait) = self.wait.take() {
            tokio::time::sleep(wait).await;
        }
        self.first_attempt.get_or_insert_with(Instant::now);
    }

    /// An attempt connected. True when it resumes a stream after failed attempts (worth
    /// telling the user).
    pub fn connected(&mut self) -> bool {
        let resumed = self.established && self.retries > 0;
        self.established = true;
        self.retries = 0;
        self.refused.clear();
        resumed
    }

    /// An attempt on the current endpoint failed with `e` (`transient`: another attempt
    /// may do better). `Err`: the stream ends with that error. `Ok(e)`: the next attempt
    /// goes to the next endpoint after [`Self::pending_wait`].
    pub fn attempt_failed(&mut self, e: Error, transient: bool) -> Result<Error, Error> {
        if !transient {
            return Err(e);
        }
        if !self.established {
            match &e {
                Error::Connect(m) => self.refused.push(m.clone()),
                _ => self.refused.clear(),
            }
            if self.refused.len() >= self.endpoints.len() {
                return Err(Error::Connect(format!(
                    "cannot connect to any endpoint ({})",
                    self.refused.join("; ")
                )));
            }
            let first = self.first_attempt.unwrap_or_else(Instant::now);
            // Every endpoint gets a chance, even one that hangs.
            if first.elapsed() >= self.patience && self.failures + 1 >= self.endpoints.len() as u32 {
                return Err(e);
            }
        }
        self.retries += 1;
        self.lost();
        Ok(e)
    }

    /// A message arrived: the endpoint works.
    pub fn delivered(&mut self) {
        self.failures = 0;
    }

    /// The connection was lost (or given up): the next attempt goes to the next endpoint,
    /// after a pause.
    pub fn lost(&mut self) {
        self.failures += 1;
        self.idx += 1;
        self.wait = Some(backoff(self.failures));
    }
}

/// Why a stream did not open.
pub(super) enum Refusal {
    /// No answer, a transport error, or an error reply that did not arrive whole: another
    /// attempt may do better.
    Transport(Error),
    /// An error reply: its status and body.
    Status(u16, Vec<u8>),
}

/// Opens an NDJSON stream at `url` of `endpoint`: the reply, once its head came within
/// `patience` with a success status.
pub(super) async fn open_stream(
    http: &reqwest::Client,
    endpoint: &str,
    url: &str,
    patience: Duration,
) -> Result<reqwest::Response, Refusal> {
    let req = http.get(url).header(ACCEPT, "application/x-ndjson");
    let resp = match tokio::time::timeout(patience, req.send()).await {
        Err(_) => {
            return Err(Refusal::Transport(Error::Other(format!("{endpoint}: no reply within {patience:?}"))))
        }
        Ok(Err(e)) if e.is_connect() => {
            return Err(Refusal::Transport(Error::Connect(format!("{endpoint}: {}", root_cause(&e)))))
        }
        Ok(Err(e)) => return Err(Refusal::Transport(Error::Other(format!("{endpoint}: {}", chain(&e))))),
        Ok(Ok(resp)) => resp,
    };
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    match tokio::time::timeout(patience, resp.bytes()).await {
        Ok(Ok(bytes)) => Err(Refusal::Status(status.as_u16(), bytes.to_vec())),
        Ok(Err(e)) => {
            Err(Refusal::Transport(Error::Other(format!("{endpoint}: reading the reply: {}", chain(&e)))))
        }
        Err(_) => Err(Refusal::Transport(Error::Other(format!(
            "{endpoint}: the reply did not arrive within {patience:?}"
        )))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1), Duration::from_millis(100));
        assert_eq!(backoff(2), Duration::from_millis(200));
        assert_eq!(backoff(4), Duration::from_millis(800));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(1000), MAX_BACKOFF);
    }

    #[test]
    fn a_stream_never_established_gives_up_when_every_endpoint_refused() {
        let endpoints = Arc::new(vec!["http://a".to_string(), "http://b".to_string()]);
        let mut f = Failover::new(endpoints, 1, Duration::from_secs(60));
        assert_eq!(f.endpoint(), "http://b");
        assert!(f.attempt_failed(Error::Connect("b refused".into()), true).is_ok());
        assert_eq!((f.endpoint(), f.pending_wait()), ("http://a", Duration::from_millis(100)));
        let Err(Error::Connect(m)) = f.attempt_failed(Error::Connect("a refused".into()), true) else {
            panic!("every endpoint refused")
        };
        assert!(m.contains("b refused; a refused"), "{m}");
        // Once established, it retries for as long as it is read.
        let mut f = Failover::new(Arc::new(vec!["http://a".into()]), 0, Duration::ZERO);
        assert!(!f.connected());
        for _ in 0..5 {
            assert!(f.attempt_failed(Error::Connect("refused".into()), true).is_ok());
        }
        assert!(f.connected(), "a resumed stream says so");
        assert!(f.attempt_failed(Error::Other("refused".into()), false).is_err(), "not transient");
    }
}
