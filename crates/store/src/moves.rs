//! Online bucket moves (`tenfold shards move`): copy a bucket's orders to another shard while it takes
//! writes, catch up, fence writes briefly, copy the rest, verify by checksum, switch the map.
//!
//! The steps, each safe to repeat, so a mover that died is resumed by running the same move again:
//! 1. Record the move in the catalog (`shard_moves`, one per bucket) and claim it: each run has an owner
//!    name, renewed at every step; another run may take a move over only after 30 s of silence, and a
//!    mover that finds its claim taken stops.
//! 2. Copy: the orders the destination lacks, in rounds, until a round finds few (writes continue).
//! 3. Fence: the source marks the bucket `fenced` (PostgreSQL: after the writes in flight commit). Writes
//!    to it now wait (see `orders.rs`); reads still succeed.
//! 4. Copy what is still missing, then compare a SHA-256 over every order of the bucket on both sides.
//!    A mismatch, or any error while fenced, abandons the move (the source owns the bucket again).
//! 5. Source `gone`, destination `owned`, and the catalog's map places the bucket on the destination (a
//!    new version). Waiting writers and readers reload the map and go to the destination.
//! 6. Delete the bucket's orders from the source and forget the move.
//!
//! A rerun after a crash reads both shards' states: destination `owned` and source `gone` means only
//! the switch (step 5) is left; otherwise it copies again from step 2. Running the move to the source
//! instead abandons it, unless the destination already owns the bucket.

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

/// A mover silent this long may be taken over by another run of the same move.
const STALE_MOVER: Duration = Duration::from_secs(30);

impl OrderShards {
    /// Moves `bucket` to shard `to` while orders keep coming (see the module docs). Moving a bucket to
    /// where it is already does nothing (or finishes the clean-up of a move that died after its switch);
    /// moving it back to the source of an unfinished move abandons that move, if it has not reached its
    /// switch.
    pub async fn move_bucket(&self, bucket: Bucket, to: u16) -> Result<MoveReport, StoreError> {
        let me = format!("mover-{:016x}", rand::random::<u64>());
        let r = self.move_as(bucket, to, &me).await;
        if r.is_err() {
            // Whatever this run left, the next run may resume it at once.
            let _ = self.catalog.release_shard_move(bucket, &me).await;
        }
        r
    }

