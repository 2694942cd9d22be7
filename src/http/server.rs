//! The HTTP server under both routers: our own accept loops, a cap on open connections,
//! the client deadlines of [`super::connection`], and graceful shutdown.
//!
//! Each listener has one accept loop, a task of its own (nothing here shares a task with
//! Raft), and each accepted connection a task of its own. The accept loop never ends
//! before shutdown, and never spins:
//! - an accept error that concerns one connection (`ECONNABORTED`, `ECONNRESET`, ...) is
//!   skipped at once: it used up that connection;
//! - any other (`EMFILE`, `ENFILE`, `ENOBUFS`, `ENOMEM`, ...) pauses accepting for 10 ms,
//!   doubling to 1 s while they go on; the connections wait in the kernel's backlog. While
//!   they go on, [`ServerHealth::readiness`] fails with the cause, so `/readyz` does not
//!   claim the node can serve what it cannot accept; the first accept that works clears it.
//! - past the listener's connection cap, a new connection is answered 503 `overloaded`
//!   (`Connection: close`) and closed; the connections already open are not touched.
//!   On a TLS listener the 503 is sent after a TLS handshake and the first bytes of the
//!   request (an HTTP client takes a reply before its request for a broken connection),
//!   by the task that answers refusals (at most [`REFUSALS_AT_ONCE`] at once, each within
//!   [`REFUSAL_LINGER`]); past that many, a refused TLS connection is simply closed.
//!
//! TLS (when the listener has a certificate): the handshake runs in the connection's own
//! task, never in the accept loop, with the config current at the accept (so a rotated
//! certificate is served to every new connection, see [`crate::tls::Reloading`]). It must
//! finish within `header_timeout`, counted from the accept like the first request head,
//! which must arrive by the same deadline. A failed or late handshake closes the
//! connection; the failures are counted and logged with the last reason (a client's
//! certificate refused, plain HTTP sent to a TLS port, ...).
//!
//! Errors, refusals, failed handshakes and deadline closes are counted and logged at most once a second per
//! listener, never per event: a flood cannot flood the log.
//!
//! Shutdown: the accept loops stop (the listeners close), every connection finishes the
//! request it is serving and closes (an idle one closes at once), and after the grace
//! period whatever is left is closed.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;

use super::connection::{Activity, ClientInfo, CloseCounts, Closed, ConnService, Timeouts, WatchedIo};
use crate::tls::ServerTls;

/// The first pause after an accept error that is not about one connection.
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause between accept attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Refused connections being answered at once per listener; past this, a refused
/// connection gets its reply only if the socket takes it at once.
const REFUSALS_AT_ONCE: usize = 64;
/// How long a refused connection may take to read its 503 and close.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long an idle keep-alive connection stays open once the server drains: long enough
/// for a busy client to send its next request, be served, and read `Connection: close`.
const LINGER: Duration = Duration::from_secs(1);

/// What the server knows of its own health that the node does not: for `/readyz`.
#[derive(Debug, Default)]
pub struct ServerHealth {
    /// Per listener: since when its accepts have failed for want of resources, and the
    /// last such error.
    cannot_accept: Mutex<BTreeMap<&'static str, (Instant, String)>>,
}

impl ServerHealth {
    /// `Err(why)` while a listener cannot accept connections (out of file descriptors,
    /// socket buffers or memory).
    pub fn readiness(&self) -> Result<(), String> {
        let failing = self.cannot_accept.lock().unwrap_or_else(|e| e.into_inner());
        match failing.iter().next() {
            None => Ok(()),
            Some((listener, (since, error))) => Err(format!(
                "the {listener} listener cannot accept connections ({error}) for {:.1?}",
                since.elapsed()
            )),
        }
    }

    fn accept_failed(&self, listener: &'static str, e: &io::Error) {
        let mut failing = self.cannot_accept.lock().unwrap_or_else(|e| e.into_inner());
        let why = match rustix::io::Errno::from_io_error(e) {
            Some(rustix::io::Errno::MFILE) => format!("out of file descriptors: {e}"),
            Some(rustix::io::Errno::NFILE) => format!("the system is out of file descriptors: {e}"),
            _ => e.to_string(),
        };
        let since = failing.get(listener).map_or_else(Instant::now, |(since, _)| *since);
        failing.insert(listener, (since, why));
    }

