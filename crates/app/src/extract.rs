//! Extractors whose every rejection is a problem+json [`ApiError`] that says what is wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE};
use axum::http::request::Parts;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;
use tenfold_catalog::ProductId;

use crate::error::ApiError;
use crate::App;

/// A JSON body: 415 without a JSON content type, 413 over the body limit, 400 for malformed JSON
/// (with line and column), 422 for well-formed JSON of the wrong shape (with the field's path).
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<App> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, app: &App) -> Result<Self, Self::Rejection> {
        let ct = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !(essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json")))
        {
            return Err(ApiError::UnsupportedMediaType(if ct.is_empty() {
                "the request has no Content-Type; send JSON with Content-Type: application/json"
                    .into()
            } else {
                format!("Content-Type \"{}\" is not supported; send JSON with Content-Type: application/json", ct.chars().take(100).collect::<String>())
            }));
        }
        let bytes = Bytes::from_request(req, app).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge(app.inner.body_limit)
            } else {
                ApiError::BadRequest(format!("the request body could not be read: {e}"))
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Parses JSON, mapping syntax errors to 400 and shape errors to 422 with the offending path.
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        use serde_json::error::Category;
        match inner.classify() {
            Category::Syntax | Category::Eof | Category::Io => ApiError::BadRequest(format!(
                "the body is not valid JSON: {} (line {}, column {})",
                strip_position(&inner.to_string()),
                inner.line(),
                inner.column()
            )),
            Category::Data => {
                let field = if path == "." { String::new() } else { path };
                ApiError::field(&field, strip_position(&inner.to_string()))
            }
        }
    })
}

/// serde_json appends " at line X column Y"; the problem states the position separately.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

/// Query parameters: 400 when the query string does not parse into `T`.
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str::<T>(q)
            .map(ApiQuery)
            .map_err(|e| ApiError::BadRequest(format!("the query string is not valid: {e}")))
    }
}

/// A `{id}` path segment that must be a positive integer.
pub(crate) struct ProductIdPath(pub(crate) ProductId);

impl<S: Send + Sync> FromRequestParts<S> for ProductIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let n = positive_id(parts, state, "product").await?;
        ProductId::new(n)
            .map(ProductIdPath)
            .map_err(|_| ApiError::BadRequest(format!("{n} is not a product id")))
    }
}

/// The `{id}` path segment as a positive integer, or a 400 naming `what` it should have been.
async fn positive_id<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    what: &str,
) -> Result<i64, ApiError> {
    let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|e| ApiError::BadRequest(e.body_text()))?;
    match raw.parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(ApiError::BadRequest(format!(
            "\"{}\" is not a {what} id: ids are positive integers",
            raw.chars().take(40).collect::<String>()
        ))),
    }
}

/// The token of an `Authorization: Bearer <token>` header, if the request has one of that form.
fn bearer(parts: &Parts) -> Option<Result<&str, ()>> {
    let v = parts.headers.get(AUTHORIZATION)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or(()),
    )
}

/// Proof that the request carries the configured API key; required by every write.
pub(crate) struct Writer;

impl FromRequestParts<App> for Writer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Some(key) = &app.inner.api_key else {
            return Err(ApiError::Forbidden(
                "writes are disabled on this instance: no API key is configured (set TENFOLD_API_KEY)".into(),
            ));
        };
        let token = bearer(parts)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "this operation needs an API key: send Authorization: Bearer <key>".into(),
                )
            })?
            .map_err(|()| {
                ApiError::Unauthorized(
                    "the Authorization header must have the form: Bearer <key>".into(),
                )
            })?;
        if bool::from(token.as_bytes().ct_eq(key.expose_secret().as_bytes())) {
            Ok(Writer)
        } else {
            Err(ApiError::Forbidden("the API key is not valid".into()))
        }
    }
}

/// Header a write answers with and a read may send back: the database state the read must see.
pub(crate) const CONSISTENCY_TOKEN: &str = "consistency-token";

/// A read's `Consistency-Token` (from an earlier write's response): the read is served by a replica that
/// has replayed that state, or by the primary, and never from a cache. 400 when malformed.
pub(crate) struct ReadAfter(pub(crate) Option<tenfold_store::ConsistencyToken>);

impl FromRequestParts<App> for ReadAfter {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &App) -> Result<Self, Self::Rejection> {
        let Some(v) = parts.headers.get(CONSISTENCY_TOKEN) else {
            return Ok(ReadAfter(None));
        };
        let text = v.to_str().map_err(|_| {
            ApiError::BadRequest("Consistency-Token must be ASCII, such as 0/3000060".into())
        })?;
        text.parse()
            .map(|t| ReadAfter(Some(t)))
            .map_err(|e: String| ApiError::BadRequest(format!("Consistency-Token: {e}")))
    }
}

/// A `{id}` path segment naming a customer (a positive integer).
pub(crate) struct CustomerIdPath(pub(crate) i64);

impl<S: Send + Sync> FromRequestParts<S> for CustomerIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        positive_id(parts, state, "customer")
            .await
            .map(CustomerIdPath)
    }
}

/// A request made by a customer: `Authorization: Bearer <customer token>`, checked without the database.
pub(crate) struct CustomerAuth {
    pub(crate) customer_id: i64,
    pub(crate) expires: u64,
}

impl FromRequestParts<App> for CustomerAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, Self::Rejection> {
        let Some(key) = &app.inner.token_key else {
            return Err(ApiError::Forbidden(
                "customer tokens are disabled on this instance: no API key is configured".into(),
            ));
        };
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::Unauthorized(
                    "this operation needs a customer token: send Authorization: Bearer <token>"
                        .into(),
                )
            })?;
        use crate::customer::TokenError;
        match key.verify(token, crate::customer::now_s()) {
            Ok((customer_id, expires)) => Ok(CustomerAuth {
                customer_id,
                expires,
            }),
            Err(TokenError::Expired) => Err(ApiError::Unauthorized(
                "the customer token has expired: ask for a new one".into(),
            )),
            Err(TokenError::Malformed) | Err(TokenError::BadSignature) => Err(
                ApiError::Unauthorized("the customer token is not valid".into()),
            ),
        }
    }
}
