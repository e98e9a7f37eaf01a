//! Order shards: N databases (SQLite files or PostgreSQL databases) holding orders, each order in the
//! shard its customer's bucket maps to (see `shards.rs`).
//!
//! Every shard also keeps the state of each bucket there (`order_buckets`): `owned` (read and write),
//! `fenced` (read only: a move is finishing) or `gone` (not here). Every write and read checks that state
//! in the same statement, so an instance routing by an old map never writes where a moved bucket no longer
//! lives, nor reads a shard that lost it: it reloads the map from the catalog and goes again, waiting at
//! most [`FENCE_WAIT`] while a move holds the bucket fenced. The mover is in `moves.rs`.

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Postgres, Sqlite};

use crate::shards::{Bucket, OrderId, ShardMap, BUCKETS};
use crate::{Store, StoreError};

/// The longest a write (or read) waits for a bucket that a move holds fenced; past it the caller gets
/// [`StoreError::Unavailable`]. A move fences for the time of its last catch-up, its checksum and the map
/// switch: milliseconds for a bucket of thousands of orders.
pub const FENCE_WAIT: Duration = Duration::from_secs(5);

/// One line of an order as kept: the product and its name and price at the time of purchase.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OrderLine {
    /// The product.
    pub product_id: i64,
    /// Its name then.
    pub name: String,
    /// Its unit price then, in minor units.
    pub price_minor: i64,
    /// How many.
    pub quantity: u32,
}

/// An order as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    /// Its id (which carries its bucket).
    pub id: OrderId,
    /// Who placed it.
    pub customer_id: i64,
    /// What was bought, as it was then.
    pub lines: Vec<OrderLine>,
    /// The sum of the lines, in minor units.
    pub total_minor: i64,
    /// The currency of every price.
    pub currency: String,
    /// When (RFC 3339, UTC).
    pub created_at: String,
}

/// One day's revenue in one currency, over every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayRevenue {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Sum of the orders' totals, in minor units.
    pub total_minor: i64,
    /// How many orders.
    pub orders: i64,
}

pub(crate) enum ShardPool {
    Sqlite(Pool<Sqlite>),
    Postgres(Pool<Postgres>),
}

/// Runs the same query on whichever engine a shard is.
macro_rules! on_shard {
    ($pool:expr, |$p:ident, $ph:ident| $body:expr) => {
        match $pool {
            ShardPool::Sqlite($p) => {
                let $ph = |s: &str| s.to_owned();
                $body
            }
            ShardPool::Postgres($p) => {
                let $ph = |s: &str| crate::sql::dollar_params(s);
                $body
            }
        }
    };
}

pub(crate) type Row = (i64, i64, String, i64, String, String);

/// A row of an outer join with the bucket's state: the order columns are NULL when no order matched.
type StateRow = (
    String,
    Option<i64>,
    Option<i64>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// The bucket's state (`None` if the shard has no row for it) and the orders that matched.
fn split_state_rows(rows: Vec<StateRow>) -> (Option<String>, Vec<Row>) {
    let state = rows.first().map(|r| r.0.clone());
    let orders = rows
        .into_iter()
        .filter_map(|(_, id, c, items, total, cur, at)| Some((id?, c?, items?, total?, cur?, at?)))
        .collect();
    (state, orders)
}

/// A bucket's state on a shard: what may be done with its orders there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BucketState {
    /// This shard holds the bucket: reads and writes.
    Owned,
    /// A move is finishing: reads only; writes wait for the new map.
    Fenced,
    /// Not here (never was, or moved away).
    Gone,
}

impl BucketState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            BucketState::Owned => "owned",
            BucketState::Fenced => "fenced",
            BucketState::Gone => "gone",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<BucketState> {
        match s {
            "owned" => Some(BucketState::Owned),
            "fenced" => Some(BucketState::Fenced),
            "gone" => Some(BucketState::Gone),
            _ => None,
        }
    }

    fn readable(state: Option<&str>) -> bool {
        matches!(state, Some("owned" | "fenced"))
    }
}

