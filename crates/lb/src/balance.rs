//! Load-balancing algorithms. Each picks an index into the current member list, skipping backends that
//! are unavailable (unhealthy, ejected, draining, backing off) or already tried by this request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;

use crate::backend::Backend;

/// How the balancer spreads requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Algorithm {
    /// Each available backend in turn.
    RoundRobin,
    /// nginx's smooth weighted round robin: exact weight shares, interleaved.
    WeightedRoundRobin,
    /// Fewest in-flight requests per unit of weight.
    LeastConnections,
    /// Maglev consistent hashing on a request key: when one of N backends leaves, only ~1/N of keys move.
    ConsistentHash(HashKey),
    /// Power of two random choices, comparing peak-EWMA latency × load (errors count as slow; a backend
    /// that answered with Retry-After is skipped until then).
    P2cEwma,
}

/// What a consistent-hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// The value of a request header (requests without it hash on the client IP).
    Header(http::HeaderName),
}

impl std::str::FromStr for Algorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "round-robin" | "rr" => Algorithm::RoundRobin,
            "weighted-round-robin" | "wrr" => Algorithm::WeightedRoundRobin,
            "least-connections" | "lc" => Algorithm::LeastConnections,
            "consistent-hash" | "hash" | "hash-ip" => Algorithm::ConsistentHash(HashKey::ClientIp),
            "p2c" | "p2c-ewma" => Algorithm::P2cEwma,
            other => match other.strip_prefix("hash-header:") {
                Some(h) => Algorithm::ConsistentHash(HashKey::Header(
                    http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("\"{h}\" is not a header name"))?,
                )),
                None => {
                    return Err(format!(
                        "unknown algorithm \"{other}\"; use round-robin, weighted-round-robin, least-connections, \
                         consistent-hash (client IP), hash-header:NAME or p2c-ewma"
                    ))
                }
            },
        })
    }
}

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Algorithm::RoundRobin => f.write_str("round-robin"),
            Algorithm::WeightedRoundRobin => f.write_str("weighted-round-robin"),
            Algorithm::LeastConnections => f.write_str("least-connections"),
            Algorithm::ConsistentHash(HashKey::ClientIp) => f.write_str("consistent-hash"),
            Algorithm::ConsistentHash(HashKey::Header(h)) => write!(f, "hash-header:{h}"),
            Algorithm::P2cEwma => f.write_str("p2c-ewma"),
        }
    }
}

/// The request facts an algorithm may use.
pub(crate) struct PickContext<'a> {
    pub(crate) client_ip: IpAddr,
    pub(crate) hash_header: Option<&'a [u8]>,
    pub(crate) slow_start: Duration,
}

/// Size of the Maglev lookup table (a prime well above 100 × backends).
const MAGLEV_SIZE: usize = 65_537;

/// A Maglev lookup table over a member list (by address, so it is stable across restarts).
#[derive(Debug)]
pub(crate) struct Maglev {
    table: Vec<u32>,
}

fn fnv1a(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // A final avalanche (splitmix64) so that similar keys spread.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

impl Maglev {
    /// Builds the table for backends named by `names` (Maglev's population algorithm).
    pub(crate) fn new(names: &[String]) -> Maglev {
        let n = names.len();
        let mut table = vec![u32::MAX; MAGLEV_SIZE];
        if n == 0 {
            return Maglev { table };
        }
        let m = MAGLEV_SIZE as u64;
        let perms: Vec<(u64, u64)> = names
            .iter()
            .map(|name| {
                (
                    fnv1a(name.as_bytes(), 0x5eed) % m,
                    fnv1a(name.as_bytes(), 0xbeef) % (m - 1) + 1,
                )
            })
            .collect();
        let mut next = vec![0u64; n];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                let (offset, skip) = perms[i];
                let mut c = (offset + next[i] * skip) % m;
                while table[c as usize] != u32::MAX {
                    next[i] += 1;
                    c = (offset + next[i] * skip) % m;
                }
                table[c as usize] = i as u32;
                next[i] += 1;
                filled += 1;
                if filled == MAGLEV_SIZE {
                    break 'fill;
                }
            }
        }
        Maglev { table }
    }

    /// The table slot of a key.
    fn slot(key: &[u8]) -> usize {
        (fnv1a(key, 0x006b_6579) % MAGLEV_SIZE as u64) as usize
    }
}

/// An algorithm with its running state.
#[derive(Debug)]
pub(crate) struct Picker {
    pub(crate) algorithm: Algorithm,
    rr: AtomicUsize,
    swrr: Mutex<()>,
}

impl Picker {
    pub(crate) fn new(algorithm: Algorithm) -> Picker {
        Picker {
            algorithm,
            rr: AtomicUsize::new(0),
            swrr: Mutex::new(()),
        }
    }

