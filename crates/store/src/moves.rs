//! Online bucket moves (`tenfold shards move`): copy a bucket's orders to another shard while it takes
//! writes, catch up, fence writes briefly, copy the rest, verify by checksum, switch the map.
//!
//! The steps, each safe to repeat, so a mover that died is resumed by running the same move again:
//! 1. Record the move in the catalog (`shard_moves`; one per bucket, so two movers cannot race).
//! 2. Copy: the orders the destination lacks, in rounds, until a round finds few (writes continue).
//! 3. Fence: the source marks the bucket `fenced` (PostgreSQL: after the writes in flight commit). Writes
//!    to it now wait (see `orders.rs`); reads still succeed.
//! 4. Copy what is still missing, then compare a SHA-256 over every order of the bucket on both sides.
//!    A mismatch undoes the move (the source owns the bucket again) and fails.
//! 5. Source `gone`, destination `owned`, and the catalog's map places the bucket on the destination (a
//!    new version). Waiting writers and readers reload the map and go to the destination.
//! 6. Delete the bucket's orders from the source and forget the move.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::orders::{BucketState, Row, ShardPool, COLS};
use crate::shards::{Bucket, ShardMove};
use crate::{OrderShards, StoreError};

/// A copy round that finds fewer missing orders than this is the last before the fence.
const CATCH_UP_BELOW: usize = 100;
/// Copy rounds before fencing regardless.
const MAX_ROUNDS: u32 = 5;
/// Orders per copy batch.
const BATCH: usize = 200;

/// What a move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoveReport {
    /// The bucket.
    pub bucket: Bucket,
    /// The shard it left (equal to `to` when it was there already).
    pub from: u16,
    /// The shard it is on now.
    pub to: u16,
    /// Orders copied.
    pub copied: u64,
    /// Copy rounds before the fence.
    pub rounds: u32,
    /// How long writes to the bucket were fenced.
    pub fenced_for: Duration,
    /// Orders in the bucket, verified equal on both sides.
    pub orders: u64,
    /// SHA-256 over the bucket's orders (hex), equal on both sides.
    pub checksum: String,
    /// The map version that places the bucket on `to`.
    pub map_version: u64,
    /// An earlier, unfinished move of this bucket was resumed.
    pub resumed: bool,
}

