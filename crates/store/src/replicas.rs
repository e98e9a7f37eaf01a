//! Read replicas of a PostgreSQL primary: which one serves a read, how far behind each is, and
//! read-your-writes through consistency tokens.
//!
//! A monitor samples the primary's WAL position and each replica's replay position every 100 ms. A
//! replica's lag is how long ago the primary first passed the position the replica has replayed (0 when
//! it has replayed everything seen), so an idle primary does not make a healthy replica look late. Reads
//! go round robin to the replicas that answered the last sample and are within the lag bound; a read that
//! carries a consistency token goes only to a replica known to have replayed that position, else to the
//! primary. A read that fails on a replica is retried on the primary, so a replica going away costs no
//! client error.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::{Database, Pool, Postgres};

/// A WAL position after a commit: a read that carries it sees that commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConsistencyToken(pub u64);

impl std::fmt::Display for ConsistencyToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for ConsistencyToken {
    type Err = String;

    /// PostgreSQL's `pg_lsn` text form, `X/Y` in hexadecimal.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || {
            format!(
                "\"{}\" is not a consistency token such as 0/3000060",
                s.chars().take(40).collect::<String>()
            )
        };
        let (hi, lo) = s.trim().split_once('/').ok_or_else(bad)?;
        if hi.is_empty() || lo.is_empty() || hi.len() > 8 || lo.len() > 8 {
            return Err(bad());
        }
        let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
        let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
        Ok(ConsistencyToken((hi << 32) | lo))
    }
}

tokio::task_local! {
    static AT_LEAST: ConsistencyToken;
}

/// Runs `f` with its reads served only by a replica that has replayed `token` (or by the primary).
pub async fn read_at_least<F: Future>(token: ConsistencyToken, f: F) -> F::Output {
    AT_LEAST.scope(token, f).await
}

fn wanted() -> Option<u64> {
    AT_LEAST.try_with(|t| t.0).ok()
}

/// One replica and what the monitor last saw of it.
pub(crate) struct Replica<DB: Database> {
    pub(crate) name: String,
    pub(crate) pool: Pool<DB>,
    up: AtomicBool,
    replayed: AtomicU64,
    lag_ms: AtomicU64,
}

/// The replicas of one primary.
pub(crate) struct Replicas<DB: Database> {
    list: Vec<Replica<DB>>,
    next: AtomicUsize,
    max_lag: Duration,
}

impl<DB: Database> Replicas<DB> {
    pub(crate) fn new(pools: Vec<(String, Pool<DB>)>, max_lag: Duration) -> Replicas<DB> {
        Replicas {
            list: pools
                .into_iter()
                .map(|(name, pool)| Replica {
                    name,
                    pool,
                    // Unknown until the first sample: no reads until then.
                    up: AtomicBool::new(false),
                    replayed: AtomicU64::new(0),
                    lag_ms: AtomicU64::new(u64::MAX),
                })
                .collect(),
            next: AtomicUsize::new(0),
            max_lag,
        }
    }

    /// A replica for the next read: round robin among those up and within the lag bound (and, inside
    /// [`read_at_least`], that have replayed the token).
    pub(crate) fn pick(&self) -> Option<&Replica<DB>> {
        let n = self.list.len();
        if n == 0 {
            return None;
        }
        let want = wanted();
        let max_lag = self.max_lag.as_millis() as u64;
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n).map(|k| &self.list[(start + k) % n]).find(|r| {
            r.up.load(Ordering::Relaxed)
                && r.lag_ms.load(Ordering::Relaxed) <= max_lag
                && want.is_none_or(|w| r.replayed.load(Ordering::Relaxed) >= w)
        })
    }

    /// Runs a read on a replica, or on `primary` when none fits or the replica fails.
    pub(crate) async fn read<'p, T, F, Fut>(
        &'p self,
        primary: &'p Pool<DB>,
        f: F,
    ) -> Result<T, sqlx::Error>
    where
        F: Fn(&'p Pool<DB>) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>> + 'p,
    {
        if let Some(r) = self.pick() {
            match f(&r.pool).await {
                Ok(v) => {
                    // Looked up per read (not held): the store can be opened before the metrics
                    // recorder is installed.
                    metrics::counter!("db_reads_total", "server" => r.name.clone()).increment(1);
                    return Ok(v);
                }
                Err(e) => {
                    tracing::warn!(replica = %r.name, error = %e, "a replica read failed; reading from the primary");
                    metrics::counter!("db_replica_errors_total", "server" => r.name.clone())
                        .increment(1);
                    r.up.store(false, Ordering::Relaxed);
                }
            }
        }
        metrics::counter!("db_reads_total", "server" => "primary").increment(1);
        f(primary).await
    }
}