    async fn move_as(&self, bucket: Bucket, to: u16, me: &str) -> Result<MoveReport, StoreError> {
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
        let claim = |from: u16, to: u16| ShardMove {
            bucket,
            from,
            to,
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            owner: me.to_owned(),
            active_ms: 0,
        };
        if let Some(r) = &recorded {
            if r.to != to {
                if to == r.from && from == r.from {
                    self.own(&claim(r.from, r.to)).await?;
                    self.abandon(bucket, r.from, r.to, me).await?;
                    report.to = r.from;
                    (report.orders, report.checksum) = self.checksum(r.from, bucket).await?;
                    return Ok(report);
                }
                return Err(StoreError::Conflict(format!(
                    "bucket {} is already moving from shard {} to shard {} (since {}); run the move to shard {} to \
                     finish it, or to shard {} to abandon it",
                    bucket.get(),
                    r.from,
                    r.to,
                    r.started_at,
                    r.to,
                    r.from
                )));
            }
        }
        if from == to {
            if let Some(r) = &recorded {
                // The mover died after the switch: finish its clean-up.
                self.own(&claim(r.from, r.to)).await?;
                report.from = r.from;
                self.clean_up(bucket, r.from, me).await?;
            }
            (report.orders, report.checksum) = self.checksum(to, bucket).await?;
            return Ok(report);
        }
        self.own(&claim(from, to)).await?;
        let (src, dst) = (
            self.state(from, bucket).await?,
            self.state(to, bucket).await?,
        );
        if src == Some(BucketState::Gone) && dst == Some(BucketState::Owned) {
            // A mover died between its state flip and the switch: the destination has every order (and
            // maybe newer ones, from instances whose older map names it); only the switch is left.
            (report.orders, report.checksum) = self.checksum(to, bucket).await?;
            return self.switch(report, me).await;
        }
        if recorded.is_none() || dst != Some(BucketState::Gone) {
            // Orders left on the destination by an earlier move that was abandoned are dropped; a resumed
            // move keeps what it copied (a subset of the source: orders never change once written).
            self.set_state(to, bucket, BucketState::Gone, None).await?;
            self.delete_bucket(to, bucket).await?;
        }
        loop {
            report.rounds += 1;
            let n = self.copy_missing(from, to, bucket).await?;
            report.copied += n as u64;
            self.still_mine(bucket, me).await?;
            if n < CATCH_UP_BELOW || report.rounds >= MAX_ROUNDS {
                break;
            }
        }
        let fence = Instant::now();
        self.set_state(from, bucket, BucketState::Fenced, Some(BucketState::Owned))
            .await?;
        match self.fenced_part(from, to, bucket, me, &mut report).await {
            Ok(()) => {}
            Err(e) => {
                // Not switched: give the bucket back to the source, so writes do not stay blocked.
                let _ = self
                    .set_state(from, bucket, BucketState::Owned, Some(BucketState::Fenced))
                    .await;
                return Err(e);
            }
        }
        // Nobody serves the bucket between these two steps (readers and writers wait), so no write lands
        // on a shard that is about to lose it.
        if !self
            .set_state(from, bucket, BucketState::Gone, Some(BucketState::Fenced))
            .await?
        {
            return Err(StoreError::Conflict(format!(
                "bucket {} is no longer fenced on shard {from}: another mover is at work",
                bucket.get()
            )));
        }
        self.set_state(to, bucket, BucketState::Owned, None).await?;
        let report = self.switch(report, me).await?;
        let fenced_for = fence.elapsed();
        metrics::histogram!("order_bucket_fence_seconds").record(fenced_for.as_secs_f64());
        Ok(MoveReport {
            fenced_for,
            ..report
        })
    }

    /// Claims the recorded move for this mover, or says who holds it.
    async fn own(&self, m: &ShardMove) -> Result<(), StoreError> {
        let got = self.catalog.claim_shard_move(m, STALE_MOVER).await?;
        if got.owner == m.owner {
            Ok(())
        } else {
            let idle = (chrono::Utc::now().timestamp_millis() - got.active_ms).max(0);
            Err(StoreError::Conflict(format!(
                "bucket {} is being moved from shard {} to shard {} by another mover (active {idle} ms ago); \
                 a mover silent for {} s may be taken over",
                m.bucket.get(),
                got.from,
                got.to,
                STALE_MOVER.as_secs()
            )))
        }
    }

    async fn still_mine(&self, bucket: Bucket, me: &str) -> Result<(), StoreError> {
        if self.catalog.touch_shard_move(bucket, me).await? {
            Ok(())
        } else {
            Err(StoreError::Conflict(format!(
                "another mover took over the move of bucket {}",
                bucket.get()
            )))
        }
    }

    /// While the source is fenced: the last copy and the checksums (a mismatch abandons the move).
    async fn fenced_part(
        &self,
        from: u16,
        to: u16,
        bucket: Bucket,
        me: &str,
        report: &mut MoveReport,
    ) -> Result<(), StoreError> {
        report.copied += self.copy_missing(from, to, bucket).await? as u64;
        let (src, dst) = (
            self.checksum(from, bucket).await?,
            self.checksum(to, bucket).await?,
        );
        if src != dst {
            self.abandon(bucket, from, to, me).await?;
            return Err(StoreError::Other(
                format!(
                    "bucket {}: shard {from} has {} orders (sha256 {}) but the copy on shard {to} has {} (sha256 {}); \
                     the move was abandoned and the bucket stays on shard {from}",
                    bucket.get(),
                    src.0,
                    src.1,
                    dst.0,
                    dst.1
                )
                .into(),
            ));
        }
        self.still_mine(bucket, me).await?;
        (report.orders, report.checksum) = dst;
        Ok(())
    }