    /// Picks a backend index, or `None` when no backend is available.
    pub(crate) fn pick(
        &self,
        backends: &[Arc<Backend>],
        maglev: Option<&Maglev>,
        ctx: &PickContext<'_>,
        tried: &[usize],
    ) -> Option<usize> {
        let n = backends.len();
        if n == 0 {
            return None;
        }
        // Panic mode (Envoy's healthy-panic threshold, 50%): when fewer than half the backends pass
        // their health checks, they are all routed to as if they did. Under overload, health checks
        // time out everywhere at once; taking every backend out would turn slow into down.
        let healthy = backends.iter().filter(|b| b.is_healthy()).count();
        let panic = healthy * 2 < n;
        let ok = |i: usize| {
            let b = &backends[i];
            (if panic {
                b.available_ignoring_health()
            } else {
                b.available()
            }) && !tried.contains(&i)
        };
        match &self.algorithm {
            Algorithm::RoundRobin => {
                // A retry takes the next backend without moving the rotation, so retries away from a
                // failing backend do not hand it the next first attempts too.
                let start = if tried.is_empty() {
                    self.rr.fetch_add(1, Ordering::Relaxed)
                } else {
                    self.rr.load(Ordering::Relaxed)
                };
                (0..n).map(|k| (start + k) % n).find(|&i| ok(i))
            }
            Algorithm::WeightedRoundRobin => {
                let _g = self.swrr.lock().ok()?;
                let mut total = 0i64;
                let mut best: Option<(usize, i64)> = None;
                for i in (0..n).filter(|&i| ok(i)) {
                    let b = &backends[i];
                    let w = (b.effective_weight(ctx.slow_start) * 100.0).round() as i64;
                    let cur = b.swrr_current.fetch_add(w, Ordering::Relaxed) + w;
                    total += w;
                    if best.is_none_or(|(_, c)| cur > c) {
                        best = Some((i, cur));
                    }
                }
                let (i, _) = best?;
                backends[i].swrr_current.fetch_sub(total, Ordering::Relaxed);
                Some(i)
            }
            Algorithm::LeastConnections => {
                let start = self.rr.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| ok(i))
                    .map(|i| {
                        let b = &backends[i];
                        (
                            i,
                            (b.in_flight() as f64 + 1.0)
                                / b.effective_weight(ctx.slow_start).max(0.01),
                        )
                    })
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|(i, _)| i)
            }
            Algorithm::ConsistentHash(key) => {
                let table = maglev?;
                let ip;
                let bytes: &[u8] = match (key, ctx.hash_header) {
                    (HashKey::Header(_), Some(v)) => v,
                    _ => {
                        ip = ctx.client_ip.to_string();
                        ip.as_bytes()
                    }
                };
                let slot = Maglev::slot(bytes);
                // Unavailable owner: probe onward, so only that backend's keys move.
                (0..MAGLEV_SIZE)
                    .map(|k| table.table[(slot + k) % MAGLEV_SIZE] as usize)
                    .take(4 * n + 64)
                    .find(|&i| i < n && ok(i))
                    .or_else(|| (0..n).find(|&i| ok(i)))
            }
            Algorithm::P2cEwma => {
                let avail: Vec<usize> = (0..n).filter(|&i| ok(i)).collect();
                match avail.len() {
                    0 => None,
                    1 => Some(avail[0]),
                    len => {
                        let mut rng = rand::rng();
                        let a = rng.random_range(0..len);
                        let mut b = rng.random_range(0..len - 1);
                        if b >= a {
                            b += 1;
                        }
                        let (a, b) = (avail[a], avail[b]);
                        let ca = backends[a].p2c_cost(ctx.slow_start);
                        let cb = backends[b].p2c_cost(ctx.slow_start);
                        Some(if ca <= cb { a } else { b })
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::{Pool, PoolConfig};
    use std::collections::HashMap;

    fn backends(weights: &[u32]) -> Vec<Arc<Backend>> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = format!("127.0.0.1:{}", 10_000 + i).parse().unwrap();
                Arc::new(Backend::new(
                    addr,
                    *w,
                    Pool::new(addr, PoolConfig::default()),
                ))
            })
            .collect()
    }

