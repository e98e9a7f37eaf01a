//! `/api/customers`: stateless customer tokens.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::customer::{now_s, MAX_TTL_S};
use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, CustomerAuth, CustomerIdPath, Writer};
use crate::App;

/// How long a token lives unless asked otherwise: one hour.
const DEFAULT_TTL_S: u64 = 3600;

/// What to issue.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Lifetime in seconds, 1 to 2,592,000 (30 days); default 3,600.
    #[schema(minimum = 1, maximum = 2592000)]
    pub ttl_s: Option<u64>,
}

/// A customer token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerToken {
    /// The customer it acts for.
    pub customer_id: i64,
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
    /// When it stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// Who a customer token speaks for.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CustomerIdentity {
    /// The customer.
    pub customer_id: i64,
    /// When the token expires.
    pub expires_at: DateTime<Utc>,
}

fn at(unix_s: u64) -> DateTime<Utc> {
    DateTime::from_timestamp(i64::try_from(unix_s).unwrap_or(i64::MAX), 0).unwrap_or_default()
}

/// Issue a token that lets a customer act as itself (API key required).
#[utoipa::path(
    post,
    path = "/api/customers/{id}/tokens",
    tag = "customers",
    params(("id" = i64, Path, description = "Customer id", minimum = 1)),
    request_body(content = TokenRequest, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Issued", body = CustomerToken),
        (status = 400, description = "Malformed id or JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid lifetime", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn issue_token(
    State(app): State<App>,
    _w: Writer,
    CustomerIdPath(id): CustomerIdPath,
    ApiJson(req): ApiJson<TokenRequest>,
) -> ApiResult<(StatusCode, Json<CustomerToken>)> {
    let ttl = req.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl) {
        let mut errs = tenfold_catalog::ValidationErrors::default();
        let _: Option<()> = errs.check(
            "ttl_s",
            Err(format!(
                "ttl_s must be between 1 and {MAX_TTL_S} seconds (got {ttl})"
            )),
        );
        return Err(ApiError::Validation(errs));
    }
    let Some(key) = &app.inner.token_key else {
        return Err(ApiError::Forbidden("no API key is configured".into()));
    };
    let expires = now_s() + ttl;
    Ok((
        StatusCode::CREATED,
        Json(CustomerToken {
            customer_id: id,
            token: key.issue(id, expires),
            expires_at: at(expires),
        }),
    ))
}

/// The customer a token speaks for (checked on this instance, without the database).
#[utoipa::path(
    get,
    path = "/api/customers/me",
    tag = "customers",
    security(("customer_token" = [])),
    responses(
        (status = 200, description = "The token's customer", body = CustomerIdentity),
        (status = 401, description = "No token, or an invalid or expired one", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn me(who: CustomerAuth) -> Json<CustomerIdentity> {
    Json(CustomerIdentity {
        customer_id: who.customer_id,
        expires_at: at(who.expires),
    })
}
