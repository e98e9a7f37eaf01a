//! The engines behind [`crate::CatalogStore`]: one generic SQL store, instantiated for SQLite and
//! PostgreSQL by [`impl_catalog_store!`], so both run the same statements in the same order.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Database, Pool, Postgres, Sqlite};
use tenfold_catalog::{Category, Money, NewCategory, NewProduct, Product, ProductId, ProductPatch};

use crate::fast::FastReads;
use crate::sql::{like_contains, Sql};
use crate::{
    CatalogStore, Cursor, ListQuery, Page, PoolStats, Readiness, Sort, StockItem, Store,
    StoreError, TakenItem, MAX_PAGE,
};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");

/// The database engine behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// Embedded SQLite file: one writer connection, several read-only readers.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// How to open a store.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `sqlite://path/to/file.db` or `postgres://...`.
    pub url: String,
    /// Pool size; 0 sizes it to the machine.
    pub max_connections: u32,
    /// How long a query waits for a pooled connection.
    pub acquire_timeout: Duration,
    /// PostgreSQL streaming replicas that serve reads.
    pub replica_urls: Vec<String>,
    /// A replica further behind than this serves no reads.
    pub max_replica_lag: Duration,
}

impl ConnectOptions {
    /// Options for `url` with machine-sized pools.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            max_connections: 0,
            acquire_timeout: Duration::from_secs(3),
            replica_urls: Vec::new(),
            max_replica_lag: Duration::from_secs(1),
        }
    }
}

fn cpus() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(2)
}

/// Opens the store a URL names (creating a SQLite file and its directory if needed). Does not migrate.
pub async fn connect(opts: &ConnectOptions) -> Result<Store, StoreError> {
    let scheme = opts.url.split_once(':').map(|(s, _)| s).unwrap_or("");
    match scheme {
        "sqlite" => Ok(Arc::new(connect_sqlite(opts).await?)),
        "postgres" | "postgresql" => Ok(Arc::new(connect_postgres(opts).await?)),
        "mysql" | "mariadb" => Err(StoreError::setup(
            "opening the database",
            std::io::Error::other(
                "MySQL/MariaDB is not supported yet; use sqlite:// or postgres://",
            ),
        )),
        _ => Err(StoreError::setup(
            "opening the database",
            std::io::Error::other(format!("unsupported database URL scheme \"{scheme}\"")),
        )),
    }
}

async fn connect_sqlite(opts: &ConnectOptions) -> Result<SqlStore<Sqlite>, StoreError> {
    let base = SqliteConnectOptions::from_str(&opts.url)
        .map_err(|e| StoreError::setup("parsing the SQLite URL", e))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(5))
        .foreign_keys(true)
        .pragma("temp_store", "memory");
    let file = base.get_filename().to_path_buf();
    let memory = file.as_os_str().is_empty() || file == Path::new(":memory:");
    if let Some(dir) = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !memory)
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::setup(format!("creating {}", dir.display()), e))?;
    }
    // SQLite allows one writer at a time; a single pooled writer turns lock contention into a queue.
    let writer = SqlitePoolOptions::new()
        .test_before_acquire(false)
        .max_connections(1)
        .acquire_timeout(opts.acquire_timeout)
        .connect_with(base.clone())
        .await
        .map_err(|e| StoreError::setup(format!("opening SQLite database {}", file.display()), e))?;
    let readers = if memory {
        writer.clone()
    } else {
        let n = if opts.max_connections > 0 {
            opts.max_connections
        } else {
            (cpus() * 2).clamp(2, 8)
        };
        SqlitePoolOptions::new()
            .test_before_acquire(false)
            .max_connections(n)
            .min_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(base.read_only(true).create_if_missing(false))
            .await
            .map_err(|e| {
                StoreError::setup(
                    format!("opening SQLite database {} for reading", file.display()),
                    e,
                )
            })?
    };
    let fast = (!memory).then(|| FastReads::new(file.clone(), (cpus() * 2) as usize));
    Ok(SqlStore {
        readers,
        writer,
        fast,
        sql: Sql::new(false),
        migrator: &SQLITE_MIGRATIONS,
        engine: Engine::Sqlite,
        replicas: None,
        monitor: None,
    })
}

