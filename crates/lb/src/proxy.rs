//! Forwarding one request: header hygiene, backend choice, retries within a budget, error answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;

use crate::backend::Backend;
use crate::balance::PickContext;
use crate::body::{Finisher, Tracked};
use crate::pool::{BoxError, ProxyBody};
use crate::Shared;

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// The balancer-added latency histogram, registered once rather than looked up per request.
fn added_latency() -> &'static metrics::Histogram {
    static H: std::sync::OnceLock<metrics::Histogram> = std::sync::OnceLock::new();
    H.get_or_init(|| metrics::histogram!("lb_added_latency_seconds"))
}

/// Bodies up to this size are buffered when the request is safe to repeat, so a retry can resend them.
const REPLAY_LIMIT: u64 = 64 * 1024;

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

fn problem(
    status: StatusCode,
    kind: &str,
    title: &str,
    detail: String,
    request_id: &HeaderValue,
) -> Response<ProxyBody> {
    let body = tenfold_http::problem_body(
        status.as_u16(),
        kind,
        title,
        &detail,
        request_id.to_str().ok(),
    );
    let mut r = Response::new(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(tenfold_http::PROBLEM_JSON),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(X_REQUEST_ID.clone(), request_id.clone());
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        KEEP_ALIVE.clone(),
        PROXY_CONNECTION.clone(),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        h.remove(n);
    }
}

