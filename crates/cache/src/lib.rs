//! Cache-aside for the catalog: an in-process L1 bounded in bytes, kept consistent across instances by an
//! invalidation bus.
//!
//! Role: answer reads from memory, load each missing key once per instance (single-flight), serve a stale
//! value while one background refresh runs (stale-while-revalidate, and XFetch's probabilistic early
//! refresh before expiry), remember ids that do not exist for a short time (negative caching), and apply
//! every write's invalidation on this instance at once and on the others through a [`ChangeFeed`].
//!
//! Invariants:
//! - A value carries its row version, and an older version never replaces a newer one: an invalidation
//!   leaves a tombstone holding the lowest version that may be cached again, so a load that read the row
//!   before the write cannot put the old row back.
//! - List pages live under versioned keys (an epoch and a per-tag generation captured before the load); a
//!   write bumps the generations of the tags it touches, so no page read before the write is served after
//!   it. A flush (a missed invalidation message, a bus reconnect) bumps the epoch and empties L1.
//! - A cache problem is never a client error: the loader's own errors are the only errors returned.
//!
//! Entry points: [`Cache::new`], [`Cache::disabled`], [`Cache::get_or_load`], [`Cache::invalidate`],
//! [`Cache::page_key`], [`Cache::start_bus`].

mod bus;
mod redis;
mod stats;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::ops::compute::{CompResult, Op};

pub use bus::{announce, Change, Message};
pub use redis::RedisOptions;
use stats::Stats;
pub use tenfold_store::{ChangeFeed, FeedError, FeedEvent};

/// Tuning of the cache.
#[derive(Debug, Clone)]
pub struct Settings {
    /// L1 capacity: the sum of cached body sizes (plus a small per-entry overhead).
    pub capacity_bytes: u64,
    /// How long a product stays fresh (the article's ten minutes).
    pub ttl: Duration,
    /// How long a list page stays fresh (writes bump its generation, so this only bounds memory).
    pub list_ttl: Duration,
    /// After a value goes stale it is still served for this long while one refresh runs.
    pub stale_while_revalidate: Duration,
    /// After that, it is kept this long more and served only when loading it again fails (the
    /// database is unreachable): stale-if-error, RFC 5861.
    pub stale_if_error: Duration,
    /// How long "this id does not exist" is remembered.
    pub negative_ttl: Duration,
    /// Each TTL is spread by up to this fraction either way, so keys loaded together expire apart.
    pub jitter: f64,
    /// XFetch's beta: above 1 refreshes earlier, 0 turns early refresh off.
    pub xfetch_beta: f64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capacity_bytes: 128 * 1024 * 1024,
            ttl: Duration::from_secs(600),
            list_ttl: Duration::from_secs(600),
            stale_while_revalidate: Duration::from_secs(60),
            stale_if_error: Duration::from_secs(3600),
            negative_ttl: Duration::from_secs(5),
            jitter: 0.1,
            xfetch_beta: 1.0,
        }
    }
}

/// Bytes an L1 entry costs beyond its body and key: our `Entry` behind its `Arc`, and moka's entry
/// metadata, LRU deque node, expiry timer node and hash-table slot. Counted so that `capacity_bytes`
/// approximates the memory the cache really takes.
const ENTRY_OVERHEAD: usize = 320;

/// What is cached under a key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// One product by id.
    Product(i64),
    /// A list page (or the category list), under the epoch and generation it was read at.
    Page(Arc<PageKey>),
}

/// A list page's versioned key: see [`Cache::page_key`].
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PageKey {
    epoch: u64,
    tag: String,
    generation: u64,
    query: String,
}

impl Key {
    fn weight(&self) -> usize {
        match self {
            Key::Product(_) => 16,
            Key::Page(p) => 48 + p.tag.len() + p.query.len(),
        }
    }

    fn epoch(&self) -> Option<u64> {
        match self {
            Key::Product(_) => None,
            Key::Page(p) => Some(p.epoch),
        }
    }
}

/// A cached answer: a serialized body and the version it shows, or "does not exist".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The body (already serialized, served as is) and its version (a row version for products; 0 for
    /// pages, whose key carries their version).
    Present {
        /// Version of the row (or 0).
        version: i64,
        /// The serialized body.
        body: Bytes,
    },
    /// The thing does not exist (cached briefly).
    Absent,
}