async fn connect_postgres(opts: &ConnectOptions) -> Result<SqlStore<Postgres>, StoreError> {
    let conn = PgConnectOptions::from_str(&opts.url)
        .map_err(|e| StoreError::setup("parsing the PostgreSQL URL", e))?
        .application_name("tenfold");
    let n = if opts.max_connections > 0 {
        opts.max_connections
    } else {
        (cpus() * 4).clamp(4, 16)
    };
    // No ping before each checkout: a broken connection fails its query, which is reported as
    // unavailable (503 + Retry-After), and the pool replaces it.
    let pool = PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(n)
        .acquire_timeout(opts.acquire_timeout)
        .connect_with(conn)
        .await
        .map_err(|e| StoreError::setup("connecting to PostgreSQL", e))?;
    let (replicas, monitor) = if opts.replica_urls.is_empty() {
        (None, None)
    } else {
        let mut pools = Vec::new();
        for url in &opts.replica_urls {
            let o = PgConnectOptions::from_str(url)
                .map_err(|e| StoreError::setup("parsing a replica URL", e))?
                .application_name("tenfold");
            let name = format!("{}:{}", o.get_host(), o.get_port());
            // Lazy: a replica that is down at start-up gets no reads until the monitor sees it answer.
            let pool = PgPoolOptions::new()
                .test_before_acquire(false)
                .max_connections(n)
                .acquire_timeout(opts.acquire_timeout.min(Duration::from_secs(1)))
                .connect_lazy_with(o);
            pools.push((name, pool));
        }
        let r = Arc::new(crate::replicas::Replicas::new(pools, opts.max_replica_lag));
        let task = tokio::spawn(r.clone().monitor(pool.clone(), Duration::from_millis(100)));
        (Some(r), Some(task.abort_handle()))
    };
    Ok(SqlStore {
        readers: pool.clone(),
        writer: pool,
        fast: None,
        sql: Sql::new(true),
        migrator: &POSTGRES_MIGRATIONS,
        engine: Engine::Postgres,
        replicas,
        monitor,
    })
}

/// How often each instance polls the SQLite change feed (the staleness bound's main term).
const SQLITE_FEED_POLL: Duration = Duration::from_millis(10);
/// How long SQLite change-feed rows are kept.
const SQLITE_FEED_KEEP: Duration = Duration::from_secs(600);

impl SqlStore<Sqlite> {
    async fn token(&self) -> Result<Option<crate::ConsistencyToken>, StoreError> {
        Ok(None)
    }

    fn feed(&self) -> Arc<dyn crate::ChangeFeed> {
        Arc::new(crate::feed::SqliteFeed {
            writer: self.writer.clone(),
            readers: self.readers.clone(),
            poll: SQLITE_FEED_POLL,
            keep: SQLITE_FEED_KEEP,
        })
    }
}

impl SqlStore<Postgres> {
    /// The primary's WAL insert position now: at or after the end of every commit this instance has
    /// made (the write position can trail it when commits are asynchronous).
    async fn token(&self) -> Result<Option<crate::ConsistencyToken>, StoreError> {
        let lsn: String = sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text")
            .fetch_one(&self.writer)
            .await?;
        Ok(lsn.parse().ok())
    }

    fn feed(&self) -> Arc<dyn crate::ChangeFeed> {
        Arc::new(crate::feed::PgFeed {
            pool: self.writer.clone(),
        })
    }
}

/// A SQL store on one engine. For PostgreSQL `readers` and `writer` are the same pool.
pub(crate) struct SqlStore<DB: Database> {
    readers: Pool<DB>,
    writer: Pool<DB>,
    /// SQLite only: inline readers for index-bounded queries (see `fast.rs`).
    fast: Option<FastReads>,
    sql: Sql,
    migrator: &'static Migrator,
    engine: Engine,
    /// PostgreSQL only: replicas that serve reads (see `replicas.rs`).
    replicas: Option<Arc<crate::replicas::Replicas<DB>>>,
    /// The replica monitor, stopped with the store.
    monitor: Option<tokio::task::AbortHandle>,
}