    fn accepted(&self, listener: &'static str) {
        let mut failing = self.cannot_accept.lock().unwrap_or_else(|e| e.into_inner());
        if failing.remove(listener).is_some() {
            tracing::info!(listener, "accepting connections again");
        }
    }
}

/// One listener and what it serves.
pub struct Listener {
    /// `client` or `peer`, for logs and readiness messages.
    pub name: &'static str,
    pub tcp: TcpListener,
    pub app: Router,
    /// Open connections at most; more are refused with 503.
    pub max_connections: usize,
    /// The setting `max_connections` comes from, named in the refusal.
    pub cap_setting: &'static str,
    /// The TLS config the listener serves with, kept current as its files change
    /// (`None`: plain HTTP).
    pub tls: Option<ServerTls>,
}

/// Where the server is in its life; connections watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Finish the requests being served, then close (since when).
    Draining(Instant),
    /// The grace period is over: close now.
    Closing,
}

/// Serves `listeners` until `shutdown` resolves, then drains their connections for at
/// most `grace`; `on_drain` runs once draining has begun (what it ends, such as streams,
/// then closes its connection instead of leaving it idle).
pub async fn run(
    listeners: Vec<Listener>,
    timeouts: Timeouts,
    grace: Duration,
    health: Arc<ServerHealth>,
    shutdown: impl std::future::Future<Output = ()>,
    on_drain: impl FnOnce(),
) {
    let (phase, watching) = watch::channel(Phase::Serving);
    // Every accept loop and connection holds a sender; `recv` gives `None` once all are gone.
    let (alive, mut all_gone) = mpsc::channel::<()>(1);
    for l in listeners {
        tokio::spawn(accept_loop(l, timeouts, health.clone(), watching.clone(), alive.clone()));
    }
    drop(alive);
    shutdown.await;
    let _ = phase.send(Phase::Draining(Instant::now()));
    on_drain();
    if tokio::time::timeout(grace, all_gone.recv()).await.is_err() {
        tracing::warn!(?grace, "closing the connections still open after the shutdown grace period");
        let _ = phase.send(Phase::Closing);
        let _ = tokio::time::timeout(Duration::from_secs(1), all_gone.recv()).await;
    }
}

/// Counts of what happened on one listener since its last log line.
#[derive(Default)]
struct Tally {
    refused: u64,
    errors: u64,
    last_error: Option<String>,
}

