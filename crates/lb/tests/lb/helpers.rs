use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tenfold_config::{BackendSpec, LbConfig};
use tenfold_lb::Lb;
use tokio::task::JoinSet;

/// How a test backend answers.
#[derive(Clone, Default)]
pub(crate) struct Behavior {
    pub(crate) delay: Duration,
    pub(crate) status: Option<u16>,
    pub(crate) retry_after: Option<u64>,
    /// Mark the answer as a shed request (`X-Load-Shed`), as tenfold's overload control does.
    pub(crate) shed: bool,
    /// Read the request, then drop the connection without answering.
    pub(crate) hang_up: bool,
}

/// A tiny HTTP/1.1 server that says who it is and counts what it served.
pub(crate) struct TestBackend {
    pub(crate) addr: SocketAddr,
    pub(crate) name: String,
    pub(crate) hits: Arc<AtomicUsize>,
    pub(crate) healthy: Arc<AtomicBool>,
    pub(crate) behavior: Arc<Mutex<Behavior>>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl TestBackend {
    pub(crate) async fn start(name: &str) -> TestBackend {
        Self::start_on(
            name,
            tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await
    }

    pub(crate) async fn start_on(name: &str, listener: tokio::net::TcpListener) -> TestBackend {
        let addr = listener.local_addr().unwrap();
        let b = TestBackend {
            addr,
            name: name.to_owned(),
            hits: Arc::default(),
            healthy: Arc::new(AtomicBool::new(true)),
            behavior: Arc::default(),
            tasks: Arc::new(Mutex::new(JoinSet::new())),
        };
        let (hits, healthy, behavior, tasks, name) = (
            b.hits.clone(),
            b.healthy.clone(),
            b.behavior.clone(),
            b.tasks.clone(),
            b.name.clone(),
        );
        let tasks2 = tasks.clone();
        tasks.lock().unwrap().spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (hits, healthy, behavior, name) = (
                    hits.clone(),
                    healthy.clone(),
                    behavior.clone(),
                    name.clone(),
                );
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (hits, healthy, behavior, name) = (
                        hits.clone(),
                        healthy.clone(),
                        behavior.clone(),
                        name.clone(),
                    );
                    async move { answer(req, &hits, &healthy, &behavior, &name).await }
                });
                tasks2.lock().unwrap().spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        b
    }

    pub(crate) fn set(&self, behavior: Behavior) {
        *self.behavior.lock().unwrap() = behavior;
    }

    pub(crate) fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub(crate) fn spec(&self, weight: u32) -> BackendSpec {
        BackendSpec {
            addr: self.addr,
            weight,
        }
    }

    /// Like kill -9: the listener and every open connection vanish at once.
    pub(crate) fn kill(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

async fn answer(
    req: Request<Incoming>,
    hits: &AtomicUsize,
    healthy: &AtomicBool,
    behavior: &Mutex<Behavior>,
    name: &str,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    if req.uri().path() == "/healthz" {
        let ok = healthy.load(Ordering::SeqCst);
        let mut r = Response::new(Full::new(Bytes::from_static(b"health")));
        *r.status_mut() = if ok {
            http::StatusCode::OK
        } else {
            http::StatusCode::SERVICE_UNAVAILABLE
        };
        return Ok(r);
    }
    hits.fetch_add(1, Ordering::SeqCst);
    let b = behavior.lock().unwrap().clone();
    let echo = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let hop = req.headers().contains_key("x-hop");
    let _ = http_body_util::BodyExt::collect(req.into_body()).await;
    if b.hang_up {
        return Err(std::io::Error::other("hanging up"));
    }
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let mut r = Response::new(Full::new(Bytes::from(name.to_owned())));
    if let Some(s) = b.status {
        *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
    }
    if let Some(ra) = b.retry_after {
        r.headers_mut().insert("retry-after", ra.into());
    }
    if b.shed {
        r.headers_mut()
            .insert("x-load-shed", http::HeaderValue::from_static("sheddable"));
    }
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r.headers_mut()
        .insert("x-seen-forwarded-for", echo.parse().unwrap());
    r.headers_mut().insert(
        "x-seen-hop",
        if hop { "yes" } else { "no" }.parse().unwrap(),
    );
    Ok::<_, std::io::Error>(r)
}

/// A running balancer.
pub(crate) struct TestLb {
    pub(crate) lb: Lb,
    pub(crate) base: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestLb {
    pub(crate) async fn start(mut cfg: LbConfig, backends: &[&TestBackend]) -> TestLb {
        cfg.backends = backends.iter().map(|b| b.spec(1)).collect();
        Self::start_with(cfg).await
    }

    pub(crate) async fn start_with(cfg: LbConfig) -> TestLb {
        let lb = Lb::new(&cfg).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let l2 = lb.clone();
        tokio::spawn(async move {
            let _ = l2
                .serve(listener, async move {
                    let _ = rx.await;
                })
                .await;
        });
        TestLb {
            lb,
            base,
            stop: Some(tx),
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }
}

impl Drop for TestLb {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Test defaults: fast health checks, no slow start (so weights are exact from the start).
pub(crate) fn config(algorithm: &str) -> LbConfig {
    let mut c = LbConfig {
        algorithm: algorithm.into(),
        ..LbConfig::default()
    };
    c.health.interval_ms = 100;
    c.health.timeout_ms = 100;
    c.outlier.slow_start_ms = 0;
    c
}

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap()
}

/// Which backend answered.
pub(crate) async fn who(c: &reqwest::Client, url: &str) -> String {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), 200, "{url}");
    r.headers()["x-backend"].to_str().unwrap().to_owned()
}

/// Runs `workers` GET loops against `url` until `stop` flips; returns (ok, failed, failures seen).
pub(crate) fn load(
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(usize, usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut set = JoinSet::new();
        for _ in 0..workers {
            let (url, stop) = (url.clone(), stop.clone());
            set.spawn(async move {
                let c = client();
                let (mut ok, mut bad, mut why) = (0, 0, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => {
                            bad += 1;
                            why.push(format!(
                                "{} {}",
                                r.status(),
                                r.text().await.unwrap_or_default()
                            ));
                        }
                        Err(e) => {
                            bad += 1;
                            why.push(e.to_string());
                        }
                    }
                }
                (ok, bad, why)
            });
        }
        let mut total = (0, 0, Vec::new());
        while let Some(r) = set.join_next().await {
            let (ok, bad, why) = r.unwrap();
            total.0 += ok;
            total.1 += bad;
            total.2.extend(why);
        }
        total
    })
}

/// Stops a [`load`], asserts that no request failed, and returns how many succeeded.
pub(crate) async fn finish_without_failures(
    stop: &AtomicBool,
    load: tokio::task::JoinHandle<(usize, usize, Vec<String>)>,
) -> usize {
    stop.store(true, Ordering::SeqCst);
    let (ok, bad, why) = load.await.unwrap();
    assert_eq!(
        bad,
        0,
        "{ok} ok, {bad} failed: {:?}",
        &why[..why.len().min(5)]
    );
    ok
}

/// A client that speaks HTTP/2 with prior knowledge (h2c).
pub(crate) fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap()
}

/// A request body of `n` pieces of `size` bytes `b`, streamed (no length: chunked over HTTP/1.1).
pub(crate) fn chunks(
    n: usize,
    b: u8,
    size: usize,
) -> impl futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> {
    futures::stream::iter((0..n).map(move |_| Ok(bytes::Bytes::from(vec![b; size]))))
}
