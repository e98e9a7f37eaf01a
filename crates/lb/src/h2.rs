//! HTTP/2 clients (prior knowledge, h2c): served by hyper, forwarded through the same backend path as
//! HTTP/1 requests (`proxy::forward`), with the backend's HTTP/1.1 response turned into an HTTP/2 one.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use http::{header, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::front::{write_backend, Guard, Relay};
use crate::h1::{self, ReqBody, RequestId, RespBody};
use crate::pool::{self, BoxError, ProxyBody};
use crate::proxy::{self, Answer, BodySource, NoBody, Outgoing, Problem, PumpError, REPLAY_LIMIT};
use crate::Shared;

/// Serves an HTTP/2 connection whose first bytes (`pre`, the preface at least) were already read.
pub(crate) async fn serve_connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    pre: Bytes,
    peer: SocketAddr,
    guard: Guard,
) {
    let limits = &shared.settings.limits;
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.header_limit_bytes as u32)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(10));
    let svc_shared = shared.clone();
    // When the last request began, in milliseconds after `opened` (for the idle timeout).
    let opened = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let svc_last = last.clone();
    let svc = hyper::service::service_fn(move |req| {
        let shared = svc_shared.clone();
        svc_last.store(opened.elapsed().as_millis() as u64, Ordering::Relaxed);
        async move { Ok::<_, Infallible>(handle(shared, req, peer).await) }
    });
    let conn = builder.serve_connection(TokioIo::new(Rewind { pre, inner: stream }), svc);
    tokio::pin!(conn);
    let idle = shared.settings.client_idle_timeout;
    tokio::select! {
        r = &mut conn => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "HTTP/2 connection ended with an error");
            }
        }
        // Shutdown, or no new request for the idle timeout: GOAWAY, and the streams in flight finish.
        _ = guard.tracker().stopped() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
        _ = idle_for(&last, opened, idle) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// Resolves once no request began for `idle` (`last`: when the last one began, in ms after `opened`).
async fn idle_for(last: &AtomicU64, opened: Instant, idle: Duration) {
    loop {
        let since = opened
            .elapsed()
            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
        if since >= idle {
            return;
        }
        tokio::time::sleep(idle - since).await;
    }
}

