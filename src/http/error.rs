//! The one error shape clients see, and the status each error kind maps to.
//!
//! `{"error": {"code": "...", "message": "...", ...extra}}`. A 500 says nothing about
//! internals; the detail goes to the log.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use crate::error::Error;

/// An error on its way to the client: a code, a message, extra fields, and the headers
/// of the state it reflects (if any).
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub extra: Map<String, Value>,
    /// `(revision, term)` for the X-Palisade-* headers, when the error reflects state.
    pub state: Option<(u64, u64)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), extra: Map::new(), state: None }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message)
    }

    pub fn invalid_key(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_key", message)
    }

    pub fn with(mut self, field: &str, value: Value) -> ApiError {
        self.extra.insert(field.to_string(), value);
        self
    }

    pub fn at(mut self, revision: u64, term: u64) -> ApiError {
        self.state = Some((revision, term));
        self
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> ApiError {
        use StatusCode as S;
        let msg = e.to_string();
        match e {
            Error::InvalidKey(_) => ApiError::new(S::BAD_REQUEST, "invalid_key", msg),
            Error::InvalidArgument(_) => ApiError::new(S::BAD_REQUEST, "invalid_argument", msg),
            Error::InvalidJson(_) => ApiError::new(S::BAD_REQUEST, "invalid_json", msg),
            Error::KeyNotFound(_) => ApiError::new(S::NOT_FOUND, "key_not_found", msg),
            Error::LeaseNotFound(_) => ApiError::new(S::NOT_FOUND, "lease_not_found", msg),
            Error::TooLarge(_) => ApiError::new(S::PAYLOAD_TOO_LARGE, "too_large", msg),
            Error::QuotaExceeded(_) => ApiError::new(S::INSUFFICIENT_STORAGE, "quota_exceeded", msg),
            Error::Compacted { compact_revision, .. } => {
                ApiError::new(S::GONE, "compacted", msg).with("compact_revision", json!(compact_revision))
            }
            Error::FutureRevision { revision, .. } => {
                ApiError::new(S::BAD_REQUEST, "future_revision", msg).with("revision", json!(revision))
            }
            Error::Unavailable(_) => ApiError::new(S::SERVICE_UNAVAILABLE, "unavailable", msg),
            Error::Overloaded(_) => ApiError::new(S::TOO_MANY_REQUESTS, "overloaded", msg),
            Error::Timeout(_) => ApiError::new(S::GATEWAY_TIMEOUT, "timeout", msg),
            Error::Unauthenticated(_) => ApiError::new(S::UNAUTHORIZED, "unauthenticated", msg),
            Error::PermissionDenied(_) => ApiError::new(S::FORBIDDEN, "permission_denied", msg),
            Error::NotFound(_) => ApiError::new(S::NOT_FOUND, "not_found", msg),
            Error::MemberNotFound(id) => {
                ApiError::new(S::NOT_FOUND, "member_not_found", msg).with("id", json!(id))
            }
            Error::MemberConflict { reason, .. } => {
                let e = ApiError::new(S::CONFLICT, reason.code(), msg);
                match reason {
                    crate::error::MemberConflict::LearnerBehind { behind } => e.with("behind", json!(behind)),
                    _ => e,
                }
            }
            Error::MethodNotAllowed(_) => ApiError::new(S::METHOD_NOT_ALLOWED, "method_not_allowed", msg),
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                ApiError::new(S::INTERNAL_SERVER_ERROR, "internal", "internal error")
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = Map::new();
        body.insert("code".into(), json!(self.code));
        body.insert("message".into(), json!(self.message));
        body.extend(self.extra);
        let mut resp = (self.status, super::json_body(&json!({ "error": body }))).into_response();
        let h = resp.headers_mut();
        if self.status == StatusCode::SERVICE_UNAVAILABLE || self.status == StatusCode::TOO_MANY_REQUESTS {
            h.insert("retry-after", HeaderValue::from_static("1"));
        }
        if let Some((rev, term)) = self.state {
            super::state_headers(h, rev, term);
        }
        resp
    }
}
