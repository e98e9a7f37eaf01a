//! Order shards: N databases (SQLite files or PostgreSQL databases) holding orders, each order in the
//! shard its customer's bucket maps to (see `shards.rs`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Postgres, Sqlite};

use crate::shards::{OrderId, ShardMap};
use crate::StoreError;

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

enum ShardPool {
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

type Row = (i64, i64, String, i64, String, String);

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

const COLS: &str = "id, customer_id, items, total_minor, currency, created_at";

/// The order shards and the map that places buckets on them.
pub struct OrderShards {
    shards: Vec<ShardPool>,
    map: ShardMap,
}

impl OrderShards {
    /// Opens every shard (creating SQLite files and the orders table where missing), placing buckets by
    /// the catalog's stored shard map (stored on first use: buckets spread evenly, in the order given).
    pub async fn connect(
        catalog: &dyn crate::CatalogStore,
        urls: &[String],
        acquire_timeout: Duration,
    ) -> Result<OrderShards, StoreError> {
        if urls.is_empty() {
            return Err(StoreError::setup(
                "opening order shards",
                std::io::Error::other("no order shard configured"),
            ));
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
        Ok(OrderShards { shards, map })
    }

    /// The bucket-to-shard map in use.
    pub fn map(&self) -> &ShardMap {
        &self.map
    }

    fn shard(&self, n: u16) -> &ShardPool {
        &self.shards[usize::from(n).min(self.shards.len() - 1)]
    }

    /// Writes an order to its shard (again writing the same id is a no-op).
    pub async fn insert(&self, o: &Order) -> Result<(), StoreError> {
        let items = serde_json::to_string(&o.lines).map_err(|e| StoreError::Other(Box::new(e)))?;
        let sql = "INSERT INTO orders (id, customer_id, bucket, items, total_minor, currency, created_at) \
                   VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING";
        on_shard!(self.shard(self.map.shard_of_order(o.id)), |p, ph| {
            sqlx::query(&ph(sql))
                .bind(o.id.get())
                .bind(o.customer_id)
                .bind(i64::from(o.id.bucket().get()))
                .bind(&items)
                .bind(o.total_minor)
                .bind(&o.currency)
                .bind(&o.created_at)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// An order by id, from the shard its id names.
    pub async fn get(&self, id: OrderId) -> Result<Option<Order>, StoreError> {
        let sql = format!("SELECT {COLS} FROM orders WHERE id = ?");
        let row: Option<Row> = on_shard!(self.shard(self.map.shard_of_order(id)), |p, ph| {
            sqlx::query_as(&ph(&sql))
                .bind(id.get())
                .fetch_optional(p)
                .await?
        });
        row.map(order_of).transpose()
    }

    /// A customer's orders, newest first, after (older than) `before` if given; at most `limit`.
    pub async fn by_customer(
        &self,
        customer_id: i64,
        before: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Order>, StoreError> {
        let sql = format!(
            "SELECT {COLS} FROM orders WHERE customer_id = ? AND id < ? ORDER BY id DESC LIMIT ?"
        );
        let rows: Vec<Row> = on_shard!(
            self.shard(self.map.shard_of_customer(customer_id)),
            |p, ph| {
                sqlx::query_as(&ph(&sql))
                    .bind(customer_id)
                    .bind(before.unwrap_or(i64::MAX))
                    .bind(i64::from(limit))
                    .fetch_all(p)
                    .await?
            }
        );
        rows.into_iter().map(order_of).collect()
    }

    /// Revenue per day (UTC) and currency over every shard: the shards are asked in parallel and their
    /// answers merged. `from`/`to`: inclusive `YYYY-MM-DD` bounds.
    pub async fn revenue_by_day(
        &self,
        from: Option<&str>,
        to: Option<&str>,
    ) -> Result<Vec<DayRevenue>, StoreError> {
        let sql = "SELECT substr(created_at, 1, 10) AS day, currency, sum(total_minor), count(*) \
                   FROM orders WHERE created_at >= ? AND created_at < ? \
                   GROUP BY substr(created_at, 1, 10), currency";
        let lo = from.unwrap_or("0000-00-00").to_owned();
        // Every timestamp of day `to` sorts below "<to>~" ('~' follows every digit, 'T' and 'Z').
        let hi = format!("{}~", to.unwrap_or("9999-99-99"));
        let per_shard = futures::future::join_all(self.shards.iter().map(|s| {
            let (lo, hi) = (lo.clone(), hi.clone());
            async move {
                let rows: Vec<(String, String, i64, i64)> = on_shard!(s, |p, ph| {
                    sqlx::query_as(&ph(sql))
                        .bind(&lo)
                        .bind(&hi)
                        .fetch_all(p)
                        .await?
                });
                Ok::<_, StoreError>(rows)
            }
        }))
        .await;
        let mut merged: std::collections::BTreeMap<(String, String), (i64, i64)> =
            Default::default();
        for rows in per_shard {
            for (day, currency, total, n) in rows? {
                let e = merged.entry((day, currency)).or_default();
                e.0 += total;
                e.1 += n;
            }
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
        let mut out = Vec::with_capacity(self.shards.len());
        for s in &self.shards {
            let n: i64 = on_shard!(s, |p, _ph| {
                sqlx::query_scalar("SELECT count(*) FROM orders")
                    .fetch_one(p)
                    .await?
            });
            out.push(n);
        }
        Ok(out)
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
