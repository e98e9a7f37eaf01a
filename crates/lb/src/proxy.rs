//! Forwarding one request, whatever the client spoke: backend choice, retries within a budget, passive
//! health, metrics, and the problem documents sent when no backend answered.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use crate::backend::{Backend, InFlight};
use crate::balance::PickContext;
use crate::h1::{self, RequestId, RequestMeta};
use crate::pool::{Conn, ReadError};
use crate::Shared;

/// The balancer-added latency histogram (`lb_added_latency_seconds`), one for the process.
pub(crate) fn added_latency() -> &'static crate::hist::Histogram {
    static H: std::sync::OnceLock<crate::hist::Histogram> = std::sync::OnceLock::new();
    H.get_or_init(crate::hist::Histogram::default)
}

/// Request bodies up to this size are read before a backend is chosen and sent with the head in one
/// write; a retry (for a request safe to repeat) resends them. Larger ones are streamed, sent once.
pub(crate) const REPLAY_LIMIT: u64 = 64 * 1024;

/// Retries may add at most `percent` extra load: each request deposits `percent`/100 of a token, each retry
/// withdraws one; at most 10 tokens accumulate, so a quiet period cannot fund a retry storm.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    milli_tokens: AtomicI64,
    deposit: i64,
}

const BUDGET_CAP: i64 = 10_000;

impl RetryBudget {
    pub(crate) fn new(percent: u32) -> RetryBudget {
        RetryBudget {
            milli_tokens: AtomicI64::new(BUDGET_CAP),
            deposit: i64::from(percent) * 10,
        }
    }

    fn deposit(&self) {
        // Full (no retries lately, the usual case): nothing to write to the shared counter.
        if self.milli_tokens.load(Ordering::Relaxed) >= BUDGET_CAP {
            return;
        }
        let _ = self
            .milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                Some((t + self.deposit).min(BUDGET_CAP))
            });
    }

    fn try_withdraw(&self) -> bool {
        self.milli_tokens
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
                (t >= 1000).then_some(t - 1000)
            })
            .is_ok()
    }
}

/// Why an attempt failed.
enum Failure {
    Connect(String),
    /// The request may have reached the backend (its connection broke mid-exchange).
    Exchange(String),
    Timeout,
}

/// An answer the balancer gives itself (RFC 9457 problem document).
#[derive(Debug)]
pub(crate) struct Problem {
    pub(crate) status: u16,
    kind: &'static str,
    title: &'static str,
    detail: String,
}

impl Problem {
    pub(crate) fn new(
        status: u16,
        kind: &'static str,
        title: &'static str,
        detail: String,
    ) -> Problem {
        Problem {
            status,
            kind,
            title,
            detail,
        }
    }

    pub(crate) fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(400, "/problems/bad-request", "Bad request", detail.into())
    }

    pub(crate) fn too_large(limit: u64) -> Problem {
        Problem::new(
            413,
            "/problems/payload-too-large",
            "Request body too large",
            format!("the request body is larger than the limit of {limit} bytes"),
        )
    }

    pub(crate) fn headers_too_large(limit: usize) -> Problem {
        Problem::new(
            431,
            "/problems/headers-too-large",
            "Request header fields too large",
            format!(
                "the request head is larger than {limit} bytes or has more than {} fields",
                h1::MAX_HEADERS
            ),
        )
    }

    pub(crate) fn method(method: &str) -> Problem {
        Problem::new(
            405,
            "/problems/method-not-allowed",
            "Method not allowed",
            format!("the balancer does not proxy {method} requests"),
        )
    }

    pub(crate) fn body(&self, rid: &RequestId) -> Vec<u8> {
        tenfold_http::problem_body(
            self.status,
            self.kind,
            self.title,
            &self.detail,
            Some(rid.as_str()),
        )
    }

    fn reason(&self) -> &'static str {
        http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error")
    }

    /// The whole HTTP/1.1 response, appended to `out` (without the body when it answers a HEAD request).
    pub(crate) fn write_h1(&self, rid: &RequestId, close: bool, head: bool, out: &mut Vec<u8>) {
        let body = self.body(rid);
        out.extend_from_slice(b"HTTP/1.1 ");
        h1::put_u64(out, u64::from(self.status));
        out.push(b' ');
        out.extend_from_slice(self.reason().as_bytes());
        out.extend_from_slice(b"\r\ncontent-type: ");
        out.extend_from_slice(tenfold_http::PROBLEM_JSON.as_bytes());
        out.extend_from_slice(b"\r\ncache-control: no-store\r\nx-request-id: ");
        out.extend_from_slice(rid.as_bytes());
        if self.status == 503 {
            out.extend_from_slice(b"\r\nretry-after: 1");
        }
        if close {
            out.extend_from_slice(b"\r\nconnection: close");
        }
        out.extend_from_slice(b"\r\ncontent-length: ");
        h1::put_u64(out, body.len() as u64);
        out.extend_from_slice(b"\r\n\r\n");
        if !head {
            out.extend_from_slice(&body);
        }
    }
}

