//! Online bucket moves between order shards, on every engine: orders move with their bucket, instances
//! with an old map follow it, writes during a move are neither lost nor doubled, a dead mover is resumed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;
use tenfold_store::shards::{bucket_of, Bucket, OrderId, ShardMove};
use tenfold_store::{Order, OrderLine, OrderShards, Store, StoreError};
use tenfold_test_support::{engines, Engine, TestDb};

/// Distinct order ids across the whole test binary.
static SEQ: AtomicU64 = AtomicU64::new(0);

fn order(customer: i64) -> Order {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    Order {
        id: OrderId::new(
            bucket_of(customer),
            1_800_000_000_000 + n / 4096,
            (n % 4096) as u16,
        ),
        customer_id: customer,
        lines: vec![OrderLine {
            product_id: 7,
            name: format!("Lamp {n}"),
            price_minor: 100 + n as i64 % 50,
            quantity: 1,
        }],
        total_minor: 100 + n as i64 % 50,
        currency: "EUR".into(),
        created_at: "2027-01-15T08:00:00.000000Z".into(),
    }
}

/// The first `k` customers whose orders fall in `b`.
fn customers_in(b: Bucket, k: usize) -> Vec<i64> {
    (1..).filter(|&c| bucket_of(c) == b).take(k).collect()
}

struct Cluster {
    catalog: Store,
    catalog_url: String,
    urls: Vec<String>,
    _dbs: Vec<TestDb>,
}

impl Cluster {
    async fn new(engine: Engine, shards: usize) -> Cluster {
        let cat = TestDb::new(engine).await;
        let catalog = cat.store().await;
        let catalog_url = cat.url.clone();
        let mut dbs = vec![cat];
        let mut urls = Vec::new();
        for _ in 0..shards {
            let d = TestDb::new(engine).await;
            urls.push(d.url.clone());
            dbs.push(d);
        }
        Cluster {
            catalog,
            catalog_url,
            urls,
            _dbs: dbs,
        }
    }

    /// Another instance's view: its own pools, and the map as stored now.
    async fn instance(&self) -> OrderShards {
        OrderShards::connect(self.catalog.clone(), &self.urls, Duration::from_secs(15))
            .await
            .unwrap()
    }

    /// Runs SQL on shard `n` directly (what a crashed mover leaves behind).
    async fn raw(&self, n: usize, sql: &str) {
        Self::raw_on(&self.urls[n], sql).await;
    }

    /// Runs SQL on the catalog directly.
    async fn raw_catalog(&self, sql: &str) {
        Self::raw_on(&self.catalog_url, sql).await;
    }

    async fn raw_on(url: &str, sql: &str) {
        if url.starts_with("sqlite:") {
            let p = sqlx::SqlitePool::connect(url).await.unwrap();
            sqlx::raw_sql(sql).execute(&p).await.unwrap();
            p.close().await;
        } else {
            let p = sqlx::PgPool::connect(url).await.unwrap();
            sqlx::raw_sql(sql).execute(&p).await.unwrap();
            p.close().await;
        }
    }
}

async fn ids_of(shards: &OrderShards, customer: i64) -> Vec<i64> {
    let mut out = Vec::new();
    let mut before = None;
    loop {
        let page = shards.by_customer(customer, before, 7).await.unwrap();
        if page.is_empty() {
            return out;
        }
        before = page.last().map(|o| o.id.get());
        out.extend(page.iter().map(|o| o.id.get()));
    }
}

