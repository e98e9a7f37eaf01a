//! The only crate that speaks SQL.
//!
//! Role: one catalog store API ([`CatalogStore`]) over the embedded SQLite default and PostgreSQL, with
//! versioned migrations for each engine, pools sized to the machine and keyset pagination.
//!
//! Invariant: every query is parameterized; every write that touches a product keeps the denormalized
//! `categories.product_count` exact in the same transaction; versions only grow, so a version names one
//! state of a row. Callers never see an engine: adding MySQL/MariaDB means one more module behind
//! [`connect`], not a change to any caller.
//!
//! Entry points: [`connect`] (returns a [`Store`]), [`CatalogStore`], [`Cursor`].

mod cursor;
mod engine;
mod error;
mod fast;
mod feed;
#[macro_use]
mod orders;
pub mod flags;
mod moves;
pub mod queue;
mod replicas;
pub mod shards;
mod side;
mod sql;

use std::sync::Arc;

use async_trait::async_trait;
use tenfold_catalog::{Category, NewCategory, NewProduct, Product, ProductId, ProductPatch};

pub use cursor::{Cursor, Sort};
pub use engine::{connect, ConnectOptions, Engine};
pub use error::StoreError;
pub use feed::{ChangeFeed, FeedError, FeedEvent};
pub use moves::MoveReport;
pub use orders::{DayRevenue, Order, OrderLine, OrderShards, FENCE_WAIT};
pub use replicas::{read_at_least, ConsistencyToken};

/// A shared handle to the catalog store; cheap to clone.
pub type Store = Arc<dyn CatalogStore>;

/// Largest page a list query returns.
pub const MAX_PAGE: u32 = 100;

/// A filtered, keyset-paginated product listing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only products in this category.
    pub category: Option<tenfold_catalog::CategorySlug>,
    /// Only products whose name contains this text (case-insensitive for ASCII).
    pub search: Option<String>,
    /// Continue after this position (a cursor of the same sort).
    pub after: Option<Cursor>,
    /// Page size, 1..=[`MAX_PAGE`].
    pub limit: u32,
    /// The order.
    pub sort: Sort,
}

/// One page of products and the cursor of the next page, if there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// The products, in the query's order.
    pub items: Vec<Product>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// One line of an order: how many of a product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockItem {
    /// The product.
    pub product_id: ProductId,
    /// How many, at least 1.
    pub quantity: u32,
}

/// A product's state as an order took its stock: the snapshot an order keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenItem {
    /// The product.
    pub product_id: i64,
    /// Its name then.
    pub name: String,
    /// Its unit price then, in minor units.
    pub price_minor: i64,
    /// The price's currency.
    pub currency: String,
    /// How many were taken.
    pub quantity: u32,
    /// The product's version after the stock was taken.
    pub version: i64,
    /// Its category (whose list pages show the stock).
    pub category: String,
}

/// Whether the store can serve: the database answers and every migration is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// Applied migration versions.
    pub applied: Vec<i64>,
    /// Migration versions this binary knows.
    pub expected: Vec<i64>,
}

impl Readiness {
    /// True when the database schema is exactly what this binary expects.
    pub fn migrations_current(&self) -> bool {
        self.expected.iter().all(|v| self.applied.contains(v))
    }
}

/// Connection-pool use, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolStats {
    /// `read` or `write` (SQLite keeps one writer), or `primary`.
    pub pool: &'static str,
    /// Open connections.
    pub size: u32,
    /// Open connections not in use.
    pub idle: u32,
    /// Most connections the pool will open.
    pub max: u32,
}

