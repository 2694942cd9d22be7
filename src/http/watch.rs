//! `GET /v1/watch/{key}`: a watch as a stream of Server-Sent Events (the default) or of
//! newline-delimited JSON (`Accept: application/x-ndjson`).
//!
//! Every bad parameter is refused with 400 before the stream starts. Once it has started
//! the status is 200 and everything, the end of a watch whose history is gone included,
//! is a message in the stream. The body is produced only as fast as the client reads it:
//! the next frame is read from the history when the connection can take it, so a stalled
//! client holds a cursor, not a queue.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::error::ApiError;
use super::kv::{consistency, key_under};
use super::query::Query;
use crate::auth::Caller;
use crate::node::{Node, Watch, WatchFrame, WatchRequest};
use crate::store::events::Selector;
use crate::wire::watch::{CompactedBody, ProgressBody, WatchEvent, WatchMessage};

/// The default interval of progress messages on an idle watch.
pub const DEFAULT_PROGRESS: Duration = Duration::from_secs(10);

const PARAMS: &[&str] = &["recursive", "start_revision", "prev_kv", "types", "progress", "consistency"];

/// How the stream is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Sse,
    Ndjson,
}

impl Format {
    fn content_type(self) -> &'static str {
        match self {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// The bytes before a message's JSON.
    fn open(self, out: &mut Vec<u8>, event: &str, id: Option<u64>) {
        if self == Format::Sse {
            if let Some(id) = id {
                out.extend_from_slice(format!("id: {id}\n").as_bytes());
            }
            out.extend_from_slice(format!("event: {event}\ndata: ").as_bytes());
        }
    }

    /// The bytes after a message's JSON.
    fn close(self, out: &mut Vec<u8>) {
        out.extend_from_slice(if self == Format::Sse { b"\n\n" } else { b"\n" });
    }

    /// A whole message.
    fn message(self, out: &mut Vec<u8>, event: &str, id: Option<u64>, msg: &WatchMessage) {
        self.open(out, event, id);
        serde_json::to_writer(&mut *out, msg).expect("messages serialise");
        self.close(out);
    }

    /// A frame: a whole message, or a part of one revision's message (the JSON of one
    /// message never holds a newline, so its parts concatenate into one `data:` line).
    fn frame(self, frame: WatchFrame) -> Vec<u8> {
        let mut out = Vec::new();
        match frame {
            WatchFrame::Progress { revision } => self.message(
                &mut out,
                "progress",
                Some(revision),
                &WatchMessage::Progress { progress: ProgressBody { revision } },
            ),
            WatchFrame::Compacted { compact_revision } => self.message(
                &mut out,
                "compacted",
                None,
                &WatchMessage::Compacted { compacted: CompactedBody { compact_revision } },
            ),
            WatchFrame::Events { revision, events, first, last } => {
                if first {
                    self.open(&mut out, "change", Some(revision));
                    out.extend_from_slice(format!("{{\"revision\":{revision},\"events\":[").as_bytes());
                }
                for (i, e) in events.into_iter().enumerate() {
                    if i > 0 || !first {
                        out.push(b',');
                    }
                    serde_json::to_writer(&mut out, &WatchEvent::from(e)).expect("events serialise");
                }
                if last {
                    out.extend_from_slice(b"]}");
                    self.close(&mut out);
                }
            }
        }
        out
    }
}

/// A parsed watch request and its framing.
fn parse(node: &Node, uri: &Uri, headers: &HeaderMap) -> Result<(WatchRequest, Format), ApiError> {
    let key = key_under(node, uri, "/v1/watch")?;
    let q = Query::parse(uri.query(), PARAMS)?;
    let mut start = q.u64("start_revision")?;
    if headers.get_all("last-event-id").iter().count() > 1 {
        return Err(ApiError::invalid("Last-Event-ID is given twice"));
    }
    if let Some(id) = headers.get("last-event-id") {
        let id = id.to_str().ok().and_then(|s| Query::parse_u64("Last-Event-ID", s.trim()).ok()).ok_or_else(
            || {
                ApiError::invalid(
                    "Last-Event-ID must be the id of a message of a previous watch (a revision)",
                )
            },
        )?;
        // A reconnecting client resumes after the last message it got.
        start = Some(id.saturating_add(1));
    }
    let (puts, deletes) = match q.str("types") {
        None => (true, true),
        Some(t) => {
            let mut kinds = (false, false);
            for part in t.split(',') {
                match part.trim() {
                    "put" => kinds.0 = true,
                    "delete" => kinds.1 = true,
                    other => {
                        return Err(ApiError::invalid(format!(
                            "types must be put, delete or put,delete, not {other:?}"
                        )))
                    }
                }
            }
            kinds
        }
    };
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = if accept.contains("application/x-ndjson") { Format::Ndjson } else { Format::Sse };
    let req = WatchRequest {
        selector: Selector { key, recursive: q.flag("recursive")? },
        start,
        prev_kv: q.flag("prev_kv")?,
        puts,
        deletes,
        progress: q.duration("progress")?.unwrap_or(DEFAULT_PROGRESS),
        consistency: consistency(&q)?,
    };
    Ok((req, format))
}

/// `GET /v1/watch/{key}`.
pub async fn watch(
    State(node): State<Arc<Node>>,
    Extension(caller): Extension<Caller>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (req, format) = parse(&node, &uri, &headers)?;
    caller.check_read(&req.selector.key, req.selector.recursive)?;
    let watch = node.watch(req).await?;
    let head = watch.head;
    // A token's permission lasts as long as the token: the stream ends when it expires
    // (the client resumes with a fresh one from the last revision it saw).
    let until = caller.stream_deadline();
    let body =
        futures::stream::unfold((watch, format), move |(mut watch, format): (Watch, Format)| async move {
            let frame = match until {
                Some(t) => tokio::time::timeout_at(t, watch.next()).await.ok()??,
                None => watch.next().await?,
            };
            Some((Ok::<_, std::convert::Infallible>(Bytes::from(format.frame(frame))), (watch, format)))
        });
    let mut resp = (StatusCode::OK, Body::from_stream(body)).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(format.content_type()));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Proxies such as nginx must not buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    super::state_headers(h, head, node.term());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::events::Event;
    use crate::store::KeyValue;