#[tokio::test]
async fn a_bucket_moves_with_its_orders_and_instances_with_the_old_map_follow() {
    for engine in engines() {
        let c = Cluster::new(engine, 2).await;
        let a = c.instance().await;
        let x = bucket_of(1);
        let from = a.map().shard_of(x);
        let to = 1 - from;
        let movers = customers_in(x, 3);
        let mut placed: HashMap<i64, Vec<i64>> = HashMap::new();
        for &cust in movers.iter().chain(&[5_000, 5_001, 5_002, 5_003]) {
            for _ in 0..10 {
                let o = order(cust);
                a.insert(&o).await.unwrap();
                placed.entry(cust).or_default().push(o.id.get());
            }
        }
        let before = a.checksum(from, x).await.unwrap();
        assert_eq!(before.0, 30);
        // Instances that opened before the move and are never told about it.
        let stale = c.instance().await;
        let stale_writer = c.instance().await;

        let r = a.move_bucket(x, to).await.unwrap();
        assert_eq!((r.from, r.to, r.orders, r.copied), (from, to, 30, 30));
        assert_eq!(
            r.checksum, before.1,
            "{engine:?}: same orders after the move"
        );
        assert_eq!(r.map_version, 2);
        assert!(!r.resumed);
        assert_eq!(a.map().shard_of(x), to);
        assert_eq!(a.checksum(from, x).await.unwrap().0, 0, "source cleaned");
        assert_eq!(a.checksum(to, x).await.unwrap(), before);
        assert!(c.catalog.shard_moves().await.unwrap().is_empty());

        // The stale instance still routes the bucket to the old shard; it finds every order anyway.
        assert_eq!(stale.map().version(), 1);
        for (&cust, ids) in &placed {
            for &id in ids {
                let o = stale.get(OrderId::from_i64(id).unwrap()).await.unwrap();
                assert_eq!(o.map(|o| o.customer_id), Some(cust), "{engine:?}");
            }
            let mut want = ids.clone();
            want.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(ids_of(&stale, cust).await, want, "{engine:?}");
        }
        assert_eq!(stale.map().version(), 2, "a miss reloads the map");

        // A write through the other stale instance lands on the new shard.
        assert_eq!(stale_writer.map().version(), 1);
        stale_writer.insert(&order(movers[0])).await.unwrap();
        assert_eq!(stale_writer.map().version(), 2);
        stale.insert(&order(movers[1])).await.unwrap();
        assert_eq!(a.checksum(to, x).await.unwrap().0, 32);
        assert_eq!(a.checksum(from, x).await.unwrap().0, 0);
        assert_eq!(a.counts().await.unwrap().iter().sum::<i64>(), 72);
        let revenue = a.revenue_by_day(None, None).await.unwrap();
        assert_eq!(revenue.iter().map(|d| d.orders).sum::<i64>(), 72);

        // Moving it where it is does nothing; to a shard that does not exist is refused.
        let again = a.move_bucket(x, to).await.unwrap();
        assert_eq!(
            (again.from, again.to, again.copied, again.orders),
            (to, to, 0, 32)
        );
        assert!(matches!(
            a.move_bucket(x, 2).await,
            Err(StoreError::Conflict(m)) if m.contains("no shard 2")
        ));
        for s in [a, stale, stale_writer] {
            s.close().await;
        }
    }
}

#[tokio::test]
async fn orders_written_during_moves_are_all_kept_once() {
    for engine in engines() {
        let c = Cluster::new(engine, 2).await;
        let a = Arc::new(c.instance().await);
        let b = Arc::new(c.instance().await);
        let x = bucket_of(2);
        let home = a.map().shard_of(x);
        let customers = customers_in(x, 4);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for (w, &customer) in customers.iter().enumerate() {
            let (via, stop) = (if w % 2 == 0 { a.clone() } else { b.clone() }, stop.clone());
            writers.push(tokio::spawn(async move {
                let mut ids = Vec::new();
                while !stop.load(Ordering::Relaxed) && ids.len() < 5_000 {
                    let o = order(customer);
                    via.insert(&o).await.expect("no write fails during a move");
                    ids.push(o.id.get());
                }
                ids
            }));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let there = a.move_bucket(x, 1 - home).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let back = a.move_bucket(x, home).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.store(true, Ordering::Relaxed);
        let mut all = BTreeSet::new();
        let mut written = 0;
        for w in writers {
            let ids = w.await.unwrap();
            written += ids.len();
            all.extend(ids);
        }
        assert_eq!(all.len(), written);
        assert!(there.copied > 0 && back.copied > 0, "{there:?} {back:?}");
        eprintln!(
            "{engine:?}: {written} orders written; fenced {:?} and {:?}",
            there.fenced_for, back.fenced_for
        );
        // Every order once, on the bucket's shard, found by id and by customer from both instances.
        assert_eq!(a.checksum(home, x).await.unwrap().0, written as u64);
        assert_eq!(a.checksum(1 - home, x).await.unwrap().0, 0);
        let mut listed = Vec::new();
        for &cust in &customers {
            listed.extend(ids_of(&b, cust).await);
        }
        assert_eq!(listed.len(), written, "no duplicates, none missing");
        assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), all);
        for &id in all.iter().step_by(7) {
            assert!(a
                .get(OrderId::from_i64(id).unwrap())
                .await
                .unwrap()
                .is_some());
            assert!(b
                .get(OrderId::from_i64(id).unwrap())
                .await
                .unwrap()
                .is_some());
        }
        a.close().await;
        b.close().await;
    }
}

