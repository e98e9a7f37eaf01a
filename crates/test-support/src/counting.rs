//! A store that counts the reads reaching the database, for tests of what a cache spares it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use tenfold_catalog::{Category, NewCategory, NewProduct, Product, ProductId, ProductPatch};
use tenfold_store::{
    CatalogStore, ChangeFeed, Engine, ListQuery, Page, PoolStats, Readiness, Store, StoreError,
};

/// Wraps a real store and counts the catalog reads (`get_product`, `list_products`,
/// `list_categories`) that pass through it; everything is forwarded unchanged.
pub struct CountingStore {
    inner: Store,
    reads: AtomicU64,
    delay: std::time::Duration,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Store) -> Arc<CountingStore> {
        Self::slow(inner, std::time::Duration::ZERO)
    }

    /// Wraps `inner`, making every counted read take at least `delay` (a slow query), so that
    /// concurrent requests all arrive while the first one's read is in flight.
    pub fn slow(inner: Store, delay: std::time::Duration) -> Arc<CountingStore> {
        Arc::new(CountingStore {
            inner,
            reads: AtomicU64::new(0),
            delay,
        })
    }

    /// Reads so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    async fn count(&self) {
        self.reads.fetch_add(1, Ordering::SeqCst);
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }
}

#[async_trait]
impl CatalogStore for CountingStore {
    fn engine(&self) -> Engine {
        self.inner.engine()
    }
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }
    async fn readiness(&self) -> Result<Readiness, StoreError> {
        self.inner.readiness().await
    }
    fn pool_stats(&self) -> Vec<PoolStats> {
        self.inner.pool_stats()
    }
    async fn get_product(&self, id: ProductId) -> Result<Option<Product>, StoreError> {
        self.count().await;
        self.inner.get_product(id).await
    }
    async fn list_products(&self, query: &ListQuery) -> Result<Page, StoreError> {
        self.count().await;
        self.inner.list_products(query).await
    }
    async fn create_product(&self, product: &NewProduct) -> Result<Product, StoreError> {
        self.inner.create_product(product).await
    }
    async fn update_product(
        &self,
        id: ProductId,
        patch: &ProductPatch,
        if_version: Option<i64>,
    ) -> Result<Product, StoreError> {
        self.inner.update_product(id, patch, if_version).await
    }
    async fn delete_product(
        &self,
        id: ProductId,
        if_version: Option<i64>,
    ) -> Result<(), StoreError> {
        self.inner.delete_product(id, if_version).await
    }
    async fn list_categories(&self) -> Result<Vec<Category>, StoreError> {
        self.count().await;
        self.inner.list_categories().await
    }
    async fn create_category(&self, category: &NewCategory) -> Result<Category, StoreError> {
        self.inner.create_category(category).await
    }
    async fn ensure_categories(&self, categories: &[NewCategory]) -> Result<u64, StoreError> {
        self.inner.ensure_categories(categories).await
    }
    async fn insert_products_if_absent(&self, products: &[NewProduct]) -> Result<u64, StoreError> {
        self.inner.insert_products_if_absent(products).await
    }
    async fn recount_categories(&self) -> Result<(), StoreError> {
        self.inner.recount_categories().await
    }
    async fn count_products(&self) -> Result<i64, StoreError> {
        self.inner.count_products().await
    }
    async fn take_stock(
        &self,
        order_id: i64,
        items: &[tenfold_store::StockItem],
    ) -> Result<Vec<tenfold_store::TakenItem>, StoreError> {
        self.inner.take_stock(order_id, items).await
    }
    async fn shard_map(
        &self,
        initial: &tenfold_store::shards::ShardMap,
    ) -> Result<tenfold_store::shards::ShardMap, StoreError> {
        self.inner.shard_map(initial).await
    }
    async fn switch_bucket(
        &self,
        bucket: tenfold_store::shards::Bucket,
        from: u16,
        to: u16,
    ) -> Result<(), StoreError> {
        self.inner.switch_bucket(bucket, from, to).await
    }
    async fn shard_moves(&self) -> Result<Vec<tenfold_store::shards::ShardMove>, StoreError> {
        self.inner.shard_moves().await
    }
    async fn claim_shard_move(
        &self,
        m: &tenfold_store::shards::ShardMove,
        stale_after: std::time::Duration,
    ) -> Result<tenfold_store::shards::ShardMove, StoreError> {
        self.inner.claim_shard_move(m, stale_after).await
    }
    async fn touch_shard_move(
        &self,
        bucket: tenfold_store::shards::Bucket,
        owner: &str,
    ) -> Result<bool, StoreError> {
        self.inner.touch_shard_move(bucket, owner).await
    }
    async fn release_shard_move(
        &self,
        bucket: tenfold_store::shards::Bucket,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.inner.release_shard_move(bucket, owner).await
    }
    async fn end_shard_move(
        &self,
        bucket: tenfold_store::shards::Bucket,
        owner: &str,
    ) -> Result<(), StoreError> {
        self.inner.end_shard_move(bucket, owner).await
    }
    async fn release_reservation(&self, order_id: i64) -> Result<(), StoreError> {
        self.inner.release_reservation(order_id).await
    }
    async fn give_back_stock(&self, order_id: i64) -> Result<Vec<(i64, i64)>, StoreError> {
        self.inner.give_back_stock(order_id).await
    }
    async fn stale_reservations(&self, older_than_ms: u64) -> Result<Vec<i64>, StoreError> {
        self.inner.stale_reservations(older_than_ms).await
    }
    async fn consistency_token(
        &self,
    ) -> Result<Option<tenfold_store::ConsistencyToken>, StoreError> {
        self.inner.consistency_token().await
    }
    fn change_feed(&self) -> Arc<dyn ChangeFeed> {
        self.inner.change_feed()
    }
    async fn close(&self) {
        self.inner.close().await
    }
}
