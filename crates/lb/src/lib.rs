//! The load balancer behind `tenfold lb`.
//!
//! Role: a reverse proxy on hyper 1.x that spreads requests over HTTP/1.1 backends — any HTTP servers,
//! not only tenfold's — with several algorithms ([`Algorithm`]), active health checks, passive outlier
//! ejection with slow start, retries of requests safe to repeat within a budget, a connection pool of
//! its own per backend, and an admin API to change membership without a restart.
//!
//! Invariant: it knows nothing of the app's routes. A request that is not safe to repeat (no
//! Idempotency-Key, not GET/HEAD/OPTIONS) is sent to at most one backend, unless a connect failure
//! proves it was never sent. Retries never exceed the retry budget. A draining backend gets no new
//! requests; its in-flight requests finish.
//!
//! Entry points: [`Lb::new`], [`Lb::serve`], [`Lb::admin_router`], [`Lb::set_backends`].

mod admin;
mod backend;
mod balance;
mod front;
mod h1;
mod h2;
mod health;
mod hist;
mod pool;
mod proxy;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tenfold_config::{BackendSpec, HealthCheckConfig, LbConfig};

pub use admin::Listing;
pub use backend::{Backend, BackendStatus, OutlierConfig};
pub use balance::{Algorithm, HashKey};
pub use pool::{BoxError, ConnectError, PoolConfig, ProxyBody};

use balance::{Maglev, Picker};
use proxy::RetryBudget;

/// Why the balancer cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The configuration is unusable.
    #[error("invalid load balancer configuration: {0}")]
    Config(String),
    /// The backend is already a member.
    #[error("backend {0} is already a member")]
    Exists(SocketAddr),
    /// The backend is not a member.
    #[error("backend {0} is not a member")]
    Unknown(SocketAddr),
}

/// The current members, replaced as a whole when membership changes.
pub(crate) struct Members {
    pub(crate) backends: Vec<Arc<Backend>>,
    pub(crate) maglev: Option<Maglev>,
}

pub(crate) struct Settings {
    pub(crate) body_limit: u64,
    pub(crate) response_timeout: Duration,
    pub(crate) max_retries: u32,
    pub(crate) outlier: OutlierConfig,
    pub(crate) health: HealthCheckConfig,
    pub(crate) drain_timeout: Duration,
    /// How long an idle keep-alive client connection is kept open.
    pub(crate) client_idle_timeout: Duration,
    pub(crate) pool: PoolConfig,
    pub(crate) limits: tenfold_http::ServerLimits,
}

pub(crate) struct Shared {
    pub(crate) members: ArcSwap<Members>,
    /// Serializes membership changes (readers never take it).
    write: Mutex<HashMap<SocketAddr, tokio::task::JoinHandle<()>>>,
    pub(crate) picker: Picker,
    pub(crate) settings: Settings,
    pub(crate) budget: RetryBudget,
    /// Read buffers client connections hold now (an idle connection holds none).
    /// One counter per event loop, on its own cache line: loops never write to each other's.
    pub(crate) client_buffers: Box<[PaddedCounter]>,
    /// The client connections of each serving loop.
    pub(crate) trackers: Mutex<Vec<std::sync::Weak<front::Tracker>>>,
}

/// A counter alone on its cache line.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct PaddedCounter(pub(crate) std::sync::atomic::AtomicI64);

/// A load balancer. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Lb {
    shared: Arc<Shared>,
}