/// Why a request body could not be passed on.
#[derive(Debug)]
pub(crate) enum PumpError {
    /// The client stopped sending, sent a malformed body, or went away.
    Client(String),
    /// Larger than the body limit.
    TooLarge,
    /// Writing to the backend failed.
    Backend(std::io::Error),
}

/// Where a streamed request body comes from (an HTTP/1 client connection or an HTTP/2 stream).
pub(crate) trait BodySource {
    /// Sends the whole body to the backend, in the framing its head announced.
    async fn pump(&mut self, to: &mut TcpStream) -> Result<(), PumpError>;
}

/// For requests whose body (if any) went with the head.
pub(crate) struct NoBody;

impl BodySource for NoBody {
    async fn pump(&mut self, _to: &mut TcpStream) -> Result<(), PumpError> {
        Ok(())
    }
}

/// A timer owned by a client connection and reused for each of its requests: moving a deadline later costs
/// no timer-wheel operation.
pub(crate) type Timer = Pin<Box<tokio::time::Sleep>>;

/// Most attempts (first try and retries) for one request.
const MAX_ATTEMPTS: usize = 16;

/// A request as it goes to backends.
pub(crate) struct Outgoing<'a> {
    /// The head for the backend and, unless `streamed`, the whole body.
    pub(crate) bytes: &'a [u8],
    /// The body follows from the [`BodySource`].
    pub(crate) streamed: bool,
    pub(crate) meta: &'a RequestMeta,
}

impl Outgoing<'_> {
    /// Safe to send again to another backend.
    fn replayable(&self) -> bool {
        self.meta.safe && !self.streamed
    }
}

/// A backend's response head, with what is needed to relay its body and account for it.
pub(crate) struct Answer {
    pub(crate) conn: Conn,
    pub(crate) head: h1::Response,
    pub(crate) backend: Arc<Backend>,
    pub(crate) _in_flight: InFlight,
    /// From sending the request to the answer's head (the backend's share of the latency).
    pub(crate) upstream: std::time::Duration,
    /// The backend answered before it had read the whole request body (and the connection then broke):
    /// the rest of the client's body was not read, so the client connection cannot be reused.
    pub(crate) request_body_unread: bool,
}

impl Answer {
    /// The body was relayed to its end: the connection may serve the next request.
    pub(crate) fn finish(self) {
        if self.head.reusable {
            self.backend.pool.checkin(self.conn);
        }
    }
}

