//! The client side: the accept loop and HTTP/1.x connections, served by the balancer's own code; an
//! HTTP/2 connection (prior knowledge, recognised by its preface) is handed to hyper (`h2.rs`).
//!
//! Why not hyper's server for HTTP/1: per request it builds a header map, boxes bodies and services, and
//! each connection keeps an 8 KiB read buffer and an 8 KiB write buffer for its whole life. Here a
//! request head is rewritten as bytes (`h1.rs`), the response head and a small body leave in one write,
//! and a connection holds no buffer while it waits for its next request (buffers are recycled per thread).
//!
//! Invariant: every wait on a client is bounded: the first request's head within the header-read timeout
//! of the connection's start, later heads within it of their first byte, idle keep-alive connections
//! within the client idle timeout, body reads and answer writes within the idle timeout each.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::h1::{self, HeadError, ReqBody, RespBody};
use crate::pool;
use crate::proxy::{
    self, Answer, BodySource, NoBody, Outgoing, Problem, PumpError, Timer, REPLAY_LIMIT,
};
use crate::Shared;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Counts a loop's connections and tells them when to stop.
#[derive(Default)]
pub(crate) struct Tracker {
    open: AtomicUsize,
    closed: Notify,
    stopping: AtomicBool,
    stop: Notify,
}

impl Tracker {
    fn enter(self: &Arc<Self>) -> Guard {
        self.open.fetch_add(1, Ordering::Relaxed);
        Guard(self.clone())
    }

    /// Client connections open on this loop.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Resolves once shutdown began.
    pub(crate) async fn stopped(&self) {
        let notified = self.stop.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.stopping.load(Ordering::Acquire) {
            return;
        }
        notified.await;
    }

    fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Release);
        self.stop.notify_waiters();
    }

    async fn all_closed(&self) {
        loop {
            let notified = self.closed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

pub(crate) struct Guard(Arc<Tracker>);

impl Guard {
    pub(crate) fn tracker(&self) -> &Tracker {
        &self.0
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

/// Serves connections from `listener` until `shutdown` resolves, then lets in-flight requests finish
/// (at most the shutdown grace period) and closes idle connections.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tracker = Arc::new(Tracker::default());
    if let Ok(mut t) = shared.trackers.lock() {
        t.retain(|w| w.strong_count() > 0);
        t.push(Arc::downgrade(&tracker));
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            (stream, peer) = tenfold_http::accept(&listener) => {
                let guard = tracker.enter();
                let shared = shared.clone();
                tokio::spawn(async move { connection(shared, stream, peer, guard).await });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    let grace = shared.settings.limits.shutdown_grace;
    tracing::info!(
        grace_ms = grace.as_millis() as u64,
        "shutting down: draining in-flight requests"
    );
    tracker.begin_stop();
    if tokio::time::timeout(grace, tracker.all_closed())
        .await
        .is_err()
    {
        tracing::warn!("shutdown grace period expired with requests still in flight");
    }
    Ok(())
}

/// What becomes of a client connection after a request.
#[derive(PartialEq, Eq)]
enum Next {
    Keep,
    Close,
    /// Close after draining what the client still sends (a request body was left unread).
    Linger,
}

/// How waiting for a client ended.
enum Wait {
    Ready,
    /// Timed out, closed, or shutdown began.
    Stop,
}

/// Waits until the client sent something, for at most `limit` (on the connection's reused `timer`), or
/// until shutdown.
async fn readable(
    stream: &TcpStream,
    limit: Duration,
    timer: &mut Timer,
    tracker: &Tracker,
) -> Wait {
    {
        let mut cx = std::task::Context::from_waker(futures::task::noop_waker_ref());
        if stream.poll_read_ready(&mut cx).is_ready() {
            return Wait::Ready;
        }
    }
    timer.as_mut().reset(tokio::time::Instant::now() + limit);
    tokio::select! {
        r = stream.readable() => match r {
            Ok(()) => Wait::Ready,
            Err(_) => Wait::Stop,
        },
        _ = timer.as_mut() => Wait::Stop,
        _ = tracker.stopped() => Wait::Stop,
    }
}

/// Writes all of `bytes` to a client within `limit` (a client that stops reading is dropped); false when
/// the client failed or stalled. The common case, a socket that takes it all at once, arms no timer.
async fn write_within(stream: &mut TcpStream, bytes: &[u8], limit: Duration) -> bool {
    let done = match stream.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
        Err(_) => return false,
    };
    if done == bytes.len() {
        return true;
    }
    matches!(
        tokio::time::timeout(limit, stream.write_all(&bytes[done..])).await,
        Ok(Ok(()))
    )
}

/// Reads into `buf` (growing it when nearly full); 0 at end of stream.
async fn read_into(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    grow: usize,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(grow);
    }
    stream.read_buf(buf).await
}

/// A client connection's read buffer, held only while a request is being read or proxied, and counted
/// (`lb_client_buffers_held`) so that an idle connection's cost can be seen.
struct BufSlot<'a> {
    buf: Option<BytesMut>,
    held: &'a std::sync::atomic::AtomicI64,
}

impl BufSlot<'_> {
    fn get(&mut self) -> &mut BytesMut {
        let held = self.held;
        self.buf.get_or_insert_with(|| {
            held.fetch_add(1, Ordering::Relaxed);
            pool::take_buf()
        })
    }

    fn is_empty(&self) -> bool {
        self.buf.as_ref().is_none_or(|b| b.is_empty())
    }

    /// Gives the buffer back (when it holds nothing, or unconditionally at the end).
    fn release(&mut self) {
        if let Some(b) = self.buf.take() {
            self.held.fetch_sub(1, Ordering::Relaxed);
            pool::give_buf(b);
        }
    }
}

impl Drop for BufSlot<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// One client connection.
async fn connection(shared: Arc<Shared>, mut stream: TcpStream, peer: SocketAddr, guard: Guard) {
    let settings = &shared.settings;
    let header_timeout = settings.limits.header_read_timeout;
    let mut buf = BufSlot {
        buf: None,
        held: &shared.client_buffers[pool::current_slot().min(shared.client_buffers.len() - 1)].0,
    };
    let mut first = true;
    let peer_text = peer.ip().to_string();
    // Two timers for the connection's life, moved on for each request (see `Timer`).
    let mut idle_timer: Timer = Box::pin(tokio::time::sleep(header_timeout));
    let mut response_timer: Timer = Box::pin(tokio::time::sleep(settings.response_timeout));
    loop {
        // Wait for the next request without holding a buffer.
        if buf.is_empty() {
            let limit = if first {
                header_timeout
            } else {
                settings.client_idle_timeout
            };
            if let Wait::Stop = readable(&stream, limit, &mut idle_timer, guard.tracker()).await {
                break;
            }
        }
        let b = buf.get();
        let mut out = pool::take_vec();
        // When reading the head began: the balancer's own time on a request counts from here.
        let arrived = tokio::time::Instant::now();
        // A kept-alive connection may find no byte after all (readiness can be stale): until the head's
        // first byte it waits as an idle connection does; from then on, the header-read timeout runs.
        let mut idle_deadline = !first && b.is_empty();
        let mut head_deadline = if idle_deadline {
            arrived + settings.client_idle_timeout
        } else {
            arrived + header_timeout
        };
        // Read until the head is complete.
        let parsed = loop {
            if !b.is_empty() {
                if first
                    && b[0] == b'P'
                    && H2_PREFACE.starts_with(&b[..b.len().min(H2_PREFACE.len())])
                {
                    if b.len() >= H2_PREFACE.len() {
                        pool::give_vec(out);
                        let pre = b.split().freeze();
                        buf.release();
                        // Boxed: an HTTP/1 connection's future stays small.
                        let h2 =
                            crate::h2::serve_connection(shared.clone(), stream, pre, peer, guard);
                        Box::pin(h2).await;
                        return;
                    }
                } else {
                    match h1::parse_request(
                        b,
                        settings.limits.header_limit_bytes,
                        peer_text.as_bytes(),
                        shared.hash_header(),
                        &mut out,
                    ) {
                        Ok(Some(r)) => break Ok(r),
                        Ok(None) => out.clear(),
                        Err(e) => break Err(e),
                    }
                }
            }
            if idle_deadline && !b.is_empty() {
                // Part of a head is here (the usual head arrives whole and never gets here).
                idle_deadline = false;
                head_deadline = tokio::time::Instant::now() + header_timeout;
            }
            match tokio::time::timeout_at(
                head_deadline,
                read_into(&mut stream, b, pool::CLIENT_BUF),
            )
            .await
            {
                Ok(Ok(n)) if n > 0 => {}
                // Closed, failed, or too slow (slowloris): nothing to answer.
                _ => {
                    pool::give_vec(out);
                    return;
                }
            }
        };
        first = false;
        let mut req = match parsed {
            Ok(r) => r,
            Err(e) => {
                let p = match e {
                    HeadError::TooLarge => {
                        Problem::headers_too_large(settings.limits.header_limit_bytes)
                    }
                    HeadError::Malformed(m) => Problem::bad_request(m),
                    HeadError::Method => Problem::method("CONNECT"),
                };
                out.clear();
                p.write_h1(&h1::RequestId::generate(), true, false, &mut out);
                let _ = write_within(&mut stream, &out, header_timeout).await;
                pool::give_vec(out);
                Box::pin(linger_close(stream)).await;
                return;
            }
        };
        b.advance(req.len);
        if guard.tracker().stopping.load(Ordering::Relaxed) {
            // Shutting down: this answer tells the client to go elsewhere for the next request.
            req.meta.keep_alive = false;
        }
        let parsed = Parsed {
            req,
            out,
            arrived: arrived.into_std(),
        };
        let next = request(&shared, &mut stream, b, peer, parsed, &mut response_timer);
        match Box::pin(next).await {
            Next::Keep if !guard.tracker().stopping.load(Ordering::Relaxed) => {}
            Next::Linger => {
                buf.release();
                Box::pin(linger_close(stream)).await;
                return;
            }
            _ => break,
        }
        if buf.is_empty() {
            buf.release();
        }
    }
    buf.release();
    let _ = stream.shutdown().await;
}

/// After refusing a request whose body was not read: stop writing, then read and discard what the client
/// still sends for a moment, so the answer is not destroyed by a reset when the socket closes with
/// unread data.
async fn linger_close(mut stream: TcpStream) {
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let mut total = 0usize;
        while total < 1 << 20 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    })
    .await;
}

