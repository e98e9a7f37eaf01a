//! Active health checks: one task per backend, GET `path` every interval, rise/fall thresholds.

use std::sync::Weak;
use std::time::Duration;

use tenfold_config::HealthCheckConfig;
use tokio::io::AsyncWriteExt;

use crate::backend::Backend;
use crate::front::Relay;
use crate::h1::{Chunked, RequestId, RespBody};

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
    let mut req = Vec::with_capacity(128);
    req.extend_from_slice(b"GET ");
    req.extend_from_slice(path.as_bytes());
    req.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    req.extend_from_slice(b.addr.to_string().as_bytes());
    req.extend_from_slice(b"\r\nuser-agent: tenfold-lb-health\r\n\r\n");
    if conn.stream.write_all(&req).await.is_err() {
        return false;
    }
    let rid = RequestId::generate();
    let mut head = Vec::new();
    let Ok(resp) = conn.read_head(false, &rid, &mut head).await else {
        return false;
    };
    let good = (200..400).contains(&resp.status);
    // Read the body (at most 64 KiB) so the connection can be reused.
    let mut relay = match resp.body {
        RespBody::Empty | RespBody::Length(0) => Relay::Done,
        RespBody::Length(n) if n <= 64 * 1024 => Relay::Length(n),
        RespBody::Chunked => Relay::Dechunk(Chunked::default()),
        _ => return good,
    };
    let mut sink = Vec::new();
    loop {
        match relay.take(&mut conn.buf, &mut sink) {
            Ok(true) => break,
            Ok(false) if sink.len() <= 64 * 1024 => {}
            _ => return good,
        }
        match conn.read_more(false).await {
            Ok(n) if n > 0 => {}
            _ => return good,
        }
    }
    if resp.reusable {
        b.pool.checkin(conn);
    }
    good
}
