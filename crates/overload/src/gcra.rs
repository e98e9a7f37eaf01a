//! Per-client rate limiting with GCRA (the generic cell rate algorithm): each key keeps one number, its
//! theoretical arrival time (TAT). A request at `now` is allowed when `max(TAT, now) - now <= tolerance`,
//! and then moves TAT on by one emission interval (1 / rate); otherwise it is refused, and may retry once
//! `max(TAT, now) - tolerance` has passed. With `tolerance = (burst - 1) × interval` a client may send
//! `burst` requests at once, then `rate` per second. [`Gcra::decide`] is the arithmetic (shared with the
//! Redis script in `tenfold-cache`, so that instances sharing Redis share one budget per key);
//! [`LocalLimiter`] keeps the TATs in this process, for instances without Redis or while it is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// A rate and a burst, as GCRA parameters in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// One request's share of a second (1 / rate), in µs.
    pub interval_us: u64,
    /// How far ahead of now a key's TAT may run (`(burst - 1) × interval`), in µs.
    pub tolerance_us: u64,
}

/// What a rate limiter said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// Refused: try again after this long.
    Deny(Duration),
}

impl Gcra {
    /// `rate` requests per second with bursts of `burst` (at least 1).
    pub fn new(rate_per_s: f64, burst: u32) -> Gcra {
        let interval_us = (1e6 / rate_per_s.max(1e-3)).round().max(1.0) as u64;
        Gcra {
            interval_us,
            tolerance_us: interval_us * u64::from(burst.max(1) - 1),
        }
    }

    /// The decision for a key whose TAT is `tat` (None: never seen) at `now`, and its TAT after.
    pub fn decide(&self, tat: Option<u64>, now: u64) -> (Decision, u64) {
        let tat = tat.unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > self.tolerance_us {
            let wait = ahead - self.tolerance_us;
            (Decision::Deny(Duration::from_micros(wait)), tat)
        } else {
            (Decision::Allow, tat + self.interval_us)
        }
    }
}

/// GCRA over keys held in this process (at most 100,000 keys; a key idle past its tolerance is
/// forgotten, which changes nothing: its TAT is in the past).
pub struct LocalLimiter {
    gcra: Gcra,
    origin: Instant,
    tats: moka::sync::Cache<String, Arc<std::sync::Mutex<u64>>>,
}

impl LocalLimiter {
    /// A limiter for `gcra`.
    pub fn new(gcra: Gcra) -> LocalLimiter {
        let idle =
            Duration::from_micros(gcra.tolerance_us + gcra.interval_us) + Duration::from_secs(1);
        LocalLimiter {
            gcra,
            origin: Instant::now(),
            tats: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(idle)
                .build(),
        }
    }

    /// Decides for `key` now.
    pub fn check(&self, key: &str) -> Decision {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, at: Instant) -> Decision {
        let now = at.duration_since(self.origin).as_micros() as u64;
        let cell = self
            .tats
            .get_with_by_ref(key, || Arc::new(std::sync::Mutex::new(0)));
        let mut tat = cell
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (d, next) = self.gcra.decide((*tat > 0).then_some(*tat), now);
        *tat = next;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        // 10/s, bursts of 5.
        let g = Gcra::new(10.0, 5);
        assert_eq!(
            g,
            Gcra {
                interval_us: 100_000,
                tolerance_us: 400_000
            }
        );
        let (mut tat, now) = (None, 1_000_000);
        for i in 0..5 {
            let (d, t) = g.decide(tat, now);
            assert_eq!(d, Decision::Allow, "burst request {i}");
            tat = Some(t);
        }
        let (d, _) = g.decide(tat, now);
        assert_eq!(
            d,
            Decision::Deny(Duration::from_millis(100)),
            "the sixth waits one interval"
        );
        // After that interval, one more; then refused again.
        let (d, t) = g.decide(tat, now + 100_000);
        assert_eq!(d, Decision::Allow);
        assert!(matches!(
            g.decide(Some(t), now + 100_000).0,
            Decision::Deny(_)
        ));
        // Over a long run the rate holds: 10 seconds at 1,000 tries per second let 5 + 100 through.
        let (mut tat, mut ok) = (None, 0);
        for ms in 0..10_000u64 {
            let (d, t) = g.decide(tat, 5_000_000 + ms * 1000);
            tat = Some(t);
            if d == Decision::Allow {
                ok += 1;
            }
        }
        assert!((104..=106).contains(&ok), "{ok}");
    }

    #[test]
    fn keys_are_limited_separately() {
        let l = LocalLimiter::new(Gcra::new(1.0, 2));
        let t = Instant::now() + Duration::from_secs(1);
        assert_eq!(l.check_at("a", t), Decision::Allow);
        assert_eq!(l.check_at("a", t), Decision::Allow);
        assert!(matches!(l.check_at("a", t), Decision::Deny(_)));
        assert_eq!(l.check_at("b", t), Decision::Allow);
    }
}