/// A request head just parsed: what the balancer knows of it, the backend's head, and when reading began.
struct Parsed {
    req: h1::Request,
    out: Vec<u8>,
    arrived: Instant,
}

/// Proxies one request whose head was parsed (and consumed from `buf`); `out` holds the backend's head.
async fn request(
    shared: &Shared,
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    peer: SocketAddr,
    parsed: Parsed,
    timer: &mut Timer,
) -> Next {
    let Parsed {
        req,
        mut out,
        arrived,
    } = parsed;
    let meta = &req.meta;
    let limit = shared.settings.body_limit;
    let idle = shared.settings.client_idle_timeout;
    let mut resp = pool::take_vec();
    // Small bodies go with the head; larger ones stream.
    let streamed = match meta.body {
        ReqBody::Length(n) if n > limit => {
            refuse(
                stream,
                Problem::too_large(limit),
                meta,
                &mut resp,
                false,
                idle,
            )
            .await;
            pool::give_vec(out);
            pool::give_vec(resp);
            return Next::Linger;
        }
        ReqBody::Length(n) if n <= REPLAY_LIMIT => {
            let n = n as usize;
            if meta.expect_continue && buf.len() < n {
                let _ = write_within(stream, b"HTTP/1.1 100 Continue\r\n\r\n", idle).await;
            }
            while buf.len() < n {
                match tokio::time::timeout(idle, read_into(stream, buf, n - buf.len())).await {
                    Ok(Ok(r)) if r > 0 => {}
                    _ => {
                        pool::give_vec(out);
                        pool::give_vec(resp);
                        return Next::Close;
                    }
                }
            }
            out.extend_from_slice(&buf[..n]);
            buf.advance(n);
            false
        }
        ReqBody::None => false,
        ReqBody::Length(_) | ReqBody::Chunked => true,
    };
    let outgoing = Outgoing {
        bytes: &out,
        streamed,
        meta,
    };
    let result = if streamed {
        let mut source = H1Body {
            stream: &mut *stream,
            buf: &mut *buf,
            body: meta.body,
            limit,
            idle,
            backend_timeout: shared.settings.response_timeout,
            send_continue: meta.expect_continue,
        };
        proxy::forward(shared, peer.ip(), &outgoing, &mut source, &mut resp, timer).await
    } else {
        proxy::forward(shared, peer.ip(), &outgoing, &mut NoBody, &mut resp, timer).await
    };
    pool::give_vec(out);
    let next = match result {
        Ok(answer) if answer.request_body_unread => {
            relay(shared, stream, answer, &mut resp, req.minor, false, arrived).await;
            Next::Linger
        }
        Ok(answer) => {
            match relay(
                shared,
                stream,
                answer,
                &mut resp,
                req.minor,
                meta.keep_alive,
                arrived,
            )
            .await
            {
                true => Next::Keep,
                false => Next::Close,
            }
        }
        // A streamed body was left half read: the connection cannot take another request.
        Err(p) if streamed => {
            refuse(stream, p, meta, &mut resp, false, idle).await;
            Next::Linger
        }
        Err(p) => match refuse(stream, p, meta, &mut resp, true, idle).await {
            true => Next::Keep,
            false => Next::Close,
        },
    };
    pool::give_vec(resp);
    next
}

