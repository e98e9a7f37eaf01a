//! One upstream server: its address, weight, health, load and latency, and its connection pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::pool::Pool;

/// Time origin for the atomics that store instants as microseconds.
fn micros_since(origin: Instant) -> u64 {
    origin.elapsed().as_micros() as u64
}

/// Passive outlier-ejection and slow-start settings.
#[derive(Debug, Clone)]
pub struct OutlierConfig {
    /// Consecutive connect errors or 5xx answers that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection time; each further ejection lasts this times the number of ejections so far.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// At most this share of the backends is ejected at once (0-100).
    pub max_ejected_percent: u32,
    /// A new or recovered backend's weight ramps from 10% to 100% over this window.
    pub slow_start: Duration,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            max_ejected_percent: 50,
            slow_start: Duration::from_secs(10),
        }
    }
}

/// A backend and everything the balancer knows about it. Shared by reference; all fields are atomics
/// or short-held locks so that picking a backend never waits.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    weight: AtomicU32,
    /// Requests sent and not finished.
    in_flight: AtomicU64,
    /// Active health: `true` until checks say otherwise (and after `rise` good checks).
    healthy: AtomicBool,
    /// No new requests; in-flight ones finish.
    draining: AtomicBool,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Ejected until this many micros after `origin` (0: not ejected).
    ejected_until: AtomicU64,
    /// Do not send before this many micros after `origin` (a Retry-After it sent).
    retry_after_until: AtomicU64,
    /// Slow start begins at this many micros after `origin`.
    warm_since: AtomicU64,
    /// Peak-EWMA latency in nanoseconds, and when it was last updated (micros after origin).
    ewma: Mutex<(f64, u64)>,
    /// Total requests, errors, ejections (for metrics and the admin API).
    pub(crate) requests: AtomicU64,
    pub(crate) errors: AtomicU64,
    /// Smooth weighted round robin's running weight.
    pub(crate) swrr_current: AtomicI64,
    origin: Instant,
    pub(crate) pool: Pool,
    pub(crate) metrics: BackendMetrics,
}

/// Metric handles of one backend, registered once so the hot path only bumps atomics.
#[derive(Debug)]
pub(crate) struct BackendMetrics {
    /// `lb_backend_latency_seconds`, rendered by `Lb::render_metrics`.
    pub(crate) latency: crate::hist::Histogram,
    pub(crate) ejections: metrics::Counter,
}

impl BackendMetrics {
    fn new(addr: SocketAddr) -> Self {
        let a = addr.to_string();
        BackendMetrics {
            latency: crate::hist::Histogram::default(),
            ejections: metrics::counter!("lb_backend_ejections_total", "backend" => a),
        }
    }
}

/// A point-in-time view of a backend, for the admin API.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct BackendStatus {
    /// Address.
    pub addr: SocketAddr,
    /// Configured weight.
    pub weight: u32,
    /// Weight after slow start.
    pub effective_weight: f64,
    /// Passing active health checks.
    pub healthy: bool,
    /// Ejected by passive outlier detection.
    pub ejected: bool,
    /// Draining: no new requests.
    pub draining: bool,
    /// Requests in flight.
    pub in_flight: u64,
    /// Requests sent.
    pub requests: u64,
    /// Connect errors, timeouts and 5xx answers.
    pub errors: u64,
    /// Times ejected.
    pub ejections: u32,
    /// Peak-EWMA latency in milliseconds.
    pub latency_ewma_ms: f64,
    /// Idle pooled connections.
    pub idle_connections: usize,
}

/// The EWMA decay time constant: latency older than a few of these stops mattering.
const EWMA_TAU: Duration = Duration::from_secs(2);
/// Latency assumed for a backend never measured (so new backends get tried).
const EWMA_DEFAULT_NS: f64 = 1_000_000.0;

