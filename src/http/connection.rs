//! One client or peer connection (HTTP/1.1): the deadlines its client must keep, and the
//! wrappers through which the connection task sees what the client is doing.
//!
//! A connection is always in one of these phases, each with its own deadline:
//! - **head**: the request head (request line and headers) must arrive in full within
//!   `header_timeout`, counted from the accept for the first request and from the head's
//!   first byte for later ones. A trickled head cannot extend it.
//! - **idle** (keep-alive, no byte of a next request yet): closed after `idle_timeout`.
//! - **serving**: no connection deadline (a handler is bounded by its own request deadline,
//!   a long-poll by its own timeout). The request body must arrive in full within
//!   `body_timeout` of the head: [`DeadlineBody`] makes the handler's read fail with
//!   [`BodyTimeout`], the handler answers 408, and that reply closes the connection.
//! - **unread body** (a reply went out before the body was read, e.g. a 429; hyper drains
//!   the rest before it reads the next head): closed at the body deadline unless a next
//!   request arrives first (even when the rest did arrive: only hyper sees it).
//!
//! In every phase, a reply the client does not read (the socket accepts no write) for
//! `idle_timeout` closes the connection, so a client cannot pin a reply in memory.
//!
//! Closing means dropping hyper's connection: the socket is closed without a reply (there
//! is no request to answer, or the answer cannot be written). This module never touches a
//! slot of the in-flight limits: those are held by handlers, which finish (or are dropped)
//! when the body deadline passes or the connection closes.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, HeaderValue, Request, Response};
use axum::Router;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

/// How long a client may take over each phase of a connection (see the module docs).
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub body: Duration,
    pub idle: Duration,
}

/// A request body that did not arrive in full within the body timeout. Handlers find it
/// in the error of their body read with [`is_body_timeout`] and answer 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in full within {0:?}")]
pub struct BodyTimeout(pub Duration);

/// Whether `e` (or any error it wraps, as axum's body errors do) is a [`BodyTimeout`].
pub fn is_body_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.is::<BodyTimeout>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Why a connection was closed by the server, counted for the once-a-second log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The request head did not arrive in time.
    Header,
    /// A body the handler did not read was not sent in time.
    Body,
    /// No request for `idle_timeout` (ordinary keep-alive housekeeping).
    Idle,
    /// The client did not read a reply for `idle_timeout`.
    WriteStall,
}

/// Counts of connections closed by deadline, per reason, and of failed TLS handshakes,
/// for one listener.
#[derive(Debug, Default)]
pub struct CloseCounts {
    header: AtomicU64,
    body: AtomicU64,
    idle: AtomicU64,
    write_stall: AtomicU64,
    handshakes_failed: AtomicU64,
    /// Why the last TLS handshake failed (the client's address and rustls's reason).
    last_handshake_error: Mutex<Option<String>>,
}

