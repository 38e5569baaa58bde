//! Errors, split by who they belong to: the client (bad input), a dependency (usage, email), the
//! service itself (database), or start-up. Request errors render as `{"error": "..."}` with the
//! status a client can act on.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why a request could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The client sent something invalid: 400.
    #[error("{0}")]
    BadRequest(String),
    /// What the request is about does not exist: 404.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with an earlier one (idempotency key reuse): 422.
    #[error("{0}")]
    Unprocessable(String),
    /// Admission control or an exhausted connection pool: 503 with `Retry-After`.
    #[error("{0}")]
    Overloaded(String),
    /// A dependency did not answer in time: 504.
    #[error("{dependency} timed out: {detail}")]
    DependencyTimeout {
        /// `usage` or `email`.
        dependency: &'static str,
        /// What was tried.
        detail: String,
    },
    /// A dependency answered badly or could not be reached: 502.
    #[error("{dependency} failed: {detail}")]
    DependencyFailed {
        /// `usage` or `email`.
        dependency: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The database failed: 500 (503 when it is only busy).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl RequestError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RequestError::NotFound(_) => StatusCode::NOT_FOUND,
            RequestError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            RequestError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::DependencyTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            RequestError::DependencyFailed { .. } => StatusCode::BAD_GATEWAY,
            RequestError::Database(sqlx::Error::PoolTimedOut) => StatusCode::SERVICE_UNAVAILABLE,
            RequestError::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short machine-readable kind for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            RequestError::BadRequest(_) => "bad_request",
            RequestError::NotFound(_) => "not_found",
            RequestError::Unprocessable(_) => "unprocessable",
            RequestError::Overloaded(_) => "overloaded",
            RequestError::DependencyTimeout { .. } => "dependency_timeout",
            RequestError::DependencyFailed { .. } => "dependency_failed",
            RequestError::Database(_) => "database",
        }
    }
}

impl IntoResponse for RequestError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A flag value is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be opened or reached.
    #[error("cannot open database {url}: {source}")]
    Database {
        /// The URL with any password masked.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// The schema could not be created or upgraded.
    #[error("cannot prepare the database schema: {0}")]
    Migration(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
}
