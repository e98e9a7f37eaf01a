//! Latency histograms recorded on the hot path with two atomic additions and no allocation: fixed
//! buckets, one cache-line-aligned shard per event loop, summed when rendered for Prometheus.
//!
//! Why not the `metrics` crate's histogram: its Prometheus recorder keeps every raw sample until the next
//! upkeep folds them into buckets, which at tens of thousands of requests a second is steady allocation
//! churn (and resident memory) on the balancer's hot path. Its buckets also started at 50 µs, too coarse
//! for what the balancer adds to a request.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the buckets, in seconds (Prometheus `le`).
pub(crate) const BOUNDS: [f64; 22] = [
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
];

#[repr(align(128))]
#[derive(Default)]
struct Shard {
    /// Per bucket (the last: above every bound), not cumulative.
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_ns: AtomicU64,
}

/// A latency histogram.
pub(crate) struct Histogram {
    shards: Box<[Shard]>,
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (counts, _) = self.totals();
        f.debug_struct("Histogram")
            .field("count", &counts.iter().sum::<u64>())
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            shards: (0..=crate::pool::max_loops())
                .map(|_| Shard::default())
                .collect(),
        }
    }
}

impl Histogram {
    pub(crate) fn record(&self, d: Duration) {
        let shard = &self.shards[crate::pool::current_slot().min(self.shards.len() - 1)];
        let secs = d.as_secs_f64();
        let i = BOUNDS.partition_point(|b| *b < secs);
        shard.buckets[i].fetch_add(1, Ordering::Relaxed);
        shard.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn totals(&self) -> ([u64; BOUNDS.len() + 1], u64) {
        let mut counts = [0u64; BOUNDS.len() + 1];
        let mut sum = 0u64;
        for s in self.shards.iter() {
            for (c, b) in counts.iter_mut().zip(s.buckets.iter()) {
                *c += b.load(Ordering::Relaxed);
            }
            sum = sum.saturating_add(s.sum_ns.load(Ordering::Relaxed));
        }
        (counts, sum)
    }

    /// Appends the series in Prometheus text format; `labels` is `name="value",...` or empty.
    pub(crate) fn render(&self, name: &str, labels: &str, out: &mut String) {
        let (counts, sum) = self.totals();
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0u64;
        for (bound, c) in BOUNDS.iter().zip(counts.iter()) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cum}");
        }
        cum += counts[BOUNDS.len()];
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", sum as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_land_in_the_first_bucket_that_holds_them_and_render_cumulatively() {
        let h = Histogram::default();
        h.record(Duration::from_nanos(500));
        h.record(Duration::from_micros(1));
        h.record(Duration::from_micros(3));
        h.record(Duration::from_secs(60));
        let mut out = String::new();
        h.render("x_seconds", "backend=\"b\"", &mut out);
        assert!(
            out.contains("x_seconds_bucket{backend=\"b\",le=\"0.000001\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{backend=\"b\",le=\"0.000005\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{backend=\"b\",le=\"10\"} 3\n"),
            "{out}"
        );
        assert!(
            out.contains("x_seconds_bucket{backend=\"b\",le=\"+Inf\"} 4\n"),
            "{out}"
        );
        assert!(out.contains("x_seconds_count{backend=\"b\"} 4\n"), "{out}");
        assert!(
            out.contains("x_seconds_sum{backend=\"b\"} 60.0000045\n"),
            "{out}"
        );
        let mut plain = String::new();
        Histogram::default().render("y_seconds", "", &mut plain);
        assert!(
            plain.contains("y_seconds_bucket{le=\"+Inf\"} 0\ny_seconds_sum 0\ny_seconds_count 0\n"),
            "{plain}"
        );
    }
}