async fn accept_loop(
    l: Listener,
    timeouts: Timeouts,
    health: Arc<ServerHealth>,
    mut phase: watch::Receiver<Phase>,
    alive: mpsc::Sender<()>,
) {
    let name = l.name;
    let slots = Arc::new(Semaphore::new(l.max_connections));
    let refusing = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    let refusal: Arc<[u8]> = overloaded_reply(&format!(
        "this node has too many open {name} connections ({} = {}); retry shortly",
        l.cap_setting, l.max_connections
    ))
    .into();
    let closes = Arc::new(CloseCounts::default());
    let mut tally = Tally::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backoff = MIN_BACKOFF;
    let mut paused_until: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = phase.wait_for(|p| *p != Phase::Serving) => break,
            _ = tick.tick() => {
                report(name, &mut tally, &closes, l.max_connections, l.cap_setting);
                continue;
            }
            () = sleep_until_some(paused_until), if paused_until.is_some() => {
                paused_until = None;
                continue;
            }
            r = l.tcp.accept(), if paused_until.is_none() => r,
        };
        match accepted {
            Ok((tcp, from)) => {
                backoff = MIN_BACKOFF;
                health.accepted(name);
                // Small request/reply exchanges: never let Nagle hold a reply back.
                let _ = tcp.set_nodelay(true);
                // The config as of this accept: one rotated meanwhile serves the next.
                let tls = l.tls.as_ref().map(|t| t.current());
                match slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let (app, closes, phase, alive) =
                            (l.app.clone(), closes.clone(), phase.clone(), alive.clone());
                        tokio::spawn(async move {
                            serve_connection(tcp, from, tls, app, timeouts, closes, phase).await;
                            tracing::trace!(%from, "connection closed");
                            drop((slot, alive));
                        });
                    }
                    Err(_) => {
                        tally.refused += 1;
                        refuse(tcp, tls, refusal.clone(), &refusing);
                    }
                }
            }
            Err(e) => {
                tally.errors += 1;
                tally.last_error = Some(e.to_string());
                if !is_per_connection(&e) {
                    health.accept_failed(name, &e);
                    paused_until = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
    report(name, &mut tally, &closes, l.max_connections, l.cap_setting);
}

async fn sleep_until_some(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// An accept error that used up one connection (the next accept may well work).
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// The once-a-second log line of a listener, if anything happened.
fn report(name: &'static str, tally: &mut Tally, closes: &CloseCounts, cap: usize, cap_setting: &str) {
    let t = std::mem::take(tally);
    if t.refused > 0 {
        tracing::warn!(
            listener = name,
            refused = t.refused,
            "refused {} connections over the cap of {cap} open connections ({cap_setting})",
            t.refused
        );
    }
    if t.errors > 0 {
        tracing::warn!(
            listener = name,
            errors = t.errors,
            last_error = t.last_error.as_deref().unwrap_or(""),
            "{} accept errors; accepting more slowly until they stop",
            t.errors
        );
    }
    let (handshakes, last_handshake_error) = closes.take_handshakes();
    if handshakes > 0 {
        let last = last_handshake_error.unwrap_or_default();
        tracing::warn!(
            listener = name,
            handshakes,
            "{handshakes} TLS handshakes failed or did not finish in time; the last: {last}"
        );
    }
    let [header, body, idle, write_stall] = closes.take();
    if header + body + write_stall > 0 {
        tracing::warn!(
            listener = name,
            header,
            body,
            write_stall,
            "closed connections of clients too slow to send a request head ({header}), to send a body ({body}) \
             or to read a reply ({write_stall})"
        );
    }
    if idle > 0 {
        tracing::debug!(listener = name, idle, "closed idle keep-alive connections");
    }
}

/// A 503 `overloaded` reply in our error shape that closes the connection.
fn overloaded_reply(message: &str) -> Vec<u8> {
    let body = serde_json::json!({ "error": { "code": "overloaded", "message": message } }).to_string();
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Writes `reply` on a connection over the cap and closes it (over TLS, after the
/// handshake and the first bytes of the request). The client's request is read and thrown away until it closes (at most
/// [`REFUSAL_LINGER`], handshake included): closing a socket with unread input resets it,
/// and a reset can destroy the reply before the client reads it.
fn refuse(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    reply: Arc<[u8]>,
    refusing: &Arc<Semaphore>,
) {
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        if tls.is_none() {
            let _ = tcp.try_write(&reply);
        }
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            match tls {
                None => answer_and_close(tcp, &reply).await,
                Some(cfg) => {
                    let mut stream = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await?;
                    // An HTTP client takes bytes that come before its request for a broken
                    // connection: wait for the request to start.
                    let mut first = [0u8; 1024];
                    if stream.read(&mut first).await? == 0 {
                        return Ok(()); // gone without a request
                    }
                    answer_and_close(stream, &reply).await
                }
            }
        })
        .await;
    });
}