/// The catalog's persistence operations, the same on every engine.
#[async_trait]
pub trait CatalogStore: Send + Sync + 'static {
    /// Which engine this is.
    fn engine(&self) -> Engine;

    /// Applies pending migrations; safe to run from several processes at once.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Pings the database and reports migration state.
    async fn readiness(&self) -> Result<Readiness, StoreError>;

    /// Pool use, for metrics.
    fn pool_stats(&self) -> Vec<PoolStats>;

    /// One product, or `None`.
    async fn get_product(&self, id: ProductId) -> Result<Option<Product>, StoreError>;

    /// A page of products.
    async fn list_products(&self, query: &ListQuery) -> Result<Page, StoreError>;

    /// Inserts a product. Errors: `Conflict` on a duplicate SKU, `UnknownCategory`.
    async fn create_product(&self, product: &NewProduct) -> Result<Product, StoreError>;

    /// Applies a patch. With `if_version`, only when the stored version equals it (else `VersionMismatch`).
    async fn update_product(
        &self,
        id: ProductId,
        patch: &ProductPatch,
        if_version: Option<i64>,
    ) -> Result<Product, StoreError>;

    /// Deletes a product. With `if_version`, only when the stored version equals it.
    async fn delete_product(
        &self,
        id: ProductId,
        if_version: Option<i64>,
    ) -> Result<(), StoreError>;

    /// Every category, by slug.
    async fn list_categories(&self) -> Result<Vec<Category>, StoreError>;

    /// Inserts a category. Errors: `Conflict` on a duplicate slug.
    async fn create_category(&self, category: &NewCategory) -> Result<Category, StoreError>;

    /// Inserts categories that do not exist yet (for seeding); returns how many were new.
    async fn ensure_categories(&self, categories: &[NewCategory]) -> Result<u64, StoreError>;

    /// Inserts products whose SKU does not exist yet, in one statement (for seeding); returns how many
    /// were new. Category counts are not touched: call [`CatalogStore::recount_categories`] afterwards.
    async fn insert_products_if_absent(&self, products: &[NewProduct]) -> Result<u64, StoreError>;

    /// Recomputes every category's product count from the products table.
    async fn recount_categories(&self) -> Result<(), StoreError>;

    /// Number of products.
    async fn count_products(&self) -> Result<i64, StoreError>;

    /// Takes the stock of every item for order `order_id` in one transaction: all of it or nothing
    /// (`InsufficientStock`, `UnknownProduct`), and records a reservation for the order in the same
    /// transaction. Concurrent calls never sell more than the stock. Returns the products' state (name,
    /// price, new version) as of the taking, in product-id order.
    async fn take_stock(
        &self,
        order_id: i64,
        items: &[StockItem],
    ) -> Result<Vec<TakenItem>, StoreError>;

    /// The order is written: its reservation is no longer needed.
    async fn release_reservation(&self, order_id: i64) -> Result<(), StoreError>;

    /// Puts back the stock reserved for `order_id` (an order that could not be written) and drops the
    /// reservation, in one transaction; returns each product's new version. Idempotent: a reservation
    /// already released or given back gives nothing.
    async fn give_back_stock(&self, order_id: i64) -> Result<Vec<(i64, i64)>, StoreError>;

    /// Reservations older than `older_than_ms` milliseconds (orders that may never have been written).
    async fn stale_reservations(&self, older_than_ms: u64) -> Result<Vec<i64>, StoreError>;

    /// The stored bucket-to-shard map; the first call stores `initial` (later calls return what is stored,
    /// so every instance routes alike). When `initial` has more shards than the stored map, the map grows
    /// (the new shards hold no bucket until buckets are moved there); `Conflict` when it has fewer.
    async fn shard_map(&self, initial: &shards::ShardMap) -> Result<shards::ShardMap, StoreError>;

    /// Places `bucket` on shard `to` in the stored map, as a new version; `Conflict` if the map no longer
    /// places it on `from` (another mover got there first).
    async fn switch_bucket(
        &self,
        bucket: shards::Bucket,
        from: u16,
        to: u16,
    ) -> Result<(), StoreError>;

    /// Bucket moves in progress (or abandoned by a mover that died), by bucket.
    async fn shard_moves(&self) -> Result<Vec<shards::ShardMove>, StoreError>;

    /// Records that `m.bucket` is moving, by `m.owner`, unless a move of it is recorded already; takes a
    /// recorded move to the same shard over when its owner has not been active for `stale_after`.
    /// Returns the move as recorded now: the caller owns it only if its `owner` is the caller's.
    async fn claim_shard_move(
        &self,
        m: &shards::ShardMove,
        stale_after: std::time::Duration,
    ) -> Result<shards::ShardMove, StoreError>;

    /// Renews `owner`'s claim on the move of `bucket`; false if another mover has taken it over.
    async fn touch_shard_move(
        &self,
        bucket: shards::Bucket,
        owner: &str,
    ) -> Result<bool, StoreError>;

    /// Lets the next run take the move of `bucket` over at once (`owner` stopped on an error).
    async fn release_shard_move(
        &self,
        bucket: shards::Bucket,
        owner: &str,
    ) -> Result<(), StoreError>;

    /// Forgets the move of `bucket` (it ended), if `owner` still holds it.
    async fn end_shard_move(&self, bucket: shards::Bucket, owner: &str) -> Result<(), StoreError>;

    /// A token naming the database state after this instance's last commit (PostgreSQL: the primary's
    /// WAL position); reads inside [`read_at_least`] with it see that state. `None` on SQLite, which has
    /// no replicas.
    async fn consistency_token(&self) -> Result<Option<ConsistencyToken>, StoreError>;

    /// The engine's change feed (SQLite: a polled table; PostgreSQL: LISTEN/NOTIFY), used to carry cache
    /// invalidations between instances that share this database.
    fn change_feed(&self) -> Arc<dyn ChangeFeed>;

    /// Closes the pools, waiting for connections in use to be returned.
    async fn close(&self);
}