fn order_of(r: Row) -> Result<Order, StoreError> {
    let (id, customer_id, items, total_minor, currency, created_at) = r;
    Ok(Order {
        id: OrderId::from_i64(id)
            .ok_or_else(|| StoreError::Other(format!("bad order id {id}").into()))?,
        customer_id,
        lines: serde_json::from_str(&items).map_err(|e| StoreError::Other(Box::new(e)))?,
        total_minor,
        currency,
        created_at,
    })
}

pub(crate) const COLS: &str = "id, customer_id, items, total_minor, currency, created_at";

/// The order shards and the map that places buckets on them.
pub struct OrderShards {
    pub(crate) shards: Vec<ShardPool>,
    map: RwLock<Arc<ShardMap>>,
    /// When a waiting caller last reloaded the map (Unix ms): callers waiting on a fence share reloads.
    last_reload: AtomicI64,
    pub(crate) catalog: Store,
    fence_wait: Duration,
}

impl OrderShards {
    /// Opens every shard (creating SQLite files and the orders table where missing), placing buckets by
    /// the catalog's stored shard map (stored on first use: buckets spread evenly, in the order given; a
    /// URL added at the end is a new, empty shard).
    pub async fn connect(
        catalog: Store,
        urls: &[String],
        acquire_timeout: Duration,
    ) -> Result<OrderShards, StoreError> {
        if urls.is_empty() {
            return Err(StoreError::setup(
                "opening order shards",
                std::io::Error::other("no order shard configured"),
            ));
        }
        for (i, u) in urls.iter().enumerate() {
            if urls[..i].contains(u) {
                return Err(StoreError::setup(
                    "opening order shards",
                    std::io::Error::other(format!(
                        "shard {i} has the same URL as an earlier shard; each shard needs its own database"
                    )),
                ));
            }
        }
        let mut shards = Vec::with_capacity(urls.len());
        for url in urls {
            let pool = if url.starts_with("sqlite:") {
                let o = SqliteConnectOptions::from_str(url)
                    .map_err(|e| StoreError::setup("parsing an order shard URL", e))?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                if let Some(dir) = o
                    .get_filename()
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| StoreError::setup(format!("creating {}", dir.display()), e))?;
                }
                let p = SqlitePoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(o)
                    .await
                    .map_err(|e| StoreError::setup("opening an order shard", e))?;
                sqlx::raw_sql(include_str!("orders-sqlite.sql"))
                    .execute(&p)
                    .await
                    .map_err(|e| StoreError::setup("creating the orders table", e))?;
                ShardPool::Sqlite(p)
            } else {
                let o = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::setup("parsing an order shard URL", e))?
                    .application_name("tenfold");
                let p = PgPoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(o)
                    .await
                    .map_err(|e| StoreError::setup("opening an order shard", e))?;
                sqlx::raw_sql(include_str!("orders-postgres.sql"))
                    .execute(&p)
                    .await
                    .map_err(|e| StoreError::setup("creating the orders table", e))?;
                ShardPool::Postgres(p)
            };
            shards.push(pool);
        }
        let n = u16::try_from(shards.len()).unwrap_or(u16::MAX);
        let even = ShardMap::even(n).map_err(|e| StoreError::setup("placing buckets", e))?;
        let map = catalog.shard_map(&even).await?;
        for (i, s) in shards.iter().enumerate() {
            init_bucket_states(s, &map, i as u16).await?;
        }
        Ok(OrderShards {
            shards,
            map: RwLock::new(Arc::new(map)),
            last_reload: AtomicI64::new(0),
            catalog,
            fence_wait: FENCE_WAIT,
        })
    }

    /// How long a write or read waits for a fenced bucket (default [`FENCE_WAIT`]).
    pub fn with_fence_wait(mut self, wait: Duration) -> OrderShards {
        self.fence_wait = wait;
        self
    }

    /// The bucket-to-shard map in use (the newest this instance has seen).
    pub fn map(&self) -> Arc<ShardMap> {
        self.map
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the map from the catalog, keeping it if it is newer than the one in use.
    pub async fn reload(&self) -> Result<Arc<ShardMap>, StoreError> {
        let n = u16::try_from(self.shards.len()).unwrap_or(u16::MAX);
        let even = ShardMap::even(n).map_err(|e| StoreError::Other(Box::new(e)))?;
        let fresh = self.catalog.shard_map(&even).await?;
        let mut cur = self
            .map
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if fresh.version() > cur.version() {
            *cur = Arc::new(fresh);
        }
        Ok(cur.clone())
    }

    pub(crate) fn shard(&self, n: u16) -> &ShardPool {
        &self.shards[usize::from(n).min(self.shards.len() - 1)]
    }

    /// After a shard refused a bucket (not its own, or fenced): reloads the map, and if it still places
    /// the bucket on `shard`, pauses briefly (a move is finishing). Errors once `deadline` has passed.
    async fn await_bucket(
        &self,
        bucket: Bucket,
        shard: u16,
        started: Instant,
    ) -> Result<Arc<ShardMap>, StoreError> {
        // Many callers may wait on one fence: one reload per 10 ms serves them all.
        let now = chrono::Utc::now().timestamp_millis();
        let last = self.last_reload.load(Ordering::Relaxed);
        let map = if now - last >= 10
            && self
                .last_reload
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.reload().await?
        } else {
            self.map()
        };
        if map.shard_of(bucket) == shard {
            if started.elapsed() >= self.fence_wait {
                metrics::counter!("order_fence_timeouts_total").increment(1);
                return Err(StoreError::Unavailable(
                    format!(
                        "bucket {} is being moved between order shards and stayed fenced for {} ms; try again shortly",
                        bucket.get(),
                        self.fence_wait.as_millis()
                    )
                    .into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(map)
    }

    fn record_wait(started: Instant, retried: bool) {
        if retried {
            metrics::histogram!("order_fence_wait_seconds").record(started.elapsed().as_secs_f64());
        }
    }

    /// Writes an order to its shard (again writing the same id is a no-op). When the shard no longer
    /// holds the order's bucket, or a move holds it fenced, follows the map to where it is now.
    pub async fn insert(&self, o: &Order) -> Result<(), StoreError> {
        let items = serde_json::to_string(&o.lines).map_err(|e| StoreError::Other(Box::new(e)))?;
        let bucket = o.id.bucket();
        let started = Instant::now();
        let mut map = self.map();
        let mut retried = false;
        loop {
            let shard = map.shard_of(bucket);
            let written = on_shard!(self.shard(shard), |p, ph| {
                let sql = match self.shard(shard) {
                    ShardPool::Sqlite(_) => INSERT_SQLITE,
                    ShardPool::Postgres(_) => INSERT_POSTGRES,
                };
                sqlx::query(&ph(sql))
                    .bind(o.id.get())
                    .bind(o.customer_id)
                    .bind(i64::from(bucket.get()))
                    .bind(&items)
                    .bind(o.total_minor)
                    .bind(&o.currency)
                    .bind(&o.created_at)
                    .bind(i64::from(bucket.get()))
                    .execute(p)
                    .await?
                    .rows_affected()
            });
            if written == 1 {
                Self::record_wait(started, retried);
                return Ok(());
            }
            // Nothing written: an order with this id is there already, or the bucket is not writable
            // here. The same order again (a repeated write; it was written while this shard held the
            // bucket, so any later move carried it) is done; another order with the same id is refused.
            if let Some(there) = self.stored(shard, o.id).await? {
                Self::record_wait(started, retried);
                return if there == *o {
                    Ok(())
                } else {
                    Err(StoreError::OrderIdTaken(o.id.get()))
                };
            }
            retried = true;
            map = self.await_bucket(bucket, shard, started).await?;
        }
    }

    /// The order stored under `id` on a shard, whatever the bucket's state there.
    async fn stored(&self, shard: u16, id: OrderId) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {COLS} FROM orders WHERE id = ?");
        let row: Option<Row> = on_shard!(self.shard(shard), |p, ph| {
            sqlx::query_as(&ph(&sql))
                .bind(id.get())
                .fetch_optional(p)
                .await?
        });
        row.map(order_of).transpose()
    }

    /// Runs a read that returns the bucket's state beside its rows on the shard the map names, following
    /// the map when that shard cannot serve the bucket.
    async fn read_bucket(
        &self,
        bucket: Bucket,
        sql: &str,
        binds: &[i64],
    ) -> Result<Vec<Row>, StoreError> {
        let started = Instant::now();
        let mut map = self.map();
        let mut retried = false;
        loop {
            let shard = map.shard_of(bucket);
            let rows: Vec<StateRow> = on_shard!(self.shard(shard), |p, ph| {
                let q = ph(sql);
                let mut q = sqlx::query_as(&q);
                for b in binds {
                    q = q.bind(*b);
                }
                q.fetch_all(p).await?
            });
            let (state, rows) = split_state_rows(rows);
            if BucketState::readable(state.as_deref()) {
                Self::record_wait(started, retried);
                return Ok(rows);
            }
            retried = true;
            map = self.await_bucket(bucket, shard, started).await?;
        }
    }

    /// An order by id, from the shard its id names.
    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let sql = format!(
            "SELECT b.state, o.{} FROM order_buckets b LEFT JOIN orders o ON o.id = ? WHERE b.bucket = ?",
            COLS.replace(", ", ", o.")
        );
        let rows = self
            .read_bucket(id.bucket(), &sql, &[id.get(), i64::from(id.bucket().get())])
            .await?;
        rows.into_iter().next().map(order_of).transpose()
    }

    /// A customer's orders, newest first, after (older than) `before` if given; at most `limit`.
    pub async fn by_customer(
        &self,
        customer_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        let sql = format!(
            "SELECT b.state, o.{} FROM order_buckets b LEFT JOIN \
             (SELECT {COLS} FROM orders WHERE customer_id = ? AND id < ? ORDER BY id DESC LIMIT ?) o ON 1 = 1 \
             WHERE b.bucket = ? ORDER BY o.id DESC",
            COLS.replace(", ", ", o.")
        );
        let bucket = crate::shards::bucket_of(customer_id);
        let rows = self
            .read_bucket(
                bucket,
                &sql,
                &[
                    customer_id,
                    before.unwrap_or(i64::MAX),
                    i64::from(limit),
                    i64::from(bucket.get()),
                ],
            )
            .await?;
        rows.into_iter().map(order_of).collect()
    }

    /// Revenue per day (UTC) and currency over every shard: the shards are asked in parallel and their
    /// answers merged. `from`/`to`: inclusive `YYYY-MM-DD` bounds.
    pub async fn revenue_by_day(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<DayRevenue>, StoreError> {
        let lo = from.unwrap_or("0000-00-00").to_owned();
        // Every timestamp of day `to` sorts below "<to>~" ('~' follows every digit, 'T' and 'Z').
        let hi = format!("{}~", to.unwrap_or("9999-99-99"));
        let rows = self
            .per_shard(|buckets| {
                format!(
                    "SELECT substr(created_at, 1, 10) AS day, currency, CAST(sum(total_minor) AS BIGINT), count(*) \
                     FROM orders WHERE created_at >= ? AND created_at < ? AND bucket IN ({buckets}) \
                     GROUP BY substr(created_at, 1, 10), currency"
                )
            }, &[&lo, &hi])
            .await?;
        let mut merged: std::collections::BTreeMap<(String, String), (i64, i64)> =
            Default::default();
        for (day, currency, total, n) in rows.into_iter().flatten() {
            let e = merged.entry((day, currency)).or_default();
            e.0 += total;
            e.1 += n;
        }
        Ok(merged
            .into_iter()
            .map(|((day, currency), (total_minor, orders))| DayRevenue {
                day,
                currency,
                total_minor,
                orders,
            })
            .collect())
    }

    /// Orders per shard (for status and tests).
    pub async fn counts(&self) -> Result<Vec<i64>, StoreError> {
        let rows = self
            .per_shard(
                |buckets| {
                    format!(
                        "SELECT '', '', CAST(count(*) AS BIGINT), CAST(0 AS BIGINT) FROM orders WHERE bucket IN ({buckets})"
                    )
                },
                &[],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| r.first().map(|x| x.2).unwrap_or(0))
            .collect())
    }

    /// Runs a query on every shard in parallel, each over the buckets the map places there (so each
    /// bucket is counted once, on the shard that holds it for that map version), and again if a move
    /// switched the map meanwhile.
    async fn per_shard(
        &self,
        sql: impl Fn(&str) -> String,
        binds: &[&str],
    ) -> Result<Vec<Vec<(String, String, i64, i64)>>, StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let map = self.reload().await?;
            let per_shard =
                futures::future::join_all(self.shards.iter().enumerate().map(|(i, s)| {
                    let mine: Vec<String> = map
                        .entries()
                        .iter()
                        .enumerate()
                        .filter(|&(_, &sh)| usize::from(sh) == i)
                        .map(|(b, _)| b.to_string())
                        .collect();
                    // Bucket numbers are ours (0..1024), never input: inlined, not bound.
                    let list = if mine.is_empty() {
                        "-1".to_owned()
                    } else {
                        mine.join(",")
                    };
                    let q = sql(&list);
                    async move {
                        let rows: Vec<(String, String, i64, i64)> = on_shard!(s, |p, ph| {
                            let q = ph(&q);
                            let mut q = sqlx::query_as(&q);
                            for b in binds {
                                q = q.bind(*b);
                            }
                            q.fetch_all(p).await?
                        });
                        Ok::<_, StoreError>(rows)
                    }
                }))
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?;
            if self.reload().await?.version() == map.version() || tries >= 5 {
                return Ok(per_shard);
            }
        }
    }

    /// Closes every shard's pool.
    pub async fn close(&self) {
        for s in &self.shards {
            match s {
                ShardPool::Sqlite(p) => p.close().await,
                ShardPool::Postgres(p) => p.close().await,
            }
        }
    }
}

