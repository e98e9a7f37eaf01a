//! Redis: the shared L2 for products (versioned values, leases against stampedes across instances) and an
//! invalidation channel (pub/sub).
//!
//! Every command has a short deadline and goes through a circuit breaker, so a Redis that is down, slow or
//! full costs a read at most one deadline, and nothing while the breaker is open: reads then go to the
//! database. The connection is made in the background and re-made after failures.
//!
//! Values are stored as `<kind><version>:<body>`: `P` present, `A` absent, `T` invalidated (only version
//! ≥ n may be stored again), `D` deleted (read as absent; nothing replaces it until it expires). The Lua
//! scripts apply the same rules as L1, atomically, so an older value never replaces a newer one in Redis
//! either, "absent" never hides a row that exists, and a deleted row cannot come back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use metrics::{counter, Counter};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tenfold_overload::Breaker;
use tenfold_store::{ChangeFeed, FeedError, FeedEvent};
use tokio::sync::mpsc;

use crate::Value;

/// How to reach Redis.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port[/db]`.
    pub url: String,
    /// Deadline of each command.
    pub timeout: Duration,
    /// Prefix of every key and of the channel (several deployments, or tests, can share one Redis).
    pub prefix: String,
}

const SET_IF_NEWER: &str = r#"
if ARGV[5] ~= '' then
  if redis.call('GET', KEYS[2]) ~= ARGV[5] then return 0 end
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local k = string.sub(cur, 1, 1)
  local v = tonumber(string.match(cur, '^.(%-?%d+):'))
  local n = tonumber(ARGV[2])
  if k == 'T' then
    if ARGV[1] ~= 'P' or n < v then return 0 end
  elseif k == 'D' then
    return 0
  elseif k == 'P' then
    if ARGV[1] == 'A' or n < v then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
if ARGV[5] ~= '' then redis.call('DEL', KEYS[2]) end
return 1
"#;

const INVALIDATE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur and ARGV[1] == 'T' then
  local k = string.sub(cur, 1, 1)
  local v = tonumber(string.match(cur, '^.(%-?%d+):'))
  if k == 'D' then return 0 end
  if (k == 'P' or k == 'T') and v >= tonumber(ARGV[2]) then
    redis.call('DEL', KEYS[2])
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2] .. ':', 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
return 1
"#;

const LEASE: &str = r#"
local t = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], 86400000)
if redis.call('SET', KEYS[1], t, 'NX', 'PX', ARGV[1]) then return t end
return 0
"#;

/// GCRA (see `tenfold_overload::gcra`) on Redis's own clock, so every instance sharing the key shares
/// its budget: KEYS[1] the key, ARGV[1] the emission interval and ARGV[2] the tolerance, in µs.
/// Returns 0 (allowed) or the µs to wait.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
if tat - now > tolerance then
  return tat - now - tolerance
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], new_tat, 'PX', math.floor((new_tat - now) / 1000) + 1)
return 0
"#;

struct Counters {
    hit: Counter,
    negative_hit: Counter,
    miss: Counter,
    lease_waits: Counter,
    lease_wait_hits: Counter,
}

/// A lazily connected Redis with deadlines and a breaker.
pub(crate) struct Redis {
    client: redis::Client,
    conn: Mutex<Option<ConnectionManager>>,
    connecting: AtomicBool,
    pub(crate) breaker: Breaker,
    timeout: Duration,
    prefix: String,
    set_if_newer: redis::Script,
    invalidate: redis::Script,
    lease: redis::Script,
    gcra: redis::Script,
    counters: Counters,
}

/// Why a Redis call did not happen or failed (the caller then uses the database).
#[derive(Debug)]
pub(crate) struct Unavailable;

impl Redis {
    pub(crate) fn new(opts: &RedisOptions) -> Result<Arc<Redis>, String> {
        let client = redis::Client::open(opts.url.as_str())
            .map_err(|e| format!("invalid Redis URL: {e}"))?;
        let l2 = |result: &'static str| counter!("cache_requests_total", "tier" => "l2", "result" => result);
        let r = Arc::new(Redis {
            client,
            conn: Mutex::new(None),
            connecting: AtomicBool::new(false),
            breaker: Breaker::new("redis"),
            timeout: opts.timeout,
            prefix: opts.prefix.clone(),
            set_if_newer: redis::Script::new(SET_IF_NEWER),
            invalidate: redis::Script::new(INVALIDATE),
            lease: redis::Script::new(LEASE),
            gcra: redis::Script::new(GCRA),
            counters: Counters {
                hit: l2("hit"),
                negative_hit: l2("negative_hit"),
                miss: l2("miss"),
                lease_waits: counter!("cache_lease_waits_total"),
                lease_wait_hits: counter!("cache_lease_wait_hits_total"),
            },
        });
        r.connect_in_background();
        Ok(r)
    }

