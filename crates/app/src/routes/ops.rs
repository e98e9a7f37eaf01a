//! Operational endpoints: liveness, readiness, metrics.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use utoipa::ToSchema;

use crate::error::{ApiError, Problem};
use crate::App;

/// Liveness or readiness status.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// `ok` or `ready`.
    pub status: String,
    /// The database engine, on readiness.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "Alive", body = Status)))]
pub(crate) async fn healthz() -> Response {
    // A fixed body with no allocation: this route is the benchmarks' yardstick.
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        r#"{"status":"ok"}"#,
    )
        .into_response()
}

/// Readiness: the database answers and its schema is current.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Ready", body = Status),
        (status = 503, description = "Not ready, with the reason", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(app): State<App>) -> Result<Json<Status>, ApiError> {
    let unavailable = |detail: String| ApiError::Unavailable {
        detail,
        retry_after: Duration::from_secs(1),
    };
    let r = app
        .store()
        .readiness()
        .await
        .map_err(|e| unavailable(format!("the database is not reachable: {e}")))?;
    if !r.migrations_current() {
        return Err(unavailable(format!(
            "database migrations are not current: applied {:?}, this binary needs {:?}; run `tenfold migrate`",
            r.applied, r.expected
        )));
    }
    let engine = match app.store().engine() {
        tenfold_store::Engine::Sqlite => "sqlite",
        tenfold_store::Engine::Postgres => "postgres",
    };
    Ok(Json(Status {
        status: "ready".into(),
        database: Some(engine.into()),
    }))
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Metrics", content_type = "text/plain")))]
pub(crate) async fn metrics(State(app): State<App>) -> Response {
    for s in app.store().pool_stats() {
        metrics::gauge!("db_pool_connections", "pool" => s.pool, "state" => "idle")
            .set(f64::from(s.idle));
        metrics::gauge!("db_pool_connections", "pool" => s.pool, "state" => "in_use")
            .set(f64::from(s.size.saturating_sub(s.idle)));
        metrics::gauge!("db_pool_max_connections", "pool" => s.pool).set(f64::from(s.max));
    }
    let handle = crate::observe::prometheus();
    handle.run_upkeep();
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        handle.render(),
    )
        .into_response()
}