    /// Switches the catalog's map (retrying: until it is done, writes to the bucket wait), then cleans up.
    async fn switch(&self, mut report: MoveReport, me: &str) -> Result<MoveReport, StoreError> {
        let (bucket, from, to) = (report.bucket, report.from, report.to);
        let mut tries = 0;
        loop {
            tries += 1;
            match self.catalog.switch_bucket(bucket, from, to).await {
                Ok(()) => break,
                Err(e) if tries >= 5 => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, bucket = bucket.get(), "switching the shard map failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * tries)).await;
                }
            }
        }
        report.map_version = self.reload().await?.version();
        tracing::info!(
            bucket = bucket.get(),
            from,
            to,
            copied = report.copied,
            "moved a bucket"
        );
        self.clean_up(bucket, from, me).await?;
        Ok(report)
    }

    /// Abandons an unswitched move: the destination forgets its copy, the source owns the bucket again.
    /// Refused once the destination owns the bucket (only the switch is left: finish the move instead).
    async fn abandon(
        &self,
        bucket: Bucket,
        from: u16,
        to: u16,
        me: &str,
    ) -> Result<(), StoreError> {
        if self.state(to, bucket).await? == Some(BucketState::Owned) {
            return Err(StoreError::Conflict(format!(
                "the move of bucket {} to shard {to} is past its last step but one; run it to shard {to} to finish it",
                bucket.get()
            )));
        }
        self.set_state(to, bucket, BucketState::Gone, None).await?;
        self.delete_bucket(to, bucket).await?;
        self.set_state(from, bucket, BucketState::Owned, None)
            .await?;
        self.catalog.end_shard_move(bucket, me).await
    }

    /// After the switch: the source forgets the bucket's orders, and the catalog the move.
    async fn clean_up(&self, bucket: Bucket, from: u16, me: &str) -> Result<(), StoreError> {
        self.set_state(from, bucket, BucketState::Gone, None)
            .await?;
        self.delete_bucket(from, bucket).await?;
        self.catalog.end_shard_move(bucket, me).await
    }

    /// A bucket's state on a shard (`None`: the shard has no row for it).
    async fn state(&self, shard: u16, bucket: Bucket) -> Result<Option<BucketState>, StoreError> {
        let b = i64::from(bucket.get());
        let s: Option<String> = on_shard!(self.shard(shard), |p, ph| {
            sqlx::query_scalar(&ph("SELECT state FROM order_buckets WHERE bucket = ?"))
                .bind(b)
                .fetch_optional(p)
                .await?
        });
        Ok(s.as_deref().and_then(BucketState::parse))
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
    ) -> Result<bool, StoreError> {
        let b = i64::from(bucket.get());
        let only = only_from.map(BucketState::as_str);
        let changed = match self.shard(shard) {
            ShardPool::Sqlite(p) => sqlx::query(
                "INSERT INTO order_buckets (bucket, state) VALUES (?1, ?2) \
                 ON CONFLICT (bucket) DO UPDATE SET state = excluded.state \
                 WHERE ?3 IS NULL OR order_buckets.state = ?3",
            )
            .bind(b)
            .bind(state.as_str())
            .bind(only)
            .execute(p)
            .await?
            .rows_affected(),
            ShardPool::Postgres(p) => {
                // FOR UPDATE first: it conflicts with the FOR KEY SHARE of writes in flight (the upsert
                // alone would take FOR NO KEY UPDATE, which does not), so the fence waits for them, and a
                // write arriving meanwhile waits for the fence and then re-reads the state. Load-bearing.
                let mut tx = p.begin().await?;
                sqlx::query("SELECT state FROM order_buckets WHERE bucket = $1 FOR UPDATE")
                    .bind(b)
                    .execute(&mut *tx)
                    .await?;
                let n = sqlx::query(
                    "INSERT INTO order_buckets (bucket, state) VALUES ($1, $2) \
                     ON CONFLICT (bucket) DO UPDATE SET state = excluded.state \
                     WHERE $3::text IS NULL OR order_buckets.state = $3::text",
                )
                .bind(b)
                .bind(state.as_str())
                .bind(only)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                tx.commit().await?;
                n
            }
        };
        Ok(changed > 0)
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