    fn connect_in_background(self: &Arc<Self>) {
        if tokio::runtime::Handle::try_current().is_err()
            || self.connecting.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let cfg = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(this.timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(this.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_millis(500));
            let mut backoff = Duration::from_millis(50);
            loop {
                match ConnectionManager::new_with_config(this.client.clone(), cfg.clone()).await {
                    Ok(c) => {
                        if let Ok(mut slot) = this.conn.lock() {
                            *slot = Some(c);
                        }
                        tracing::info!("connected to Redis");
                        break;
                    }
                    Err(e) => {
                        counter!("cache_redis_errors_total", "op" => "connect").increment(1);
                        tracing::debug!(error = %e, "cannot connect to Redis yet");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            }
            this.connecting.store(false, Ordering::Release);
        });
    }

    /// A connection, if Redis may be used now.
    fn conn(self: &Arc<Self>) -> Result<ConnectionManager, Unavailable> {
        let c = self.conn.lock().ok().and_then(|c| c.clone());
        match c {
            None => {
                self.connect_in_background();
                Err(Unavailable)
            }
            Some(c) if self.breaker.allow() => Ok(c),
            Some(_) => Err(Unavailable),
        }
    }

    /// Runs one command within the deadline, feeding the breaker.
    async fn call<T, F, Fut>(self: &Arc<Self>, op: &'static str, f: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let c = self.conn()?;
        match tokio::time::timeout(self.timeout, f(c)).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                counter!("cache_redis_errors_total", "op" => op).increment(1);
                tracing::debug!(op, error = %e, "Redis command failed");
                self.breaker.failure();
                Err(Unavailable)
            }
            Err(_) => {
                counter!("cache_redis_errors_total", "op" => op).increment(1);
                tracing::debug!(op, "Redis command timed out");
                self.breaker.failure();
                Err(Unavailable)
            }
        }
    }

    fn key(&self, id: i64) -> String {
        format!("{}p:{id}", self.prefix)
    }

    fn lease_key(&self, id: i64) -> String {
        format!("{}lease:p:{id}", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}invalidations", self.prefix)
    }

    /// The stored value of product `id`: `Ok(None)` on a miss or an invalidated entry.
    pub(crate) async fn get(self: &Arc<Self>, id: i64) -> Result<Option<Value>, Unavailable> {
        let key = self.key(id);
        let raw: Option<Vec<u8>> = self
            .call("get", |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        let v = raw.and_then(|r| decode(&r));
        match &v {
            Some(Value::Present { .. }) => self.counters.hit.increment(1),
            Some(Value::Absent) => self.counters.negative_hit.increment(1),
            None => self.counters.miss.increment(1),
        }
        Ok(v)
    }

    /// One GCRA decision for `key` (a client), shared by every instance on this Redis.
    pub(crate) async fn gcra(
        self: &Arc<Self>,
        key: &str,
        g: tenfold_overload::gcra::Gcra,
    ) -> Result<tenfold_overload::gcra::Decision, Unavailable> {
        let k = format!("{}rl:{key}", self.prefix);
        let script = &self.gcra;
        let wait: u64 = self
            .call("rate_limit", |mut c| async move {
                script
                    .key(k)
                    .arg(g.interval_us)
                    .arg(g.tolerance_us)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(if wait == 0 {
            tenfold_overload::gcra::Decision::Allow
        } else {
            tenfold_overload::gcra::Decision::Deny(Duration::from_micros(wait))
        })
    }

    /// Takes the right to load product `id` into Redis: a fencing token, or `None` if another holds it.
    pub(crate) async fn lease(
        self: &Arc<Self>,
        id: i64,
        ttl: Duration,
    ) -> Result<Option<String>, Unavailable> {
        let (lk, ck) = (self.lease_key(id), format!("{}lease-seq", self.prefix));
        let script = &self.lease;
        let t: i64 = self
            .call("lease", |mut c| async move {
                script
                    .key(lk)
                    .key(ck)
                    .arg(ttl.as_millis() as u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok((t > 0).then(|| t.to_string()))
    }

    /// Stores `value` unless Redis holds something newer (or, with `lease`, unless the lease was lost).
    pub(crate) async fn set(
        self: &Arc<Self>,
        id: i64,
        value: &Value,
        ttl: Duration,
        lease: Option<&str>,
    ) -> Result<bool, Unavailable> {
        let (kind, version) = match value {
            Value::Present { version, .. } => ("P", *version),
            Value::Absent => ("A", 0),
        };
        let encoded = encode(value);
        let (k, lk) = (self.key(id), self.lease_key(id));
        let script = &self.set_if_newer;
        let lease = lease.unwrap_or("").to_owned();
        let stored: i64 = self
            .call("set", |mut c| async move {
                script
                    .key(k)
                    .key(lk)
                    .arg(kind)
                    .arg(version)
                    .arg(encoded)
                    .arg(ttl.as_millis().max(1) as u64)
                    .arg(lease)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored == 1)
    }

    /// Marks product `id` invalidated up to `version` (`None`: deleted) and revokes any lease on it.
    pub(crate) async fn invalidate(
        self: &Arc<Self>,
        id: i64,
        version: Option<i64>,
    ) -> Result<(), Unavailable> {
        let (kind, v) = match version {
            Some(v) => ("T", v),
            None => ("D", 0),
        };
        let (k, lk) = (self.key(id), self.lease_key(id));
        let script = &self.invalidate;
        let _: i64 = self
            .call("invalidate", |mut c| async move {
                script
                    .key(k)
                    .key(lk)
                    .arg(kind)
                    .arg(v)
                    .arg(60_000u64)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    pub(crate) fn count_lease_wait(&self, hit: bool) {
        self.counters.lease_waits.increment(1);
        if hit {
            self.counters.lease_wait_hits.increment(1);
        }
    }
}

fn encode(v: &Value) -> Vec<u8> {
    match v {
        Value::Present { version, body } => {
            let mut out = format!("P{version}:").into_bytes();
            out.extend_from_slice(body);
            out
        }
        Value::Absent => b"A0:".to_vec(),
    }
}

/// A stored value, or `None` for an invalidation marker or anything unreadable.
fn decode(raw: &[u8]) -> Option<Value> {
    let colon = raw.iter().position(|b| *b == b':')?;
    let version: i64 = std::str::from_utf8(raw.get(1..colon)?).ok()?.parse().ok()?;
    match raw.first()? {
        b'P' => Some(Value::Present {
            version,
            body: Bytes::copy_from_slice(&raw[colon + 1..]),
        }),
        b'A' | b'D' => Some(Value::Absent),
        _ => None,
    }
}

/// Redis pub/sub as a [`ChangeFeed`].
pub(crate) struct RedisFeed {
    pub(crate) redis: Arc<Redis>,
}

#[async_trait::async_trait]
impl ChangeFeed for RedisFeed {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, payload: &str) -> Result<(), FeedError> {
        let channel = self.redis.channel();
        let payload = payload.to_owned();
        self.redis
            .call("publish", |mut c| async move {
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut c)
                    .await
            })
            .await
            .map(|_| ())
            .map_err(|_| FeedError("Redis is unavailable".into()))
    }

    async fn subscribe(&self, tx: mpsc::Sender<FeedEvent>) {
        let channel = self.redis.channel();
        let mut backoff = Duration::from_millis(50);
        loop {
            let connected = tokio::time::timeout(Duration::from_secs(2), async {
                let mut ps = self.redis.client.get_async_pubsub().await?;
                ps.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(ps)
            })
            .await;
            let ps = match connected {
                Ok(Ok(ps)) => ps,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cannot subscribe to Redis invalidations yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
                Err(_) => {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            backoff = Duration::from_millis(50);
            if tx.send(FeedEvent::Lost("subscribed")).await.is_err() {
                return;
            }
            let mut stream = ps.into_on_message();
            while let Some(msg) = stream.next().await {
                let Ok(p) = msg.get_payload::<String>() else {
                    continue;
                };
                if tx.send(FeedEvent::Payload(p)).await.is_err() {
                    return;
                }
            }
            tracing::warn!("the Redis invalidation subscription ended; resubscribing");
            if tx.send(FeedEvent::Down).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn values_round_trip() {
        for v in [
            Value::Present {
                version: 42,
                body: Bytes::from_static(b"{\"a\":\"x:y\"}"),
            },
            Value::Absent,
        ] {
            assert_eq!(decode(&encode(&v)), Some(v));
        }
        assert_eq!(decode(b"T5:"), None);
        assert_eq!(decode(b"D0:"), Some(Value::Absent));
        assert_eq!(decode(b"garbage"), None);
    }
}