impl OrderShards {
    /// Moves `bucket` to shard `to` while orders keep coming (see the module docs). Moving a bucket to
    /// where it is already does nothing (or finishes the clean-up of a move that died after its switch).
    pub async fn move_bucket(&self, bucket: Bucket, to: u16) -> Result<MoveReport, StoreError> {
        let map = self.reload().await?;
        if to >= map.shards() {
            return Err(StoreError::Conflict(format!(
                "there is no shard {to} (shards are numbered 0 to {})",
                map.shards() - 1
            )));
        }
        let recorded = self
            .catalog
            .shard_moves()
            .await?
            .into_iter()
            .find(|m| m.bucket == bucket);
        if let Some(m) = &recorded {
            if m.to != to {
                return Err(StoreError::Conflict(format!(
                    "bucket {} is already moving from shard {} to shard {} (since {}); run the move to shard {} to finish it first",
                    bucket.get(),
                    m.from,
                    m.to,
                    m.started_at,
                    m.to
                )));
            }
        }
        let from = map.shard_of(bucket);
        let mut report = MoveReport {
            bucket,
            from,
            to,
            copied: 0,
            rounds: 0,
            fenced_for: Duration::ZERO,
            orders: 0,
            checksum: String::new(),
            map_version: map.version(),
            resumed: recorded.is_some(),
        };
        if from == to {
            if let Some(m) = recorded {
                // The mover died after the switch: finish its clean-up.
                report.from = m.from;
                self.clean_up(bucket, m.from).await?;
            }
            let (n, sum) = self.checksum(to, bucket).await?;
            report.orders = n;
            report.checksum = sum;
            return Ok(report);
        }
        let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.catalog
            .begin_shard_move(&ShardMove {
                bucket,
                from,
                to,
                started_at,
            })
            .await?;
        if recorded.is_none() {
            // Orders left on the destination by an earlier move that was undone are dropped; a resumed
            // move keeps what it copied (a subset of the source: orders never change once written).
            self.set_state(to, bucket, BucketState::Gone, None).await?;
            self.delete_bucket(to, bucket).await?;
        }
        loop {
            report.rounds += 1;
            let n = self.copy_missing(from, to, bucket).await?;
            report.copied += n as u64;
            if n < CATCH_UP_BELOW || report.rounds >= MAX_ROUNDS {
                break;
            }
        }
        let fence = Instant::now();
        self.set_state(from, bucket, BucketState::Fenced, Some(BucketState::Owned))
            .await?;
        report.copied += self.copy_missing(from, to, bucket).await? as u64;
        let (src, dst) = (
            self.checksum(from, bucket).await?,
            self.checksum(to, bucket).await?,
        );
        if src != dst {
            self.set_state(from, bucket, BucketState::Owned, None)
                .await?;
            self.set_state(to, bucket, BucketState::Gone, None).await?;
            self.delete_bucket(to, bucket).await?;
            self.catalog.end_shard_move(bucket).await?;
            return Err(StoreError::Other(
                format!(
                    "bucket {}: shard {from} has {} orders (sha256 {}) but the copy on shard {to} has {} (sha256 {}); \
                     the move was undone and the bucket stays on shard {from}",
                    bucket.get(),
                    src.0,
                    src.1,
                    dst.0,
                    dst.1
                )
                .into(),
            ));
        }
        // Nobody serves the bucket between these two steps (readers and writers wait), so no report
        // counts it twice and no write lands on a shard that is about to lose it.
        self.set_state(from, bucket, BucketState::Gone, None)
            .await?;
        self.set_state(to, bucket, BucketState::Owned, None).await?;
        self.catalog.switch_bucket(bucket, from, to).await?;
        report.fenced_for = fence.elapsed();
        report.map_version = self.reload().await?.version();
        (report.orders, report.checksum) = dst;
        metrics::histogram!("order_bucket_fence_seconds").record(report.fenced_for.as_secs_f64());
        tracing::info!(
            bucket = bucket.get(),
            from,
            to,
            copied = report.copied,
            fenced_ms = report.fenced_for.as_millis() as u64,
            "moved a bucket"
        );
        self.clean_up(bucket, from).await?;
        Ok(report)
    }

    /// After the switch: the source forgets the bucket's orders, and the catalog the move.
    async fn clean_up(&self, bucket: Bucket, from: u16) -> Result<(), StoreError> {
        self.set_state(from, bucket, BucketState::Gone, None)
            .await?;
        self.delete_bucket(from, bucket).await?;
        self.catalog.end_shard_move(bucket).await
    }

