//! The cost of routing one order request: the customer's bucket (SplitMix64), a new order id, and the
//! shard from the map in use (a read lock and an `Arc` clone, as every insert and read does).
//!
//!   cargo bench -p tenfold-store --bench routing
//!
//! Prints nanoseconds per route; bench/order-writes.sh puts it beside the per-order request time.

#![allow(clippy::unwrap_used)] // a benchmark that cannot set up should stop loudly

use std::hint::black_box;
use std::time::{Duration, Instant};

use tenfold_store::shards::{bucket_of, OrderId};
use tenfold_store::OrderShards;
use tenfold_test_support::{Engine, TestDb};

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let catalog = TestDb::new(Engine::Sqlite).await;
        let dir = tempfile::tempdir().unwrap();
        let urls: Vec<String> = (0..4)
            .map(|i| format!("sqlite://{}/orders-{i}.db", dir.path().display()))
            .collect();
        let shards = OrderShards::connect(catalog.store().await, &urls, Duration::from_secs(5))
            .await
            .unwrap();
        let n: u64 = 20_000_000;
        let mut best = f64::MAX;
        for _ in 0..5 {
            let t = Instant::now();
            let mut acc = 0u64;
            for c in 0..n {
                let b = bucket_of(black_box(c as i64));
                let id = OrderId::new(b, 1_800_000_000_000 + c, c as u16);
                acc = acc.wrapping_add(u64::from(shards.map().shard_of_order(id)));
            }
            black_box(acc);
            best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
        }
        println!("routing: {best:.1} ns per order (bucket, id, shard; best of 5 x {n})");
        shards.close().await;
    });
}
