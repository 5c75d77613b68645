//! Errors as the server answers them: a status and `{"error": message, "code": CODE}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client. The message is for people; `code` is stable, for programs.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "a valid token is required: send `Authorization: Bearer <token>` \
             (make one with `ml-dash token add NAME`)",
        )
    }
    pub fn forbidden(namespace: &str) -> ApiError {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "FORBIDDEN",
            format!("this token may not write to namespace {namespace:?}"),
        )
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }
}

impl From<ml_dash::Error> for ApiError {
    fn from(e: ml_dash::Error) -> ApiError {
        use ml_dash::Error as E;
        let msg = e.to_string();
        match e {
            E::InvalidInput { .. } => ApiError::bad("INVALID_INPUT", msg),
            E::NotFound(_) => ApiError::not_found(msg),
            E::ChecksumMismatch { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "CHECKSUM_MISMATCH", msg)
            }
            E::Source(_) => ApiError::bad("BAD_BODY", msg),
            E::SourceChanged { .. } => ApiError::bad("BAD_BODY", msg),
            E::LockTimeout { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "BUSY", msg),
            E::Corrupt { .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "CORRUPT", msg),
            _ => ApiError::internal(msg),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.message, "code": self.code});
        (self.status, Json(body)).into_response()
    }
}

pub type ApiResult<T> = std::result::Result<T, ApiError>;