/// Where an answer came from, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A fresh L1 entry.
    Hit,
    /// A stale L1 entry (a refresh was started).
    Stale,
    /// A stale L1 entry past its stale-while-revalidate window, served because loading failed.
    StaleIfError,
    /// Loaded now (by this request or by a concurrent one it waited for).
    Loaded,
    /// The cache is disabled.
    Bypass,
}

#[derive(Debug)]
enum State {
    Value(Value),
    /// Invalidated: only a value at least this version may be cached again (`deleted`: "absent" may be).
    Tombstone {
        min_version: i64,
        deleted: bool,
    },
}

/// One L1 entry.
#[derive(Debug)]
struct Entry {
    state: State,
    /// Until then the value is fresh; after it, stale until `expires_after` has passed since `loaded_at`.
    fresh_until: Instant,
    loaded_at: Instant,
    /// How long moka keeps the entry after it is written.
    expires_after: Duration,
    /// How long the load took (XFetch's delta).
    load_time: Duration,
    /// A background refresh is running.
    refreshing: AtomicBool,
    weight: u32,
}

impl Entry {
    fn admits(&self, new: &Value) -> bool {
        match (&self.state, new) {
            (State::Tombstone { min_version, .. }, Value::Present { version, .. }) => {
                version >= min_version
            }
            // A deleted tombstone already answers "absent", and must stay to refuse stragglers.
            (State::Tombstone { .. }, Value::Absent) => false,
            (State::Value(Value::Present { version: old, .. }), Value::Present { version, .. }) => {
                version >= old
            }
            // A row that existed disappears only by a delete, whose invalidation leaves a deleted
            // tombstone; an "absent" load over a present row read before the row was created.
            (State::Value(Value::Present { .. }), Value::Absent) => false,
            (State::Value(Value::Absent), _) => true,
        }
    }

    /// A deleted tombstone reads as "absent".
    fn deleted(&self) -> bool {
        matches!(self.state, State::Tombstone { deleted: true, .. })
    }
}

struct Expiry;

impl moka::Expiry<Key, Arc<Entry>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        value: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.expires_after)
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Arc<Entry>,
        _updated_at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(value.expires_after)
    }
}

struct Inner {
    settings: Settings,
    l1: moka::future::Cache<Key, Arc<Entry>>,
    /// Page keys carry it: bumped by a flush and by a change of every list.
    epoch: AtomicU64,
    /// Bumped by a flush only: a load that started before a flush is not cached.
    flushes: AtomicU64,
    generations: Mutex<HashMap<String, u64>>,
    stats: Stats,
    /// Where this instance's invalidations go for the others (set by `start_bus`).
    outbox: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Change>>>,
    origin: u64,
    /// True once a feed subscription is in place (reads before that may miss invalidations).
    subscribed: tokio::sync::watch::Sender<bool>,
    /// The shared L2 (products only), when Redis is configured.
    l2: Option<Arc<redis::Redis>>,
    /// L2 invalidations that failed (Redis unreachable), retried until Redis takes them; meanwhile this
    /// instance does not read those products from L2.
    pending_l2: Mutex<HashMap<i64, Option<i64>>>,
}

/// The cache. Cheap to clone; clones share everything. [`Cache::disabled`] passes every read through.
#[derive(Clone)]
pub struct Cache {
    inner: Option<Arc<Inner>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("enabled", &self.inner.is_some())
            .finish()
    }
}

/// A key that is loaded on a miss: what the loader returns and how long it took.
type Loaded = (Value, Duration);

impl Cache {
    /// An L1 cache with these settings.
    pub fn new(settings: Settings) -> Cache {
        Self::build(settings, None)
    }

    /// L1 plus Redis as L2 (and as an invalidation channel: see [`Cache::redis_feed`]). Connects in the
    /// background; until Redis answers, reads use L1 and the database. Call inside a tokio runtime.
    pub fn with_redis(settings: Settings, redis: &RedisOptions) -> Result<Cache, String> {
        let r = redis::Redis::new(redis)?;
        Ok(Self::build(settings, Some(r)))
    }

