//! Reading request bodies: within the size limit, only in encodings we decode, and as
//! JSON whose errors use our error shape.

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};

use super::connection::is_body_timeout;
use super::error::ApiError;
use crate::error::Error;

/// Reads the whole body, refusing one over `limit` with 413 and one in an encoding we do
/// not decode (`Content-Encoding: gzip`, ...) with 415, before reading any of it. A body
/// that does not arrive in time (`--body-timeout-ms`) is a 408.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes, ApiError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let v = value.to_str().unwrap_or("?").trim();
        if !v.eq_ignore_ascii_case("identity") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_encoding",
                format!("Content-Encoding {v:?} is not supported; send the body uncompressed"),
            ));
        }
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        if is_body_timeout(&e) {
            return body_timeout(&e);
        }
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            || e.to_string().contains("length limit");
        if too_large {
            Error::TooLarge(format!("the request body is over the limit of {limit} bytes")).into()
        } else {
            ApiError::invalid(format!("could not read the request body: {e}"))
        }
    })
}

/// The 408 for a body that did not arrive in time (`e` says how long it had).
pub fn body_timeout(e: &dyn std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", format!("{e}; nothing was done"))
}

/// Parses a JSON body: an empty one is `invalid_json`, a syntax error `invalid_json`, a
/// well-formed body of the wrong shape (an unknown field, a wrong type) `invalid_argument`.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::InvalidJson("a JSON body is required".into()).into());
    }
    // Every body of this API is an object (serde would also take an array for a struct).
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
            Ok(_) => ApiError::invalid("the body must be a JSON object"),
            Err(e) => Error::InvalidJson(format!("the body is not valid JSON: {e}")).into(),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::invalid(format!("invalid body: {e}")),
        _ => Error::InvalidJson(format!("the body is not valid JSON: {e}")).into(),
    })
}
