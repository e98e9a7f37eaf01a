//! Active health checks: one task per backend, GET `path` every interval, rise/fall thresholds.

use std::future::Future;
use std::sync::Weak;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use tenfold_config::HealthCheckConfig;

use crate::backend::Backend;

pub(crate) async fn run(backend: Weak<Backend>, cfg: HealthCheckConfig) {
    let interval = Duration::from_millis(cfg.interval_ms);
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let (mut passes, mut fails) = (0u32, 0u32);
    loop {
        tokio::time::sleep(interval).await;
        let Some(b) = backend.upgrade() else { return };
        let ok = tokio::time::timeout(timeout, check(&b, &cfg.path))
            .await
            .unwrap_or(false);
        if ok {
            passes += 1;
            fails = 0;
            if !b.is_healthy() && passes >= cfg.rise {
                b.set_healthy(true);
                tracing::info!(backend = %b.addr, "backend passes health checks again");
            }
        } else {
            fails += 1;
            passes = 0;
            if b.is_healthy() && fails >= cfg.fall {
                b.set_healthy(false);
                tracing::warn!(backend = %b.addr, "backend fails health checks: out of rotation");
            }
        }
    }
}

async fn check(b: &Backend, path: &str) -> bool {
    let Ok(mut conn) = b.pool.checkout().await else {
        return false;
    };
    let req = Request::get(path)
        .header(http::header::HOST, b.addr.to_string())
        .header(http::header::USER_AGENT, "tenfold-lb-health")
        .body(Empty::<Bytes>::new().map_err(|e| match e {}).boxed());
    let Ok(req) = req else { return false };
    let Ok(resp) = conn.send(req).await else {
        return false;
    };
    let good = resp.status().is_success()
        || resp.status().is_redirection()
        || resp.status() == StatusCode::NOT_MODIFIED;
    // Read the body (driving the connection meanwhile) so the connection can be reused.
    let mut body = std::pin::pin!(Limited::new(resp.into_body(), 64 * 1024).collect());
    let read = std::future::poll_fn(|cx| {
        conn.poll_driver(cx);
        body.as_mut().poll(cx)
    })
    .await;
    if read.is_ok() {
        b.pool.checkin(conn);
    }
    good
}
