//! Per-request plumbing: request ids, the request deadline, access logs and Prometheus metrics.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

use crate::error::ApiError;
use crate::App;

/// Header carrying the request id in both directions.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static REQUEST_ID: HeaderValue;
}

/// The id of the request being handled on this task, if any.
pub(crate) fn current_request_id() -> Option<String> {
    REQUEST_ID
        .try_with(|v| v.to_str().ok().map(str::to_owned))
        .ok()
        .flatten()
}

/// A client's id is kept when it is 1-128 visible ASCII characters; otherwise a UUID is made.
fn request_id(req: &Request) -> HeaderValue {
    match req.headers().get(&X_REQUEST_ID) {
        Some(v)
            if (1..=128).contains(&v.len())
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            v.clone()
        }
        _ => {
            let id = uuid::Uuid::new_v4();
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            HeaderValue::from_str(id.hyphenated().encode_lower(&mut buf))
                .unwrap_or(HeaderValue::from_static("-"))
        }
    }
}

/// Outermost middleware: assigns the request id, enforces the deadline, records metrics and logs.
pub(crate) async fn observe(State(app): State<App>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let id = request_id(&req);
    req.headers_mut().insert(X_REQUEST_ID.clone(), id.clone());
    // Only standard methods become label values, so odd requests cannot blow up metric cardinality.
    let method = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let span = tracing::info_span!(
        "request",
        request_id = id.to_str().unwrap_or("-"),
        method,
        path = req.uri().path()
    );
    let deadline = app.inner.request_timeout;
    let mut resp = REQUEST_ID
        .scope(id.clone(), async move {
            match tokio::time::timeout(deadline, next.run(req)).await {
                Ok(resp) => resp,
                Err(_) => ApiError::Unavailable {
                    detail: format!(
                        "the request did not complete within {} ms",
                        deadline.as_millis()
                    ),
                    retry_after: Duration::from_secs(1),
                }
                .into_response(),
            }
        })
        .instrument(span.clone())
        .await;
    let elapsed = start.elapsed();
    let route = resp
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let status = resp.status().as_u16();
    metrics::counter!("http_requests_total", "route" => route.clone(), "method" => method, "status" => status.to_string())
        .increment(1);
    metrics::histogram!("http_request_duration_seconds", "route" => route)
        .record(elapsed.as_secs_f64());
    span.in_scope(|| {
        if status >= 500 {
            tracing::warn!(target: "tenfold_app::access", status, micros = elapsed.as_micros() as u64, "request failed");
        } else {
            tracing::debug!(target: "tenfold_app::access", status, micros = elapsed.as_micros() as u64, "request");
        }
    });
    let h = resp.headers_mut();
    h.insert(X_REQUEST_ID.clone(), id);
    // A compressed body is another representation: its entity tag can only be weak (as nginx does).
    // If-None-Match compares weakly, and If-Match here accepts weak tags, so validation still works.
    if h.contains_key(axum::http::header::CONTENT_ENCODING) {
        if let Some(tag) = h.get(axum::http::header::ETAG) {
            if !tag.as_bytes().starts_with(b"W/") {
                let mut weak = b"W/".to_vec();
                weak.extend_from_slice(tag.as_bytes());
                if let Ok(v) = axum::http::HeaderValue::from_bytes(&weak) {
                    h.insert(axum::http::header::ETAG, v);
                }
            }
        }
    }
    // Only catalog reads say they may be cached (public, with validators); everything else — writes,
    // errors, health, metrics — must not be.
    if !h.contains_key(axum::http::header::CACHE_CONTROL) {
        h.insert(
            axum::http::header::CACHE_CONTROL,
            axum::http::HeaderValue::from_static("no-store"),
        );
    }
    resp
}

/// Inner route layer: hands the matched route template to [`observe`] through the response.
pub(crate) async fn remember_route(req: Request, next: Next) -> Response {
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let mut resp = next.run(req).await;
    if let Some(m) = matched {
        resp.extensions_mut().insert(m);
    }
    resp
}

/// The process-wide Prometheus recorder (installed on first use).
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full("http_request_duration_seconds".into()),
                &[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ],
            )
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // A recorder may already be installed (several apps in one test process): then this one stays local.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
