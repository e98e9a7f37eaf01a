//! HTTP server plumbing shared by every tenfold server (the app and the load balancer).
//!
//! Role: the accept loop — HTTP/1.1 and h2c (prior knowledge) on one port, header-size and header-read
//! limits, and a graceful drain on shutdown — plus the RFC 9457 problem document both servers emit.
//!
//! Invariant: a server stops accepting the moment its shutdown future resolves and gives in-flight
//! requests at most the grace period. Entry points: [`serve`], [`ServerLimits`], [`problem_body`].

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;

/// hyper refuses read buffers under 8 KiB; the header limit is enforced within that floor.
const MIN_BUF: usize = 8 * 1024;

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Largest total size of a request's headers; larger requests get 431.
    pub header_limit_bytes: usize,
    /// Deadline for a client to send a request's headers (slowloris protection).
    pub header_read_timeout: Duration,
    /// After shutdown begins, in-flight requests get this long.
    pub shutdown_grace: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

/// Media type of RFC 9457 problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// On a 503: this request was refused (shed by the server's overload control, the value then being
/// its class; or a feature turned off, maintenance, a dependency that failed it, its deadline), but the
/// server is up and takes other requests. A load balancer neither ejects nor backs off from it, and may
/// retry the request elsewhere within its retry budget.
pub static X_LOAD_SHED: http::HeaderName = http::HeaderName::from_static("x-load-shed");

/// Serializes a minimal RFC 9457 problem document.
pub fn problem_body(
    status: u16,
    kind: &str,
    title: &str,
    detail: &str,
    request_id: Option<&str>,
) -> Vec<u8> {
    let mut v =
        serde_json::json!({"type": kind, "title": title, "status": status, "detail": detail});
    if let (Some(id), Some(o)) = (request_id, v.as_object_mut()) {
        o.insert("request_id".into(), id.into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Serves connections from `listener` until `shutdown` resolves. `make_service` builds the service for
/// each connection from the client's address.
pub async fn serve<M, S, B>(
    listener: tokio::net::TcpListener,
    mut make_service: M,
    shutdown: impl Future<Output = ()> + Send + 'static,
    limits: &ServerLimits,
) -> std::io::Result<()>
where
    M: FnMut(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.header_limit_bytes.max(MIN_BUF))
        .max_headers(100)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.header_limit_bytes as u32)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer) = accept(&listener) => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), make_service(peer)).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!(
        grace_ms = limits.shutdown_grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period expired with requests still in flight");
    }
    Ok(())
}

/// The next connection from `listener`, with TCP_NODELAY set. Accept errors (out of file descriptors and
/// the like) are logged and retried after a 50 ms back-off instead of spinning.
pub async fn accept(listener: &tokio::net::TcpListener) -> (tokio::net::TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                return (stream, peer);
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// `n` listeners on one address with SO_REUSEPORT, so that `n` single-threaded event loops can each
/// accept their own share of connections (the kernel spreads them). Port 0 picks one free port for all.
pub fn reuseport_listeners(
    addr: SocketAddr,
    n: usize,
) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut bind_to = addr;
    for _ in 0..n.max(1) {
        let s = Socket::new(
            Domain::for_address(bind_to),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&bind_to.into())?;
        s.listen(1024)?;
        let l: std::net::TcpListener = s.into();
        bind_to = l.local_addr()?;
        out.push(l);
    }
    Ok(out)
}
