//! Role: overload control for one instance, the load-shedding half of the graceful-degradation factor.
//! Each request has a [`Criticality`]; a [`Limiter`] admits it while the requests in flight are under
//! its class's share of an adaptive concurrency limit, so that as load rises sheddable requests are
//! refused first, degradable ones next and critical ones last. The limit follows latency with Netflix's
//! Gradient2 algorithm ([`Gradient2`]): it grows while the latency stays near its long-term average and
//! shrinks as queueing makes it rise, so the instance keeps just enough work in flight to stay fast.
//!
//! Invariants: admission is a few atomic operations (a refused request costs nothing else, so shedding
//! stays cheap at ten times capacity); a [`Permit`] is released exactly once, on drop; only requests
//! that ran to an outcome feed the limit ([`Permit::record`]), and a class can never use more than its
//! share, so critical requests always find room a sheddable flood cannot take.
//!
//! [`gcra`] limits each client's request rate. A [`Breaker`] makes calls to a failing dependency fail
//! fast, probes it and closes again when it answers.
//!
//! A [`Ladder`] turns sustained shedding into degradation steps (each turns more degradable features
//! off) and back, with hysteresis.
//!
//! Entry points: [`Limiter::new`], [`Limiter::try_acquire`], [`Criticality`], [`Gradient2`], [`Ladder`].

pub mod breaker;
pub mod gcra;

pub use breaker::{Breaker, BreakerOptions};

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How much a request matters when the instance is overloaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Criticality {
    /// Shed first: imports, anything a background page polls.
    Sheddable = 0,
    /// Shed next: search, lists.
    Degradable = 1,
    /// Shed last: product reads, order placement.
    Critical = 2,
}

impl Criticality {
    /// All classes, least critical first.
    pub const ALL: [Criticality; 3] = [
        Criticality::Sheddable,
        Criticality::Degradable,
        Criticality::Critical,
    ];

    /// The name used in headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Criticality::Sheddable => "sheddable",
            Criticality::Degradable => "degradable",
            Criticality::Critical => "critical",
        }
    }

    /// Parses a class name (case-insensitive).
    pub fn parse(s: &str) -> Option<Criticality> {
        Criticality::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s.trim()))
    }

    /// The class of a request whose route has class `self` and that asked for `requested`: a request
    /// may lower its class, never raise it.
    pub fn lowered_to(self, requested: Option<Criticality>) -> Criticality {
        requested.map_or(self, |r| r.min(self))
    }
}

/// Netflix's Gradient2 concurrency limit: after each sample, with a long-term exponential average of the
/// latency (`long`) and the sample (`short`), `gradient = clamp(tolerance × long / short, 0.5, 1)` and
/// `limit ← (1 − s) × limit + s × (limit × gradient + queue)`, within `[min, max]`. While latency stays
/// within `tolerance` of its average the gradient is 1 and the limit grows by `queue` per sample (scaled by
/// the smoothing `s`); as queueing raises latency the gradient falls and the limit shrinks. The limit does
/// not grow while less than half of it is in use (the load, not the limit, decides then); and when the
/// long average is more than twice the sample it decays, so that after an overload ends the limit is not
/// held down by a stale average.
#[derive(Debug, Clone)]
pub struct Gradient2 {
    limit: f64,
    min: f64,
    max: f64,
    smoothing: f64,
    tolerance: f64,
    /// Long-term average latency in seconds (0 before the first sample).
    long: f64,
    samples: u64,
    window: f64,
}

impl Gradient2 {
    /// Starts at `initial` within `[min, max]`, with Netflix's defaults: smoothing 0.2, tolerance 1.5,
    /// a long-term window of 600 samples (the first 10 averaged plainly).
    pub fn new(initial: u32, min: u32, max: u32) -> Gradient2 {
        let (min, max) = (f64::from(min.max(1)), f64::from(max.max(min.max(1))));
        Gradient2 {
            limit: f64::from(initial).clamp(min, max),
            min,
            max,
            smoothing: 0.2,
            tolerance: 1.5,
            long: 0.0,
            samples: 0,
            window: 600.0,
        }
    }

    /// The current limit.
    pub fn limit(&self) -> f64 {
        self.limit
    }

