//! The app's server: the shared accept loop plus the metrics upkeep task.

use std::future::Future;
use std::time::Duration;

use axum::Router;
use hyper_util::service::TowerToHyperService;
use tenfold_config::HttpConfig;
use tenfold_http::ServerLimits;

pub(crate) async fn serve(
    router: Router,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    http: &HttpConfig,
) -> std::io::Result<()> {
    let upkeep = tokio::spawn(async {
        // Histograms buffer samples until upkeep drains them; without scrapes memory would grow.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            crate::observe::prometheus().run_upkeep();
        }
    });
    let limits = ServerLimits {
        header_limit_bytes: http.header_limit_bytes,
        header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
        shutdown_grace: Duration::from_millis(http.shutdown_grace_ms),
        max_concurrent_streams: 256,
    };
    let result = tenfold_http::serve(
        listener,
        |_| TowerToHyperService::new(router.clone()),
        shutdown,
        &limits,
    )
    .await;
    upkeep.abort();
    result
}