/// Forwards a request to a backend, retrying where that is safe. On success the answer's head is in
/// `resp_out` (see [`h1::parse_response`]) and the body is the caller's to relay; otherwise the problem
/// to send. A problem from the request body (`PumpError`) leaves the client connection unusable.
pub(crate) async fn forward<S: BodySource>(
    shared: &Shared,
    peer: IpAddr,
    outgoing: &Outgoing<'_>,
    source: &mut S,
    resp_out: &mut Vec<u8>,
    timer: &mut Timer,
) -> Result<Answer, Problem> {
    shared.budget.deposit();
    // Backends tried so far: `tried[..attempt]`.
    let mut tried = [0usize; MAX_ATTEMPTS];
    let mut last: Option<(std::net::SocketAddr, Failure)> = None;
    let members = shared.members.load();
    let max_attempts = (1 + shared.settings.max_retries as usize).min(MAX_ATTEMPTS);
    let ctx = PickContext {
        client_ip: peer,
        hash_header: outgoing.meta.hash_value.as_deref(),
        slow_start: shared.settings.outlier.slow_start,
    };
    let pick = |tried: &[usize]| {
        shared
            .picker
            .pick(&members.backends, members.maglev.as_ref(), &ctx, tried)
    };
    // A backend already chosen, and its retry already paid for, by a retry on a 5xx status.
    let mut chosen: Option<usize> = None;
    for attempt in 0..max_attempts {
        let i = match chosen.take() {
            Some(i) => i,
            None => {
                if attempt > 0 && !shared.budget.try_withdraw() {
                    metrics::counter!("lb_retries_denied_total").increment(1);
                    break;
                }
                match pick(&tried[..attempt]) {
                    Some(i) => i,
                    None => break,
                }
            }
        };
        tried[attempt] = i;
        if attempt > 0 {
            metrics::counter!("lb_retries_total").increment(1);
        }
        let backend = members.backends[i].clone();
        let in_flight = backend.start();
        let started = Instant::now();
        resp_out.clear();
        let (conn, head, request_body_unread) =
            match exchange(shared, &backend, outgoing, source, resp_out, timer).await {
                Ok(x) => x,
                Err(Attempt::Body(e)) => {
                    return Err(match e {
                        PumpError::TooLarge => Problem::too_large(shared.settings.body_limit),
                        PumpError::Client(why) => Problem::bad_request(format!(
                            "the request body could not be read: {why}"
                        )),
                        PumpError::Backend(e) => {
                            shared.record_failure(&backend, started.elapsed(), "exchange");
                            Problem::new(
                                502,
                                "/problems/bad-gateway",
                                "Bad gateway",
                                format!(
                                    "backend {} failed while receiving the request body: {e}",
                                    backend.addr
                                ),
                            )
                        }
                    })
                }
                Err(Attempt::Failed(f)) => {
                    let kind = match &f {
                        Failure::Connect(_) => "connect",
                        Failure::Exchange(_) => "exchange",
                        Failure::Timeout => "timeout",
                    };
                    shared.record_failure(&backend, started.elapsed(), kind);
                    // Connect failures sent nothing, so any request may go elsewhere; otherwise only safe ones.
                    let again = matches!(f, Failure::Connect(_)) || outgoing.replayable();
                    last = Some((backend.addr, f));
                    if again {
                        continue;
                    }
                    break;
                }
            };
        let upstream = started.elapsed();
        let status = head.status;
        // A shed request (the backend's overload control refused it, X-Load-Shed) says the backend is
        // busy, not down: it steers load away (a latency penalty) without ejecting the backend or
        // honouring its Retry-After for every request (that is the client's to honour).
        let shed = status == 503 && head.shed;
        if let Some(d) = head
            .retry_after
            .filter(|_| !shed && (status == 503 || status == 429))
        {
            backend.back_off(d);
        }
        if shed {
            backend.observe_shed(upstream);
            metrics::counter!("lb_backend_shed_total", "backend" => backend.addr.to_string())
                .increment(1);
        } else if status >= 500 {
            shared.record_failure(&backend, upstream, "status");
        } else {
            backend.observe_success(upstream);
        }
        backend.metrics.latency.record(upstream);
        if matches!(status, 502..=504) && outgoing.replayable() && attempt + 1 < max_attempts {
            // Give up this answer only when another backend can take the request and the budget allows.
            if let Some(j) = pick(&tried[..=attempt]) {
                if shared.budget.try_withdraw() {
                    chosen = Some(j);
                    last = Some((
                        backend.addr,
                        Failure::Exchange(format!("answered {status}")),
                    ));
                    continue;
                }
                metrics::counter!("lb_retries_denied_total").increment(1);
            }
        }
        return Ok(Answer {
            conn,
            head,
            backend,
            _in_flight: in_flight,
            upstream,
            request_body_unread,
        });
    }
    Err(match last {
        Some((addr, Failure::Timeout)) => Problem::new(
            504,
            "/problems/gateway-timeout",
            "Gateway timeout",
            format!(
                "backend {addr} did not answer within {} ms",
                shared.settings.response_timeout.as_millis()
            ),
        ),
        Some((addr, Failure::Connect(e))) => Problem::new(
            502,
            "/problems/bad-gateway",
            "Bad gateway",
            format!("backend {addr} could not be reached: {e}"),
        ),
        Some((addr, Failure::Exchange(e))) => Problem::new(
            502,
            "/problems/bad-gateway",
            "Bad gateway",
            format!("backend {addr} failed: {e}"),
        ),
        None => Problem::new(
            503,
            "/problems/no-backend",
            "Service unavailable",
            shared.why_none_available(),
        ),
    })
}