    /// Feeds one request's latency, with how many requests were in flight when it started; returns
    /// the new limit.
    pub fn sample(&mut self, rtt: Duration, inflight: usize) -> f64 {
        let short = rtt.as_secs_f64().max(1e-6);
        self.samples += 1;
        self.long = if self.samples <= 10 {
            // Warm-up: a plain average of the first samples.
            self.long + (short - self.long) / self.samples as f64
        } else {
            self.long + (short - self.long) * (2.0 / (self.window + 1.0))
        };
        if self.long / short > 2.0 {
            self.long *= 0.95;
        }
        if (inflight as f64) < self.limit / 2.0 {
            return self.limit;
        }
        let gradient = (self.tolerance * self.long / short).clamp(0.5, 1.0);
        let queue = self.limit.sqrt().max(1.0);
        let next = self.limit * gradient + queue;
        self.limit =
            (self.limit * (1.0 - self.smoothing) + next * self.smoothing).clamp(self.min, self.max);
        self.limit
    }
}

/// How a [`Limiter`] behaves.
#[derive(Debug, Clone, Copy)]
pub struct LimiterOptions {
    /// The limit at start.
    pub initial: u32,
    /// The limit never goes below this.
    pub min: u32,
    /// Nor above this.
    pub max: u32,
    /// The share of the limit each class may fill, least critical first (critical: all of it).
    pub shares: [f64; 3],
    /// Latencies are averaged over windows of at least this long (and at least 10 requests, or any
    /// number after a second) before they move the limit; zero feeds every request on its own.
    pub window: Duration,
}

impl Default for LimiterOptions {
    /// 100 at start, between 8 and 1,000; sheddable requests may fill 30% of the limit, degradable ones
    /// 60%, critical ones all of it (so 40% is always kept for critical requests: measured with
    /// bench/overload.sh, 75% for degradable let a flood of slow searches crowd out cached product reads).
    /// Latency is averaged over 100 ms windows, as Netflix's `WindowedLimit` does: fed one request at a
    /// time, a mix of 0.3 ms cached reads and 200 ms searches swings the gradient between its bounds, and
    /// bench/overload.sh saw the limit climb to its maximum while searches queued for seconds, then
    /// collapse to its minimum.
    fn default() -> Self {
        LimiterOptions {
            initial: 100,
            min: 8,
            max: 1_000,
            shares: [0.3, 0.6, 1.0],
            window: Duration::from_millis(100),
        }
    }
}

/// The adaptive concurrency limit of one instance.
#[derive(Debug)]
pub struct Limiter {
    inflight: AtomicUsize,
    /// Critical requests in flight (part of `inflight`).
    critical: AtomicUsize,
    /// The limit as an integer, read on every admission.
    limit: AtomicUsize,
    algo: Mutex<Sampler>,
    shares: [f64; 3],
    shed: [AtomicU64; 3],
    admitted: AtomicU64,
}

/// The limit's algorithm and the window of latencies not fed to it yet.
#[derive(Debug)]
struct Sampler {
    algo: Gradient2,
    every: Duration,
    started: Instant,
    sum: Duration,
    count: u32,
    inflight: usize,
}

impl Sampler {
    /// Adds a request; when the window is complete, feeds its average latency (and the most requests
    /// in flight seen in it) to the algorithm and returns the new limit.
    fn add(&mut self, rtt: Duration, inflight: usize) -> Option<f64> {
        self.sum += rtt;
        self.count += 1;
        self.inflight = self.inflight.max(inflight);
        let age = self.started.elapsed();
        let full = age >= self.every && (self.count >= 10 || self.every.is_zero());
        if !full && age < Duration::from_secs(1) {
            return None;
        }
        let avg = self.sum / self.count;
        let limit = self.algo.sample(avg, self.inflight);
        self.started = Instant::now();
        self.sum = Duration::ZERO;
        self.count = 0;
        self.inflight = 0;
        Some(limit)
    }
}

/// The reason a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shed {
    /// The request's class.
    pub class: Criticality,
    /// The limit when it was refused.
    pub limit: usize,
    /// Requests in flight then.
    pub inflight: usize,
}

