//! The backend connection pool: one per backend, a LIFO stack of idle HTTP/1.1 connections behind a
//! lock held only to push or pop.
//!
//! Why not hyper-util's legacy client: its pool has one lock for every host and races a new connect
//! against the return of an idle connection (hyper #1584, #4134). Here a checkout takes an idle connection
//! if one is ready and connects otherwise; a connection returns to its pool only when the response body
//! it carried has been read to the end, so a pooled connection is always ready for the next request.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use futures::future::Either;
use futures::FutureExt;
use http::{Request, Response};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;

/// Any error a body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type sent to backends and to clients.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// Pool settings, the same for every backend.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Idle connections kept per backend.
    pub max_idle: usize,
    /// Idle connections older than this are closed instead of reused.
    pub idle_timeout: Duration,
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_idle: 64,
            idle_timeout: Duration::from_secs(50),
            connect_timeout: Duration::from_secs(2),
        }
    }
}

/// Why no connection could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connect failed (refused, unreachable, reset).
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The TCP connect took too long.
    #[error("connect timed out after {0} ms")]
    Timeout(u128),
    /// The HTTP handshake failed.
    #[error("HTTP handshake failed: {0}")]
    Handshake(#[from] hyper::Error),
}

/// The future that does a connection's I/O. It is polled by whichever task uses the connection, never
/// by a task of its own: the request, the response and the socket stay on one task, with no cross-thread
/// wake-up between the client's connection and the backend's.
pub(crate) type Driver = Pin<Box<http1::Connection<TokioIo<tokio::net::TcpStream>, ProxyBody>>>;

/// A connection checked out of a pool.
pub(crate) struct Conn {
    pub(crate) sender: SendRequest<ProxyBody>,
    /// `None` once the connection has ended.
    pub(crate) driver: Option<Driver>,
    /// True when it came from the idle stack (it may have been closed by the backend meanwhile).
    pub(crate) reused: bool,
}

impl Conn {
    /// Lets the connection process what arrived while nobody polled it; false when it has ended.
    fn alive(&mut self) -> bool {
        if let Some(d) = self.driver.as_mut() {
            if d.as_mut().now_or_never().is_some() {
                self.driver = None;
            }
        }
        self.driver.is_some() && self.sender.is_ready()
    }

    /// Sends a request and drives the connection on this task until the response head arrives.
    pub(crate) async fn send(
        &mut self,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<ProxyBody>>> {
        let send = self.sender.try_send_request(req);
        futures::pin_mut!(send);
        let Some(driver) = self.driver.as_mut() else {
            return send.await;
        };
        match futures::future::select(send, driver.as_mut()).await {
            Either::Left((r, _)) => r,
            Either::Right((_, send)) => {
                // The connection ended first; the request resolves with the reason.
                self.driver = None;
                send.await
            }
        }
    }

    /// Polls the driver from inside another future's poll (a response body's); returns false when it ended.
    pub(crate) fn poll_driver(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        if let Some(d) = self.driver.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.driver = None;
            }
        }
        self.driver.is_some()
    }
}

/// One backend's pool.
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    cfg: PoolConfig,
    /// One idle stack per event loop (slot 0: the main runtime; 1..: the per-core loops). A connection is
    /// registered with the reactor of the runtime that opened it, so it is only reused on that runtime.
    idle: Vec<Mutex<Vec<(Conn, Instant)>>>,
}

impl Pool {
    /// An empty pool for `addr`.
    pub fn new(addr: SocketAddr, cfg: PoolConfig) -> Pool {
        Pool {
            addr,
            cfg,
            idle: (0..=max_loops()).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Idle connections now.
    pub fn idle_count(&self) -> usize {
        self.idle
            .iter()
            .map(|m| m.lock().map(|v| v.len()).unwrap_or(0))
            .sum()
    }

    /// The most recently returned ready connection, or a new one.
    pub(crate) async fn checkout(&self) -> Result<Conn, ConnectError> {
        loop {
            let popped = self.idle[current_slot()]
                .lock()
                .ok()
                .and_then(|mut v| v.pop());
            match popped {
                Some((mut conn, since)) => {
                    if since.elapsed() < self.cfg.idle_timeout && conn.alive() {
                        conn.reused = true;
                        return Ok(conn);
                    }
                    // Closed by the backend or stale: drop it and look further.
                }
                None => break,
            }
        }
        let stream = tokio::time::timeout(
            self.cfg.connect_timeout,
            tokio::net::TcpStream::connect(self.addr),
        )
        .await
        .map_err(|_| ConnectError::Timeout(self.cfg.connect_timeout.as_millis()))??;
        let _ = stream.set_nodelay(true);
        let (sender, driver) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await?;
        Ok(Conn {
            sender,
            driver: Some(Box::pin(driver)),
            reused: false,
        })
    }

    /// Returns a connection whose last response was read to the end.
    pub(crate) fn checkin(&self, conn: Conn) {
        if conn.driver.is_none() || conn.sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle[current_slot()].lock() {
            if idle.len() < self.cfg.max_idle {
                idle.push((conn, Instant::now()));
            }
        }
    }

    /// Closes every idle connection.
    pub(crate) fn clear(&self) {
        for m in &self.idle {
            if let Ok(mut idle) = m.lock() {
                idle.clear();
            }
        }
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("alive", &self.driver.is_some())
            .field("reused", &self.reused)
            .finish()
    }
}

thread_local! {
    /// Which event loop this thread runs: 0 for the main runtime, `i + 1` for per-core loop `i`.
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Most per-core loops a pool keeps stacks for.
fn max_loops() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(64)
}

/// Marks the current thread as per-core loop `i` (called once when the loop's thread starts).
pub(crate) fn set_loop_slot(i: usize) {
    SLOT.with(|s| s.set((i + 1).min(max_loops())));
}

fn current_slot() -> usize {
    SLOT.with(|s| s.get())
}
