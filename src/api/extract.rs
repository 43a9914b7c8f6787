//! Extractors whose refusals are [`ApiError`]s, so a bad body, query or path gets the same
//! status and the same `{"error": …}` body on every route (README "HTTP errors").

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::ApiError;

/// The largest request body any route reads (axum's default, stated so it can be documented
/// and tested): 2 MiB, room for a CSV of several thousand device registrations.
pub const BODY_LIMIT_BYTES: usize = 2 * 1024 * 1024;

/// How much of an oversized body is read and thrown away so that the client, still sending,
/// receives the 413 instead of a reset connection (nginx's "lingering close"); a body declared
/// larger than this is refused without reading.
const DRAIN_LIMIT_BYTES: u64 = 8 * BODY_LIMIT_BYTES as u64;

/// Middleware body of [`limit_body`] for a route with a larger limit of its own (the
/// template import).
pub async fn limit_body_to(limit: usize, req: Request, next: Next) -> Response {
    read_limited(limit, req, next).await
}

/// How long draining an oversized body may take.
const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Middleware: reads the body (at most [`BODY_LIMIT_BYTES`]) before the route runs, so every
/// route answers an oversized body with 413, however it is sent (declared length or
/// chunked) and whether or not the route reads bodies.
pub async fn limit_body(req: Request, next: Next) -> Response {
    read_limited(BODY_LIMIT_BYTES, req, next).await
}

async fn read_limited(limit: usize, req: Request, next: Next) -> Response {
    let drain_limit = DRAIN_LIMIT_BYTES.max(2 * limit as u64);
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > drain_limit) {
        return too_large(limit);
    }
    let (parts, body) = req.into_parts();
    let mut chunks = body.into_data_stream();
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    while let Some(chunk) = chunks.next().await {
        let Ok(chunk) = chunk else {
            return ApiError::BadRequest("the request body could not be read".into())
                .into_response();
        };
        total += chunk.len() as u64;
        if total > limit as u64 {
            let _ = tokio::time::timeout(DRAIN_TIME, async {
                while let Some(Ok(more)) = chunks.next().await {
                    total += more.len() as u64;
                    if total > drain_limit {
                        break;
                    }
                }
            })
            .await;
            return too_large(limit);
        }
        kept.push(chunk);
    }
    let body = match kept.len() {
        0 => axum::body::Body::empty(),
        1 => axum::body::Body::from(kept.swap_remove(0)),
        _ => axum::body::Body::from(kept.concat()),
    };
    next.run(Request::from_parts(parts, body)).await
}

fn too_large(limit: usize) -> Response {
    if limit == BODY_LIMIT_BYTES {
        ApiError::PayloadTooLarge.into_response()
    } else {
        ApiError::PayloadTooLargeFor(limit).into_response()
    }
}

/// Maps one of axum's rejections by the status axum gives it: that status already tells an
/// oversized body (413) from a missing content type (415), malformed input (400) and
/// well-formed input of the wrong shape (422); only the body changes, to our JSON.
fn rejected(status: StatusCode, text: String) -> ApiError {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ApiError::UnsupportedMediaType(text),
        StatusCode::UNPROCESSABLE_ENTITY => ApiError::Invalid(text),
        s if s.is_server_error() => ApiError::Internal(text),
        _ => ApiError::BadRequest(text),
    }
}

/// A JSON body (`Content-Type: application/json`, or any `+json` type).
#[derive(Debug)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        axum::Json::<T>::from_request(req, state)
            .await
            .map(|axum::Json(v)| Json(v))
            .map_err(|r| rejected(r.status(), r.body_text()))
    }
}

/// The raw body, with its media type (`type/subtype`, lower case, without parameters).
#[derive(Debug)]
pub struct Body {
    /// The `Content-Type` essence, empty when absent.
    pub media_type: String,
    /// The bytes.
    pub bytes: Bytes,
}

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let media_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|r| rejected(r.status(), r.body_text()))?;
        Ok(Body { media_type, bytes })
    }
}

impl Body {
    /// Whether the media type is JSON (`application/json` or a `+json` type).
    pub fn is_json(&self) -> bool {
        self.media_type == "application/json" || self.media_type.ends_with("+json")
    }
}

/// A query string.
#[derive(Debug)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|r| ApiError::BadRequest(r.body_text()))
    }
}

/// Path parameters.
#[derive(Debug)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| Path(v))
            .map_err(|r| rejected(r.status(), r.body_text()))
    }
}

/// A list route's page size: `default` when absent, else 1..=`max`; anything else is refused
/// (400) rather than quietly clamped, so a script learns its page is not what it asked for.
pub fn limit(given: Option<i64>, default: i64, max: i64) -> Result<i64, ApiError> {
    match given {
        None => Ok(default),
        Some(n) if (1..=max).contains(&n) => Ok(n),
        Some(n) => Err(ApiError::BadRequest(format!(
            "limit {n} is out of range: 1..={max}"
        ))),
    }
}