    /// Redis pub/sub as a change feed, when Redis is configured.
    pub fn redis_feed(&self) -> Option<Arc<dyn ChangeFeed>> {
        let r = self.inner.as_ref()?.l2.clone()?;
        Some(Arc::new(redis::RedisFeed { redis: r }))
    }

    /// A rate-limit decision for `key` shared through Redis, or `None` without Redis or while it is
    /// unreachable (its breaker open, or this call failed): the caller then decides locally.
    pub async fn shared_rate_limit(
        &self,
        key: &str,
        gcra: tenfold_overload::gcra::Gcra,
    ) -> Option<tenfold_overload::gcra::Decision> {
        let r = self.inner.as_ref()?.l2.as_ref()?;
        if !r.breaker.allow() {
            return None;
        }
        r.gcra(key, gcra).await.ok()
    }

    /// True while the Redis breaker refuses calls (for diagnostics and tests).
    pub fn redis_breaker_open(&self) -> bool {
        self.inner
            .as_ref()
            .and_then(|i| i.l2.as_ref())
            .is_some_and(|r| r.breaker.is_open())
    }

    fn build(settings: Settings, l2: Option<Arc<redis::Redis>>) -> Cache {
        let l1 = moka::future::Cache::builder()
            .max_capacity(settings.capacity_bytes)
            .weigher(|_k: &Key, e: &Arc<Entry>| e.weight)
            .expire_after(Expiry)
            .support_invalidation_closures()
            .build();
        Cache {
            inner: Some(Arc::new(Inner {
                settings,
                l1,
                epoch: AtomicU64::new(0),
                flushes: AtomicU64::new(0),
                generations: Mutex::new(HashMap::new()),
                stats: Stats::new(),
                outbox: Mutex::new(None),
                origin: rand::random::<u64>(),
                subscribed: tokio::sync::watch::channel(false).0,
                l2,
                pending_l2: Mutex::new(HashMap::new()),
            })),
        }
    }

    /// No caching: every read calls its loader (the benchmark's baseline).
    pub fn disabled() -> Cache {
        Cache { inner: None }
    }

    /// True unless [`Cache::disabled`].
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// The key of a list page: `tag` names what invalidates it (`all`, `category:<slug>`, ...), `query` what
    /// distinguishes it from other pages under that tag. Take the key before loading the page.
    pub fn page_key(&self, tag: &str, query: &str) -> Key {
        let (epoch, generation) = match &self.inner {
            Some(i) => (
                i.epoch.load(Ordering::Acquire),
                i.generations
                    .lock()
                    .map(|g| g.get(tag).copied().unwrap_or(0))
                    .unwrap_or(0),
            ),
            None => (0, 0),
        };
        Key::Page(Arc::new(PageKey {
            epoch,
            tag: tag.to_owned(),
            generation,
            query: query.to_owned(),
        }))
    }