impl CloseCounts {
    pub fn add(&self, why: Closed) {
        let c = match why {
            Closed::Header => &self.header,
            Closed::Body => &self.body,
            Closed::Idle => &self.idle,
            Closed::WriteStall => &self.write_stall,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// A TLS handshake failed or did not finish in time; `why` never holds key material.
    pub fn handshake_failed(&self, why: String) {
        self.handshakes_failed.fetch_add(1, Ordering::Relaxed);
        *self.last_handshake_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
    }

    /// The failed TLS handshakes since the last call and the last one's reason, reset.
    pub fn take_handshakes(&self) -> (u64, Option<String>) {
        let n = self.handshakes_failed.swap(0, Ordering::Relaxed);
        let why = self.last_handshake_error.lock().unwrap_or_else(|e| e.into_inner()).take();
        (n, why)
    }

    /// The counts since the last call (header, body, idle, write stall), reset to zero.
    pub fn take(&self) -> [u64; 4] {
        [&self.header, &self.body, &self.idle, &self.write_stall].map(|c| c.swap(0, Ordering::Relaxed))
    }
}

/// What the connection task needs to know of its client, updated by the socket wrapper,
/// the service and the bodies, all polled inside the connection's own task.
#[derive(Debug)]
struct State {
    /// Requests whose reply has not been sent in full (HTTP/1.1: 0 or 1).
    requests: usize,
    /// Numbers the requests, so that a late signal from an old body is ignored.
    seq: u64,
    /// No request yet: the first head's deadline counts from the accept.
    fresh: bool,
    /// The accept, or the end of the last reply.
    idle_since: Instant,
    /// The first byte of the next head, read while no request was being served.
    head_started: Option<Instant>,
    /// The current request's body must be in by then; `None` once it was read in full.
    body_deadline: Option<Instant>,
    /// Since when the socket has refused our writes (the client does not read).
    write_blocked_since: Option<Instant>,
    /// A body timed out: every later reply says `Connection: close`.
    body_timed_out: bool,
}

/// The shared view of one connection, and the bell that rings when its deadline may have
/// moved earlier.
#[derive(Debug)]
pub struct Activity {
    state: Mutex<State>,
    changed: tokio::sync::Notify,
}

impl Activity {
    pub fn new() -> Activity {
        Activity {
            state: Mutex::new(State {
                requests: 0,
                seq: 0,
                fresh: true,
                idle_since: Instant::now(),
                head_started: None,
                body_deadline: None,
                write_blocked_since: None,
                body_timed_out: false,
            }),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The earliest deadline of the connection and what it is for; `None` while a request
    /// is being served and the client reads its replies.
    pub fn deadline(&self, t: &Timeouts) -> Option<(Instant, Closed)> {
        let s = self.state();
        let mut due: Option<(Instant, Closed)> = None;
        let mut consider = |at: Instant, why: Closed| {
            if due.is_none_or(|(d, _)| at < d) {
                due = Some((at, why));
            }
        };
        if let Some(since) = s.write_blocked_since {
            consider(since + t.idle, Closed::WriteStall);
        }
        if s.requests == 0 {
            if let Some(at) = s.body_deadline {
                consider(at, Closed::Body);
            }
            match (s.fresh, s.head_started) {
                (true, _) => consider(s.idle_since + t.header, Closed::Header),
                (false, Some(at)) => consider(at + t.header, Closed::Header),
                (false, None) => consider(s.idle_since + t.idle, Closed::Idle),
            }
        }
        due
    }

    /// When the connection last became idle (its last request ended, or it was accepted).
    pub fn idle_since(&self) -> Instant {
        self.state().idle_since
    }

    /// Whether nothing of a request has arrived or is being served: the connection can be
    /// closed at shutdown without cutting anyone off.
    pub fn is_quiet(&self) -> bool {
        let s = self.state();
        s.requests == 0 && s.head_started.is_none()
    }

    /// Waits until the state changed in a way that may move the deadline earlier.
    pub async fn changed(&self) {
        self.changed.notified().await
    }

    fn bytes_read(&self) {
        let mut s = self.state();
        if s.requests == 0 && s.head_started.is_none() {
            s.head_started = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    fn write_blocked(&self) {
        let mut s = self.state();
        if s.write_blocked_since.is_none() {
            s.write_blocked_since = Some(Instant::now());
            drop(s);
            self.changed.notify_one();
        }
    }

    fn wrote(&self) {
        self.state().write_blocked_since = None;
    }

    /// A request head arrived: returns the request's number.
    fn request_started(&self, body_deadline: Option<Instant>) -> u64 {
        let mut s = self.state();
        s.requests += 1;
        s.seq += 1;
        s.fresh = false;
        s.head_started = None;
        s.body_deadline = body_deadline;
        s.seq
    }

    fn request_done(&self) {
        let mut s = self.state();
        s.requests = s.requests.saturating_sub(1);
        if s.requests == 0 {
            s.idle_since = Instant::now();
            drop(s);
            self.changed.notify_one();
        }
    }

    fn body_done(&self, seq: u64) {
        let mut s = self.state();
        if s.seq == seq {
            s.body_deadline = None;
        }
    }

    fn body_timed_out_now(&self) {
        self.state().body_timed_out = true;
    }

    /// Whether a request body of this connection missed its deadline (its reply then
    /// closed the connection).
    pub fn body_timed_out(&self) -> bool {
        self.state().body_timed_out
    }
}

/// The accepted connection (the socket, or the TLS stream over it: then the reads and
/// writes seen are of the plaintext), reporting reads and blocked writes to the
/// connection's [`Activity`].
pub struct WatchedIo<S> {
    pub io: S,
    pub activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        r
    }
}

impl<S> WatchedIo<S> {
    fn note_write(&self, r: &Poll<io::Result<usize>>) {
        match r {
            Poll::Pending => self.activity.write_blocked(),
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.wrote(),
            Poll::Ready(_) => {}
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.note_write(&r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.note_write(&r);
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The address a request came from, in its extensions (for log lines about it).
#[derive(Debug, Clone, Copy)]
pub struct RemoteAddr(pub std::net::SocketAddr);

/// The certificate (DER) the client presented in the TLS handshake of the connection a
/// request came on, in its extensions (a peer listener with mutual TLS checks whom it
/// names).
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Arc<[u8]>);

/// What a connection knows of its client, put into every request's extensions.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    /// The client's address, if the socket could tell.
    pub remote: Option<std::net::SocketAddr>,
    /// Its TLS certificate, if it presented one.
    pub certificate: Option<ClientCertificate>,
}

/// The hyper service of one connection: the router, with each request's body under its
/// deadline, its [`RemoteAddr`] in its extensions, and each reply tracked until it is sent.
#[derive(Clone)]
pub struct ConnService {
    pub app: Router,
    pub activity: Arc<Activity>,
    pub body_timeout: Duration,
    pub client: ClientInfo,
    /// Whether the server is shutting down: a reply then closes its connection.
    pub closing: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ReplyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ReplyBody>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let deadline = Instant::now() + self.body_timeout;
        let has_body = !req.body().is_end_stream();
        let seq = self.activity.request_started(has_body.then_some(deadline));
        // Dropped with the reply body once hyper has sent it, or with this future if the
        // connection goes away first: either way the request is over.
        let done = RequestDone(self.activity.clone());
        let activity = self.activity.clone();
        let timeout = self.body_timeout;
        let mut req = req.map(|inner| DeadlineBody::new(inner, deadline, timeout, seq, activity.clone()));
        if let Some(remote) = self.client.remote {
            req.extensions_mut().insert(RemoteAddr(remote));
        }
        if let Some(cert) = &self.client.certificate {
            req.extensions_mut().insert(cert.clone());
        }
        let app = self.app.clone();
        let closing = self.closing.clone();
        Box::pin(async move {
            let Ok(mut resp) = app.oneshot(req).await;
            // After a body that timed out, the rest of it is still on its way (or never
            // coming): this connection cannot carry another request. While the server
            // shuts down, the client learns from the reply not to send another on it (a
            // request sent on a connection as the server closes it would be lost unanswered).
            if activity.body_timed_out() || closing() {
                resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Ok(resp.map(|inner| ReplyBody { inner, _done: done }))
        })
    }
}

/// Ends a request in the connection's [`Activity`] when dropped.
struct RequestDone(Arc<Activity>);

impl Drop for RequestDone {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A reply body that ends its request when hyper is done with it.
pub struct ReplyBody {
    inner: axum::body::Body,
    _done: RequestDone,
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that fails with [`BodyTimeout`] if it has not arrived in full by its
/// deadline. The timer only starts when the body is first found waiting.
pub struct DeadlineBody<B = Incoming> {
    inner: B,
    deadline: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// Ended, failed or timed out: no more frames.
    finished: bool,
    seq: u64,
    activity: Arc<Activity>,
}

impl<B> DeadlineBody<B> {
    /// `inner`, which must be in full by `deadline` (`timeout` after its head).
    fn new(
        inner: B,
        deadline: Instant,
        timeout: Duration,
        seq: u64,
        activity: Arc<Activity>,
    ) -> DeadlineBody<B> {
        DeadlineBody { inner, deadline, timeout, timer: None, finished: false, seq, activity }
    }

    fn finish(&mut self) {
        self.finished = true;
        self.activity.body_done(self.seq);
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if self.inner.is_end_stream() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.finished = true;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                let deadline = self.deadline;
                let timer = self.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.as_mut().poll(cx).is_ready() {
                    self.finished = true;
                    self.activity.body_timed_out_now();
                    return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        header: Duration::from_secs(1),
        body: Duration::from_secs(2),
        idle: Duration::from_secs(10),
    };

    #[tokio::test(start_paused = true)]
    async fn each_phase_has_its_deadline() {
        let a = Activity::new();
        let t0 = Instant::now();
        // A fresh connection: the head is due a header timeout after the accept, even if
        // its first byte comes late.
        assert_eq!(a.deadline(&T), Some((t0 + T.header, Closed::Header)));
        tokio::time::advance(Duration::from_millis(500)).await;
        a.bytes_read();
        assert_eq!(a.deadline(&T), Some((t0 + T.header, Closed::Header)));
        assert!(!a.is_quiet());
        // Serving: no connection deadline while the client reads replies.
        let seq = a.request_started(Some(Instant::now() + T.body));
        assert_eq!(a.deadline(&T), None);
        a.body_done(seq);
        a.request_done();
        // Idle: the idle timeout, from the end of the reply.
        let idle = Instant::now();
        assert_eq!(a.deadline(&T), Some((idle + T.idle, Closed::Idle)));
        assert!(a.is_quiet());
        // A byte of a next head: now the header timeout, from that byte.
        tokio::time::advance(Duration::from_secs(3)).await;
        a.bytes_read();
        let first = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        a.bytes_read();
        assert_eq!(a.deadline(&T), Some((first + T.header, Closed::Header)));
        // A reply sent before its body was read: the body deadline still holds.
        let body_due = Instant::now() + T.body;
        a.request_started(Some(body_due));
        a.request_done();
        assert_eq!(a.deadline(&T), Some((body_due, Closed::Body)));
        // A client that stops reading: even while serving.
        a.request_started(None);
        a.write_blocked();
        let blocked = Instant::now();
        assert_eq!(a.deadline(&T), Some((blocked + T.idle, Closed::WriteStall)));
        a.wrote();
        assert_eq!(a.deadline(&T), None);
    }

    /// A body that sends `first`, then stalls forever.
    fn stalled(
        first: &'static str,
    ) -> http_body_util::StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> + Unpin>
    {
        let first = futures::stream::iter([Ok(Frame::data(Bytes::from_static(first.as_bytes())))]);
        http_body_util::StreamBody::new(futures::StreamExt::chain(first, futures::stream::pending()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_at_its_deadline_and_the_handler_can_tell() {
        let a = Arc::new(Activity::new());
        let start = Instant::now();
        let seq = a.request_started(Some(start + T.body));
        let body = axum::body::Body::new(DeadlineBody::new(
            stalled("{\"val"),
            start + T.body,
            T.body,
            seq,
            a.clone(),
        ));
        let e = axum::body::to_bytes(body, 1024).await.unwrap_err();
        assert_eq!(Instant::now(), start + T.body);
        assert!(is_body_timeout(&e), "{e:?}");
        assert!(a.body_timed_out(), "the reply to a timed-out body closes the connection");
        assert!(!is_body_timeout(&axum::Error::new(io::Error::other("reset"))));
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_clears_its_deadline() {
        let a = Arc::new(Activity::new());
        let due = Instant::now() + T.body;
        let seq = a.request_started(Some(due));
        let full = http_body_util::Full::new(Bytes::from_static(b"{}"));
        let body = axum::body::Body::new(DeadlineBody::new(full, due, T.body, seq, a.clone()));
        assert_eq!(&axum::body::to_bytes(body, 1024).await.unwrap()[..], b"{}");
        a.request_done();
        assert_eq!(a.deadline(&T).map(|(_, why)| why), Some(Closed::Idle));
        assert!(!a.body_timed_out());
    }
}