impl Limiter {
    /// A limiter with `opts`.
    pub fn new(opts: LimiterOptions) -> Arc<Limiter> {
        let algo = Gradient2::new(opts.initial, opts.min, opts.max);
        let limit = algo.limit() as usize;
        metrics::gauge!("concurrency_limit").set(limit as f64);
        Arc::new(Limiter {
            inflight: AtomicUsize::new(0),
            critical: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            algo: Mutex::new(Sampler {
                algo,
                every: opts.window,
                started: Instant::now(),
                sum: Duration::ZERO,
                count: 0,
                inflight: 0,
            }),
            shares: opts.shares,
            shed: Default::default(),
            admitted: AtomicU64::new(0),
        })
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Requests in flight.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Requests admitted so far.
    pub fn admitted(&self) -> u64 {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Requests refused so far, per class (least critical first).
    pub fn shed_counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.shed[i].load(Ordering::Relaxed))
    }

    /// How many requests of `class` may be in flight at the current limit (at least 1).
    pub fn room(&self, class: Criticality) -> usize {
        ((self.limit() as f64 * self.shares[class as usize]).floor() as usize).max(1)
    }

    /// How many critical requests are admitted whatever else is in flight: the part of the limit no
    /// other class may fill (40% by default, at least 1).
    pub fn critical_reserve(&self) -> usize {
        let others = self.shares[Criticality::Degradable as usize]
            .max(self.shares[Criticality::Sheddable as usize]);
        ((self.limit() as f64 * (1.0 - others)).ceil() as usize).max(1)
    }

    /// Admits a request of `class` if the requests in flight are under its share of the limit; a
    /// critical request is also admitted while fewer than [`Limiter::critical_reserve`] critical ones
    /// are in flight. That reserve matters when the limit falls below what is already in flight (latency
    /// rose: slow requests admitted under the old limit are still running): without it, critical
    /// requests would be refused until those drained.
    pub fn try_acquire(self: &Arc<Self>, class: Criticality) -> Result<Permit, Shed> {
        if class == Criticality::Critical {
            let reserve = self.critical_reserve();
            let taken = self
                .critical
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |c| {
                    (c < reserve).then_some(c + 1)
                })
                .is_ok();
            if taken {
                let n = self.inflight.fetch_add(1, Ordering::AcqRel) + 1;
                self.admitted.fetch_add(1, Ordering::Relaxed);
                return Ok(Permit {
                    limiter: self.clone(),
                    started: Instant::now(),
                    inflight: n,
                    critical: true,
                });
            }
        }
        let room = self.room(class);
        let mut current = self.inflight.load(Ordering::Relaxed);
        loop {
            if current >= room {
                self.shed[class as usize].fetch_add(1, Ordering::Relaxed);
                metrics::counter!("requests_shed_total", "class" => class.as_str()).increment(1);
                return Err(Shed {
                    class,
                    limit: self.limit(),
                    inflight: current,
                });
            }
            match self.inflight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.admitted.fetch_add(1, Ordering::Relaxed);
                    return Ok(Permit {
                        limiter: self.clone(),
                        started: Instant::now(),
                        inflight: current + 1,
                        critical: false,
                    });
                }
                Err(now) => current = now,
            }
        }
    }

    fn sample(&self, rtt: Duration, inflight: usize) {
        let mut algo = self
            .algo
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(limit) = algo.add(rtt, inflight) else {
            return;
        };
        let limit = limit as usize;
        if self.limit.swap(limit, Ordering::Relaxed) != limit {
            metrics::gauge!("concurrency_limit").set(limit as f64);
        }
    }
}

/// A request in flight; released when dropped.
#[derive(Debug)]
pub struct Permit {
    limiter: Arc<Limiter>,
    started: Instant,
    inflight: usize,
    /// Admitted from the critical reserve.
    critical: bool,
}

