//! Load shedding by criticality: every routed request gets a class from its route (a request may lower
//! it with `X-Criticality`, never raise it) and must get a permit from the instance's adaptive
//! concurrency limit (`tenfold_overload`) before its handler runs, so a shed request costs no body
//! read, no database work and no allocation beyond its 503.

use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tenfold_overload::Criticality;

use crate::{ApiError, App};

/// The class of a route (`None`: never shed — health, metrics, the flag switches operators need most
/// when the service is overloaded).
pub(crate) fn class_of(method: &Method, route: &str) -> Option<Criticality> {
    use Criticality::*;
    let read = matches!(*method, Method::GET | Method::HEAD);
    Some(match route {
        "/healthz" | "/readyz" | "/metrics" | "/api/openapi.json" => return None,
        r if r.starts_with("/api/admin/flags") => return None,
        // The core: a product page, placing and reading an order, a customer's identity.
        "/api/products/{id}" if read => Critical,
        // The storefront's core: the home page, a product page and the assets they need.
        "/" | "/products/{id}" | "/assets/{name}" => Critical,
        "/checkout" | "/orders/{id}" => Critical,
        "/api/orders" | "/api/orders/{id}" => Critical,
        "/api/customers/{id}/tokens" | "/api/customers/me" => Critical,
        // Lists, search, catalog edits, uploads: the service is still useful without them for a while.
        "/api/products" | "/api/products/{id}" | "/api/categories" => Degradable,
        "/api/customers/{id}/orders" | "/api/products/{id}/media" => Degradable,
        // Bulk work, job polling, reports: first to go.
        "/api/imports" | "/api/admin/jobs" | "/api/admin/revenue" => Sheddable,
        r if r.starts_with("/api/jobs/") => Sheddable,
        _ => Degradable,
    })
}

/// A client's rate limit: GCRA, shared through Redis when there is one, else (and while Redis is
/// unreachable) kept in this process.
pub(crate) struct RateLimit {
    pub(crate) gcra: tenfold_overload::gcra::Gcra,
    pub(crate) local: tenfold_overload::gcra::LocalLimiter,
    pub(crate) rate: f64,
    pub(crate) burst: u32,
}

/// Refuses a client over its rate with 429 and Retry-After, before anything else is done for it.
/// Requests without a client key (no `X-Client-Key`, no `X-Forwarded-For`) and routes that are never
/// shed are not limited.
pub(crate) async fn rate_limit(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(rl) = &app.inner.rate_limit else {
        return next.run(req).await;
    };
    if route_class(&req).is_none() {
        return next.run(req).await;
    }
    let Some(key) = crate::routes::flags::client_key(req.headers()).map(str::to_owned) else {
        return next.run(req).await;
    };
    let decision = match app.cache().shared_rate_limit(&key, rl.gcra).await {
        Some(d) => d,
        None => rl.local.check(&key),
    };
    match decision {
        tenfold_overload::gcra::Decision::Allow => next.run(req).await,
        tenfold_overload::gcra::Decision::Deny(wait) => {
            metrics::counter!("requests_rate_limited_total").increment(1);
            ApiError::TooManyRequests {
                detail: format!(
                    "this client sent more than {} requests per second (bursts of {}); slow down",
                    rl.rate, rl.burst
                ),
                retry_after: wait,
            }
            .into_response()
        }
    }
}

/// The class of the route the request matched.
fn route_class(req: &Request) -> Option<Criticality> {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str());
    class_of(req.method(), route.unwrap_or(""))
}

/// The `X-Criticality` a client sent, if it names a class.
fn requested(req: &Request) -> Option<Criticality> {
    req.headers()
        .get("x-criticality")
        .and_then(|v| v.to_str().ok())
        .and_then(Criticality::parse)
}

