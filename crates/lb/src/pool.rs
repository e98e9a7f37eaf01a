//! Backend connections: one pool per backend, a LIFO stack of idle HTTP/1.1 connections per event loop
//! behind a lock held only to push or pop; and recycled byte buffers for the hot path.
//!
//! Why not hyper-util's legacy client: its pool has one lock for every host and races a new connect
//! against the return of an idle connection (hyper #1584, #4134), and hyper's client dispatch costs a
//! channel send and a oneshot per request. Here a connection is a plain socket with a read buffer, used
//! by the task that proxies the request: a checkout takes an idle connection if one is ready and connects
//! otherwise; a connection returns to its pool only when the response it carried was read to its end.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http_body_util::combinators::UnsyncBoxBody;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::h1::{self, HeadError, RequestId};

/// Any error a body can carry.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of responses to HTTP/2 clients.
pub type ProxyBody = UnsyncBoxBody<bytes::Bytes, BoxError>;

/// Largest response head a backend may send.
const RESPONSE_HEAD_LIMIT: usize = 64 * 1024;
/// Read buffer of a backend connection (grown while a large body passes, shrunk back after).
const CONN_BUF: usize = 4 * 1024;
/// Reads of a large body go this far at once.
const BIG_READ: usize = 64 * 1024;

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
}

/// Why no response head could be read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The backend closed the connection before sending a byte of the response.
    Closed,
    Io(std::io::Error),
    Malformed(&'static str),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Closed => f.write_str("the connection closed before a response"),
            ReadError::Io(e) => write!(f, "reading the response failed: {e}"),
            ReadError::Malformed(m) => write!(f, "invalid response: {m}"),
        }
    }
}

/// A backend connection: the socket and what was read from it but not yet used.
#[derive(Debug)]
pub(crate) struct Conn {
    pub(crate) stream: TcpStream,
    pub(crate) buf: BytesMut,
    /// True when it came from the idle stack (it may have been closed by the backend meanwhile).
    pub(crate) reused: bool,
}

impl Conn {
    /// An idle connection must have nothing to read: readiness means the backend closed it (or sent
    /// bytes nobody asked for). Checking costs no system call unless the socket became readable.
    fn alive(&mut self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Reads more bytes into the buffer; 0 at end of stream. `big`: a large body is passing, read more at once.
    pub(crate) async fn read_more(&mut self, big: bool) -> std::io::Result<usize> {
        let want = if big { BIG_READ } else { 1024 };
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want.max(CONN_BUF));
        }
        self.stream.read_buf(&mut self.buf).await
    }

    /// Reads the response head (skipping informational 1xx heads); `out` gets the client's head (see
    /// [`h1::parse_response`]). The head's bytes are consumed from the buffer; body bytes stay.
    pub(crate) async fn read_head(
        &mut self,
        head_request: bool,
        request_id: &RequestId,
        out: &mut Vec<u8>,
    ) -> Result<h1::Response, ReadError> {
        let mut got_any = false;
        loop {
            if !self.buf.is_empty() {
                got_any = true;
                match h1::parse_response(
                    &self.buf,
                    RESPONSE_HEAD_LIMIT,
                    head_request,
                    request_id,
                    out,
                ) {
                    Ok(Some(r)) if r.status == 101 => {
                        return Err(ReadError::Malformed("an unrequested protocol switch"))
                    }
                    Ok(Some(r)) if r.status < 200 => {
                        self.buf.advance(r.len);
                        continue;
                    }
                    Ok(Some(r)) => {
                        self.buf.advance(r.len);
                        return Ok(r);
                    }
                    Ok(None) => {}
                    Err(HeadError::TooLarge) => {
                        return Err(ReadError::Malformed("response head too large"))
                    }
                    Err(HeadError::Malformed(m)) => return Err(ReadError::Malformed(m)),
                    Err(HeadError::Method) => return Err(ReadError::Malformed("method")),
                }
                out.clear();
            }
            match self.read_more(false).await {
                Ok(0) if got_any => {
                    return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()))
                }
                Ok(0) => return Err(ReadError::Closed),
                Ok(_) => {}
                Err(e) if !got_any && e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Err(ReadError::Closed)
                }
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
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

    /// The most recently returned live connection, or a new one.
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
        let stream = tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| ConnectError::Timeout(self.cfg.connect_timeout.as_millis()))??;
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(CONN_BUF),
            reused: false,
        })
    }

    /// Returns a connection whose last response was read to its end.
    pub(crate) fn checkin(&self, mut conn: Conn) {
        if !conn.buf.is_empty() {
            return;
        }
        if conn.buf.capacity() > 2 * CONN_BUF {
            conn.buf = BytesMut::with_capacity(CONN_BUF);
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

thread_local! {
    /// Which event loop this thread runs: 0 for the main runtime, `i + 1` for per-core loop `i`.
    static SLOT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// Recycled head buffers of this thread.
    static VECS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    /// Recycled client read buffers of this thread.
    static BUFS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Most per-core loops a pool keeps stacks for.
pub(crate) fn max_loops() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(64)
}

/// Marks the current thread as per-core loop `i` (called once when the loop's thread starts).
pub(crate) fn set_loop_slot(i: usize) {
    SLOT.with(|s| s.set((i + 1).min(max_loops())));
}

/// The event loop this thread runs (0: the main runtime).
pub(crate) fn current_slot() -> usize {
    SLOT.with(|s| s.get())
}

/// Buffers kept for reuse per thread: enough for the requests in flight on a busy loop; more are freed
/// (a burst of connections must not leave its buffers behind).
const RECYCLED: usize = 32;
/// Capacity of a client read buffer.
pub(crate) const CLIENT_BUF: usize = 4 * 1024;

/// An empty buffer for a message head, recycled when possible.
pub(crate) fn take_vec() -> Vec<u8> {
    VECS.with(|v| v.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(1024))
}

/// Gives a head buffer back for reuse (large ones are freed).
pub(crate) fn give_vec(mut v: Vec<u8>) {
    if v.capacity() > 64 * 1024 {
        return;
    }
    v.clear();
    VECS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < RECYCLED {
            s.push(v);
        }
    });
}

/// An empty client read buffer, recycled when possible.
pub(crate) fn take_buf() -> BytesMut {
    let mut b = BUFS
        .with(|v| v.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(CLIENT_BUF));
    b.reserve(CLIENT_BUF);
    b
}

/// Gives a client read buffer back for reuse (grown ones are freed).
pub(crate) fn give_buf(mut b: BytesMut) {
    if b.capacity() > 4 * CLIENT_BUF {
        return;
    }
    b.clear();
    BUFS.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < RECYCLED {
            s.push(b);
        }
    });
}