    /// The cached value of `key`, or `load`'s answer on a miss. Concurrent misses of one key on this
    /// instance share one load; a stale value is served while one background refresh runs.
    pub async fn get_or_load<L, Fut, E>(&self, key: Key, load: L) -> Result<(Value, Source), E>
    where
        L: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let Some(inner) = &self.inner else {
            metrics::counter!("cache_loads_total").increment(1);
            return load().await.map(|v| (v, Source::Bypass));
        };
        let now = Instant::now();
        if let Some(e) = inner.l1.get(&key).await {
            if e.deleted() {
                inner.stats.hit(&Value::Absent);
                return Ok((Value::Absent, Source::Hit));
            }
            if let State::Value(v) = &e.state {
                if now < e.fresh_until {
                    if inner.xfetch_due(&e, now) {
                        inner.stats.early_refreshes.increment(1);
                        self.refresh(key, &e, load);
                    }
                    inner.stats.hit(v);
                    return Ok((v.clone(), Source::Hit));
                }
                if now < e.fresh_until + self.settings_swr(&e) {
                    inner.stats.l1_stale.increment(1);
                    self.refresh(key, &e, load);
                    return Ok((v.clone(), Source::Stale));
                }
                // Past stale-while-revalidate: load now, and only if that fails serve the old value.
                let stale = v.clone();
                return match inner.load_through(key, load, None).await {
                    Ok(v) => Ok((v, Source::Loaded)),
                    Err(err) => {
                        tracing::debug!(error = %err, "loading failed; serving the stale value (stale-if-error)");
                        metrics::counter!("cache_stale_if_error_total").increment(1);
                        Ok((stale, Source::StaleIfError))
                    }
                };
            }
        }
        inner.stats.l1_miss.increment(1);
        inner
            .load_through(key, load, None)
            .await
            .map(|v| (v, Source::Loaded))
    }

    /// The stale-while-revalidate window of an entry (none for "absent").
    fn settings_swr(&self, e: &Entry) -> Duration {
        match (&self.inner, &e.state) {
            (Some(i), State::Value(Value::Present { .. })) => i.settings.stale_while_revalidate,
            _ => Duration::ZERO,
        }
    }

    /// Starts one background refresh of `key` unless one is running.
    fn refresh<L, Fut, E>(&self, key: Key, e: &Arc<Entry>, load: L)
    where
        L: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        if e.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        let seen = e.loaded_at;
        let entry = e.clone();
        tokio::spawn(async move {
            if let Err(err) = inner.load_through(key, load, Some(seen)).await {
                tracing::debug!(error = %err, "background cache refresh failed; the stale value stays");
            }
            // If the refresh failed or was refused, the entry may be refreshed again.
            entry.refreshing.store(false, Ordering::Release);
        });
    }

    /// Applies a write's invalidation here at once and sends it to the other instances. The work runs on
    /// a task of its own, so a caller that goes away (a client that hangs up after the commit) cannot
    /// cut it short.
    pub async fn invalidate(&self, change: Change) {
        let Some(inner) = self.inner.clone() else {
            return;
        };
        let task = tokio::spawn(async move {
            inner.stats.invalidations_local.increment(1);
            // Others first (sending never waits), then this instance, then Redis.
            if let Ok(outbox) = inner.outbox.lock() {
                if let Some(tx) = outbox.as_ref() {
                    let _ = tx.send(change.clone());
                }
            }
            inner.apply(&change).await;
            // Redis before this write's response: an instance that gets the message and misses L1
            // must not find the old value in Redis.
            if let Some(r) = &inner.l2 {
                for &(id, version) in &change.products {
                    if r.invalidate(id, version).await.is_err() {
                        if let Ok(mut p) = inner.pending_l2.lock() {
                            let e = p.entry(id).or_insert(version);
                            // Keep the strongest: deleted, else the highest version.
                            *e = match (*e, version) {
                                (None, _) | (_, None) => None,
                                (Some(a), Some(b)) => Some(a.max(b)),
                            };
                        }
                    }
                }
            }
        });
        let _ = task.await;
    }

    /// After a missed invalidation: products' values become tombstones at their versions (reloaded on
    /// the next read, never older than what was known), unknown-id entries and pages go, page keys move
    /// to a new epoch.
    pub async fn flush(&self, reason: &'static str) {
        if let Some(inner) = &self.inner {
            inner.flush(reason).await;
        }
    }

    /// Waits (at most `timeout`) until the invalidation feeds are subscribed, so that what this instance
    /// caches from then on cannot miss a write; true if they are. A server calls it before it accepts
    /// requests. Immediately true for a disabled cache; false after `timeout` if no feed subscribed.
    pub async fn wait_subscribed(&self, timeout: Duration) -> bool {
        let Some(inner) = &self.inner else {
            return true;
        };
        let mut rx = inner.subscribed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Entries in L1 now (approximate; for tests and diagnostics).
    pub async fn entry_count(&self) -> u64 {
        match &self.inner {
            Some(i) => {
                i.l1.run_pending_tasks().await;
                i.l1.entry_count()
            }
            None => 0,
        }
    }

    /// Connects the cache to one or more feeds: this instance's invalidations are published on each, and
    /// the others' are applied as they arrive (a message that comes over two feeds is applied once). A gap
    /// in an instance's sequence numbers or a lost subscription flushes L1. Also starts the retry of
    /// failed Redis invalidations. The tasks stop when the returned guard is dropped.
    pub fn start_bus(&self, feeds: Vec<Arc<dyn ChangeFeed>>) -> BusGuard {
        match &self.inner {
            Some(inner) => {
                let mut g = bus::start(inner.clone(), feeds);
                if inner.l2.is_some() {
                    g.tasks
                        .push(tokio::spawn(retry_l2_invalidations(inner.clone())));
                }
                g
            }
            None => BusGuard { tasks: Vec::new() },
        }
    }
}