/// Admits the request under the concurrency limit or answers 503 with Retry-After at once.
pub(crate) async fn shed(State(app): State<App>, req: Request, next: Next) -> Response {
    let Some(limiter) = &app.inner.limiter else {
        return next.run(req).await;
    };
    let Some(class) = route_class(&req) else {
        return next.run(req).await;
    };
    let class = class.lowered_to(requested(&req));
    match limiter.try_acquire(class) {
        Ok(permit) => {
            let resp = next.run(req).await;
            // Only outcomes feed the limit: a failure (a dependency down, a deadline) says nothing
            // about how much work this instance can take.
            if resp.status().is_server_error() {
                drop(permit);
            } else {
                permit.record();
            }
            resp
        }
        Err(s) => {
            let mut resp = ApiError::Unavailable {
                detail: format!(
                    "overloaded: this {} request was shed ({} requests in flight, limit {}); critical requests are served first",
                    s.class.as_str(),
                    s.inflight,
                    s.limit
                ),
                retry_after: Duration::from_secs(1),
            }
            .into_response();
            // Tells a load balancer that this request was shed, not that the instance is down: it
            // should neither eject the instance nor stop sending it other requests.
            resp.headers_mut().insert(
                tenfold_http::X_LOAD_SHED.clone(),
                axum::http::HeaderValue::from_static(s.class.as_str()),
            );
            resp
        }
    }
}

/// The features each step of the degradation ladder turns off (cumulative).
pub(crate) const LADDER: [&[tenfold_flags::Flag]; 3] = [
    &[tenfold_flags::DEEP_PAGES],
    &[tenfold_flags::DEEP_PAGES, tenfold_flags::SEARCH],
    &[
        tenfold_flags::DEEP_PAGES,
        tenfold_flags::SEARCH,
        tenfold_flags::IMPORTS,
        tenfold_flags::RENDITIONS,
    ],
];

/// Every 250 ms: the share of requests shed since the last tick and the limit in use feed the
/// degradation ladder; a step turns this instance's degradable features off (or back on), logged with
/// its reason.
pub(crate) async fn run_ladder(app: App, limiter: std::sync::Arc<tenfold_overload::Limiter>) {
    let http = &app.inner.http;
    let mut ladder = tenfold_overload::Ladder::new(tenfold_overload::LadderOptions {
        steps: LADDER.len(),
        up_after: Duration::from_millis(http.degrade_after_ms),
        down_after: Duration::from_millis(http.recover_after_ms),
        ..Default::default()
    });
    metrics::gauge!("degradation_step").set(0.0);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let (mut admitted, mut shed) = (
        limiter.admitted(),
        limiter.shed_counts().iter().sum::<u64>(),
    );
    // The shed share is smoothed over about a second of ticks: under a steady overload shedding comes
    // in bursts, and one quiet tick must not restart the ladder's clock.
    let mut smoothed = 0.0;
    loop {
        tick.tick().await;
        let (a, s) = (
            limiter.admitted(),
            limiter.shed_counts().iter().sum::<u64>(),
        );
        let (da, ds) = (a - admitted, s - shed);
        (admitted, shed) = (a, s);
        let ratio = if da + ds == 0 {
            0.0
        } else {
            ds as f64 / (da + ds) as f64
        };
        smoothed = 0.7 * smoothed + 0.3 * ratio;
        if ratio == 0.0 && smoothed < 0.001 {
            smoothed = 0.0;
        }
        let pressure = tenfold_overload::Pressure {
            shed_ratio: smoothed,
            utilization: limiter.inflight() as f64 / limiter.limit().max(1) as f64,
        };
        if let Some(step) = ladder.observe(std::time::Instant::now(), pressure) {
            let off: &[tenfold_flags::Flag] = match step.to {
                0 => &[],
                n => LADDER[n - 1],
            };
            app.flags().set_auto_off(off);
            let names: Vec<&str> = off.iter().map(|f| f.name).collect();
            if step.to > step.from {
                tracing::warn!(step = step.to, reason = %step.reason, off = ?names, "degrading: features turned off");
            } else {
                tracing::info!(step = step.to, reason = %step.reason, off = ?names, "recovering: features turned back on");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_have_the_classes_the_issue_names() {
        use Criticality::*;
        assert_eq!(class_of(&Method::GET, "/api/products/{id}"), Some(Critical));
        assert_eq!(class_of(&Method::POST, "/api/orders"), Some(Critical));
        assert_eq!(class_of(&Method::GET, "/api/products"), Some(Degradable));
        assert_eq!(
            class_of(&Method::PATCH, "/api/products/{id}"),
            Some(Degradable)
        );
        assert_eq!(class_of(&Method::POST, "/api/imports"), Some(Sheddable));
        assert_eq!(
            class_of(&Method::GET, "/api/jobs/{id}/events"),
            Some(Sheddable)
        );
        assert_eq!(class_of(&Method::GET, "/healthz"), None);
        assert_eq!(class_of(&Method::PUT, "/api/admin/flags/{name}"), None);
    }
}