impl Backend {
    /// A backend with `weight`, healthy, warming up from now.
    pub fn new(addr: SocketAddr, weight: u32, pool: Pool) -> Backend {
        let origin = Instant::now();
        Backend {
            addr,
            weight: AtomicU32::new(weight.max(1)),
            in_flight: AtomicU64::new(0),
            healthy: AtomicBool::new(true),
            draining: AtomicBool::new(false),
            consecutive_failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            retry_after_until: AtomicU64::new(0),
            warm_since: AtomicU64::new(0),
            ewma: Mutex::new((EWMA_DEFAULT_NS, 0)),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            swrr_current: AtomicI64::new(0),
            origin,
            pool,
            metrics: BackendMetrics::new(addr),
        }
    }

    fn now(&self) -> u64 {
        micros_since(self.origin).max(1)
    }

    /// Configured weight.
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Changes the weight (at least 1).
    pub fn set_weight(&self, w: u32) {
        self.weight.store(w.max(1), Ordering::Relaxed);
    }

    /// Weight scaled by slow start: 10% when a backend joins or recovers, 100% after the window.
    pub fn effective_weight(&self, slow_start: Duration) -> f64 {
        let w = f64::from(self.weight());
        if slow_start.is_zero() {
            return w;
        }
        let since = self
            .now()
            .saturating_sub(self.warm_since.load(Ordering::Relaxed));
        let frac = (since as f64 / slow_start.as_micros() as f64).clamp(0.0, 1.0);
        w * (0.1 + 0.9 * frac)
    }

    /// Whether new requests may go here.
    pub fn available(&self) -> bool {
        self.healthy.load(Ordering::Relaxed) && self.available_ignoring_health()
    }