/// Sends a problem; closes the connection unless `reusable` and the client keeps it alive.
async fn refuse(
    stream: &mut TcpStream,
    p: Problem,
    meta: &h1::RequestMeta,
    resp: &mut Vec<u8>,
    reusable: bool,
    limit: Duration,
) -> bool {
    let keep = reusable && meta.keep_alive;
    resp.clear();
    // The answer to a HEAD request has no body, whatever its Content-Length says.
    p.write_h1(&meta.request_id, !keep, meta.head, resp);
    write_within(stream, resp, limit).await && keep
}

/// How a response body reaches the client.
pub(crate) enum Relay {
    Length(u64),
    /// Chunked, passed on as it is.
    Chunks(h1::Chunked),
    /// Chunked from the backend, plain to an HTTP/1.0 client (which then sees the connection close).
    Dechunk(h1::Chunked),
    UntilClose,
    Done,
}

impl Relay {
    /// Moves what `src` holds of the body into `dst`; true once the body is complete.
    pub(crate) fn take(
        &mut self,
        src: &mut BytesMut,
        dst: &mut Vec<u8>,
    ) -> Result<bool, &'static str> {
        match self {
            Relay::Length(n) => {
                let take = (*n).min(src.len() as u64) as usize;
                dst.extend_from_slice(&src[..take]);
                src.advance(take);
                *n -= take as u64;
                Ok(*n == 0)
            }
            Relay::Chunks(c) => {
                let used = c.feed(src, |_| {})?;
                dst.extend_from_slice(&src[..used]);
                src.advance(used);
                Ok(c.done())
            }
            Relay::Dechunk(c) => {
                let used = c.feed(src, |r| dst.extend_from_slice(&src[r]))?;
                src.advance(used);
                Ok(c.done())
            }
            Relay::UntilClose => {
                dst.extend_from_slice(src);
                src.clear();
                Ok(false)
            }
            Relay::Done => Ok(true),
        }
    }
}

/// Writes the backend's answer to the client: its head, then its body as it arrives. Returns whether the
/// client connection can take another request.
async fn relay(
    shared: &Shared,
    stream: &mut TcpStream,
    mut answer: Answer,
    resp: &mut Vec<u8>,
    minor: u8,
    client_keep_alive: bool,
    arrived: Instant,
) -> bool {
    let (mut relay, mut keep) = match answer.head.body {
        RespBody::Empty | RespBody::Length(0) => (Relay::Done, client_keep_alive),
        RespBody::Length(n) => (Relay::Length(n), client_keep_alive),
        RespBody::Chunked if minor >= 1 => {
            resp.extend_from_slice(b"transfer-encoding: chunked\r\n");
            (Relay::Chunks(h1::Chunked::default()), client_keep_alive)
        }
        RespBody::Chunked => (Relay::Dechunk(h1::Chunked::default()), false),
        RespBody::UntilClose => (Relay::UntilClose, false),
    };
    if !keep {
        resp.extend_from_slice(b"connection: close\r\n");
    } else if minor == 0 {
        resp.extend_from_slice(b"connection: keep-alive\r\n");
    }
    resp.extend_from_slice(b"\r\n");
    let timeout = shared.settings.response_timeout;
    let mut first_write = true;
    loop {
        let done = match relay.take(&mut answer.conn.buf, resp) {
            Ok(d) => d,
            Err(why) => {
                tracing::debug!(backend = %answer.backend.addr, why, "invalid response body framing");
                shared.record_failure(&answer.backend, Duration::ZERO, "exchange");
                return false;
            }
        };
        if !resp.is_empty()
            && !write_within(stream, resp, shared.settings.client_idle_timeout).await
        {
            return false;
        }
        if first_write {
            first_write = false;
            // Reading the head, forwarding it, and writing the answer's head, without the backend's time.
            let total = arrived.elapsed();
            proxy::added_latency().record(total.saturating_sub(answer.upstream));
        }
        resp.clear();
        if done {
            break;
        }
        let big = !matches!(relay, Relay::Length(n) if n <= 16 * 1024);
        match tokio::time::timeout(timeout, answer.conn.read_more(big)).await {
            Ok(Ok(0)) if matches!(relay, Relay::UntilClose) => {
                keep = false;
                break;
            }
            Ok(Ok(n)) if n > 0 => {}
            // The backend failed mid-body: the client cannot be told but by closing.
            _ => {
                shared.record_failure(&answer.backend, Duration::ZERO, "exchange");
                return false;
            }
        }
    }
    if matches!(relay, Relay::UntilClose) {
        return false;
    }
    answer.finish();
    keep
}