/// Histograms keep raw samples until upkeep folds them into buckets: fold every second so memory stays
/// flat under load whether or not anyone scrapes.
/// The task stops when the returned guard is dropped.
fn spawn_upkeep() -> AbortOnDrop {
    AbortOnDrop(tokio::spawn(async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            prometheus().run_upkeep();
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The process-wide Prometheus recorder of the balancer.
fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

impl Lb {
    /// A balancer over `cfg.backends` (health checks start at once; call inside a tokio runtime).
    pub fn new(cfg: &LbConfig) -> Result<Lb, LbError> {
        let _ = prometheus();
        let algorithm: Algorithm = cfg.algorithm.parse().map_err(LbError::Config)?;
        let o = &cfg.outlier;
        let settings = Settings {
            body_limit: cfg.body_limit_bytes,
            response_timeout: Duration::from_millis(cfg.response_timeout_ms),
            max_retries: cfg.max_retries,
            outlier: OutlierConfig {
                consecutive_failures: o.consecutive_failures.max(1),
                base_ejection: Duration::from_millis(o.base_ejection_ms),
                max_ejection: Duration::from_millis(o.max_ejection_ms),
                max_ejected_percent: o.max_ejected_percent,
                slow_start: Duration::from_millis(o.slow_start_ms),
            },
            health: cfg.health.clone(),
            drain_timeout: Duration::from_millis(cfg.drain_timeout_ms),
            client_idle_timeout: Duration::from_millis(cfg.client_idle_timeout_ms),
            pool: PoolConfig {
                max_idle: cfg.pool_max_idle,
                idle_timeout: Duration::from_millis(cfg.pool_idle_timeout_ms),
                connect_timeout: Duration::from_millis(cfg.connect_timeout_ms),
            },
            limits: tenfold_http::ServerLimits {
                header_limit_bytes: cfg.header_limit_bytes,
                header_read_timeout: Duration::from_millis(cfg.header_read_timeout_ms),
                shutdown_grace: Duration::from_millis(cfg.shutdown_grace_ms),
                max_concurrent_streams: 1024,
            },
        };
        let lb = Lb {
            shared: Arc::new(Shared {
                members: ArcSwap::from_pointee(Members {
                    backends: Vec::new(),
                    maglev: None,
                }),
                write: Mutex::new(HashMap::new()),
                picker: Picker::new(algorithm),
                settings,
                budget: RetryBudget::new(cfg.retry_budget_percent),
                client_buffers: (0..=pool::max_loops())
                    .map(|_| PaddedCounter::default())
                    .collect(),
                trackers: Mutex::new(Vec::new()),
            }),
        };
        for b in &cfg.backends {
            lb.add_backend(b)?;
        }
        Ok(lb)
    }

    /// Proxies requests arriving on `listener` until `shutdown` resolves, then drains.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let _upkeep = spawn_upkeep();
        self.serve_loop(listener, shutdown).await
    }

    /// The accept loop alone (the caller runs the metrics upkeep once for all loops).
    async fn serve_loop(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        front::serve(self.shared.clone(), listener, shutdown).await
    }

    /// Proxies on one single-threaded event loop per listener (see `tenfold_http::reuseport_listeners`):
    /// a request, its backend connection and its response stay on one thread, with no wake-ups across
    /// worker threads. Returns when `shutdown` resolved and every loop has drained.
    pub async fn serve_per_core(
        &self,
        listeners: Vec<std::net::TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let _upkeep = spawn_upkeep();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for (i, l) in listeners.into_iter().enumerate() {
            let lb = self.clone();
            let mut rx = rx.clone();
            let t = std::thread::Builder::new()
                .name(format!("tenfold-lb-{i}"))
                .spawn(move || -> std::io::Result<()> {
                    pool::set_loop_slot(i);
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    rt.block_on(async move {
                        let listener = tokio::net::TcpListener::from_std(l)?;
                        lb.serve_loop(listener, async move {
                            let _ = rx.wait_for(|s| *s).await;
                        })
                        .await
                    })
                })?;
            threads.push(t);
        }
        shutdown.await;
        let _ = tx.send(true);
        let joined = tokio::task::spawn_blocking(move || {
            threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()
        })
        .await
        .map_err(std::io::Error::other)?;
        for r in joined {
            r.map_err(|_| std::io::Error::other("a balancer thread panicked"))??;
        }
        Ok(())
    }

    /// The admin API (list, add, remove, re-weight, drain; metrics), requiring `token` as a bearer token.
    pub fn admin_router(&self, token: secrecy::SecretString) -> axum::Router {
        admin::router(self.clone(), token, axum::Router::new())
    }

    /// The admin API with `extra` routes (behind the same token), for a supervisor that adds its own.
    pub fn admin_router_with(
        &self,
        token: secrecy::SecretString,
        extra: axum::Router,
    ) -> axum::Router {
        admin::router(self.clone(), token, extra)
    }

    /// Adds a backend; it starts at 10% weight and warms up.
    pub fn add_backend(&self, spec: &BackendSpec) -> Result<(), LbError> {
        let mut tasks = self
            .shared
            .write
            .lock()
            .map_err(|_| LbError::Config("lock poisoned".into()))?;
        let cur = self.shared.members.load();
        if cur.backends.iter().any(|b| b.addr == spec.addr) {
            return Err(LbError::Exists(spec.addr));
        }
        let backend = Arc::new(Backend::new(
            spec.addr,
            spec.weight,
            pool::Pool::new(spec.addr, self.shared.settings.pool.clone()),
        ));
        let mut backends = cur.backends.clone();
        backends.push(backend.clone());
        self.publish(backends);
        tasks.insert(
            spec.addr,
            tokio::spawn(health::run(
                Arc::downgrade(&backend),
                self.shared.settings.health.clone(),
            )),
        );
        tracing::info!(backend = %spec.addr, weight = spec.weight, "backend added");
        Ok(())
    }

    fn publish(&self, backends: Vec<Arc<Backend>>) {
        let maglev =
            matches!(self.shared.picker.algorithm, Algorithm::ConsistentHash(_)).then(|| {
                Maglev::new(
                    &backends
                        .iter()
                        .map(|b| b.addr.to_string())
                        .collect::<Vec<_>>(),
                )
            });
        self.shared
            .members
            .store(Arc::new(Members { backends, maglev }));
    }

    fn find(&self, addr: SocketAddr) -> Result<Arc<Backend>, LbError> {
        self.shared
            .members
            .load()
            .backends
            .iter()
            .find(|b| b.addr == addr)
            .cloned()
            .ok_or(LbError::Unknown(addr))
    }

    /// Changes a backend's weight.
    pub fn set_weight(&self, addr: SocketAddr, weight: u32) -> Result<(), LbError> {
        self.find(addr)?.set_weight(weight);
        Ok(())
    }

    /// Stops sending new requests to a backend; in-flight ones finish. It stays a member.
    pub fn drain(&self, addr: SocketAddr) -> Result<(), LbError> {
        self.find(addr)?.drain();
        tracing::info!(backend = %addr, "backend draining");
        Ok(())
    }

    /// Drains a backend, waits for its in-flight requests (at most the drain timeout), then removes it.
    pub async fn remove_backend(&self, addr: SocketAddr) -> Result<(), LbError> {
        let b = self.find(addr)?;
        b.drain();
        let deadline = tokio::time::Instant::now() + self.shared.settings.drain_timeout;
        while b.in_flight() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut tasks = self
            .shared
            .write
            .lock()
            .map_err(|_| LbError::Config("lock poisoned".into()))?;
        let backends: Vec<_> = self
            .shared
            .members
            .load()
            .backends
            .iter()
            .filter(|x| x.addr != addr)
            .cloned()
            .collect();
        self.publish(backends);
        if let Some(t) = tasks.remove(&addr) {
            t.abort();
        }
        b.pool.clear();
        tracing::info!(backend = %addr, left_in_flight = b.in_flight(), "backend removed");
        Ok(())
    }

    /// Makes the members exactly `specs`: adds the new, re-weights the kept, drains and removes the rest.
    pub async fn set_backends(&self, specs: &[BackendSpec]) -> Result<(), LbError> {
        let current: Vec<SocketAddr> = self
            .shared
            .members
            .load()
            .backends
            .iter()
            .map(|b| b.addr)
            .collect();
        for s in specs {
            if current.contains(&s.addr) {
                self.set_weight(s.addr, s.weight)?;
            } else {
                self.add_backend(s)?;
            }
        }
        let gone: Vec<SocketAddr> = current
            .into_iter()
            .filter(|a| !specs.iter().any(|s| s.addr == *a))
            .collect();
        futures::future::join_all(gone.into_iter().map(|a| self.remove_backend(a))).await;
        Ok(())
    }

    /// Every backend's state.
    pub fn status(&self) -> Vec<BackendStatus> {
        let slow = self.shared.settings.outlier.slow_start;
        self.shared
            .members
            .load()
            .backends
            .iter()
            .map(|b| b.status(slow))
            .collect()
    }

    /// Requests in flight across all backends (a load signal for autoscaling).
    pub fn in_flight(&self) -> u64 {
        self.shared
            .members
            .load()
            .backends
            .iter()
            .map(|b| b.in_flight())
            .sum()
    }

    /// The algorithm in use.
    pub fn algorithm(&self) -> &Algorithm {
        &self.shared.picker.algorithm
    }

    /// Read buffers held by client connections now: one per connection reading or proxying a request,
    /// none for an idle keep-alive connection.
    pub fn client_buffers_held(&self) -> u64 {
        let held: i64 = self
            .shared
            .client_buffers
            .iter()
            .map(|c| c.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        held.max(0) as u64
    }

    /// Client connections open now (HTTP/1 and HTTP/2), across every serving loop.
    pub fn client_connections(&self) -> usize {
        self.shared
            .trackers
            .lock()
            .map(|t| t.iter().filter_map(|w| w.upgrade()).map(|t| t.open()).sum())
            .unwrap_or(0)
    }

    /// Prometheus text of the balancer's metrics.
    pub fn render_metrics(&self) -> String {
        metrics::gauge!("lb_client_connections").set(self.client_connections() as f64);
        metrics::gauge!("lb_client_buffers_held").set(self.client_buffers_held() as f64);
        for b in self.shared.members.load().backends.iter() {
            let a = b.addr.to_string();
            // Counted on the hot path by the backend's own atomic; published here.
            metrics::counter!("lb_backend_requests_total", "backend" => a.clone())
                .absolute(b.requests.load(std::sync::atomic::Ordering::Relaxed));
            metrics::gauge!("lb_backend_in_flight", "backend" => a.clone())
                .set(b.in_flight() as f64);
            metrics::gauge!("lb_backend_healthy", "backend" => a.clone()).set(if b.is_healthy() {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("lb_backend_ejected", "backend" => a.clone()).set(if b.is_ejected() {
                1.0
            } else {
                0.0
            });
            metrics::gauge!("lb_backend_draining", "backend" => a.clone())
                .set(if b.is_draining() { 1.0 } else { 0.0 });
            metrics::gauge!("lb_backend_idle_connections", "backend" => a)
                .set(b.pool.idle_count() as f64);
        }
        let h = prometheus();
        h.run_upkeep();
        let mut out = h.render();
        out.push_str("# HELP lb_added_latency_seconds Time the balancer itself adds to a request (to the answer's head, minus the backend's time)\n# TYPE lb_added_latency_seconds histogram\n");
        proxy::added_latency().render("lb_added_latency_seconds", "", &mut out);
        out.push_str("# HELP lb_backend_latency_seconds Time from sending a request to a backend to its answer's head\n# TYPE lb_backend_latency_seconds histogram\n");
        for b in self.shared.members.load().backends.iter() {
            let labels = format!("backend=\"{}\"", b.addr);
            b.metrics
                .latency
                .render("lb_backend_latency_seconds", &labels, &mut out);
        }
        out
    }
}

impl Shared {
    /// The header consistent hashing reads, when the algorithm hashes one.
    pub(crate) fn hash_header(&self) -> Option<&str> {
        match &self.picker.algorithm {
            Algorithm::ConsistentHash(HashKey::Header(name)) => Some(name.as_str()),
            _ => None,
        }
    }

    /// Counts a failure and ejects the backend when it crossed the threshold and the cap allows.
    pub(crate) fn record_failure(&self, b: &Backend, latency: Duration, kind: &'static str) {
        metrics::counter!("lb_backend_errors_total", "backend" => b.addr.to_string(), "kind" => kind).increment(1);
        if b.observe_failure(latency, &self.settings.outlier) {
            let members = self.members.load();
            let n = members.backends.len() as u32;
            let ejected = members.backends.iter().filter(|x| x.is_ejected()).count() as u32;
            if (ejected + 1) * 100 <= n * self.settings.outlier.max_ejected_percent {
                let d = b.eject(&self.settings.outlier);
                tracing::warn!(backend = %b.addr, ejection_ms = d.as_millis() as u64, "backend ejected after consecutive failures");
            }
        }
    }

    /// Explains why no backend could take a request.
    pub(crate) fn why_none_available(&self) -> String {
        let m = self.members.load();
        if m.backends.is_empty() {
            return "no backend is configured".into();
        }
        let count = |f: &dyn Fn(&Backend) -> bool| m.backends.iter().filter(|b| f(b)).count();
        format!(
            "no backend is available: {} configured, {} failing health checks, {} ejected after errors, {} draining, {} asked to back off",
            m.backends.len(),
            count(&|b| !b.is_healthy()),
            count(&|b| b.is_ejected()),
            count(&|b| b.is_draining()),
            count(&|b| b.is_healthy() && !b.is_ejected() && !b.is_draining() && !b.available()),
        )
    }
}