async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, reply: &[u8]) -> io::Result<()> {
    io.write_all(reply).await?;
    io.shutdown().await?;
    let mut sink = [0u8; 1024];
    while io.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Serves one connection until it ends, breaks a deadline, or shutdown closes it; over
/// TLS, after a handshake that must finish by the first head's deadline.
async fn serve_connection(
    tcp: TcpStream,
    from: std::net::SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    timeouts: Timeouts,
    closes: Arc<CloseCounts>,
    mut phase: watch::Receiver<Phase>,
) {
    // Created at the accept: the first head is due `header` after it, handshake included.
    let activity = Arc::new(Activity::new());
    let Some(tls) = tls else {
        return serve_http(
            WatchedIo { io: tcp, activity: activity.clone() },
            ClientInfo { remote: Some(from), certificate: None },
            activity,
            app,
            timeouts,
            closes,
            phase,
        )
        .await;
    };
    let due = Instant::now() + timeouts.header;
    let handshake = tokio_rustls::TlsAcceptor::from(tls).accept(tcp);
    let stream = tokio::select! {
        r = tokio::time::timeout_at(due, handshake) => r,
        // Nothing of a request has arrived: shutdown closes it at once.
        _ = phase.wait_for(|p| *p != Phase::Serving) => return,
    };
    match stream {
        Ok(Ok(stream)) => {
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| super::connection::ClientCertificate(Arc::from(c.as_ref())));
            serve_http(
                WatchedIo { io: stream, activity: activity.clone() },
                ClientInfo { remote: Some(from), certificate },
                activity,
                app,
                timeouts,
                closes,
                phase,
            )
            .await
        }
        Ok(Err(e)) => closes.handshake_failed(format!("from {from}: {e}")),
        Err(_) => closes.handshake_failed(format!(
            "from {from}: no TLS handshake within {:?} (header_timeout_ms)",
            timeouts.header
        )),
    }
}

/// Serves HTTP/1.1 on `io` until the connection ends, breaks a deadline, or shutdown
/// closes it.
async fn serve_http<S>(
    io: WatchedIo<S>,
    client: ClientInfo,
    activity: Arc<Activity>,
    app: Router,
    timeouts: Timeouts,
    closes: Arc<CloseCounts>,
    mut phase: watch::Receiver<Phase>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    let closing = {
        let phase = phase.clone();
        Arc::new(move || *phase.borrow() != Phase::Serving)
    };
    let service =
        ConnService { app, activity: activity.clone(), body_timeout: timeouts.body, client, closing };
    let conn = hyper::server::conn::http1::Builder::new()
        // Our deadlines replace hyper's header timeout, which also runs while a
        // keep-alive connection is idle.
        .header_read_timeout(None)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let far = Duration::from_secs(365 * 24 * 3600);
    let timer = tokio::time::sleep(far);
    tokio::pin!(timer);
    let mut draining = false;
    // Draining, an idle connection stays open a moment (see `LINGER`).
    let linger = tokio::time::sleep(far);
    tokio::pin!(linger);
    let mut lingering = false;
    let missed = loop {
        let due = activity.deadline(&timeouts);
        timer.as_mut().reset(due.map_or_else(|| Instant::now() + far, |(at, _)| at));
        tokio::select! {
            biased;
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended: {e}");
                }
                // Closed after a 408: the client was too slow with a body.
                break activity.body_timed_out().then_some(Closed::Body);
            }
            () = activity.changed() => {}
            () = timer.as_mut(), if due.is_some() => {
                // Decide on the state as it is now, not as it was when the timer was set.
                if let Some((at, why)) = activity.deadline(&timeouts) {
                    if at <= Instant::now() {
                        if why != Closed::Idle {
                            tracing::debug!(?why, "closing a connection whose client missed a deadline");
                        }
                        break Some(why);
                    }
                }
            }
            () = linger.as_mut(), if lingering => {
                lingering = false;
                if activity.is_quiet() {
                    break None;
                }
                conn.as_mut().graceful_shutdown();
            }
            r = phase.changed() => {
                // The sender gone means the server is gone: close.
                match r.map_or(Phase::Closing, |()| *phase.borrow()) {
                    Phase::Serving => {}
                    Phase::Draining(_) if draining => {}
                    // An idle keep-alive connection may be carrying a request this very
                    // moment: closing it now would lose that request unanswered (the client
                    // cannot tell whether it was served). It lingers instead; a request
                    // that comes is served, and its reply closes the connection.
                    Phase::Draining(since) if activity.is_quiet() && activity.idle_since() < since => {
                        draining = true;
                        lingering = true;
                        linger.as_mut().reset(Instant::now() + LINGER);
                    }
                    // Its last request ended as the shutdown began (a stream the shutdown
                    // ended): nothing more is coming on it.
                    Phase::Draining(_) if activity.is_quiet() => break None,
                    Phase::Draining(_) => {
                        conn.as_mut().graceful_shutdown();
                        draining = true;
                    }
                    Phase::Closing => break None,
                }
            }
        }
    };
    if let Some(why) = missed {
        closes.add(why);
    }
}
