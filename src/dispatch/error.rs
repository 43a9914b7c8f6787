//! Every error the API returns, mapped to its status in one exhaustive match.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::store::StoreError;

/// API errors.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No or wrong credentials.
    #[error("missing or invalid bearer token")]
    Unauthorized,
    /// Bad request parameters.
    #[error("{0}")]
    BadRequest(String),
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Store(e) => match e {
                StoreError::NotFound(_) | StoreError::DeviceNotFound(_) => StatusCode::NOT_FOUND,
                StoreError::Conflict { .. } => StatusCode::CONFLICT,
                StoreError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
                StoreError::Db(_) | StoreError::Migrate(_) => StatusCode::SERVICE_UNAVAILABLE,
            },
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "API request failed");
        }
        (
            status,
            axum::Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}
