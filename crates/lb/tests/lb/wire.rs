//! The balancer's own HTTP/1.1 path on the wire: framing passed on or translated, pipelining, 100-continue,
//! informational answers, HTTP/1.0 clients, HTTP/2 clients with bodies, and smuggling attempts refused.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::*;

/// A backend that answers every request with the same raw bytes (closing after each when `close`).
async fn raw_backend(response: &'static [u8], close: bool) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    buf.drain(..end);
                    if s.write_all(response).await.is_err() || close {
                        let _ = s.shutdown().await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// An HTTP/1.1 backend (hyper) that answers with the request body it got, in chunks of unknown length
/// (so its response is chunked), and says how the body reached it.
async fn echo_backend() -> SocketAddr {
    use http_body_util::BodyExt;
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else { return };
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let te = req
                        .headers()
                        .get("transfer-encoding")
                        .map(|v| v.to_str().unwrap().to_owned())
                        .unwrap_or_default();
                    let expect = req.headers().contains_key("expect");
                    let cookies: Vec<String> = req
                        .headers()
                        .get_all("cookie")
                        .iter()
                        .map(|v| v.to_str().unwrap().to_owned())
                        .collect();
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    let len = body.len();
                    let chunks = futures::stream::iter(
                        body.chunks(1000)
                            .map(|c| {
                                Ok::<_, std::io::Error>(hyper::body::Frame::data(
                                    bytes::Bytes::copy_from_slice(c),
                                ))
                            })
                            .collect::<Vec<_>>(),
                    );
                    let mut r = hyper::Response::new(http_body_util::StreamBody::new(chunks));
                    r.headers_mut().insert("x-seen-length", len.into());
                    r.headers_mut()
                        .insert("x-seen-cookie-fields", cookies.len().into());
                    r.headers_mut()
                        .insert("x-seen-cookie", cookies.join(" | ").parse().unwrap());
                    r.headers_mut().insert("x-seen-te", te.parse().unwrap());
                    r.headers_mut().insert(
                        "x-seen-expect",
                        if expect { "yes" } else { "no" }.parse().unwrap(),
                    );
                    Ok::<_, std::io::Error>(r)
                },
            );
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

async fn lb_over(addr: SocketAddr) -> TestLb {
    let mut cfg = config("round-robin");
    cfg.backends = vec![tenfold_config::BackendSpec { addr, weight: 1 }];
    TestLb::start_with(cfg).await
}

/// A raw connection to the balancer that has sent `raw`.
async fn send_raw(lb: &TestLb, raw: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(lb_addr(lb)).await.unwrap();
    s.write_all(raw).await.unwrap();
    s
}

fn lb_addr(lb: &TestLb) -> String {
    lb.base.trim_start_matches("http://").to_owned()
}

/// Reads from `s` until `done` says the bytes so far are complete, or the peer closes; at most 5 s.
async fn read_until(s: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if done(&got) {
                return false;
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return true,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the balancer answered within 5 s");
    (got, closed)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn chunked_answers_pass_through_and_pipelined_requests_are_answered_in_order() {
    let be = raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-From: raw\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        false,
    )
    .await;
    let lb = lb_over(be).await;
    // Two requests in one write.
    let raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = send_raw(&lb, raw).await;
    let (got, closed) = read_until(&mut s, |g| text(g).matches("0\r\n\r\n").count() == 2).await;
    let t = text(&got);
    assert!(!closed, "keep-alive: {t}");
    assert_eq!(t.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{t}");
    assert_eq!(
        t.matches("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").count(),
        2,
        "{t}"
    );
    assert_eq!(
        t.to_ascii_lowercase()
            .matches("transfer-encoding: chunked\r\n")
            .count(),
        2,
        "{t}"
    );
    assert!(t.to_ascii_lowercase().contains("x-request-id: "), "{t}");
}

#[tokio::test]
async fn http_1_0_clients_get_plain_bodies_and_a_closed_connection() {
    let be = raw_backend(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
    )
    .await;
    let lb = lb_over(be).await;
    let mut s = send_raw(&lb, b"GET / HTTP/1.0\r\n\r\n").await;
    let (got, closed) = read_until(&mut s, |_| false).await;
    let t = text(&got);
    assert!(closed);
    assert!(t.starts_with("HTTP/1.1 200 OK\r\n"), "{t}");
    assert!(t.ends_with("\r\n\r\nhello"), "{t}");
    assert!(!t.to_ascii_lowercase().contains("transfer-encoding"), "{t}");
    assert!(t.to_ascii_lowercase().contains("connection: close"), "{t}");
    // Keep-alive on request: a length-framed answer keeps the connection.
    let be = raw_backend(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", false).await;
    let lb = lb_over(be).await;
    let mut s = TcpStream::connect(lb_addr(&lb)).await.unwrap();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (got, closed) = read_until(&mut s, |g| g.ends_with(b"\r\n\r\nok")).await;
        assert!(
            !closed
                && text(&got)
                    .to_ascii_lowercase()
                    .contains("connection: keep-alive")
        );
    }
}

#[tokio::test]
async fn answers_delimited_by_close_and_informational_heads() {
    let be = raw_backend(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\nuntil the end", true).await;
    let lb = lb_over(be).await;
    let mut s = send_raw(&lb, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let (got, closed) = read_until(&mut s, |_| false).await;
    let t = text(&got);
    assert!(closed && t.ends_with("until the end"), "{t}");
    assert!(t.to_ascii_lowercase().contains("connection: close"), "{t}");

    let be = raw_backend(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody",
        false,
    )
    .await;
    let lb = lb_over(be).await;
    let c = client();
    let r = c.get(lb.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "body");
}

/// What the echo backend saw of a POST through the balancer, and what came back.
struct Echoed {
    version: reqwest::Version,
    seen_length: String,
    seen_te: String,
    body: bytes::Bytes,
}

async fn echo(c: &reqwest::Client, url: &str, body: impl Into<reqwest::Body>) -> Echoed {
    let r = c.post(url).body(body).send().await.unwrap();
    let header = |n: &str| r.headers()[n].to_str().unwrap().to_owned();
    let (version, seen_length, seen_te) =
        (r.version(), header("x-seen-length"), header("x-seen-te"));
    Echoed {
        version,
        seen_length,
        seen_te,
        body: r.bytes().await.unwrap(),
    }
}

#[tokio::test]
async fn request_bodies_arrive_whole_in_every_framing() {
    let be = echo_backend().await;
    let lb = lb_over(be).await;
    let url = lb.url("/e");
    let c = client();
    // Small body with a length: sent with the head.
    let e = echo(&c, &url, vec![b'a'; 10_000]).await;
    assert_eq!((e.seen_length.as_str(), e.body.len()), ("10000", 10_000));
    // Large body with a length: streamed.
    let e = echo(&c, &url, vec![b'b'; 300_000]).await;
    assert_eq!((e.seen_length.as_str(), e.body.len()), ("300000", 300_000));
    // Chunked from the client: re-framed, and still chunked for the backend.
    let e = echo(
        &c,
        &url,
        reqwest::Body::wrap_stream(chunks(10, b'c', 7_000)),
    )
    .await;
    assert_eq!(
        (e.seen_length.as_str(), e.seen_te.as_str()),
        ("70000", "chunked")
    );
    // HTTP/2 client, with and without a length.
    let h2 = h2_client();
    // Cookie crumbs of HTTP/2 become one Cookie field for HTTP/1.1.
    let r = h2
        .get(&url)
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-seen-cookie-fields"], "1");
    assert_eq!(r.headers()["x-seen-cookie"], "a=1; b=2");
    let e = echo(&h2, &url, vec![b'd'; 5_000]).await;
    assert_eq!(e.version, reqwest::Version::HTTP_2);
    assert_eq!(
        (e.seen_length.as_str(), &e.body[..]),
        ("5000", &vec![b'd'; 5_000][..])
    );
    let e = echo(
        &h2,
        &url,
        reqwest::Body::wrap_stream(chunks(3, b'e', 100_000)),
    )
    .await;
    assert_eq!((e.seen_length.as_str(), e.body.len()), ("300000", 300_000));
}

#[tokio::test]
async fn expect_100_continue_is_answered_by_the_balancer() {
    let be = echo_backend().await;
    let lb = lb_over(be).await;
    for size in [1_000usize, 200_000] {
        let mut s = send_raw(&lb, format!("POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nExpect: 100-continue\r\n\r\n").as_bytes()).await;
        let (got, _) = read_until(&mut s, |g| g.ends_with(b"\r\n\r\n")).await;
        assert_eq!(text(&got), "HTTP/1.1 100 Continue\r\n\r\n");
        s.write_all(&vec![b'x'; size]).await.unwrap();
        let (got, _) = read_until(&mut s, |g| g.ends_with(b"0\r\n\r\n")).await;
        let t = text(&got);
        assert!(t.starts_with("HTTP/1.1 200 OK"), "{t}");
        assert!(t.contains(&format!("x-seen-length: {size}\r\n")), "{t}");
        assert!(
            t.contains("x-seen-expect: no\r\n"),
            "the balancer answered the expectation: {t}"
        );
    }
}

#[tokio::test]
async fn smuggling_attempts_and_unsupported_requests_are_refused() {
    let b = TestBackend::start("a").await;
    let lb = TestLb::start(config("round-robin"), &[&b]).await;
    for (raw, status) in [
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd", "400"),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "400"),
        ("CONNECT example.test:443 HTTP/1.1\r\nHost: example.test:443\r\n\r\n", "405"),
    ] {
        let mut s = send_raw(&lb, raw.as_bytes()).await;
        let (got, _) = read_until(&mut s, |_| false).await;
        let t = text(&got);
        assert!(t.starts_with(&format!("HTTP/1.1 {status} ")), "{raw:?} -> {t}");
        assert!(t.contains("application/problem+json"), "{t}");
    }
    assert_eq!(b.hits(), 0, "nothing ambiguous reached the backend");
    // A chunked body that turns out malformed: the head went on, the body is refused.
    let mut s = send_raw(
        &lb,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    .await;
    let (got, closed) = read_until(&mut s, |_| false).await;
    assert!(text(&got).starts_with("HTTP/1.1 400 "), "{}", text(&got));
    assert!(closed);
    assert_eq!(who(&client(), &lb.url("/x")).await, "a");
}

#[tokio::test]
async fn idle_clients_are_closed_after_the_idle_timeout() {
    let b = TestBackend::start("a").await;
    let mut cfg = config("round-robin");
    cfg.client_idle_timeout_ms = 300;
    cfg.backends = vec![b.spec(1)];
    let lb = TestLb::start_with(cfg).await;
    let mut s = send_raw(&lb, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let started = std::time::Instant::now();
    let (got, closed) = read_until(&mut s, |_| false).await;
    assert!(text(&got).starts_with("HTTP/1.1 200"));
    assert!(closed && started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn idle_keep_alive_connections_hold_no_buffer() {
    let b = TestBackend::start("a").await;
    let lb = TestLb::start(config("round-robin"), &[&b]).await;
    let mut conns = Vec::new();
    for _ in 0..200 {
        let s = send_raw(&lb, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n").await;
        conns.push(s);
    }
    for s in &mut conns {
        let (got, closed) = read_until(s, |g| g.ends_with(b"a")).await;
        assert!(!closed && text(&got).starts_with("HTTP/1.1 200"));
    }
    // Every connection is open and idle: none holds a read buffer (each gives it back just after its
    // answer was written, so allow a moment).
    assert_eq!(held_settles_at(&lb, 0).await, 0);
    // One sends half a head: it holds one while it waits for the rest.
    conns[0].write_all(b"GET /x HTTP/1.1\r\n").await.unwrap();
    assert_eq!(held_settles_at(&lb, 1).await, 1);
    conns[0].write_all(b"Host: x\r\n\r\n").await.unwrap();
    let (got, _) = read_until(&mut conns[0], |g| g.ends_with(b"a")).await;
    assert!(text(&got).starts_with("HTTP/1.1 200"));
    assert_eq!(held_settles_at(&lb, 0).await, 0);
}

/// The balancer's count of held client buffers once it reaches `want`, or after 5 s, whatever it is then.
async fn held_settles_at(lb: &TestLb, want: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lb.lb.client_buffers_held() != want && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    lb.lb.client_buffers_held()
}

/// A backend that records every byte it receives and never answers.
async fn recording_backend() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = seen2.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = s.read(&mut chunk).await {
                    if n == 0 {
                        return;
                    }
                    seen.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_request_hidden_in_chunked_framing_never_reaches_the_backend() {
    let (be, seen) = recording_backend().await;
    let mut cfg = config("round-robin");
    cfg.health.path = "/".into();
    cfg.health.interval_ms = 60_000;
    cfg.backends = vec![tenfold_config::BackendSpec {
        addr: be,
        weight: 1,
    }];
    let lb = TestLb::start_with(cfg).await;
    for smuggle in [
        // A bare LF where the trailer section should end: a lenient backend would end the body there.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        // A bare LF inside a chunk extension.
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;\nGET /admin HTTP/1.1\r\n\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut s = send_raw(&lb, smuggle.as_bytes()).await;
        let (got, closed) = read_until(&mut s, |_| false).await;
        assert!(text(&got).starts_with("HTTP/1.1 400 "), "{}", text(&got));
        assert!(closed);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let seen = text(&seen.lock().unwrap());
    assert!(!seen.contains("/admin"), "{seen}");
}

#[tokio::test]
async fn problems_answering_head_requests_have_no_body() {
    let lb = TestLb::start_with(config("round-robin")).await; // no backend: 503
    let mut s = send_raw(
        &lb,
        b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /y HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    let (got, closed) = read_until(&mut s, |g| {
        let t = text(g);
        t.matches("HTTP/1.1 503").count() == 2 && t.ends_with('}')
    })
    .await;
    let t = text(&got);
    assert!(!closed, "{t}");
    // The first answer ends at its blank line: the second status line follows at once.
    let first_end = t.find("\r\n\r\n").unwrap() + 4;
    assert!(t[first_end..].starts_with("HTTP/1.1 503"), "{t}");
}

#[tokio::test]
async fn a_backend_refusing_an_upload_early_is_heard_not_reported_as_failing() {
    // Reads the head, answers 413 at once, and closes without reading the body.
    let be = raw_backend(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
        true,
    )
    .await;
    let mut cfg = config("round-robin");
    cfg.response_timeout_ms = 2_000;
    cfg.backends = vec![tenfold_config::BackendSpec {
        addr: be,
        weight: 1,
    }];
    let lb = TestLb::start_with(cfg).await;
    let r = client()
        .post(lb.url("/upload"))
        .body(vec![b'x'; 64 << 20])
        .send()
        .await;
    match r {
        Ok(r) => {
            assert_eq!(r.status(), 413);
            assert_eq!(r.text().await.unwrap(), "big!");
        }
        // The client may see its own upload cut off when the balancer closes after the answer; what it
        // must never get is a 502 for a backend that answered.
        Err(e) => assert!(e.is_request() || e.is_body(), "{e}"),
    }
    let st = &lb.lb.status()[0];
    assert_eq!(
        st.errors, 0,
        "an early answer is not a backend failure: {st:?}"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_frees_its_backend() {
    // 32 MiB answer: more than the socket buffers between balancer and client can hold.
    let body: &'static [u8] = Box::leak(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 33554432\r\n\r\n".to_vec(),
            vec![b'x'; 32 << 20],
        ]
        .concat()
        .into_boxed_slice(),
    );
    let be = raw_backend(body, false).await;
    let mut cfg = config("round-robin");
    cfg.client_idle_timeout_ms = 300;
    cfg.health.path = "/".into();
    cfg.health.interval_ms = 60_000;
    cfg.backends = vec![tenfold_config::BackendSpec {
        addr: be,
        weight: 1,
    }];
    let lb = TestLb::start_with(cfg).await;
    let _client = send_raw(&lb, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // Never read. The balancer must give up on this client and let the request go.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let st = &lb.lb.status()[0];
        if st.requests == 1 && st.in_flight == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still in flight: {st:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lb.lb.client_buffers_held(), 0);
}

#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_idle_timeout() {
    let b = TestBackend::start("a").await;
    let mut cfg = config("round-robin");
    cfg.client_idle_timeout_ms = 300;
    cfg.backends = vec![b.spec(1)];
    let lb = TestLb::start_with(cfg).await;
    let h2 = h2_client();
    let r = h2.get(lb.url("/x")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "a");
    assert_eq!(
        lb.lb.client_connections(),
        1,
        "the client keeps its connection"
    );
    // No further request: the balancer sends GOAWAY and the connection ends.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lb.lb.client_connections() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the idle HTTP/2 connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new request opens a new connection and is served.
    assert_eq!(
        h2.get(lb.url("/x"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        "a"
    );
}