impl<DB: Database> Drop for SqlStore<DB> {
    fn drop(&mut self) {
        if let Some(m) = &self.monitor {
            m.abort();
        }
    }
}

impl<DB: Database> SqlStore<DB> {
    /// Runs a read on a replica when there is one that fits, else (or when it fails) on `readers`.
    async fn read<'a, T, F, Fut>(&'a self, f: F) -> Result<T, sqlx::Error>
    where
        F: Fn(&'a Pool<DB>) -> Fut,
        Fut: std::future::Future<Output = Result<T, sqlx::Error>> + 'a,
    {
        match &self.replicas {
            Some(r) => r.read(&self.readers, f).await,
            None => {
                metrics::counter!("db_reads_total", "server" => "primary").increment(1);
                f(&self.readers).await
            }
        }
    }
}

#[derive(sqlx::FromRow)]
struct ProductRow {
    id: i64,
    sku: String,
    name: String,
    description: String,
    price_minor: i64,
    currency: String,
    stock: i64,
    category: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    version: i64,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product {
            id: r.id,
            sku: r.sku,
            name: r.name,
            description: r.description,
            price: Money {
                amount_minor: r.price_minor,
                currency: r.currency,
            },
            stock: r.stock,
            category: r.category,
            created_at: r.created_at,
            updated_at: r.updated_at,
            version: r.version,
        }
    }
}

#[derive(sqlx::FromRow)]
struct CategoryRow {
    slug: String,
    name: String,
    product_count: i64,
}

impl From<CategoryRow> for Category {
    fn from(r: CategoryRow) -> Self {
        Category {
            slug: r.slug,
            name: r.name,
            product_count: r.product_count,
        }
    }
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Timestamps are kept to the microsecond, the precision both engines store.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// A unique-constraint violation becomes a `Conflict` saying which value is taken; anything else passes.
fn conflict_if_taken(e: sqlx::Error, what: &str, value: &str) -> StoreError {
    if matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()) {
        StoreError::Conflict(format!("a {what} \"{value}\" already exists"))
    } else {
        e.into()
    }
}

/// The items with one line per product (quantities added), in product-id order: transactions that take
/// stock lock rows in the same order, so two orders cannot deadlock on each other.
fn merged(items: &[StockItem]) -> Vec<StockItem> {
    let mut by_id: std::collections::BTreeMap<i64, StockItem> = std::collections::BTreeMap::new();
    for it in items {
        by_id
            .entry(it.product_id.get())
            .and_modify(|m| m.quantity = m.quantity.saturating_add(it.quantity))
            .or_insert(*it);
    }
    by_id.into_values().collect()
}

/// A page from `limit + 1` rows: the extra row only says that there is a next page.
fn page(mut rows: Vec<Product>, limit: u32, sort: Sort) -> Page {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more {
        rows.last().map(|p| match sort {
            Sort::Id => Cursor::after(p.id),
            Sort::PriceAsc | Sort::PriceDesc => Cursor::after_price(p.price.amount_minor, p.id),
        })
    } else {
        None
    };
    Page { items: rows, next }
}

fn pool_stats<DB: Database>(name: &'static str, pool: &Pool<DB>) -> PoolStats {
    PoolStats {
        pool: name,
        size: pool.size(),
        idle: pool.num_idle() as u32,
        max: pool.options().get_max_connections(),
    }
}

type MoveRow = (i64, i64, i64, String, String, i64);

fn shard_move_of(r: MoveRow) -> Result<crate::shards::ShardMove, StoreError> {
    let (bucket, from, to, started_at, owner, active_ms) = r;
    let bad = || StoreError::Other(format!("bad shard move row for bucket {bucket}").into());
    Ok(crate::shards::ShardMove {
        bucket: u16::try_from(bucket)
            .ok()
            .and_then(crate::shards::Bucket::new)
            .ok_or_else(bad)?,
        from: u16::try_from(from).map_err(|_| bad())?,
        to: u16::try_from(to).map_err(|_| bad())?,
        started_at,
        owner,
        active_ms,
    })
}