/// What a mover that died leaves in the catalog: its claim, silent since long ago.
async fn dead_mover(c: &Cluster, bucket: Bucket, from: u16, to: u16) {
    let silence = format!(
        "UPDATE shard_moves SET active_ms = 0 WHERE bucket = {}",
        bucket.get()
    );
    c.raw_catalog(&silence).await;
    let m = ShardMove {
        bucket,
        from,
        to,
        started_at: "2027-01-01T00:00:00Z".into(),
        owner: "dead-mover".into(),
        active_ms: 0,
    };
    assert_eq!(
        c.catalog
            .claim_shard_move(&m, Duration::from_secs(30))
            .await
            .unwrap()
            .owner,
        "dead-mover"
    );
    c.raw_catalog(&silence).await;
}

#[tokio::test]
async fn a_dead_movers_move_is_resumed_and_a_fence_left_behind_bounds_the_wait() {
    for engine in engines() {
        let c = Cluster::new(engine, 2).await;
        let a = c.instance().await;
        let x = bucket_of(3);
        let from = a.map().shard_of(x);
        let to = 1 - from;
        let cust = customers_in(x, 1)[0];
        for _ in 0..5 {
            a.insert(&order(cust)).await.unwrap();
        }
        // A live mover's claim is respected: another run is refused.
        let live = ShardMove {
            bucket: x,
            from,
            to,
            started_at: "2027-01-01T00:00:00Z".into(),
            owner: "live-mover".into(),
            active_ms: 0,
        };
        c.catalog
            .claim_shard_move(&live, Duration::from_secs(30))
            .await
            .unwrap();
        assert!(matches!(
            a.move_bucket(x, to).await,
            Err(StoreError::Conflict(m)) if m.contains("another mover")
        ));
        // That mover dies fenced.
        dead_mover(&c, x, from, to).await;
        c.raw(
            usize::from(from),
            &format!(
                "UPDATE order_buckets SET state = 'fenced' WHERE bucket = {}",
                x.get()
            ),
        )
        .await;
        // Writes wait for the fence, then fail clearly; reads go on.
        let patient = c
            .instance()
            .await
            .with_fence_wait(Duration::from_millis(300));
        let t = std::time::Instant::now();
        let err = patient.insert(&order(cust)).await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.to_string().contains("being moved")),
            "{err:?}"
        );
        assert!(t.elapsed() >= Duration::from_millis(300));
        assert_eq!(ids_of(&patient, cust).await.len(), 5);
        // A move of the bucket elsewhere is refused while this one is unfinished.
        assert!(matches!(
            a.move_bucket(x, 2).await,
            Err(StoreError::Conflict(m)) if m.contains("no shard 2")
        ));
        // Running the same move again finishes it.
        let r = a.move_bucket(x, to).await.unwrap();
        assert!(r.resumed);
        assert_eq!((r.from, r.to, r.orders), (from, to, 5));
        patient.insert(&order(cust)).await.unwrap();
        assert_eq!(ids_of(&patient, cust).await.len(), 6);
        assert!(c.catalog.shard_moves().await.unwrap().is_empty());
        a.close().await;
        patient.close().await;
    }
}

#[tokio::test]
async fn an_unfinished_move_can_be_abandoned_and_one_past_its_flip_only_finished() {
    for engine in engines() {
        let c = Cluster::new(engine, 2).await;
        let a = c.instance().await;
        let x = bucket_of(5);
        let from = a.map().shard_of(x);
        let to = 1 - from;
        let cust = customers_in(x, 1)[0];
        for _ in 0..4 {
            a.insert(&order(cust)).await.unwrap();
        }
        // Abandon: a dead mover had fenced the source and copied some rows.
        dead_mover(&c, x, from, to).await;
        c.raw(
            usize::from(from),
            &format!(
                "UPDATE order_buckets SET state = 'fenced' WHERE bucket = {}",
                x.get()
            ),
        )
        .await;
        let r = a.move_bucket(x, from).await.unwrap();
        assert_eq!((r.from, r.to, r.orders), (from, from, 4));
        assert!(c.catalog.shard_moves().await.unwrap().is_empty());
        a.insert(&order(cust)).await.unwrap(); // writable again, on the source
        assert_eq!(a.checksum(from, x).await.unwrap().0, 5);
        assert_eq!(a.checksum(to, x).await.unwrap().0, 0);

        // Past the flip: a mover copied everything, made the destination the owner and died before the
        // switch. Simulated from a finished move by putting the catalog's map back.
        a.move_bucket(x, to).await.unwrap();
        c.raw_catalog(&format!(
            "UPDATE shard_map SET shard = {from} WHERE bucket = {}; \
             UPDATE shard_map_meta SET version = version + 1",
            x.get()
        ))
        .await;
        dead_mover(&c, x, from, to).await;
        // It cannot be abandoned (the destination may already hold newer orders) ...
        assert!(matches!(
            a.move_bucket(x, from).await,
            Err(StoreError::Conflict(m)) if m.contains("finish it")
        ));
        // ... and running it again finishes it with the switch alone.
        let stale = c.instance().await;
        assert_eq!(stale.map().shard_of(x), from);
        let r = a.move_bucket(x, to).await.unwrap();
        assert!(r.resumed);
        assert_eq!((r.from, r.to, r.copied, r.orders), (from, to, 0, 5));
        assert_eq!(ids_of(&stale, cust).await.len(), 5);
        assert_eq!(a.counts().await.unwrap().iter().sum::<i64>(), 5);
        a.close().await;
        stale.close().await;
    }
}