fn problem_response(p: &Problem, rid: &RequestId) -> Response<ProxyBody> {
    let mut r = Response::new(
        Full::new(Bytes::from(p.body(rid)))
            .map_err(|e| match e {})
            .boxed_unsync(),
    );
    *r.status_mut() = http::StatusCode::from_u16(p.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(tenfold_http::PROBLEM_JSON),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(v) = HeaderValue::from_bytes(rid.as_bytes()) {
        h.insert("x-request-id", v);
    }
    if p.status == 503 {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Proxies one HTTP/2 request.
async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let arrived = Instant::now();
    let (parts, body) = req.into_parts();
    let limit = shared.settings.body_limit;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let framing = match declared {
        Some(0) => ReqBody::None,
        Some(n) => ReqBody::Length(n),
        None if http_body::Body::is_end_stream(&body) => ReqBody::None,
        None => ReqBody::Chunked,
    };
    let mut out = pool::take_vec();
    let peer_text = peer.ip().to_string();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    if parts.method == http::Method::CONNECT {
        return problem_response(&Problem::method("CONNECT"), &RequestId::generate());
    }
    // HTTP/2 may split Cookie into several fields; HTTP/1.1 wants one (RFC 9113 §8.2.3).
    let cookies: Vec<&[u8]> = parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let cookie = (cookies.len() > 1).then(|| cookies.join(&b"; "[..]));
    let mut fields: Vec<(&[u8], &[u8])> = parts
        .headers
        .iter()
        .filter(|(n, _)| cookie.is_none() || *n != header::COOKIE)
        .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
        .collect();
    if let Some(c) = &cookie {
        fields.push((b"cookie", c));
    }
    let meta = h1::forward_request(
        h1::RequestParts {
            method: parts.method.as_str().as_bytes(),
            target: target.as_bytes(),
            authority: parts.uri.authority().map(|a| a.as_str().as_bytes()),
            headers: fields.iter().copied(),
            peer: peer_text.as_bytes(),
            hash_header: shared.hash_header(),
            body: framing,
        },
        &mut out,
    );
    let meta = match meta {
        Ok(m) => m,
        Err(_) => {
            return problem_response(
                &Problem::bad_request("the request head cannot be forwarded"),
                &RequestId::generate(),
            )
        }
    };
    if declared.is_some_and(|n| n > limit) {
        return problem_response(&Problem::too_large(limit), &meta.request_id);
    }
    let streamed = match framing {
        ReqBody::Length(n) if n <= REPLAY_LIMIT => {
            let idle = shared.settings.client_idle_timeout;
            match tokio::time::timeout(idle, Limited::new(body, n as usize).collect()).await {
                Ok(Ok(c)) => out.extend_from_slice(&c.to_bytes()),
                Ok(Err(e)) => {
                    return problem_response(
                        &Problem::bad_request(format!("the request body could not be read: {e}")),
                        &meta.request_id,
                    )
                }
                Err(_) => {
                    return problem_response(
                        &Problem::bad_request("the client stopped sending the request body"),
                        &meta.request_id,
                    )
                }
            }
            None
        }
        ReqBody::None => None,
        ReqBody::Length(_) | ReqBody::Chunked => Some(H2Body {
            body,
            chunked: framing == ReqBody::Chunked,
            limit,
            idle: shared.settings.client_idle_timeout,
            backend_timeout: shared.settings.response_timeout,
        }),
    };
    let outgoing = Outgoing {
        bytes: &out,
        streamed: streamed.is_some(),
        meta: &meta,
    };
    let mut head = pool::take_vec();
    let mut timer = Box::pin(tokio::time::sleep(shared.settings.response_timeout));
    let result = match streamed {
        Some(mut source) => {
            proxy::forward(
                &shared,
                peer.ip(),
                &outgoing,
                &mut source,
                &mut head,
                &mut timer,
            )
            .await
        }
        None => {
            proxy::forward(
                &shared,
                peer.ip(),
                &outgoing,
                &mut NoBody,
                &mut head,
                &mut timer,
            )
            .await
        }
    };
    pool::give_vec(out);
    let r = match result {
        Ok(answer) => {
            let upstream = answer.upstream;
            let r = response(shared, answer, &head);
            proxy::added_latency().record(arrived.elapsed().saturating_sub(upstream));
            r
        }
        Err(p) => problem_response(&p, &meta.request_id),
    };
    pool::give_vec(head);
    r
}

/// The HTTP/2 response for a backend's answer; its body is read from the backend as the client reads it.
fn response(shared: Arc<Shared>, answer: Answer, head: &[u8]) -> Response<ProxyBody> {
    let mut full = Vec::with_capacity(head.len() + 2);
    full.extend_from_slice(head);
    full.extend_from_slice(b"\r\n");
    let mut fields = [httparse::EMPTY_HEADER; h1::MAX_HEADERS + 1];
    let mut parsed = httparse::Response::new(&mut fields);
    let mut builder = Response::builder().status(answer.head.status);
    if parsed.parse(&full).is_ok() {
        for f in parsed.headers.iter() {
            // HTTP/2 frames its own body; a length is kept only where it is the body's.
            if f.name.eq_ignore_ascii_case("content-length")
                && !matches!(answer.head.body, RespBody::Length(_))
            {
                continue;
            }
            builder = builder.header(f.name, f.value);
        }
    }
    let relay = match answer.head.body {
        RespBody::Empty | RespBody::Length(0) => Relay::Done,
        RespBody::Length(n) => Relay::Length(n),
        RespBody::Chunked => Relay::Dechunk(h1::Chunked::default()),
        RespBody::UntilClose => Relay::UntilClose,
    };
    let timeout = shared.settings.response_timeout;
    let state = (Some(answer), relay, shared);
    let frames =
        futures::stream::unfold(state, move |(mut answer, mut relay, shared)| async move {
            let a = answer.as_mut()?;
            let mut chunk = Vec::new();
            loop {
                let done = match relay.take(&mut a.conn.buf, &mut chunk) {
                    Ok(d) => d,
                    Err(why) => {
                        shared.record_failure(&a.backend, Duration::ZERO, "exchange");
                        let e: BoxError = why.into();
                        return Some((Err(e), (None, relay, shared)));
                    }
                };
                if done {
                    if let Some(a) = answer.take() {
                        a.finish();
                    }
                    return Some((Ok(Frame::data(Bytes::from(chunk))), (None, relay, shared)));
                }
                if !chunk.is_empty() {
                    return Some((Ok(Frame::data(Bytes::from(chunk))), (answer, relay, shared)));
                }
                match tokio::time::timeout(timeout, a.conn.read_more(true)).await {
                    Ok(Ok(0)) if matches!(relay, Relay::UntilClose) => {
                        return Some((Ok(Frame::data(Bytes::new())), (None, relay, shared)));
                    }
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        shared.record_failure(&a.backend, Duration::ZERO, "exchange");
                        let e: BoxError =
                            "the backend failed while sending the response body".into();
                        return Some((Err(e), (None, relay, shared)));
                    }
                }
            }
        });
    let body = StreamBody::new(frames).boxed_unsync();
    builder.body(body).unwrap_or_else(|_| {
        problem_response(
            &Problem::bad_request("unusable response head"),
            &RequestId::generate(),
        )
    })
}

/// A request body streamed from an HTTP/2 client.
struct H2Body {
    body: Incoming,
    chunked: bool,
    limit: u64,
    /// Longest wait for the client's next piece of body.
    idle: Duration,
    /// Longest wait for the backend to take a piece.
    backend_timeout: Duration,
}

impl BodySource for H2Body {
    async fn pump(&mut self, to: &mut TcpStream) -> Result<(), PumpError> {
        let mut total = 0u64;
        let mut framed = Vec::new();
        loop {
            let frame = match tokio::time::timeout(self.idle, self.body.frame()).await {
                Ok(Some(f)) => f.map_err(|e| PumpError::Client(e.to_string()))?,
                Ok(None) => break,
                Err(_) => {
                    return Err(PumpError::Client(
                        "the client stopped sending the body".into(),
                    ))
                }
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            total += data.len() as u64;
            if total > self.limit {
                return Err(PumpError::TooLarge);
            }
            if self.chunked {
                framed.clear();
                h1::put_chunk(&mut framed, &data);
                write_backend(to, &framed, self.backend_timeout).await?;
            } else {
                write_backend(to, &data, self.backend_timeout).await?;
            }
        }
        if self.chunked {
            write_backend(to, h1::LAST_CHUNK, self.backend_timeout).await?;
        }
        Ok(())
    }
}

/// A socket whose first bytes were already read: they are read again first.
struct Rewind {
    pre: Bytes,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre[..n]);
            this.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}