/// Writes an order only if the shard holds its bucket. SQLite runs one writer at a time, so the check and
/// the insert see the same state.
const INSERT_SQLITE: &str =
    "INSERT INTO orders (id, customer_id, bucket, items, total_minor, currency, created_at) \
     SELECT ?, ?, ?, ?, ?, ?, ? WHERE EXISTS \
     (SELECT 1 FROM order_buckets WHERE bucket = ? AND state = 'owned') \
     ON CONFLICT (id) DO NOTHING";

/// The same on PostgreSQL: the bucket's row is locked FOR KEY SHARE, so a mover fencing it (FOR UPDATE)
/// waits for writes in flight, and a write that meets the fence waits for it and then re-reads the state
/// (and writes nothing).
const INSERT_POSTGRES: &str =
    "INSERT INTO orders (id, customer_id, bucket, items, total_minor, currency, created_at) \
     SELECT ?, ?, ?, ?, ?, ?, ? FROM order_buckets WHERE bucket = ? AND state = 'owned' FOR KEY SHARE \
     ON CONFLICT (id) DO NOTHING";

/// Gives a shard its row per bucket (once): `owned` for the buckets the map places there, `gone` for the
/// others.
async fn init_bucket_states(s: &ShardPool, map: &ShardMap, me: u16) -> Result<(), StoreError> {
    let have: i64 = on_shard!(s, |p, _ph| {
        sqlx::query_scalar("SELECT count(*) FROM order_buckets")
            .fetch_one(p)
            .await?
    });
    if have >= i64::from(BUCKETS) {
        return Ok(());
    }
    let values = (0..BUCKETS)
        .map(|b| {
            let b = Bucket::new(b).unwrap_or_else(|| unreachable!("0..BUCKETS"));
            let state = if map.shard_of(b) == me {
                BucketState::Owned
            } else {
                BucketState::Gone
            };
            format!("({}, '{}')", b.get(), state.as_str())
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO order_buckets (bucket, state) VALUES {values} ON CONFLICT (bucket) DO NOTHING"
    );
    on_shard!(s, |p, _ph| {
        sqlx::raw_sql(&sql)
            .execute(p)
            .await
            .map_err(|e| StoreError::setup("recording which buckets a shard holds", e))?;
    });
    Ok(())
}