/// How long a backend that stopped reading a request body gets to show its early answer.
const EARLY_ANSWER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes `bytes` within `limit`. On failure, also says how many bytes the socket had taken: none means
/// the backend cannot have seen the request.
async fn send_all(
    stream: &mut TcpStream,
    bytes: &[u8],
    limit: std::time::Duration,
) -> Result<(), (usize, std::io::Error)> {
    let mut done = 0;
    let mut deadline = None;
    while done < bytes.len() {
        match stream.try_write(&bytes[done..]) {
            Ok(0) => return Err((done, std::io::ErrorKind::WriteZero.into())),
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let at = *deadline.get_or_insert_with(|| tokio::time::Instant::now() + limit);
                match tokio::time::timeout_at(at, stream.writable()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err((done, e)),
                    Err(_) => return Err((done, std::io::ErrorKind::TimedOut.into())),
                }
            }
            Err(e) => return Err((done, e)),
        }
    }
    Ok(())
}

/// How one attempt ended, when it did not end with a response head.
enum Attempt {
    Failed(Failure),
    Body(PumpError),
}

/// Sends the request over a pooled connection (trying further pooled connections when the backend had
/// closed one without reading our request) and reads the response head within the response timeout.
async fn exchange<S: BodySource>(
    shared: &Shared,
    backend: &Backend,
    outgoing: &Outgoing<'_>,
    source: &mut S,
    resp_out: &mut Vec<u8>,
    timer: &mut Timer,
) -> Result<(Conn, h1::Response, bool), Attempt> {
    let meta = outgoing.meta;
    let limit = shared.settings.response_timeout;
    for _ in 0..4 {
        let mut conn = backend
            .pool
            .checkout()
            .await
            .map_err(|e| Attempt::Failed(Failure::Connect(e.to_string())))?;
        let reused = conn.reused;
        match send_all(&mut conn.stream, outgoing.bytes, limit).await {
            Ok(()) => {}
            // Closed by the backend while idle: it never got a byte of this request. Try another.
            Err((0, _)) if reused => continue,
            Err((0, e)) => return Err(Attempt::Failed(Failure::Connect(e.to_string()))),
            // Part of the request went out: it may have been acted on.
            Err((_, e)) => {
                return Err(Attempt::Failed(Failure::Exchange(format!(
                    "sending the request failed: {e}"
                ))))
            }
        }
        if outgoing.streamed {
            match source.pump(&mut conn.stream).await {
                Ok(()) => {}
                // The backend stopped reading: it may have answered early (413, 401...). Its answer, if
                // there is one, is the client's; without one the body error stands.
                Err(PumpError::Backend(e)) => {
                    timer
                        .as_mut()
                        .reset(tokio::time::Instant::now() + EARLY_ANSWER_WAIT);
                    let early = tokio::select! {
                        biased;
                        r = conn.read_head(meta.head, &meta.request_id, resp_out) => r.ok(),
                        _ = timer.as_mut() => None,
                    };
                    match early {
                        Some(mut head) => {
                            head.reusable = false;
                            return Ok((conn, head, true));
                        }
                        None => return Err(Attempt::Body(PumpError::Backend(e))),
                    }
                }
                Err(e) => return Err(Attempt::Body(e)),
            }
        }
        timer.as_mut().reset(tokio::time::Instant::now() + limit);
        let read = tokio::select! {
            biased;
            r = conn.read_head(meta.head, &meta.request_id, resp_out) => Ok(r),
            _ = timer.as_mut() => Err(()),
        };
        match read {
            Ok(Ok(head)) => return Ok((conn, head, false)),
            // A pooled connection the backend closed just as we wrote: for a request safe to repeat
            // (whose body went with the head) try another connection; a request that is not safe to
            // repeat is never sent twice.
            Ok(Err(ReadError::Closed)) if reused && outgoing.replayable() => {
                resp_out.clear();
                continue;
            }
            Ok(Err(e)) => return Err(Attempt::Failed(Failure::Exchange(e.to_string()))),
            Err(_) => return Err(Attempt::Failed(Failure::Timeout)),
        }
    }
    Err(Attempt::Failed(Failure::Connect(
        "every pooled connection was closed by the backend".into(),
    )))
}
