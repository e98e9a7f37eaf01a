//! A circuit breaker around a dependency that can fail or stall (Redis, blob storage): closed (calls
//! pass), open (calls fail fast until a time), half-open (one probe at a time). Consecutive failures
//! open it; a failed probe opens it again for twice as long, up to a cap; a successful call closes it.
//! A probe that neither succeeded nor failed within the probe timeout (its caller went away) no longer
//! blocks the next one.
//!
//! Every breaker has a target name: the gauge `breaker_open{target}` is 1 while it is open, and
//! `breaker_rejected_total{target}` counts the calls it refused.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use metrics::{counter, gauge};

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy)]
pub struct BreakerOptions {
    /// Consecutive failures that open it.
    pub trip_after: u32,
    /// The first open period; it doubles while probes fail.
    pub min_open: Duration,
    /// The longest open period.
    pub max_open: Duration,
    /// How long a probe may stay unanswered before another may go.
    pub probe_timeout: Duration,
}

impl Default for BreakerOptions {
    fn default() -> Self {
        BreakerOptions {
            trip_after: 3,
            min_open: Duration::from_millis(250),
            max_open: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(1),
        }
    }
}

/// A circuit breaker (see the module documentation).
#[derive(Debug)]
pub struct Breaker {
    target: &'static str,
    opts: BreakerOptions,
    failures: AtomicU32,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    open_until: Option<Instant>,
    open_for: Duration,
    probe_since: Option<Instant>,
}

impl Breaker {
    /// A closed breaker around `target` (the name in logs and metrics) with the default options.
    pub fn new(target: &'static str) -> Breaker {
        Breaker::with_options(target, BreakerOptions::default())
    }

    /// A closed breaker with these options.
    pub fn with_options(target: &'static str, opts: BreakerOptions) -> Breaker {
        gauge!("breaker_open", "target" => target).set(0.0);
        Breaker {
            target,
            opts,
            failures: AtomicU32::new(0),
            state: Mutex::new(State {
                open_until: None,
                open_for: opts.min_open,
                probe_since: None,
            }),
        }
    }

    /// What it guards.
    pub fn target(&self) -> &'static str {
        self.target
    }

    /// May a call go now? Closed: yes. Open: no, until the open period is over; then one probe at a
    /// time. Report the call's outcome with [`Breaker::success`] or [`Breaker::failure`].
    pub fn allow(&self) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        let allowed = match s.open_until {
            None => true,
            Some(t) if now < t => false,
            Some(_) => match s.probe_since {
                Some(p) if now.duration_since(p) < self.opts.probe_timeout => false,
                _ => {
                    s.probe_since = Some(now);
                    true
                }
            },
        };
        if !allowed {
            counter!("breaker_rejected_total", "target" => self.target).increment(1);
        }
        allowed
    }

    /// The call worked: the breaker closes.
    pub fn success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        if let Ok(mut s) = self.state.lock() {
            if s.open_until.is_some() {
                tracing::info!(
                    target = self.target,
                    "the dependency answers again: breaker closed"
                );
                gauge!("breaker_open", "target" => self.target).set(0.0);
            }
            s.open_until = None;
            s.open_for = self.opts.min_open;
            s.probe_since = None;
        }
    }

    /// The call failed (or overran its deadline).
    pub fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let probe_failed = s.probe_since.take().is_some();
        if n < self.opts.trip_after && !probe_failed {
            return;
        }
        if s.open_until.is_none() {
            tracing::warn!(
                target = self.target,
                failures = n,
                "the dependency is failing: breaker open, calls fail fast"
            );
        } else {
            s.open_for = (s.open_for * 2).min(self.opts.max_open);
        }
        s.open_until = Some(Instant::now() + s.open_for);
        gauge!("breaker_open", "target" => self.target).set(1.0);
    }

    /// True while it is open (calls refused, or only a probe let through).
    pub fn is_open(&self) -> bool {
        self.state
            .lock()
            .map(|s| s.open_until.is_some())
            .unwrap_or(true)
    }

    /// How long until the next probe may go (zero when closed or due): a Retry-After for callers.
    pub fn retry_after(&self) -> Duration {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.open_until)
            .map(|t| t.saturating_duration_since(Instant::now()))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> BreakerOptions {
        BreakerOptions {
            trip_after: 3,
            min_open: Duration::from_millis(60),
            max_open: Duration::from_millis(500),
            probe_timeout: Duration::from_millis(200),
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread, no runtime to block
    fn it_opens_after_failures_and_lets_one_probe_through() {
        let o = quick();
        let b = Breaker::with_options("t1", o);
        for _ in 0..o.trip_after - 1 {
            assert!(b.allow());
            b.failure();
        }
        assert!(!b.is_open(), "fewer failures than the threshold");
        b.success();
        for _ in 0..o.trip_after - 1 {
            b.failure();
        }
        assert!(!b.is_open(), "a success in between starts the count again");
        b.failure();
        assert!(b.is_open());
        assert!(!b.allow(), "open: fail fast");
        assert!(b.retry_after() > Duration::ZERO);
        std::thread::sleep(o.min_open + Duration::from_millis(20));
        assert!(b.allow(), "one probe after the open period");
        assert!(!b.allow(), "only one");
        b.failure();
        assert!(!b.allow(), "a failed probe opens it again, for longer");
        std::thread::sleep(o.min_open + Duration::from_millis(10));
        assert!(!b.allow(), "twice as long this time");
        std::thread::sleep(o.min_open + Duration::from_millis(20));
        assert!(b.allow());
        b.success();
        assert!(!b.is_open());
        assert_eq!(b.retry_after(), Duration::ZERO);
        assert!(b.allow() && b.allow(), "closed again");
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread, no runtime to block
    fn a_probe_that_never_reports_does_not_keep_it_open() {
        let o = quick();
        let b = Breaker::with_options("t2", o);
        for _ in 0..o.trip_after {
            b.failure();
        }
        std::thread::sleep(o.min_open + Duration::from_millis(20));
        assert!(b.allow(), "the probe");
        // Its caller went away: no success, no failure.
        assert!(!b.allow());
        std::thread::sleep(o.probe_timeout + Duration::from_millis(20));
        assert!(b.allow(), "another probe once the first is overdue");
        b.success();
        assert!(!b.is_open());
    }

    #[test]
    #[allow(clippy::disallowed_methods)] // a plain test thread, no runtime to block
    fn the_open_period_stops_growing_at_the_cap() {
        let o = quick();
        let b = Breaker::with_options("t3", o);
        for _ in 0..o.trip_after {
            b.failure();
        }
        for _ in 0..8 {
            // Failed probes: each doubles the period, never past max_open.
            b.failure();
        }
        assert!(b.retry_after() <= o.max_open);
        assert!(b.retry_after() > o.max_open / 2);
    }
}
