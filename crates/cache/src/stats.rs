//! Cache metrics, registered once (a handle per series) rather than looked up on every request.

use metrics::{counter, Counter};

use crate::Value;

pub(crate) struct Stats {
    pub(crate) l1_hit: Counter,
    pub(crate) l1_negative_hit: Counter,
    pub(crate) l1_miss: Counter,
    pub(crate) l1_stale: Counter,
    pub(crate) loads: Counter,
    pub(crate) coalesced: Counter,
    pub(crate) early_refreshes: Counter,
    pub(crate) rejected: Counter,
    pub(crate) invalidations_local: Counter,
    pub(crate) invalidations_remote: Counter,
    pub(crate) publish_errors: Counter,
}

impl Stats {
    pub(crate) fn new() -> Stats {
        let req = |result: &'static str| counter!("cache_requests_total", "tier" => "l1", "result" => result);
        Stats {
            l1_hit: req("hit"),
            l1_negative_hit: req("negative_hit"),
            l1_miss: req("miss"),
            l1_stale: req("stale"),
            loads: counter!("cache_loads_total"),
            coalesced: counter!("cache_coalesced_loads_total"),
            early_refreshes: counter!("cache_early_refreshes_total"),
            rejected: counter!("cache_insert_rejected_total"),
            invalidations_local: counter!("cache_invalidations_total", "source" => "local"),
            invalidations_remote: counter!("cache_invalidations_total", "source" => "remote"),
            publish_errors: counter!("cache_bus_errors_total", "op" => "publish"),
        }
    }

    pub(crate) fn hit(&self, v: &Value) {
        match v {
            Value::Present { .. } => self.l1_hit.increment(1),
            Value::Absent => self.l1_negative_hit.increment(1),
        }
    }

    pub(crate) fn flush(&self, reason: &'static str) {
        counter!("cache_flushes_total", "reason" => reason).increment(1);
    }
}