impl Permit {
    /// Feeds this request's latency to the limit (call when it ran to an outcome, not when it was
    /// cut short or failed fast), then releases it.
    pub fn record(self) {
        self.limiter.sample(self.started.elapsed(), self.inflight);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limiter.inflight.fetch_sub(1, Ordering::AcqRel);
        if self.critical {
            self.limiter.critical.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// What the degradation ladder looks at, over the last tick.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pressure {
    /// Requests refused over requests seen (0 with no requests).
    pub shed_ratio: f64,
    /// Requests in flight over the limit, now.
    pub utilization: f64,
}

/// When the ladder steps.
#[derive(Debug, Clone, Copy)]
pub struct LadderOptions {
    /// Steps above 0 (each turns more features off).
    pub steps: usize,
    /// Shedding at least this share of requests is pressure.
    pub hot_shed_ratio: f64,
    /// Pressure this long (since the last step) steps up.
    pub up_after: Duration,
    /// No shedding and under half the limit in use this long steps down.
    pub down_after: Duration,
}

impl Default for LadderOptions {
    /// 3 steps; 1% shed is pressure; up after 1 s of it, down after 10 s without.
    fn default() -> Self {
        LadderOptions {
            steps: 3,
            hot_shed_ratio: 0.01,
            up_after: Duration::from_secs(1),
            down_after: Duration::from_secs(10),
        }
    }
}

/// A step taken, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The step before.
    pub from: usize,
    /// The step now.
    pub to: usize,
    /// What made it move.
    pub reason: String,
}

/// The automatic degradation ladder: step 0 is everything on; while the instance sheds, it climbs a
/// step every `up_after` (each step turns more degradable features off); once it has shed nothing and
/// used under half its limit for `down_after`, it climbs down a step, and so on. The two thresholds
/// and the dwell times are the hysteresis: a load hovering at one threshold does not flap.
#[derive(Debug, Clone)]
pub struct Ladder {
    opts: LadderOptions,
    step: usize,
    /// Since when the current condition (hot or calm) has held, and which it is.
    hot_since: Option<Instant>,
    calm_since: Option<Instant>,
    last_move: Option<Instant>,
}

impl Ladder {
    /// At step 0.
    pub fn new(opts: LadderOptions) -> Ladder {
        Ladder {
            opts,
            step: 0,
            hot_since: None,
            calm_since: None,
            last_move: None,
        }
    }

    /// The current step.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Feeds one tick's pressure at `now`; returns the step taken, if any.
    pub fn observe(&mut self, now: Instant, p: Pressure) -> Option<Step> {
        let hot = p.shed_ratio >= self.opts.hot_shed_ratio;
        let calm = p.shed_ratio == 0.0 && p.utilization < 0.5;
        if hot {
            self.calm_since = None;
            let since = *self.hot_since.get_or_insert(now);
            let since = self.last_move.map_or(since, |m| m.max(since));
            if self.step < self.opts.steps && now.duration_since(since) >= self.opts.up_after {
                return Some(self.go(
                    now,
                    self.step + 1,
                    format!(
                        "shedding {:.1}% of requests for {} ms",
                        p.shed_ratio * 100.0,
                        now.duration_since(since).as_millis()
                    ),
                ));
            }
        } else if calm {
            self.hot_since = None;
            let since = *self.calm_since.get_or_insert(now);
            let since = self.last_move.map_or(since, |m| m.max(since));
            if self.step > 0 && now.duration_since(since) >= self.opts.down_after {
                return Some(self.go(
                    now,
                    self.step - 1,
                    format!(
                        "no shedding and under half the limit in use for {} ms",
                        now.duration_since(since).as_millis()
                    ),
                ));
            }
        } else {
            // Between the thresholds: hold, and restart both clocks.
            self.hot_since = None;
            self.calm_since = None;
        }
        None
    }