macro_rules! impl_catalog_store {
    ($db:ty) => {
        impl SqlStore<$db> {
            async fn shard_map_once(
                &self,
                initial: &crate::shards::ShardMap,
            ) -> Result<crate::shards::ShardMap, StoreError> {
                let mut tx = self.writer.begin().await?;
                let meta = sqlx::query_as::<_, (i64, i64)>(&self.sql.shard_meta)
                    .fetch_optional(&mut *tx)
                    .await?;
                let (version, shards) = match meta {
                    Some(m) => {
                        tx.rollback().await?;
                        m
                    }
                    None => {
                        sqlx::query(&self.sql.insert_shard_meta)
                            .bind(initial.version() as i64)
                            .bind(i64::from(initial.shards()))
                            .execute(&mut *tx)
                            .await?;
                        for (b, s) in initial.entries().iter().enumerate() {
                            sqlx::query(&self.sql.insert_shard_entry)
                                .bind(b as i64)
                                .bind(i64::from(*s))
                                .execute(&mut *tx)
                                .await?;
                        }
                        tx.commit().await?;
                        return Ok(initial.clone());
                    }
                };
                let configured = i64::from(initial.shards());
                if shards > configured {
                    return Err(StoreError::Conflict(format!(
                        "the stored shard map places buckets on {shards} shards, but {configured} shard URLs are configured \
                         (give every shard's URL, in the order first used; new shards go at the end)"
                    )));
                }
                if shards < configured {
                    // A shard URL was added at the end: the new shards hold no bucket until buckets move there.
                    sqlx::query(&self.sql.grow_shards)
                        .bind(configured)
                        .bind(configured)
                        .execute(&self.writer)
                        .await?;
                    return Box::pin(self.shard_map_once(initial)).await;
                }
                let rows = sqlx::query_as::<_, (i64, i64)>(&self.sql.shard_entries)
                    .fetch_all(&self.writer)
                    .await?;
                let entries: Vec<u16> = rows.iter().map(|&(_, s)| s as u16).collect();
                crate::shards::ShardMap::from_parts(version as u64, shards as u16, entries)
                    .map_err(|e| StoreError::Other(Box::new(e)))
            }

            /// Tells a missing row from a stale version after a conditional write matched nothing.
            async fn missing_or_stale(&self, id: ProductId) -> StoreError {
                match sqlx::query_scalar::<_, i64>(&self.sql.version_of)
                    .bind(id.get())
                    .fetch_optional(&self.writer)
                    .await
                {
                    Ok(Some(current)) => StoreError::VersionMismatch { current },
                    Ok(None) => StoreError::NotFound,
                    Err(e) => e.into(),
                }
            }
        }

        #[async_trait]
        impl CatalogStore for SqlStore<$db> {
            fn engine(&self) -> Engine {
                self.engine
            }

            fn change_feed(&self) -> Arc<dyn crate::ChangeFeed> {
                self.feed()
            }

            async fn consistency_token(
                &self,
            ) -> Result<Option<crate::ConsistencyToken>, StoreError> {
                self.token().await
            }

            async fn migrate(&self) -> Result<(), StoreError> {
                self.migrator
                    .run(&self.writer)
                    .await
                    .map_err(|e| StoreError::setup("applying migrations", e))
            }

            async fn readiness(&self) -> Result<Readiness, StoreError> {
                let expected: Vec<i64> = self.migrator.iter().map(|m| m.version).collect();
                let applied = match sqlx::query_scalar::<_, i64>(&self.sql.applied_migrations)
                    .fetch_all(&self.readers)
                    .await
                {
                    Ok(v) => v,
                    // No migrations table yet: the database answers but is not migrated.
                    Err(sqlx::Error::Database(_)) => Vec::new(),
                    Err(e) => return Err(e.into()),
                };
                Ok(Readiness { applied, expected })
            }

            fn pool_stats(&self) -> Vec<PoolStats> {
                match self.engine {
                    Engine::Sqlite => vec![
                        pool_stats("read", &self.readers),
                        pool_stats("write", &self.writer),
                    ],
                    Engine::Postgres => vec![pool_stats("primary", &self.writer)],
                }
            }

            async fn get_product(&self, id: ProductId) -> Result<Option<Product>, StoreError> {
                if let Some(r) = self
                    .fast
                    .as_ref()
                    .and_then(|f| f.get_product(&self.sql.get, id.get()))
                {
                    return Ok(r?);
                }
                let row = self
                    .read(|pool| {
                        sqlx::query_as::<_, ProductRow>(&self.sql.get)
                            .bind(id.get())
                            .fetch_optional(pool)
                    })
                    .await?;
                Ok(row.map(Product::from))
            }

            async fn list_products(&self, q: &ListQuery) -> Result<Page, StoreError> {
                let limit = q.limit.clamp(1, MAX_PAGE);
                let sql = &self.sql.list[q.category.is_some() as usize]
                    [q.search.is_some() as usize][q.sort.index()];
                // Where the page starts: after the cursor, else before every row in this order.
                let (after_price, after_id) = match (q.sort, q.after) {
                    (Sort::Id, c) => (None, c.map(|c| c.after_id).unwrap_or(0)),
                    (_, Some(Cursor { price: Some(p), after_id })) => (Some(p), after_id),
                    (Sort::PriceDesc, _) => (Some(i64::MAX), i64::MAX),
                    (_, _) => (Some(i64::MIN), 0),
                };
                let fetch = i64::from(limit) + 1;
                // Without text search the query is an index range of at most `fetch` rows: fast path.
                let fast = match (&self.fast, &q.search) {
                    (Some(f), None) => {
                        let category = q.category.as_ref().map(|c| c.as_str());
                        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(4);
                        if let Some(p) = &after_price {
                            params.push(p);
                        }
                        params.push(&after_id);
                        if let Some(c) = &category {
                            params.push(c);
                        }
                        params.push(&fetch);
                        f.list_products(sql, &params)
                    }
                    _ => None,
                };
                if let Some(rows) = fast {
                    return Ok(page(rows?, limit, q.sort));
                }
                let pattern = q.search.as_deref().map(like_contains);
                let rows = self
                    .read(|pool| {
                        let mut query = sqlx::query_as::<_, ProductRow>(sql);
                        if let Some(p) = after_price {
                            query = query.bind(p);
                        }
                        query = query.bind(after_id);
                        if let Some(c) = &q.category {
                            query = query.bind(c.as_str());
                        }
                        if let Some(p) = &pattern {
                            query = query.bind(p.clone());
                        }
                        query.bind(fetch).fetch_all(pool)
                    })
                    .await?;
                Ok(page(
                    rows.into_iter().map(Product::from).collect(),
                    limit,
                    q.sort,
                ))
            }

            async fn create_product(&self, p: &NewProduct) -> Result<Product, StoreError> {
                let mut tx = self.writer.begin().await?;
                let counted = sqlx::query(&self.sql.count_inc)
                    .bind(p.category.as_str())
                    .execute(&mut *tx)
                    .await?;
                if counted.rows_affected() == 0 {
                    return Err(StoreError::UnknownCategory(p.category.to_string()));
                }
                let t = now();
                let row = sqlx::query_as::<_, ProductRow>(&self.sql.insert)
                    .bind(p.sku.as_str())
                    .bind(p.name.as_str())
                    .bind(p.description.as_str())
                    .bind(p.price.amount_minor())
                    .bind(p.price.currency().code())
                    .bind(p.stock.get())
                    .bind(p.category.as_str())
                    .bind(t)
                    .bind(t)
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(|e| conflict_if_taken(e, "product with sku", p.sku.as_str()))?;
                tx.commit().await?;
                Ok(row.into())
            }

            async fn update_product(
                &self,
                id: ProductId,
                patch: &ProductPatch,
                if_version: Option<i64>,
            ) -> Result<Product, StoreError> {
                let mut tx = self.writer.begin().await?;
                if let Some(cat) = &patch.category {
                    // Move the product's count from its old category to the new one; a version
                    // mismatch or a missing row leaves the counts alone and the transaction rolls back.
                    sqlx::query(&self.sql.count_dec_for)
                        .bind(id.get())
                        .bind(if_version)
                        .execute(&mut *tx)
                        .await?;
                    let counted = sqlx::query(&self.sql.count_inc)
                        .bind(cat.as_str())
                        .execute(&mut *tx)
                        .await?;
                    if counted.rows_affected() == 0 {
                        return Err(StoreError::UnknownCategory(cat.to_string()));
                    }
                }
                let row = sqlx::query_as::<_, ProductRow>(&self.sql.update)
                    .bind(patch.sku.as_ref().map(|v| v.as_str()))
                    .bind(patch.name.as_ref().map(|v| v.as_str()))
                    .bind(patch.description.as_ref().map(|v| v.as_str()))
                    .bind(patch.price.map(|p| p.amount_minor()))
                    .bind(patch.price.map(|p| p.currency().code()))
                    .bind(patch.stock.map(|s| s.get()))
                    .bind(patch.category.as_ref().map(|v| v.as_str()))
                    .bind(now())
                    .bind(id.get())
                    .bind(if_version)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(|e| {
                        let sku = patch.sku.as_ref().map(|s| s.as_str()).unwrap_or_default();
                        conflict_if_taken(e, "product with sku", sku)
                    })?;
                match row {
                    Some(row) => {
                        tx.commit().await?;
                        Ok(row.into())
                    }
                    None => {
                        tx.rollback().await?;
                        Err(self.missing_or_stale(id).await)
                    }
                }
            }

            async fn delete_product(
                &self,
                id: ProductId,
                if_version: Option<i64>,
            ) -> Result<(), StoreError> {
                let mut tx = self.writer.begin().await?;
                sqlx::query(&self.sql.count_dec_for)
                    .bind(id.get())
                    .bind(if_version)
                    .execute(&mut *tx)
                    .await?;
                let deleted = sqlx::query(&self.sql.delete)
                    .bind(id.get())
                    .bind(if_version)
                    .execute(&mut *tx)
                    .await?;
                if deleted.rows_affected() == 1 {
                    tx.commit().await?;
                    Ok(())
                } else {
                    tx.rollback().await?;
                    Err(self.missing_or_stale(id).await)
                }
            }

            async fn list_categories(&self) -> Result<Vec<Category>, StoreError> {
                let rows = self
                    .read(|pool| {
                        sqlx::query_as::<_, CategoryRow>(&self.sql.categories).fetch_all(pool)
                    })
                    .await?;
                Ok(rows.into_iter().map(Category::from).collect())
            }

            async fn create_category(&self, c: &NewCategory) -> Result<Category, StoreError> {
                sqlx::query_as::<_, CategoryRow>(&self.sql.insert_category)
                    .bind(c.slug.as_str())
                    .bind(c.name.as_str())
                    .bind(now())
                    .fetch_one(&self.writer)
                    .await
                    .map(Category::from)
                    .map_err(|e| conflict_if_taken(e, "category with slug", c.slug.as_str()))
            }

            async fn ensure_categories(&self, cats: &[NewCategory]) -> Result<u64, StoreError> {
                let mut tx = self.writer.begin().await?;
                let mut added = 0;
                for c in cats {
                    added += sqlx::query(&self.sql.ensure_category)
                        .bind(c.slug.as_str())
                        .bind(c.name.as_str())
                        .bind(now())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                }
                tx.commit().await?;
                Ok(added)
            }

            async fn insert_products_if_absent(
                &self,
                products: &[NewProduct],
            ) -> Result<u64, StoreError> {
                if products.is_empty() {
                    return Ok(0);
                }
                let t = now();
                let mut qb = sqlx::QueryBuilder::<$db>::new(&self.sql.bulk_insert_prefix);
                qb.push_values(products, |mut b, p| {
                    b.push_bind(p.sku.as_str())
                        .push_bind(p.name.as_str())
                        .push_bind(p.description.as_str())
                        .push_bind(p.price.amount_minor())
                        .push_bind(p.price.currency().code())
                        .push_bind(p.stock.get())
                        .push_bind(p.category.as_str())
                        .push_bind(t)
                        .push_bind(t)
                        .push_bind(1_i64);
                });
                qb.push(&self.sql.bulk_insert_suffix);
                Ok(qb.build().execute(&self.writer).await?.rows_affected())
            }

            async fn recount_categories(&self) -> Result<(), StoreError> {
                sqlx::query(&self.sql.recount).execute(&self.writer).await?;
                Ok(())
            }

            async fn count_products(&self) -> Result<i64, StoreError> {
                Ok(self
                    .read(|pool| {
                        sqlx::query_scalar::<_, i64>(&self.sql.count_products).fetch_one(pool)
                    })
                    .await?)
            }

            async fn take_stock(
                &self,
                order_id: i64,
                items: &[StockItem],
            ) -> Result<Vec<TakenItem>, StoreError> {
                let items = merged(items);
                let now = now();
                let mut tx = self.writer.begin().await?;
                let mut taken = Vec::with_capacity(items.len());
                for it in &items {
                    let q = i64::from(it.quantity);
                    let row =
                        sqlx::query_as::<_, (i64, String, i64, String, i64, String)>(&self.sql.take_stock)
                            .bind(q)
                            .bind(now)
                            .bind(it.product_id.get())
                            .bind(q)
                            .fetch_optional(&mut *tx)
                            .await?;
                    match row {
                        Some((product_id, name, price_minor, currency, version, category)) => {
                            taken.push(TakenItem {
                                product_id,
                                name,
                                price_minor,
                                currency,
                                quantity: it.quantity,
                                version,
                                category,
                            })
                        }
                        None => {
                            let available = sqlx::query_scalar::<_, i64>(&self.sql.stock_of)
                                .bind(it.product_id.get())
                                .fetch_optional(&mut *tx)
                                .await?;
                            tx.rollback().await?;
                            return Err(match available {
                                None => StoreError::UnknownProduct(it.product_id.get()),
                                Some(available) => StoreError::InsufficientStock {
                                    product_id: it.product_id.get(),
                                    available,
                                    requested: q,
                                },
                            });
                        }
                    }
                }
                let reserved: Vec<(i64, u32)> = items
                    .iter()
                    .map(|i| (i.product_id.get(), i.quantity))
                    .collect();
                sqlx::query(&self.sql.reserve)
                    .bind(order_id)
                    .bind(serde_json::to_string(&reserved).unwrap_or_default())
                    .bind(now_ms())
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| match e {
                        sqlx::Error::Database(db) if db.is_unique_violation() => {
                            StoreError::OrderIdTaken(order_id)
                        }
                        e => e.into(),
                    })?;
                tx.commit().await?;
                Ok(taken)
            }

            async fn shard_map(
                &self,
                initial: &crate::shards::ShardMap,
            ) -> Result<crate::shards::ShardMap, StoreError> {
                // Several instances may start at once and race to store the first map: the losers (a
                // unique violation, or SQLite's lock) read what the winner stored.
                let mut attempt = 0;
                loop {
                    match self.shard_map_once(initial).await {
                        Err(StoreError::Unavailable(_) | StoreError::Other(_)) if attempt < 20 => {
                            attempt += 1;
                            tokio::time::sleep(Duration::from_millis(25 * attempt)).await;
                        }
                        r => return r,
                    }
                }
            }

            async fn switch_bucket(
                &self,
                bucket: crate::shards::Bucket,
                from: u16,
                to: u16,
            ) -> Result<(), StoreError> {
                let mut tx = self.writer.begin().await?;
                let moved = sqlx::query(&self.sql.switch_bucket)
                    .bind(i64::from(to))
                    .bind(i64::from(bucket.get()))
                    .bind(i64::from(from))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if moved != 1 {
                    return Err(StoreError::Conflict(format!(
                        "the shard map no longer places bucket {} on shard {from}",
                        bucket.get()
                    )));
                }
                sqlx::query(&self.sql.bump_shard_version)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn shard_moves(&self) -> Result<Vec<crate::shards::ShardMove>, StoreError> {
                let rows = sqlx::query_as::<_, MoveRow>(&self.sql.shard_moves)
                    .fetch_all(&self.writer)
                    .await?;
                rows.into_iter().map(shard_move_of).collect()
            }

            async fn claim_shard_move(
                &self,
                m: &crate::shards::ShardMove,
                stale_after: Duration,
            ) -> Result<crate::shards::ShardMove, StoreError> {
                let now = now_ms();
                let b = i64::from(m.bucket.get());
                sqlx::query(&self.sql.insert_shard_move)
                    .bind(b)
                    .bind(i64::from(m.from))
                    .bind(i64::from(m.to))
                    .bind(&m.started_at)
                    .bind(&m.owner)
                    .bind(now)
                    .execute(&self.writer)
                    .await?;
                sqlx::query(&self.sql.take_shard_move)
                    .bind(&m.owner)
                    .bind(now)
                    .bind(b)
                    .bind(i64::from(m.to))
                    .bind(&m.owner)
                    .bind(now - stale_after.as_millis() as i64)
                    .execute(&self.writer)
                    .await?;
                // Another mover may have finished (and forgotten) this move between our insert and now.
                match sqlx::query_as::<_, MoveRow>(&self.sql.shard_move)
                    .bind(b)
                    .fetch_optional(&self.writer)
                    .await?
                {
                    Some(row) => shard_move_of(row),
                    None => Err(StoreError::Conflict(format!(
                        "another mover finished the move of bucket {} meanwhile; run it again to see where the \
                         bucket is",
                        m.bucket.get()
                    ))),
                }
            }

            async fn touch_shard_move(
                &self,
                bucket: crate::shards::Bucket,
                owner: &str,
            ) -> Result<bool, StoreError> {
                Ok(sqlx::query(&self.sql.touch_shard_move)
                    .bind(now_ms())
                    .bind(i64::from(bucket.get()))
                    .bind(owner)
                    .execute(&self.writer)
                    .await?
                    .rows_affected()
                    == 1)
            }

            async fn release_shard_move(
                &self,
                bucket: crate::shards::Bucket,
                owner: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(&self.sql.release_shard_move)
                    .bind(i64::from(bucket.get()))
                    .bind(owner)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn end_shard_move(
                &self,
                bucket: crate::shards::Bucket,
                owner: &str,
            ) -> Result<(), StoreError> {
                sqlx::query(&self.sql.delete_shard_move)
                    .bind(i64::from(bucket.get()))
                    .bind(owner)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn release_reservation(&self, order_id: i64) -> Result<(), StoreError> {
                sqlx::query(&self.sql.unreserve)
                    .bind(order_id)
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }

            async fn stale_reservations(&self, older_than_ms: u64) -> Result<Vec<i64>, StoreError> {
                let cutoff = now_ms() - i64::try_from(older_than_ms).unwrap_or(i64::MAX / 2);
                Ok(sqlx::query_scalar::<_, i64>(&self.sql.stale_reservations)
                    .bind(cutoff)
                    .fetch_all(&self.writer)
                    .await?)
            }

            async fn give_back_stock(&self, order_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
                let now = now();
                let mut tx = self.writer.begin().await?;
                // Whoever deletes the reservation gives the stock back; anyone else finds nothing.
                let Some(items) = sqlx::query_scalar::<_, String>(&self.sql.unreserve)
                    .bind(order_id)
                    .fetch_optional(&mut *tx)
                    .await?
                else {
                    tx.rollback().await?;
                    return Ok(Vec::new());
                };
                let items: Vec<(i64, u32)> =
                    serde_json::from_str(&items).map_err(|e| StoreError::Other(Box::new(e)))?;
                let mut versions = Vec::with_capacity(items.len());
                for (product_id, quantity) in items {
                    if let Some(v) = sqlx::query_scalar::<_, i64>(&self.sql.give_stock)
                        .bind(i64::from(quantity))
                        .bind(now)
                        .bind(product_id)
                        .fetch_optional(&mut *tx)
                        .await?
                    {
                        versions.push((product_id, v));
                    }
                }
                tx.commit().await?;
                Ok(versions)
            }

            async fn close(&self) {
                if let Some(f) = &self.fast {
                    f.close();
                }
                self.readers.close().await;
                self.writer.close().await;
            }
        }
    };
}

impl_catalog_store!(Sqlite);
impl_catalog_store!(Postgres);