    /// Sets a bucket's state on a shard (only if it is `only_from` now, when given). On PostgreSQL the
    /// row is locked FOR UPDATE first, so the change waits for writes in flight (which lock it FOR KEY
    /// SHARE) and later writes see it.
    async fn set_state(
        &self,
        shard: u16,
        bucket: Bucket,
        state: BucketState,
        only_from: Option<BucketState>,
    ) -> Result<(), StoreError> {
        let b = i64::from(bucket.get());
        let only = only_from.map(BucketState::as_str);
        match self.shard(shard) {
            ShardPool::Sqlite(p) => {
                sqlx::query(
                    "INSERT INTO order_buckets (bucket, state) VALUES (?, ?) \
                     ON CONFLICT (bucket) DO UPDATE SET state = excluded.state \
                     WHERE ?3 IS NULL OR order_buckets.state = ?3",
                )
                .bind(b)
                .bind(state.as_str())
                .bind(only)
                .execute(p)
                .await?;
            }
            ShardPool::Postgres(p) => {
                let mut tx = p.begin().await?;
                sqlx::query("SELECT state FROM order_buckets WHERE bucket = $1 FOR UPDATE")
                    .bind(b)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO order_buckets (bucket, state) VALUES ($1, $2) \
                     ON CONFLICT (bucket) DO UPDATE SET state = excluded.state \
                     WHERE $3::text IS NULL OR order_buckets.state = $3::text",
                )
                .bind(b)
                .bind(state.as_str())
                .bind(only)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// The ids of a bucket's orders on a shard, whatever the bucket's state there.
    async fn bucket_ids(&self, shard: u16, bucket: Bucket) -> Result<Vec<i64>, StoreError> {
        let b = i64::from(bucket.get());
        Ok(on_shard!(self.shard(shard), |p, ph| {
            sqlx::query_scalar(&ph("SELECT id FROM orders WHERE bucket = ? ORDER BY id"))
                .bind(b)
                .fetch_all(p)
                .await?
        }))
    }

    /// Copies the bucket's orders that `to` lacks from `from`; returns how many.
    async fn copy_missing(&self, from: u16, to: u16, bucket: Bucket) -> Result<usize, StoreError> {
        let have: HashSet<i64> = self.bucket_ids(to, bucket).await?.into_iter().collect();
        let missing: Vec<i64> = self
            .bucket_ids(from, bucket)
            .await?
            .into_iter()
            .filter(|id| !have.contains(id))
            .collect();
        for ids in missing.chunks(BATCH) {
            let marks = vec!["?"; ids.len()].join(", ");
            let select = format!("SELECT {COLS} FROM orders WHERE id IN ({marks})");
            let rows: Vec<Row> = on_shard!(self.shard(from), |p, ph| {
                let q = ph(&select);
                let mut q = sqlx::query_as(&q);
                for id in ids {
                    q = q.bind(*id);
                }
                q.fetch_all(p).await?
            });
            self.insert_rows(to, bucket, &rows).await?;
        }
        Ok(missing.len())
    }

    /// Writes copied orders, whatever the bucket's state on the shard (the mover's own path).
    async fn insert_rows(
        &self,
        shard: u16,
        bucket: Bucket,
        rows: &[Row],
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let marks = vec!["(?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
        let sql = format!(
            "INSERT INTO orders (id, customer_id, bucket, items, total_minor, currency, created_at) \
             VALUES {marks} ON CONFLICT (id) DO NOTHING"
        );
        let b = i64::from(bucket.get());
        on_shard!(self.shard(shard), |p, ph| {
            let q = ph(&sql);
            let mut q = sqlx::query(&q);
            for (id, customer, items, total, currency, at) in rows {
                q = q
                    .bind(*id)
                    .bind(*customer)
                    .bind(b)
                    .bind(items)
                    .bind(*total)
                    .bind(currency)
                    .bind(at);
            }
            q.execute(p).await?;
        });
        Ok(())
    }

    async fn delete_bucket(&self, shard: u16, bucket: Bucket) -> Result<(), StoreError> {
        let b = i64::from(bucket.get());
        on_shard!(self.shard(shard), |p, ph| {
            sqlx::query(&ph("DELETE FROM orders WHERE bucket = ?"))
                .bind(b)
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// How many orders a shard has in a bucket, and a SHA-256 over them all in id order (every column,
    /// each length-prefixed), whatever the bucket's state there.
    pub async fn checksum(&self, shard: u16, bucket: Bucket) -> Result<(u64, String), StoreError> {
        let b = i64::from(bucket.get());
        let sql = format!("SELECT {COLS} FROM orders WHERE bucket = ? ORDER BY id");
        let rows: Vec<Row> = on_shard!(self.shard(shard), |p, ph| {
            sqlx::query_as(&ph(&sql)).bind(b).fetch_all(p).await?
        });
        let mut h = Sha256::new();
        for (id, customer, items, total, currency, at) in &rows {
            h.update(id.to_be_bytes());
            h.update(customer.to_be_bytes());
            h.update(total.to_be_bytes());
            for s in [items, currency, at] {
                h.update((s.len() as u64).to_be_bytes());
                h.update(s.as_bytes());
            }
        }
        let digest = h.finalize();
        let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
        Ok((rows.len() as u64, hex))
    }
}