    fn go(&mut self, now: Instant, to: usize, reason: String) -> Step {
        let from = self.step;
        self.step = to;
        self.last_move = Some(now);
        metrics::gauge!("degradation_step").set(to as f64);
        Step { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_class_can_only_be_lowered() {
        use Criticality::*;
        assert_eq!(Critical.lowered_to(Some(Sheddable)), Sheddable);
        assert_eq!(Sheddable.lowered_to(Some(Critical)), Sheddable);
        assert_eq!(Degradable.lowered_to(None), Degradable);
        assert_eq!(Criticality::parse(" Sheddable "), Some(Sheddable));
        assert_eq!(Criticality::parse("urgent"), None);
    }

    #[test]
    fn the_limit_grows_at_steady_latency_and_shrinks_when_latency_rises() {
        let mut g = Gradient2::new(20, 5, 500);
        for _ in 0..200 {
            g.sample(ms(10), 20usize.max(g.limit() as usize));
        }
        let grown = g.limit();
        assert!(
            grown > 60.0,
            "steady latency, busy: the limit grows ({grown})"
        );
        // Queueing: latency four times its average for a while.
        for _ in 0..60 {
            g.sample(ms(40), g.limit() as usize);
        }
        let shrunk = g.limit();
        assert!(shrunk < grown / 2.0, "{grown} → {shrunk}");
        // Latency back to normal: the limit recovers.
        for _ in 0..300 {
            g.sample(ms(10), g.limit() as usize);
        }
        assert!(g.limit() > shrunk * 2.0, "{shrunk} → {}", g.limit());
    }

    #[test]
    fn an_idle_instance_does_not_grow_its_limit() {
        let mut g = Gradient2::new(20, 5, 500);
        for _ in 0..500 {
            g.sample(ms(10), 2);
        }
        assert_eq!(g.limit(), 20.0);
    }

    #[test]
    fn the_limit_stays_within_its_bounds() {
        let mut g = Gradient2::new(20, 10, 30);
        for _ in 0..500 {
            g.sample(ms(1), 1000);
        }
        assert_eq!(g.limit(), 30.0);
        // Latency rising without end (a queue that only grows): the limit falls to its floor.
        for i in 0..300 {
            g.sample(Duration::from_secs_f64(0.001 * 1.03f64.powi(i)), 1000);
        }
        assert_eq!(g.limit(), 10.0);
    }

    #[test]
    fn sheddable_requests_are_refused_first_and_critical_ones_last() {
        let l = Limiter::new(LimiterOptions {
            initial: 8,
            min: 8,
            max: 8,
            shares: [0.5, 0.75, 1.0],
            window: Duration::ZERO,
        });
        let mut held = Vec::new();
        for _ in 0..4 {
            held.push(l.try_acquire(Criticality::Sheddable).unwrap());
        }
        assert!(l.try_acquire(Criticality::Sheddable).is_err(), "half of 8");
        for _ in 0..2 {
            held.push(l.try_acquire(Criticality::Degradable).unwrap());
        }
        assert!(l.try_acquire(Criticality::Degradable).is_err(), "3/4 of 8");
        for _ in 0..2 {
            held.push(l.try_acquire(Criticality::Critical).unwrap());
        }
        let e = l.try_acquire(Criticality::Critical).unwrap_err();
        assert_eq!((e.limit, e.inflight), (8, 8));
        assert_eq!(l.shed_counts(), [1, 1, 1]);
        drop(held.pop());
        assert!(l.try_acquire(Criticality::Critical).is_ok());
        held.clear();
        assert_eq!(l.inflight(), 0, "every permit released once");
    }

    /// A steady mix of fast (cached) and slow (search) requests, then the slow part queueing up. Fed
    /// per request, the mix alone looks like queueing (each slow sample is far above an average the
    /// fast ones drag down) and the limit sinks to its floor while nothing is wrong; averaged per
    /// window, it holds while latency holds and falls once latency rises.
    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread, no runtime to block
    fn windowed_latency_tells_a_steady_mix_from_queueing() {
        let run = |window: Duration, rising: bool| {
            let l = Limiter::new(LimiterOptions {
                initial: 100,
                min: 8,
                max: 1_000,
                shares: [0.3, 0.6, 1.0],
                window,
            });
            let mut slow = 0.02;
            for round in 0..60 {
                if rising && round >= 20 {
                    slow *= 1.15;
                }
                for i in 0..10 {
                    let rtt = if i < 3 { 0.0003 } else { slow };
                    l.sample(Duration::from_secs_f64(rtt), 90);
                }
                if !window.is_zero() {
                    std::thread::sleep(window);
                }
            }
            l.limit()
        };
        let w = Duration::from_millis(2);
        let (steady, queueing) = (run(w, false), run(w, true));
        assert!(steady >= 100, "windowed, steady mix: {steady}");
        assert!(queueing < 50, "windowed, queueing: {queueing}");
        let per_request = run(Duration::ZERO, false);
        assert!(
            per_request < steady / 2,
            "per request, the steady mix already sank the limit: {per_request}"
        );
    }

    #[test]
    fn critical_requests_keep_their_reserve_when_the_limit_falls_under_what_is_in_flight() {
        let l = Limiter::new(LimiterOptions {
            initial: 20,
            min: 4,
            max: 20,
            shares: [0.3, 0.6, 1.0],
            window: Duration::ZERO,
        });
        let mut slow = Vec::new();
        for _ in 0..12 {
            slow.push(l.try_acquire(Criticality::Degradable).unwrap());
        }
        // Latency rises: the limit falls far below the 12 slow requests still running.
        for _ in 0..200 {
            l.sample(Duration::from_millis(5), 12);
        }
        for _ in 0..50 {
            l.sample(Duration::from_millis(500), 12);
        }
        assert!(l.limit() < 12, "limit {}", l.limit());
        assert!(l.try_acquire(Criticality::Degradable).is_err());
        let reserve = l.critical_reserve();
        assert_eq!(reserve, ((l.limit() as f64 * 0.4).ceil() as usize).max(1));
        let mut critical: Vec<_> = (0..reserve)
            .map(|_| {
                l.try_acquire(Criticality::Critical)
                    .expect("within the reserve")
            })
            .collect();
        assert!(
            l.try_acquire(Criticality::Critical).is_err(),
            "the reserve is bounded too"
        );
        critical.pop();
        assert!(
            l.try_acquire(Criticality::Critical).is_ok(),
            "a freed slot is reused"
        );
        critical.clear();
        slow.clear();
        assert_eq!(l.inflight(), 0);
        assert_eq!(
            l.critical.load(Ordering::Relaxed),
            0,
            "every permit released once"
        );
    }

    #[test]
    fn the_ladder_climbs_under_sustained_shedding_and_comes_down_after_calm() {
        let mut l = Ladder::new(LadderOptions {
            steps: 3,
            hot_shed_ratio: 0.01,
            up_after: ms(1000),
            down_after: ms(5000),
        });
        let t0 = Instant::now();
        let at = |n: u64| t0 + ms(n);
        let hot = Pressure {
            shed_ratio: 0.2,
            utilization: 1.0,
        };
        let calm = Pressure {
            shed_ratio: 0.0,
            utilization: 0.1,
        };
        let between = Pressure {
            shed_ratio: 0.0,
            utilization: 0.8,
        };
        // A blip of shedding shorter than up_after changes nothing.
        assert!(l.observe(at(0), hot).is_none());
        assert!(l.observe(at(500), hot).is_none());
        assert!(l.observe(at(600), between).is_none());
        assert!(l.observe(at(1200), hot).is_none(), "the clock restarted");
        // Sustained: a step per second, up to the top.
        let s = l.observe(at(2200), hot).unwrap();
        assert_eq!((s.from, s.to), (0, 1));
        assert!(s.reason.contains("20.0%"), "{}", s.reason);
        assert!(l.observe(at(2700), hot).is_none(), "one step per up_after");
        assert_eq!(l.observe(at(3200), hot).unwrap().to, 2);
        assert_eq!(l.observe(at(4200), hot).unwrap().to, 3);
        assert!(l.observe(at(9000), hot).is_none(), "no step above the top");
        // Calm: down one step per down_after, not at once.
        assert!(l.observe(at(9100), calm).is_none());
        assert!(l.observe(at(13000), calm).is_none());
        assert_eq!(l.observe(at(14100), calm).unwrap().to, 2);
        assert!(l.observe(at(15000), calm).is_none());
        assert_eq!(l.observe(at(19100), calm).unwrap().to, 1);
        // Pressure again in the middle of coming down: up again after up_after.
        assert!(l.observe(at(19200), hot).is_none());
        assert_eq!(l.observe(at(20200), hot).unwrap().to, 2);
    }

    proptest::proptest! {
        #[test]
        fn the_limit_is_always_within_bounds_and_finite(
            samples in proptest::collection::vec((1u64..5_000, 0usize..2_000), 1..400),
        ) {
            let mut g = Gradient2::new(32, 8, 1_000);
            for (us, inflight) in samples {
                let l = g.sample(Duration::from_micros(us), inflight);
                proptest::prop_assert!(l.is_finite() && (8.0..=1_000.0).contains(&l), "{}", l);
            }
        }
    }
}