    /// Whether new requests may go here if its health checks are ignored (panic mode: most backends
    /// fail them at once, which says more about the load than about the backends).
    pub fn available_ignoring_health(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) {
            return false;
        }
        let (ejected, backed_off) = (
            self.ejected_until.load(Ordering::Relaxed),
            self.retry_after_until.load(Ordering::Relaxed),
        );
        // Never ejected nor backed off (the usual case): no need to read the clock.
        if ejected == 0 && backed_off == 0 {
            return true;
        }
        let now = self.now();
        ejected <= now && backed_off <= now
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Marks the start of a request; the guard marks its end when dropped.
    pub(crate) fn start(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Stops new requests (in-flight ones finish).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether the backend is draining.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Active health check result after rise/fall thresholds. A backend that becomes healthy warms up.
    pub(crate) fn set_healthy(&self, healthy: bool) {
        let was = self.healthy.swap(healthy, Ordering::Relaxed);
        if healthy && !was {
            self.warm_since.store(self.now(), Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Whether active checks pass.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether passive detection has ejected it right now.
    pub fn is_ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > self.now()
    }

    /// Records a successful answer with its latency.
    pub(crate) fn observe_success(&self, latency: Duration) {
        // Read before writing: the counter is shared by every event loop, and is almost always 0.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        self.observe_latency(latency);
    }

    /// Records a failure (connect error, timeout, 5xx). Returns true when this failure should eject
    /// the backend (the caller checks the ejected-share cap and calls [`Backend::eject`]).
    pub(crate) fn observe_failure(&self, latency: Duration, cfg: &OutlierConfig) -> bool {
        self.errors.fetch_add(1, Ordering::Relaxed);
        // An error counts as slow: peak-EWMA then steers load away at once.
        self.observe_latency(latency.max(Duration::from_millis(250)) * 4);
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        n >= cfg.consecutive_failures && !self.is_ejected()
    }

    /// Records a request the backend shed (overloaded, not failing): peak-EWMA counts it as slow, so
    /// power-of-two-choices sends it less, but it is not a failure towards ejection.
    pub(crate) fn observe_shed(&self, latency: Duration) {
        self.observe_latency(latency.max(Duration::from_millis(50)) * 2);
    }

    /// Ejects for `base × ejections so far`, capped; the backend warms up again after.
    pub(crate) fn eject(&self, cfg: &OutlierConfig) -> Duration {
        let k = self.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let d = (cfg.base_ejection * k).min(cfg.max_ejection);
        let until = self.now() + d.as_micros() as u64;
        self.ejected_until.store(until, Ordering::Relaxed);
        self.warm_since.store(until, Ordering::Relaxed);
        self.consecutive_failures.store(0, Ordering::Relaxed);
        self.metrics.ejections.increment(1);
        d
    }

    /// Honors a Retry-After from this backend: no new requests for `d`.
    pub(crate) fn back_off(&self, d: Duration) {
        let until = self.now() + d.min(Duration::from_secs(60)).as_micros() as u64;
        self.retry_after_until.fetch_max(until, Ordering::Relaxed);
    }

    fn observe_latency(&self, latency: Duration) {
        let rtt = latency.as_nanos() as f64;
        let now = self.now();
        if let Ok(mut g) = self.ewma.lock() {
            let (ewma, at) = *g;
            let next = if rtt > ewma {
                rtt // peak: jump up at once
            } else {
                let dt = now.saturating_sub(at) as f64 / 1e6;
                let w = (-dt / EWMA_TAU.as_secs_f64()).exp();
                ewma * w + rtt * (1.0 - w)
            };
            *g = (next, now);
        }
    }

    /// Peak-EWMA latency in nanoseconds.
    pub fn latency_ewma_ns(&self) -> f64 {
        self.ewma.lock().map(|g| g.0).unwrap_or(EWMA_DEFAULT_NS)
    }

    /// Load cost for power-of-two-choices: latency × (in flight + 1) / effective weight.
    pub(crate) fn p2c_cost(&self, slow_start: Duration) -> f64 {
        self.latency_ewma_ns() * (self.in_flight() as f64 + 1.0)
            / self.effective_weight(slow_start).max(0.01)
    }

    /// A snapshot for the admin API.
    pub fn status(&self, slow_start: Duration) -> BackendStatus {
        BackendStatus {
            addr: self.addr,
            weight: self.weight(),
            effective_weight: self.effective_weight(slow_start),
            healthy: self.is_healthy(),
            ejected: self.is_ejected(),
            draining: self.is_draining(),
            in_flight: self.in_flight(),
            requests: self.requests.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            ejections: self.ejections.load(Ordering::Relaxed),
            latency_ewma_ms: self.latency_ewma_ns() / 1e6,
            idle_connections: self.pool.idle_count(),
        }
    }
}

/// Counts a request as in flight until dropped.
#[derive(Debug)]
pub(crate) struct InFlight(std::sync::Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, PoolConfig};

    fn backend() -> Backend {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Backend::new(addr, 10, Pool::new(addr, PoolConfig::default()))
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain unit test: no runtime to block
    fn slow_start_ramps_from_a_tenth_to_full_weight() {
        let b = backend();
        let window = Duration::from_millis(200);
        let w0 = b.effective_weight(window);
        assert!((1.0..2.0).contains(&w0), "{w0}");
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(b.effective_weight(window), 10.0);
        assert_eq!(b.effective_weight(Duration::ZERO), 10.0);
    }

    #[test]
    fn ejections_grow_and_are_capped() {
        let b = backend();
        let cfg = OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
            ..OutlierConfig::default()
        };
        assert!(!b.observe_failure(Duration::ZERO, &cfg));
        assert!(!b.observe_failure(Duration::ZERO, &cfg));
        assert!(
            b.observe_failure(Duration::ZERO, &cfg),
            "the third consecutive failure ejects"
        );
        assert_eq!(b.eject(&cfg), Duration::from_secs(5));
        assert!(b.is_ejected() && !b.available());
        assert_eq!(b.eject(&cfg), Duration::from_secs(10));
        assert_eq!(b.eject(&cfg), Duration::from_secs(12), "capped");
        let fresh = backend();
        fresh.observe_failure(Duration::ZERO, &cfg);
        fresh.observe_success(Duration::from_millis(1));
        assert!(
            !fresh.observe_failure(Duration::ZERO, &cfg),
            "a success resets the streak"
        );
    }
}
