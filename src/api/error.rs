//! Every error the API returns, mapped to its status in one exhaustive match. One status per
//! kind of failure, whatever the route (README "HTTP errors"): 400 malformed (JSON or CSV
//! syntax, query string, path), 401 no credentials, 403 a step the caller's role may not
//! take, 404 no such thing, 409 step not allowed now, 413 body over the limit, 415 content type not taken, 422 well-formed but invalid,
//! 503 store unavailable. The body is always `{"error": "…"}`, plus `problems` when there are
//! several.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::extract::BODY_LIMIT_BYTES;
use crate::registry::RegistrationError;
use crate::store::StoreError;

/// API errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or wrong credentials.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Wrong login or password (says nothing about which).
    #[error("wrong login or password")]
    BadCredentials,
    /// The caller's role may not take this step.
    #[error("{0}")]
    Forbidden(String),
    /// Malformed request: body syntax, query string or path parameters.
    #[error("{0}")]
    BadRequest(String),
    /// No such thing (for records the store has no error variant of its own for).
    #[error("{0}")]
    NotFound(String),
    /// No such route.
    #[error("no route {0}")]
    NoRoute(String),
    /// The body is larger than [`BODY_LIMIT_BYTES`].
    #[error("the request body is larger than the limit of {BODY_LIMIT_BYTES} bytes")]
    PayloadTooLarge,
    /// The body is larger than this route's own limit (bytes).
    #[error("the request body is larger than this route's limit of {0} bytes")]
    PayloadTooLargeFor(usize),
    /// The route does not take this content type.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Well-formed but invalid.
    #[error("{0}")]
    Invalid(String),
    /// Device registrations with problems, every one listed with its row.
    #[error("invalid registrations")]
    InvalidRegistrations(Vec<RegistrationError>),
    /// A fault of ours.
    #[error("{0}")]
    Internal(String),
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized | ApiError::BadCredentials => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NoRoute(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::PayloadTooLarge | ApiError::PayloadTooLargeFor(_) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Invalid(_) | ApiError::InvalidRegistrations(_) => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Store(e) => match e {
                StoreError::NotFound(_)
                | StoreError::DeviceNotFound(_)
                | StoreError::ResidentNotFound(_)
                | StoreError::SuppressionNotFound(_)
                | StoreError::UserNotFound(_)
                | StoreError::RegionNotFound(_)
                | StoreError::RecordNotFound(_)
                | StoreError::DeliveryNotFound(_) => StatusCode::NOT_FOUND,
                StoreError::Conflict { .. }
                | StoreError::ResidentInUse { .. }
                | StoreError::LoginTaken(_)
                | StoreError::IdNumberTaken { .. }
                | StoreError::RecordConflict { .. }
                | StoreError::DeliveryConflict { .. } => StatusCode::CONFLICT,
                StoreError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
                StoreError::Db(_) | StoreError::Migrate(_) | StoreError::Unanswered(_) => {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            },
        };
        if status.is_server_error() {
            crate::telemetry::api_request_failed(status.as_u16(), &self);
        }
        let body = match &self {
            ApiError::InvalidRegistrations(problems) => {
                json!({ "error": self.to_string(), "problems": problems })
            }
            // Who has the alert, for the console to say so ("taken by …").
            ApiError::Store(StoreError::Conflict { status, holder, .. }) => {
                json!({ "error": self.to_string(), "status": status, "holder": holder })
            }
            _ => json!({ "error": self.to_string() }),
        };
        (status, axum::Json(body)).into_response()
    }
}
