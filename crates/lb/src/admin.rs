//! The admin API: membership without restart, and metrics. Every route but `/healthz` needs the bearer token.

use std::net::SocketAddr;

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tenfold_config::BackendSpec;

use crate::{BackendStatus, Lb, LbError};

fn problem(status: StatusCode, detail: impl Into<String>) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let kind = format!("/problems/{}", title.to_ascii_lowercase().replace(' ', "-"));
    let body = tenfold_http::problem_body(status.as_u16(), &kind, title, &detail.into(), None);
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(tenfold_http::PROBLEM_JSON),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// An admin request that cannot be done, rendered as problem+json.
struct AdminError(StatusCode, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        problem(self.0, self.1)
    }
}

impl From<LbError> for AdminError {
    fn from(e: LbError) -> Self {
        let status = match &e {
            LbError::Exists(_) => StatusCode::CONFLICT,
            LbError::Unknown(_) => StatusCode::NOT_FOUND,
            LbError::Config(_) => StatusCode::UNPROCESSABLE_ENTITY,
        };
        AdminError(status, e.to_string())
    }
}

/// `GET /backends`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Listing {
    /// The algorithm in use.
    pub algorithm: String,
    /// Every member.
    pub backends: Vec<BackendStatus>,
}

/// `PATCH /backends/{addr}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Change {
    weight: Option<u32>,
    drain: Option<bool>,
}

fn listing(lb: &Lb) -> Json<Listing> {
    Json(Listing {
        algorithm: lb.algorithm().to_string(),
        backends: lb.status(),
    })
}

fn parse_addr(raw: &str) -> Result<SocketAddr, AdminError> {
    raw.parse().map_err(|_| {
        AdminError(
            StatusCode::BAD_REQUEST,
            format!("\"{raw}\" is not a backend address such as 127.0.0.1:9000"),
        )
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, AdminError> {
    serde_json::from_slice(body).map_err(|e| {
        AdminError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("invalid body: {e}"),
        )
    })
}

fn check_weight(w: u32) -> Result<(), AdminError> {
    if (1..=1000).contains(&w) {
        Ok(())
    } else {
        Err(AdminError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "weight must be between 1 and 1000".into(),
        ))
    }
}

async fn list(State(lb): State<Lb>) -> Json<Listing> {
    listing(&lb)
}

async fn add(State(lb): State<Lb>, body: axum::body::Bytes) -> Result<Response, AdminError> {
    let spec: BackendSpec = parse_json(&body)?;
    check_weight(spec.weight)?;
    lb.add_backend(&spec).map_err(AdminError::from)?;
    Ok((StatusCode::CREATED, listing(&lb)).into_response())
}

async fn replace(
    State(lb): State<Lb>,
    body: axum::body::Bytes,
) -> Result<Json<Listing>, AdminError> {
    let specs: Vec<BackendSpec> = parse_json(&body)?;
    for s in &specs {
        check_weight(s.weight)?;
    }
    lb.set_backends(&specs).await.map_err(AdminError::from)?;
    Ok(listing(&lb))
}

async fn change(
    State(lb): State<Lb>,
    Path(addr): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Listing>, AdminError> {
    let addr = parse_addr(&addr)?;
    let c: Change = parse_json(&body)?;
    if let Some(w) = c.weight {
        check_weight(w)?;
        lb.set_weight(addr, w).map_err(AdminError::from)?;
    }
    if c.drain == Some(true) {
        lb.drain(addr).map_err(AdminError::from)?;
    }
    Ok(listing(&lb))
}

async fn remove(State(lb): State<Lb>, Path(addr): Path<String>) -> Result<StatusCode, AdminError> {
    let addr = parse_addr(&addr)?;
    lb.remove_backend(addr).await.map_err(AdminError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn metrics(State(lb): State<Lb>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        lb.render_metrics(),
    )
        .into_response()
}

async fn auth(
    State(token): State<std::sync::Arc<SecretString>>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        None => {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "the admin API needs Authorization: Bearer <admin token>",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"tenfold-admin\""),
            );
            r
        }
        Some(t) if bool::from(t.as_bytes().ct_eq(token.expose_secret().as_bytes())) => {
            next.run(req).await
        }
        Some(_) => problem(StatusCode::FORBIDDEN, "the admin token is not valid"),
    }
}

pub(crate) fn router(lb: Lb, token: SecretString, extra: Router) -> Router {
    let token = std::sync::Arc::new(token);
    let own = Router::new()
        .route("/backends", get(list).post(add).put(replace))
        .route(
            "/backends/{addr}",
            axum::routing::patch(change).delete(remove),
        )
        .route("/metrics", get(metrics))
        .with_state(lb);
    own.merge(extra)
        .layer(axum::middleware::from_fn_with_state(token, auth))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { problem(StatusCode::NOT_FOUND, "no such admin resource") })
}