#[tokio::test]
async fn movers_racing_on_one_bucket_never_lose_or_double_an_order() {
    for engine in engines() {
        let c = Cluster::new(engine, 3).await;
        let (a, b) = (c.instance().await, c.instance().await);
        let x = bucket_of(6);
        let home = a.map().shard_of(x);
        let cust = customers_in(x, 1)[0];
        for _ in 0..300 {
            a.insert(&order(cust)).await.unwrap();
        }
        let (t1, t2) = ((home + 1) % 3, (home + 2) % 3);
        for (m1, m2) in [(t1, t1), (t1, t2)] {
            let (r1, r2) = tokio::join!(a.move_bucket(x, m1), b.move_bucket(x, m2));
            let moved = [&r1, &r2]
                .iter()
                .filter(|r| matches!(r, Ok(r) if r.from != r.to))
                .count();
            assert!(moved <= 1, "{engine:?}: {r1:?} {r2:?}");
            for r in [&r1, &r2] {
                if let Err(e) = r {
                    assert!(matches!(e, StoreError::Conflict(_)), "{e:?}");
                }
            }
            // Whatever happened, a move left unfinished is finished by running it again.
            for m in c.catalog.shard_moves().await.unwrap() {
                c.raw_catalog("UPDATE shard_moves SET active_ms = 0").await;
                a.move_bucket(m.bucket, m.to).await.unwrap();
            }
            assert_eq!(ids_of(&b, cust).await.len(), 300, "{engine:?}");
            assert_eq!(a.counts().await.unwrap().iter().sum::<i64>(), 300);
            let at = a.reload().await.unwrap().shard_of(x);
            assert_eq!(a.checksum(at, x).await.unwrap().0, 300);
        }
        a.close().await;
        b.close().await;
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// Customer (index), through instance (index).
    Insert(usize, usize),
    /// The bucket of customer (index) to shard.
    Move(usize, u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..6, 0usize..2).prop_map(|(c, i)| Op::Insert(c, i)),
        1 => (0usize..6, 0u16..3).prop_map(|(c, s)| Op::Move(c, s)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, failure_persistence: None, ..ProptestConfig::default() })]

    /// Every order is found by id and by customer, from an instance that moved buckets and from one that
    /// never heard of the moves, after any sequence of moves.
    #[test]
    fn every_order_is_found_after_any_sequence_of_moves(ops in proptest::collection::vec(op(), 1..25)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let c = Cluster::new(Engine::Sqlite, 3).await;
            let insts = [c.instance().await, c.instance().await];
            // Two customers share a bucket; the others have their own.
            let shared = customers_in(bucket_of(10), 2);
            let customers = [shared[0], shared[1], 10, 11, 12, 13];
            let mut placed: HashMap<i64, BTreeSet<i64>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Insert(ci, i) => {
                        let o = order(customers[ci]);
                        insts[i].insert(&o).await.unwrap();
                        placed.entry(customers[ci]).or_default().insert(o.id.get());
                    }
                    Op::Move(ci, s) => {
                        insts[0].move_bucket(bucket_of(customers[ci]), s).await.unwrap();
                    }
                }
            }
            let total: usize = placed.values().map(BTreeSet::len).sum();
            for inst in &insts {
                for (&cust, ids) in &placed {
                    for &id in ids {
                        let o = inst.get(OrderId::from_i64(id).unwrap()).await.unwrap();
                        assert_eq!(o.map(|o| o.customer_id), Some(cust));
                    }
                    let listed = ids_of(inst, cust).await;
                    assert_eq!(listed.len(), ids.len());
                    assert_eq!(&listed.into_iter().collect::<BTreeSet<_>>(), ids);
                }
                assert_eq!(inst.counts().await.unwrap().iter().sum::<i64>(), total as i64);
            }
            for i in insts {
                i.close().await;
            }
        });
    }
}