impl Replicas<Postgres> {
    /// Samples the primary and every replica every `every`, until dropped with its task.
    pub(crate) async fn monitor(self: Arc<Self>, primary: Pool<Postgres>, every: Duration) {
        // (when, primary WAL position) samples, oldest first, for the last minute.
        let history: Mutex<VecDeque<(Instant, u64)>> = Mutex::new(VecDeque::new());
        let mut trimmed = false;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = every.max(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let primary_lsn = tokio::time::timeout(
                timeout,
                sqlx::query_scalar::<_, String>("SELECT pg_current_wal_insert_lsn()::text")
                    .fetch_one(&primary),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|t| t.parse::<ConsistencyToken>().ok());
            if let (Some(p), Ok(mut h)) = (primary_lsn, history.lock()) {
                if h.back().is_none_or(|&(_, last)| p.0 > last) {
                    h.push_back((now, p.0));
                }
                while h
                    .front()
                    .is_some_and(|&(t, _)| now.duration_since(t) > Duration::from_secs(60))
                    && h.len() > 1
                {
                    h.pop_front();
                    // Samples older than a minute are gone: a replica behind the oldest one left is at
                    // least a minute late, which the bound handles.
                    trimmed = true;
                }
            }
            for r in &self.list {
                let sample = tokio::time::timeout(
                    timeout,
                    sqlx::query_scalar::<_, Option<String>>(
                        "SELECT pg_last_wal_replay_lsn()::text",
                    )
                    .fetch_one(&r.pool),
                )
                .await;
                let replayed = match sample {
                    Ok(Ok(Some(t))) => t.parse::<ConsistencyToken>().ok(),
                    _ => None,
                };
                let Some(replayed) = replayed else {
                    if r.up.swap(false, Ordering::Relaxed) {
                        tracing::warn!(replica = %r.name, "replica unreachable (or not a replica): no reads until it answers");
                    }
                    continue;
                };
                r.replayed.store(replayed.0, Ordering::Relaxed);
                // Behind since the first sample in which the primary was past what the replica replayed. Behind
                // the very first sample the monitor took, it is behind by an unknown time (the primary may
                // have been there for hours): no reads until it catches up with that sample.
                let lag_ms = history
                    .lock()
                    .ok()
                    .and_then(|h| {
                        let (i, &(t, _)) =
                            h.iter().enumerate().find(|&(_, &(_, p))| p > replayed.0)?;
                        Some(if i == 0 && !trimmed {
                            u64::MAX
                        } else {
                            now.duration_since(t).as_millis() as u64
                        })
                    })
                    .unwrap_or(0);
                let lag = Duration::from_millis(lag_ms.min(u64::from(u32::MAX)));
                r.lag_ms.store(lag_ms, Ordering::Relaxed);
                metrics::gauge!("db_replica_lag_seconds", "server" => r.name.clone())
                    .set(lag.as_secs_f64());
                if !r.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(replica = %r.name, "replica answers: serving reads");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tokens_round_trip_and_order() {
        let t: ConsistencyToken = "0/3000060".parse().unwrap();
        assert_eq!(t.0, 0x300_0060);
        assert_eq!(t.to_string(), "0/3000060");
        let u: ConsistencyToken = "1/0".parse().unwrap();
        assert!(u > t);
        for bad in ["", "3000060", "x/1", "1/", "/1", "123456789/0", "1/2/3"] {
            assert!(bad.parse::<ConsistencyToken>().is_err(), "{bad}");
        }
    }
}