    fn ctx(ip: &str) -> PickContext<'static> {
        PickContext {
            client_ip: ip.parse().unwrap(),
            hash_header: None,
            slow_start: Duration::ZERO,
        }
    }

    fn counts(p: &Picker, bs: &[Arc<Backend>], n: usize) -> Vec<usize> {
        let mut c = vec![0; bs.len()];
        for _ in 0..n {
            c[p.pick(bs, None, &ctx("10.0.0.1"), &[]).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn round_robin_is_exact() {
        let bs = backends(&[1, 1, 1]);
        assert_eq!(
            counts(&Picker::new(Algorithm::RoundRobin), &bs, 3_000),
            [1_000, 1_000, 1_000]
        );
    }

    #[test]
    fn smooth_weighted_round_robin_is_exact_and_interleaved() {
        let bs = backends(&[5, 1, 1]);
        let p = Picker::new(Algorithm::WeightedRoundRobin);
        let seq: Vec<usize> = (0..7)
            .map(|_| p.pick(&bs, None, &ctx("10.0.0.1"), &[]).unwrap())
            .collect();
        assert_eq!(
            seq,
            [0, 0, 1, 0, 2, 0, 0],
            "nginx's interleaving for weights 5,1,1"
        );
        assert_eq!(counts(&p, &bs, 7_000), [5_000, 1_000, 1_000]);
    }

    #[test]
    fn when_most_backends_fail_health_checks_all_are_used() {
        let bs = backends(&[1, 1, 1]);
        let p = Picker::new(Algorithm::RoundRobin);
        // One of three failing: it is skipped.
        bs[0].set_healthy(false);
        assert!((0..30).all(|_| p.pick(&bs, None, &ctx("10.0.0.1"), &[]) != Some(0)));
        // Two of three failing (under half healthy): panic mode, all three take requests.
        bs[1].set_healthy(false);
        let mut seen = [0; 3];
        for _ in 0..30 {
            seen[p.pick(&bs, None, &ctx("10.0.0.1"), &[]).unwrap()] += 1;
        }
        assert_eq!(seen, [10, 10, 10]);
        // Draining still counts in panic mode.
        bs[2].drain();
        assert!((0..30).all(|_| p.pick(&bs, None, &ctx("10.0.0.1"), &[]) != Some(2)));
    }

    #[test]
    fn unavailable_and_tried_backends_are_skipped() {
        let bs = backends(&[1, 1, 1]);
        bs[1].drain();
        for algo in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::P2cEwma,
        ] {
            let p = Picker::new(algo.clone());
            for _ in 0..100 {
                let i = p.pick(&bs, None, &ctx("10.0.0.1"), &[0]).unwrap();
                assert_eq!(i, 2, "{algo:?}");
            }
        }
        bs[2].drain();
        assert_eq!(
            Picker::new(Algorithm::RoundRobin).pick(&bs, None, &ctx("10.0.0.1"), &[0]),
            None
        );
    }

    #[test]
    fn least_connections_avoids_the_busy_backend() {
        let bs = backends(&[1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| bs[0].start()).collect();
        let c = counts(&Picker::new(Algorithm::LeastConnections), &bs, 100);
        assert_eq!(c, [0, 100]);
    }

    #[test]
    fn maglev_moves_only_the_leaving_backends_keys() {
        let names: Vec<String> = (0..5)
            .map(|i| format!("127.0.0.1:{}", 10_000 + i))
            .collect();
        let before = Maglev::new(&names);
        let after = Maglev::new(&names[..4]);
        let keys = 20_000;
        let mut moved = 0;
        let mut share: HashMap<u32, usize> = HashMap::new();
        for k in 0..keys {
            let s = Maglev::slot(format!("client-{k}").as_bytes());
            let (a, b) = (before.table[s], after.table[s]);
            *share.entry(a).or_default() += 1;
            if a != 4 && a != b {
                moved += 1;
            }
        }
        // Keys of the four remaining backends almost all stay (Maglev allows a little churn).
        assert!(moved < keys / 50, "{moved} of {keys} keys moved needlessly");
        for (_, c) in share {
            assert!(
                (c as f64 / keys as f64 - 0.2).abs() < 0.03,
                "uneven share {c}"
            );
        }
    }

    #[test]
    fn consistent_hash_is_stable_and_probes_past_an_unavailable_owner() {
        let bs = backends(&[1, 1, 1]);
        let names: Vec<String> = bs.iter().map(|b| b.addr.to_string()).collect();
        let m = Maglev::new(&names);
        let p = Picker::new(Algorithm::ConsistentHash(HashKey::ClientIp));
        let owner = |k: usize| {
            p.pick(
                &bs,
                Some(&m),
                &ctx(&format!("10.0.{}.{}", k / 250, k % 250)),
                &[],
            )
        };
        let owners: Vec<usize> = (0..200).map(|k| owner(k).unwrap()).collect();
        let again: Vec<usize> = (0..200).map(|k| owner(k).unwrap()).collect();
        assert_eq!(owners, again);
        bs[0].drain();
        for (k, &before) in owners.iter().enumerate() {
            let now = owner(k).unwrap();
            assert_ne!(now, 0);
            if before != 0 {
                assert_eq!(now, before, "only the drained backend's keys move");
            }
        }
    }

    #[test]
    fn p2c_prefers_the_fast_backend_and_skips_one_backing_off() {
        let bs = backends(&[1, 1]);
        bs[0].observe_success(Duration::from_millis(50));
        bs[1].observe_success(Duration::from_micros(500));
        let c = counts(&Picker::new(Algorithm::P2cEwma), &bs, 1_000);
        assert_eq!(c, [0, 1_000], "with two backends both are always compared");
        bs[1].back_off(Duration::from_secs(5));
        assert_eq!(counts(&Picker::new(Algorithm::P2cEwma), &bs, 10), [10, 0]);
    }

    #[test]
    fn algorithm_names_parse() {
        assert_eq!("rr".parse::<Algorithm>(), Ok(Algorithm::RoundRobin));
        assert!(matches!(
            "hash-header:x-user".parse::<Algorithm>(),
            Ok(Algorithm::ConsistentHash(HashKey::Header(_)))
        ));
        assert!("fastest"
            .parse::<Algorithm>()
            .unwrap_err()
            .contains("unknown algorithm"));
    }
}