    fn put(key: &str, rev: u64) -> Event {
        let kv = KeyValue {
            key: key.into(),
            value: b"v".to_vec(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        };
        Event::Put { kv, prev: None }
    }

    /// A revision sent in parts reads as the one message it would have been whole.
    #[test]
    fn parts_make_one_message() {
        for format in [Format::Sse, Format::Ndjson] {
            let whole = format.frame(WatchFrame::Events {
                revision: 9,
                events: vec![put("/a", 9), put("/b", 9), put("/c", 9)],
                first: true,
                last: true,
            });
            let mut parts = format.frame(WatchFrame::Events {
                revision: 9,
                events: vec![put("/a", 9)],
                first: true,
                last: false,
            });
            parts.extend(format.frame(WatchFrame::Events {
                revision: 9,
                events: vec![put("/b", 9), put("/c", 9)],
                first: false,
                last: false,
            }));
            parts.extend(format.frame(WatchFrame::Events {
                revision: 9,
                events: vec![],
                first: false,
                last: true,
            }));
            assert_eq!(String::from_utf8(parts).unwrap(), String::from_utf8(whole.clone()).unwrap());
            let text = String::from_utf8(whole).unwrap();
            let json = match format {
                Format::Sse => {
                    assert!(text.starts_with("id: 9\nevent: change\ndata: {"), "{text}");
                    assert!(text.ends_with("}\n\n"));
                    text.lines().find_map(|l| l.strip_prefix("data: ")).unwrap().to_string()
                }
                Format::Ndjson => {
                    assert_eq!(text.matches('\n').count(), 1);
                    text.trim_end().to_string()
                }
            };
            let msg: WatchMessage = serde_json::from_str(&json).unwrap();
            match msg {
                WatchMessage::Change { revision: 9, events } => assert_eq!(events.len(), 3),
                m => panic!("{m:?}"),
            }
        }
    }
}