fn request_id(h: &HeaderMap) -> HeaderValue {
    match h.get(&X_REQUEST_ID) {
        Some(v)
            if (1..=128).contains(&v.len())
                && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
        {
            v.clone()
        }
        _ => {
            let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
            HeaderValue::from_str(uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
                .unwrap_or(HeaderValue::from_static("-"))
        }
    }
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// A request as it will be sent, kept so it can be sent again when that is safe.
enum Outgoing {
    /// Head and a small body that can be resent to another backend.
    Replayable {
        head: http::request::Parts,
        body: Bytes,
    },
    /// A streamed body: sent at most once (unless the backend provably never received it).
    Streaming(Option<Request<ProxyBody>>),
}

impl Outgoing {
    fn take(&mut self) -> Option<Request<ProxyBody>> {
        match self {
            Outgoing::Replayable { head, body } => {
                let mut r = Request::new(Full::new(body.clone()).map_err(|e| match e {}).boxed());
                *r.method_mut() = head.method.clone();
                *r.uri_mut() = head.uri.clone();
                *r.version_mut() = head.version;
                *r.headers_mut() = head.headers.clone();
                Some(r)
            }
            Outgoing::Streaming(r) => r.take(),
        }
    }

    fn put_back(&mut self, req: Request<ProxyBody>) {
        if let Outgoing::Streaming(slot) = self {
            *slot = Some(req);
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Outgoing::Replayable { .. })
    }
}

/// Proxies one client request.
pub(crate) async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let arrived = Instant::now();
    let (mut parts, body) = req.into_parts();
    let rid = request_id(&parts.headers);
    shared.budget.deposit();

    // Declared too large: refuse before reading.
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > shared.settings.body_limit) {
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "/problems/payload-too-large",
            "Request body too large",
            format!(
                "the request body is larger than the limit of {} bytes",
                shared.settings.body_limit
            ),
            &rid,
        );
    }

    // Headers for the backend.
    let host = parts.headers.get(header::HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    strip_hop_by_hop(&mut parts.headers);
    let h = &mut parts.headers;
    if let Some(host) = &host {
        h.insert(header::HOST, host.clone());
        h.insert(X_FORWARDED_HOST.clone(), host.clone());
    }
    let ip = peer.ip().to_string();
    let xff = match h.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {ip}"),
        None => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR.clone(), v);
    }
    h.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("http"));
    h.insert(X_REQUEST_ID.clone(), rid.clone());
    // Backends get origin-form HTTP/1.1 whatever the client spoke.
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|pq| Uri::from(pq.clone()))
        .unwrap_or_else(|| Uri::from_static("/"));
    parts.version = Version::HTTP_11;

    let safe = matches!(
        parts.method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    ) || parts.headers.contains_key(&IDEMPOTENCY_KEY);
    let no_body = declared == Some(0)
        || (declared.is_none()
            && !parts.headers.contains_key(header::TRANSFER_ENCODING)
            && body_is_empty(&body));
    let limit = shared.settings.body_limit;
    let mut outgoing = if safe && (no_body || declared.is_some_and(|n| n <= REPLAY_LIMIT)) {
        let bytes = if no_body {
            Bytes::new()
        } else {
            match Limited::new(body, REPLAY_LIMIT as usize).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    return problem(
                        StatusCode::BAD_REQUEST,
                        "/problems/bad-request",
                        "Bad request",
                        format!("the request body could not be read: {e}"),
                        &rid,
                    )
                }
            }
        };
        Outgoing::Replayable {
            head: parts,
            body: bytes,
        }
    } else {
        let body = Limited::new(body, limit as usize)
            .map_err(BoxError::from)
            .boxed();
        Outgoing::Streaming(Some(Request::from_parts(parts, body)))
    };

    let hash_header = match &shared.picker.algorithm {
        crate::Algorithm::ConsistentHash(crate::HashKey::Header(name)) => {
            outgoing_header(&outgoing, name)
        }
        _ => None,
    };
    let mut tried: Vec<usize> = Vec::new();
    let mut last: Option<(SocketAddr, Failure)> = None;
    let members = shared.members.load_full();
    let max_attempts = 1 + shared.settings.max_retries as usize;
    let ctx = PickContext {
        client_ip: peer.ip(),
        hash_header: hash_header.as_deref(),
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
                match pick(&tried) {
                    Some(i) => i,
                    None => break,
                }
            }
        };
        tried.push(i);
        if attempt > 0 {
            metrics::counter!("lb_retries_total").increment(1);
        }
        let backend = members.backends[i].clone();
        let in_flight = backend.start();
        let started = Instant::now();
        let (conn, sent) = match exchange(&shared, &backend, &mut outgoing).await {
            Ok(x) => x,
            Err(f) => {
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
        let resp = sent;
        let upstream = started.elapsed();
        let status = resp.status();
        // A shed request (the backend's overload control refused it, X-Load-Shed) says the backend is
        // busy, not down: it steers load away (a latency penalty) without ejecting the backend or
        // honouring its Retry-After for every request (that is the client's to honour).
        let shed = status == StatusCode::SERVICE_UNAVAILABLE
            && resp.headers().contains_key(&tenfold_http::X_LOAD_SHED);
        if let Some(d) = retry_after(resp.headers()).filter(|_| {
            !shed
                && (status == StatusCode::SERVICE_UNAVAILABLE
                    || status == StatusCode::TOO_MANY_REQUESTS)
        }) {
            backend.back_off(d);
        }
        if shed {
            backend.observe_shed(upstream);
            metrics::counter!("lb_backend_shed_total", "backend" => backend.addr.to_string())
                .increment(1);
        } else if status.is_server_error() {
            shared.record_failure(&backend, upstream, "status");
        } else {
            backend.observe_success(upstream);
        }
        backend.metrics.latency.record(upstream.as_secs_f64());
        let retry_status = matches!(
            status,
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
        );
        if retry_status && outgoing.replayable() && attempt + 1 < max_attempts {
            // Give up this answer only when another backend can take the request and the budget allows.
            if let Some(j) = pick(&tried) {
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
        let (mut rparts, rbody) = resp.into_parts();
        strip_hop_by_hop(&mut rparts.headers);
        rparts
            .headers
            .entry(X_REQUEST_ID.clone())
            .or_insert(rid.clone());
        let body = Tracked::new(
            rbody,
            Finisher {
                conn: Some(conn),
                backend: backend.clone(),
                _in_flight: in_flight,
            },
        )
        .boxed();
        added_latency().record(arrived.elapsed().saturating_sub(upstream).as_secs_f64());
        return Response::from_parts(rparts, body);
    }
    match last {
        Some((addr, Failure::Timeout)) => problem(
            StatusCode::GATEWAY_TIMEOUT,
            "/problems/gateway-timeout",
            "Gateway timeout",
            format!(
                "backend {addr} did not answer within {} ms",
                shared.settings.response_timeout.as_millis()
            ),
            &rid,
        ),
        Some((addr, Failure::Connect(e))) => problem(
            StatusCode::BAD_GATEWAY,
            "/problems/bad-gateway",
            "Bad gateway",
            format!("backend {addr} could not be reached: {e}"),
            &rid,
        ),
        Some((addr, Failure::Exchange(e))) => problem(
            StatusCode::BAD_GATEWAY,
            "/problems/bad-gateway",
            "Bad gateway",
            format!("backend {addr} failed: {e}"),
            &rid,
        ),
        None => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "/problems/no-backend",
            "Service unavailable",
            shared.why_none_available(),
            &rid,
        ),
    }
}

fn body_is_empty(b: &Incoming) -> bool {
    http_body::Body::is_end_stream(b)
}

fn outgoing_header(o: &Outgoing, name: &HeaderName) -> Option<Vec<u8>> {
    let h = match o {
        Outgoing::Replayable { head, .. } => &head.headers,
        Outgoing::Streaming(Some(r)) => r.headers(),
        Outgoing::Streaming(None) => return None,
    };
    h.get(name).map(|v| v.as_bytes().to_vec())
}

/// Sends the request over a pooled connection (retrying on other pooled connections the backend had
/// closed without our request being written), within the response timeout.
async fn exchange(
    shared: &Shared,
    backend: &Backend,
    outgoing: &mut Outgoing,
) -> Result<(crate::pool::Conn, Response<Incoming>), Failure> {
    for _ in 0..4 {
        let mut conn = backend
            .pool
            .checkout()
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let Some(req) = outgoing.take() else {
            return Err(Failure::Exchange(
                "the request body was already sent".into(),
            ));
        };
        match tokio::time::timeout(shared.settings.response_timeout, conn.send(req)).await {
            Ok(Ok(resp)) => return Ok((conn, resp)),
            Ok(Err(mut e)) => {
                let why = e.error().to_string();
                match e.take_message() {
                    // Never written. A stale pooled connection is not the backend's fault: try another.
                    Some(req) if conn.reused => outgoing.put_back(req),
                    Some(req) => {
                        outgoing.put_back(req);
                        return Err(Failure::Connect(why));
                    }
                    None => return Err(Failure::Exchange(why)),
                }
            }
            Err(_) => return Err(Failure::Timeout),
        }
    }
    Err(Failure::Connect(
        "every pooled connection was closed by the backend".into(),
    ))
}