/// Writes part of a request body to a backend within `limit` (a backend that stops reading fails it).
pub(crate) async fn write_backend(
    to: &mut TcpStream,
    bytes: &[u8],
    limit: Duration,
) -> Result<(), PumpError> {
    match tokio::time::timeout(limit, to.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PumpError::Backend(e)),
        Err(_) => Err(PumpError::Backend(std::io::ErrorKind::TimedOut.into())),
    }
}

/// A request body streamed from an HTTP/1 client.
struct H1Body<'a> {
    stream: &'a mut TcpStream,
    buf: &'a mut BytesMut,
    body: ReqBody,
    limit: u64,
    idle: Duration,
    backend_timeout: Duration,
    send_continue: bool,
}

impl H1Body<'_> {
    async fn fill(&mut self) -> Result<(), PumpError> {
        if self.send_continue {
            self.send_continue = false;
            if self.buf.is_empty()
                && !write_within(self.stream, b"HTTP/1.1 100 Continue\r\n\r\n", self.idle).await
            {
                return Err(PumpError::Client("the client stopped reading".into()));
            }
        }
        if !self.buf.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(self.idle, read_into(self.stream, self.buf, 64 * 1024)).await {
            Ok(Ok(n)) if n > 0 => Ok(()),
            Ok(Ok(_)) => Err(PumpError::Client(
                "the client closed the connection mid-body".into(),
            )),
            Ok(Err(e)) => Err(PumpError::Client(e.to_string())),
            Err(_) => Err(PumpError::Client(
                "the client stopped sending the body".into(),
            )),
        }
    }
}

impl BodySource for H1Body<'_> {
    async fn pump(&mut self, to: &mut TcpStream) -> Result<(), PumpError> {
        match self.body {
            ReqBody::None => Ok(()),
            ReqBody::Length(mut n) => {
                while n > 0 {
                    self.fill().await?;
                    let take = n.min(self.buf.len() as u64) as usize;
                    let chunk = &self.buf[..take];
                    write_backend(to, chunk, self.backend_timeout).await?;
                    self.buf.advance(take);
                    n -= take as u64;
                }
                Ok(())
            }
            ReqBody::Chunked => {
                // Re-framed rather than passed on: the backend never sees the client's chunk sizes,
                // extensions or trailers, so the two cannot read the framing differently.
                let mut c = h1::Chunked::default();
                let mut total = 0u64;
                let mut framed = Vec::new();
                while !c.done() {
                    self.fill().await?;
                    framed.clear();
                    let input = &self.buf[..];
                    let used = c
                        .feed(input, |r| {
                            total += r.len() as u64;
                            h1::put_chunk(&mut framed, &input[r]);
                        })
                        .map_err(|e| PumpError::Client(e.into()))?;
                    if total > self.limit {
                        return Err(PumpError::TooLarge);
                    }
                    if c.done() {
                        framed.extend_from_slice(h1::LAST_CHUNK);
                    }
                    write_backend(to, &framed, self.backend_timeout).await?;
                    self.buf.advance(used);
                }
                Ok(())
            }
        }
    }
}