/// Stops the bus tasks when dropped.
#[derive(Debug)]
pub struct BusGuard {
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for BusGuard {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Inner {
    fn jittered(&self, d: Duration) -> Duration {
        let j = self.settings.jitter.clamp(0.0, 0.5);
        if j == 0.0 {
            return d;
        }
        let f = 1.0 + j * (2.0 * rand::random::<f64>() - 1.0);
        d.mul_f64(f)
    }

    /// XFetch (Vattani et al.): refresh early with a probability that grows as expiry nears, scaled by
    /// how long a load takes, so one request refreshes a hot key before it expires for everyone.
    fn xfetch_due(&self, e: &Entry, now: Instant) -> bool {
        let beta = self.settings.xfetch_beta;
        if beta <= 0.0 || e.refreshing.load(Ordering::Relaxed) {
            return false;
        }
        // -ln(u) exceeds 40 with probability e^-40: far from expiry there is nothing to draw.
        if e.fresh_until.saturating_duration_since(now) > e.load_time.mul_f64(beta * 40.0) {
            return false;
        }
        let u: f64 = rand::random::<f64>().max(f64::MIN_POSITIVE);
        let ahead = e.load_time.mul_f64(beta * -u.ln());
        now + ahead >= e.fresh_until
    }

    fn entry_for(&self, key: &Key, value: Value, load_time: Duration) -> Arc<Entry> {
        let now = Instant::now();
        let (fresh, stale) = match (&value, key) {
            (Value::Absent, _) => (self.settings.negative_ttl, Duration::ZERO),
            (_, Key::Product(_)) => (
                self.jittered(self.settings.ttl),
                self.settings.stale_while_revalidate + self.settings.stale_if_error,
            ),
            (_, Key::Page(_)) => (
                self.jittered(self.settings.list_ttl),
                self.settings.stale_while_revalidate + self.settings.stale_if_error,
            ),
        };
        let body = match &value {
            Value::Present { body, .. } => body.len(),
            Value::Absent => 0,
        };
        Arc::new(Entry {
            state: State::Value(value),
            fresh_until: now + fresh,
            loaded_at: now,
            expires_after: fresh + stale,
            load_time,
            refreshing: AtomicBool::new(false),
            weight: u32::try_from(body + key.weight() + ENTRY_OVERHEAD).unwrap_or(u32::MAX),
        })
    }

    /// Loads `key` under its per-key lock: waiters for the same key wait for the first load and then find
    /// its entry (single-flight). `refresh_of`: a background refresh of the entry loaded at that time,
    /// skipped when someone refreshed it meanwhile.
    async fn load_through<L, Fut, E>(
        self: &Arc<Self>,
        key: Key,
        load: L,
        refresh_of: Option<Instant>,
    ) -> Result<Value, E>
    where
        L: Fn() -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, E>> + Send + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        let flushes = self.flushes.load(Ordering::Acquire);
        if key
            .epoch()
            .is_some_and(|e| e != self.epoch.load(Ordering::Acquire))
        {
            // Built before a flush: nobody will read it again; load without caching.
            self.stats.loads.increment(1);
            return load().await;
        }
        let loaded: Mutex<Option<Loaded>> = Mutex::new(None);
        let this = self.clone();
        let k = key.clone();
        let result = self
            .l1
            .entry(key)
            .and_try_compute_with(|cur| {
                let loaded = &loaded;
                async move {
                    let now = Instant::now();
                    if let Some(cur) = &cur {
                        let e = cur.value();
                        if e.deleted() {
                            if let Ok(mut l) = loaded.lock() {
                                *l = Some((Value::Absent, Duration::ZERO));
                            }
                            return Ok(Op::Nop);
                        }
                        let usable = matches!(e.state, State::Value(_));
                        match refresh_of {
                            None if usable && now < e.fresh_until => {
                                this.stats.coalesced.increment(1);
                                return Ok(Op::Nop);
                            }
                            Some(seen) if usable && e.loaded_at != seen => return Ok(Op::Nop),
                            _ => {}
                        }
                    }
                    let started = Instant::now();
                    let floor = cur.as_ref().and_then(|c| match c.value().state {
                        State::Tombstone { min_version, .. } => Some(min_version),
                        _ => None,
                    });
                    let value = this.load_value(&k, &load, floor).await?;
                    let took = started.elapsed();
                    if let Ok(mut l) = loaded.lock() {
                        *l = Some((value.clone(), took));
                    }
                    let admitted = this.flushes.load(Ordering::Acquire) == flushes
                        && cur.as_ref().is_none_or(|c| c.value().admits(&value));
                    if !admitted {
                        this.stats.rejected.increment(1);
                        return Ok(Op::Nop);
                    }
                    Ok(Op::Put(this.entry_for(&k, value, took)))
                }
            })
            .await?;
        let mine = loaded.lock().ok().and_then(|mut l| l.take());
        Ok(match (result, mine) {
            // This call's own load: its answer (cached or not) is what the caller gets.
            (_, Some((v, _))) => v,
            (CompResult::Unchanged(e), None)
            | (CompResult::Inserted(e), None)
            | (CompResult::ReplacedWith(e), None) => match &e.value().state {
                State::Value(v) => v.clone(),
                // Unreachable: a tombstone is never left unloaded. Treat it as absent to stay total.
                State::Tombstone { .. } => Value::Absent,
            },
            (CompResult::Removed(_), None) | (CompResult::StillNone(_), None) => Value::Absent,
        })
    }

    /// Loads a value from L2 (products, when Redis is configured) or the database. Across instances, one
    /// takes a lease and loads from the database while the others wait briefly for its value in Redis.
    /// `floor`: the lowest version this instance may accept (a tombstone's); older values from Redis are
    /// ignored.
    async fn load_value<L, Fut, E>(
        self: &Arc<Self>,
        key: &Key,
        load: &L,
        floor: Option<i64>,
    ) -> Result<Value, E>
    where
        L: Fn() -> Fut,
        Fut: Future<Output = Result<Value, E>>,
    {
        let db = || {
            self.stats.loads.increment(1);
            load()
        };
        let (Some(r), Key::Product(id)) = (&self.l2, key) else {
            return db().await;
        };
        let id = *id;
        if self
            .pending_l2
            .lock()
            .map(|p| p.contains_key(&id))
            .unwrap_or(true)
        {
            return db().await;
        }
        let usable = |v: &Value| match (v, floor) {
            (Value::Present { version, .. }, Some(f)) => *version >= f,
            (Value::Absent, Some(f)) => f == i64::MAX,
            _ => true,
        };
        match r.get(id).await {
            Ok(Some(v)) if usable(&v) => return Ok(v),
            Ok(_) => {}
            Err(_) => return db().await,
        }
        let lease_ttl = Duration::from_secs(2);
        match r.lease(id, lease_ttl).await {
            Ok(Some(token)) => {
                let v = db().await?;
                let _ = r.set(id, &v, self.l2_ttl(&v), Some(&token)).await;
                return Ok(v);
            }
            Ok(None) => {
                // Another instance is loading it: wait a little for its value rather than load it too.
                let deadline = Instant::now() + Duration::from_millis(300);
                let mut pause = Duration::from_millis(2);
                while Instant::now() < deadline {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(20));
                    match r.get(id).await {
                        Ok(Some(v)) if usable(&v) => {
                            r.count_lease_wait(true);
                            return Ok(v);
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                r.count_lease_wait(false);
            }
            Err(_) => {}
        }
        let v = db().await?;
        let _ = r.set(id, &v, self.l2_ttl(&v), None).await;
        Ok(v)
    }

    fn tombstone_life(&self) -> Duration {
        self.settings
            .ttl
            .mul_f64(1.0 + self.settings.jitter.clamp(0.0, 0.5))
            + Duration::from_secs(1)
    }

    fn l2_ttl(&self, v: &Value) -> Duration {
        match v {
            Value::Present { .. } => self.jittered(self.settings.ttl),
            Value::Absent => self.settings.negative_ttl,
        }
    }

    /// Applies an invalidation: tombstones for the products, new generations for the tags.
    async fn apply(&self, change: &Change) {
        for &(id, version) in &change.products {
            let (min_version, deleted) = match version {
                Some(v) => (v, false),
                None => (i64::MAX, true),
            };
            let tombstone = self.tombstone(min_version, deleted);
            self.l1
                .entry(Key::Product(id))
                .and_compute_with(|cur| async move {
                    let newer = cur.as_ref().is_some_and(|c| match &c.value().state {
                        State::Value(Value::Present { version, .. }) => {
                            !deleted && *version >= min_version
                        }
                        State::Tombstone {
                            min_version: m,
                            deleted: d,
                        } => *m >= min_version && (*d || !deleted),
                        State::Value(Value::Absent) => false,
                    });
                    if newer {
                        Op::Nop
                    } else {
                        Op::Put(tombstone)
                    }
                })
                .await;
        }
        if change.all_lists {
            self.epoch.fetch_add(1, Ordering::AcqRel);
        }
        if !change.tags.is_empty() {
            if let Ok(mut g) = self.generations.lock() {
                for t in &change.tags {
                    *g.entry(t.clone()).or_insert(0) += 1;
                }
            }
        }
    }

    /// Forgets what L1 cannot trust after a missed invalidation, but not what it knows: a product's value
    /// becomes a tombstone at its version (it may no longer be current, but nothing older is), "absent"
    /// entries and pages go, tombstones stay; page keys move to a new epoch.
    async fn flush(&self, reason: &'static str) {
        self.flushes.fetch_add(1, Ordering::AcqRel);
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let products: Vec<i64> = self
            .l1
            .iter()
            .filter_map(|(k, e)| match (&*k, &e.state) {
                (Key::Product(id), State::Value(_)) => Some(*id),
                _ => None,
            })
            .collect();
        let _ = self
            .l1
            .invalidate_entries_if(|k, _| matches!(k, Key::Page(_)));
        for id in products {
            self.l1
                .entry(Key::Product(id))
                .and_compute_with(|cur| async move {
                    match cur.as_ref().map(|c| &c.value().state) {
                        Some(State::Value(Value::Present { version, .. })) => {
                            Op::Put(self.tombstone(*version, false))
                        }
                        Some(State::Value(Value::Absent)) => Op::Remove,
                        _ => Op::Nop,
                    }
                })
                .await;
        }
        self.stats.flush(reason);
        tracing::info!(reason, "cache flushed");
    }

    /// An entry saying "only version `min_version` or newer may be cached" (`deleted`: or "absent").
    fn tombstone(&self, min_version: i64, deleted: bool) -> Arc<Entry> {
        Arc::new(Entry {
            state: State::Tombstone {
                min_version,
                deleted,
            },
            fresh_until: Instant::now(),
            loaded_at: Instant::now(),
            // As long as any copy of an older version can live (in Redis, say, if the writer could not
            // invalidate it there): until then, this instance refuses older versions from anywhere.
            expires_after: self.tombstone_life(),
            load_time: Duration::ZERO,
            refreshing: AtomicBool::new(false),
            weight: 128,
        })
    }
}

/// Retries Redis invalidations that failed, until Redis takes them.
async fn retry_l2_invalidations(inner: Arc<Inner>) {
    let Some(r) = inner.l2.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tick.tick().await;
        let pending: Vec<(i64, Option<i64>)> = match inner.pending_l2.lock() {
            Ok(p) if !p.is_empty() => p.iter().map(|(k, v)| (*k, *v)).collect(),
            _ => continue,
        };
        for (id, version) in pending {
            if r.invalidate(id, version).await.is_err() {
                break;
            }
            if let Ok(mut p) = inner.pending_l2.lock() {
                // Only if no newer invalidation of the same product was queued meanwhile.
                if p.get(&id) == Some(&version) {
                    p.remove(&id);
                }
            }
        }
    }
}
