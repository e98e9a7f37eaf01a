//! The one HTTP error type: every failure leaves the service as RFC 9457 problem+json.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tenfold_catalog::{FieldError, ValidationErrors};
use tenfold_store::StoreError;
use utoipa::ToSchema;

use crate::observe::current_request_id;

/// Media type of error bodies.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// A URI reference naming the kind of problem.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// A short summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request, for a person to read.
    pub detail: String,
    /// Each invalid field, for validation errors.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request's id, to quote when reporting the problem.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// Why a request failed. Converting it into a response logs server-side causes and never leaks them.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request cannot be understood.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no usable credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// 403: credentials given but not good for this.
    #[error("{0}")]
    Forbidden(String),
    /// 404.
    #[error("{0}")]
    NotFound(String),
    /// 405.
    #[error("method {0} is not allowed on this resource")]
    MethodNotAllowed(String),
    /// 409: the request conflicts with the current state (a duplicate unique value).
    #[error("{0}")]
    Conflict(String),
    /// 412: If-Match did not match.
    #[error("{0}")]
    PreconditionFailed(String),
    /// 413.
    #[error("the request body is larger than the limit of {0} bytes")]
    PayloadTooLarge(usize),
    /// 415.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: the body parsed but some fields are invalid.
    #[error("{0}")]
    Validation(ValidationErrors),
    /// 429: this client sent more than its rate allows; it may try again after `retry_after`.
    #[error("{detail}")]
    TooManyRequests {
        /// Which limit, and how it was exceeded.
        detail: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// 503: a dependency is unavailable or the request ran out of time; try again later.
    #[error("{detail}")]
    Unavailable {
        /// What is unavailable.
        detail: String,
        /// When to try again.
        retry_after: Duration,
    },
    /// 500: a bug or a broken dependency; the cause is logged, not shown.
    #[error("internal error: {0}")]
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    /// A 422 for a single field.
    pub fn field(field: &str, message: impl Into<String>) -> ApiError {
        let mut e = ValidationErrors::default();
        e.push(field, message);
        ApiError::Validation(e)
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            BadRequest(_) => (
                StatusCode::BAD_REQUEST,
                "/problems/bad-request",
                "Bad request",
            ),
            Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "/problems/unauthorized",
                "Authentication required",
            ),
            Forbidden(_) => (StatusCode::FORBIDDEN, "/problems/forbidden", "Forbidden"),
            NotFound(_) => (StatusCode::NOT_FOUND, "/problems/not-found", "Not found"),
            MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "/problems/method-not-allowed",
                "Method not allowed",
            ),
            Conflict(_) => (StatusCode::CONFLICT, "/problems/conflict", "Conflict"),
            TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "/problems/too-many-requests",
                "Too many requests",
            ),
            PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "/problems/precondition-failed",
                "Precondition failed",
            ),
            PayloadTooLarge(_) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "/problems/payload-too-large",
                "Request body too large",
            ),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "/problems/unsupported-media-type",
                "Unsupported media type",
            ),
            Validation(_) => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "/problems/validation",
                "Invalid request",
            ),
            Unavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "/problems/unavailable",
                "Service unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "/problems/internal",
                "Internal server error",
            ),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::NotFound("no such resource".into()),
            StoreError::Conflict(m) => ApiError::Conflict(m),
            e @ StoreError::OrderIdTaken(_) => ApiError::Conflict(format!("{e}; place the order again")),
            StoreError::VersionMismatch { current } => ApiError::PreconditionFailed(format!(
                "the resource has changed since you read it (it is now at version {current}, ETag \"v{current}\"): fetch it again and retry"
            )),
            StoreError::InsufficientStock { product_id, available, requested } => ApiError::Conflict(format!(
                "not enough stock: product {product_id} has {available} left and {requested} were asked for"
            )),
            StoreError::UnknownProduct(id) => {
                ApiError::field("items", format!("product {id} does not exist"))
            }
            StoreError::UnknownCategory(slug) => {
                ApiError::field("category", format!("category \"{slug}\" does not exist; create it first with POST /api/categories"))
            }
            StoreError::Unavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                ApiError::Unavailable {
                    detail: "the database is temporarily unavailable; try again shortly".into(),
                    retry_after: Duration::from_secs(1),
                }
            }
            other => ApiError::Internal(Box::new(other)),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, title) = self.parts();
        let mut errors = Vec::new();
        let detail = match &self {
            ApiError::Internal(cause) => {
                tracing::error!(error = %cause, "internal error");
                "something went wrong on our side; quote the request id if you report it".to_owned()
            }
            ApiError::Validation(v) => {
                errors = v.0.clone();
                if errors.len() == 1 {
                    let e = &errors[0];
                    if e.field.is_empty() {
                        e.message.clone()
                    } else {
                        format!("{}: {}", e.field, e.message)
                    }
                } else {
                    format!("{} fields are invalid; see errors", errors.len())
                }
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind,
            title,
            status: status.as_u16(),
            detail,
            errors,
            request_id: current_request_id(),
        };
        let mut resp = problem_response(status, &problem);
        let headers = resp.headers_mut();
        match &self {
            ApiError::Unavailable { retry_after, .. }
            | ApiError::TooManyRequests { retry_after, .. } => {
                // Whole seconds, rounded up: a client that waits this long is let through.
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
                // Every 503 this service sends is about one request (shed, a feature turned off,
                // maintenance, a dependency that failed it, its deadline), never "this instance is
                // down" (then it would not answer, and its readiness check says so): a load balancer
                // must not stop sending it the requests it can serve (cached reads, critical ones).
                if matches!(self, ApiError::Unavailable { .. }) {
                    headers.insert(
                        tenfold_http::X_LOAD_SHED.clone(),
                        HeaderValue::from_static("refused"),
                    );
                }
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tenfold\""),
                );
            }
            _ => {}
        }
        resp
    }
}

/// Serializes a problem document with the problem+json media type.
pub(crate) fn problem_response(status: StatusCode, problem: &Problem) -> Response {
    let body = serde_json::to_vec(problem).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;
