//! The cache with Redis as L2 and invalidation channel, against a real Redis: the shared one at
//! `TENFOLD_TEST_REDIS_URL` (each test under its own key prefix), and private `redis-server`s on free
//! ports for the tests that stop, slow down or fill Redis.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use std::sync::Arc;

use tenfold_cache::{Cache, Change, Key, RedisOptions, Settings, Source, Value};
use tenfold_test_support::RedisServer;

use common::{eventually, present, Row};

fn redis_url() -> Option<String> {
    std::env::var("TENFOLD_TEST_REDIS_URL").ok()
}

/// A patient Redis client, for tests of coordination through Redis: a loaded machine must not turn a
/// slow answer into "Redis is down".
fn opts(url: &str, prefix: &str) -> RedisOptions {
    RedisOptions {
        url: url.to_owned(),
        timeout: Duration::from_millis(1_000),
        prefix: prefix.to_owned(),
    }
}

/// The production deadline (50 ms), for the tests of a stopped, stalled or full Redis.
fn fast_opts(url: &str, prefix: &str) -> RedisOptions {
    RedisOptions {
        timeout: Duration::from_millis(50),
        ..opts(url, prefix)
    }
}

fn prefix() -> String {
    format!("tenfold-test:{}:", rand::random::<u64>())
}

fn settings() -> Settings {
    Settings {
        xfetch_beta: 0.0,
        ..Settings::default()
    }
}

#[tokio::test]
async fn concurrent_misses_on_several_instances_load_once_in_total() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let instances: Vec<Cache> = (0..3)
        .map(|_| Cache::with_redis(settings(), &opts(&url, &p)).unwrap())
        .collect();
    // Let the background connections come up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The load takes 100 ms, well inside the 300 ms other instances wait on a lease.
    let row = Row::new(5, 100);
    let mut tasks = Vec::new();
    for i in 0..999 {
        let c = instances[i % 3].clone();
        let l = row.loader();
        tasks.push(tokio::spawn(async move {
            c.get_or_load(Key::Product(11), l).await.unwrap().0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), present(5));
    }
    assert_eq!(
        row.loads(),
        1,
        "one database load across three instances (a lease)"
    );
    // A fourth instance with an empty L1 finds it in Redis.
    let before = row.loads();
    let other = Cache::with_redis(settings(), &opts(&url, &p)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (v, _) = other
        .get_or_load(Key::Product(11), row.loader())
        .await
        .unwrap();
    assert_eq!(v, present(5));
    assert_eq!(row.loads(), before, "served from Redis, not the database");
}

#[tokio::test]
async fn an_older_value_never_replaces_a_newer_one_in_redis() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let new_instance = || async {
        let c = Cache::with_redis(settings(), &opts(&url, &p)).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        c
    };
    let a = new_instance().await;
    let row = Row::new(1, 0);
    a.get_or_load(Key::Product(3), row.loader()).await.unwrap();
    // The row is written (version 2) and A invalidates: Redis holds a marker for version 2.
    row.set(2);
    a.invalidate(Change {
        products: vec![(3, Some(2))],
        ..Change::default()
    })
    .await;
    // A straggler that read version 1 before the write tries to store it: Redis refuses.
    let straggler = Row::new(1, 0);
    let b = new_instance().await;
    assert_eq!(
        b.get_or_load(Key::Product(3), straggler.loader())
            .await
            .unwrap()
            .0,
        present(1)
    );
    // The next reader with an empty L1 gets version 2 (from the database, then from Redis).
    let c = new_instance().await;
    assert_eq!(
        c.get_or_load(Key::Product(3), row.loader())
            .await
            .unwrap()
            .0,
        present(2)
    );
    let d = new_instance().await;
    let loads = row.loads();
    assert_eq!(
        d.get_or_load(Key::Product(3), row.loader())
            .await
            .unwrap()
            .0,
        present(2)
    );
    assert_eq!(row.loads(), loads, "version 2 came from Redis");
    // Deleted: nobody can put the row back.
    a.invalidate(Change {
        products: vec![(3, None)],
        ..Change::default()
    })
    .await;
    let e = new_instance().await;
    let before = straggler.loads();
    assert_eq!(
        e.get_or_load(Key::Product(3), straggler.loader())
            .await
            .unwrap()
            .0,
        Value::Absent,
        "Redis says deleted"
    );
    assert_eq!(straggler.loads(), before, "answered from Redis, no load");
    row.set(0);
    let f = new_instance().await;
    assert_eq!(
        f.get_or_load(Key::Product(3), row.loader())
            .await
            .unwrap()
            .0,
        Value::Absent
    );
}

#[tokio::test]
async fn invalidations_travel_over_redis_pubsub() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let a = Cache::with_redis(settings(), &opts(&url, &p)).unwrap();
    let b = Cache::with_redis(settings(), &opts(&url, &p)).unwrap();
    // Only the Redis channel: no database feed in this test.
    let _ga = a.start_bus(vec![a.redis_feed().unwrap()]);
    let _gb = b.start_bus(vec![b.redis_feed().unwrap()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = Row::new(1, 0);
    b.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    let page = b.page_key("all", "limit=20");
    row.set(2);
    let start = Instant::now();
    a.invalidate(Change {
        products: vec![(1, Some(2))],
        tags: vec!["all".into()],
        all_lists: false,
    })
    .await;
    eventually(Duration::from_secs(3), "B sees version 2", || {
        let b = b.clone();
        let l = row.loader();
        async move { b.get_or_load(Key::Product(1), l).await.unwrap().0 == present(2) }
    })
    .await;
    eprintln!("visible through B after {:?}", start.elapsed());
    assert_ne!(
        b.page_key("all", "limit=20"),
        page,
        "B's list pages moved on"
    );
}

/// Reads `keys` products through `cache` for `for_`, with now and then a write (an invalidation) and a
/// read of a key never read before (an L1 miss, so it goes to Redis); every call must succeed. Returns
/// how many reads ran and the slowest call.
async fn read_for(cache: &Cache, row: &Row, keys: i64, for_: Duration) -> (usize, Duration) {
    let end = Instant::now() + for_;
    let (mut n, mut worst) = (0usize, Duration::ZERO);
    let mut id = 0;
    while Instant::now() < end {
        id = id % keys + 1;
        n += 1;
        let key = if n % 10 == 5 {
            100_000 + rand::random::<u32>() as i64
        } else {
            id
        };
        let t = Instant::now();
        let (v, _) = cache
            .get_or_load(Key::Product(key), row.loader())
            .await
            .unwrap();
        assert_eq!(v, present(1));
        if n % 10 == 0 {
            cache
                .invalidate(Change {
                    products: vec![(id, Some(1))],
                    ..Change::default()
                })
                .await;
        }
        worst = worst.max(t.elapsed());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (n, worst)
}

/// Keeps reading (so that probes reach Redis) until the breaker has closed again.
async fn until_breaker_closed(cache: &Cache, row: &Row) {
    eventually(
        Duration::from_secs(15),
        "the breaker closes again",
        || async {
            read_for(cache, row, 50, Duration::from_millis(100)).await;
            !cache.redis_breaker_open()
        },
    )
    .await;
}

#[tokio::test]
async fn redis_stopped_slow_or_full_costs_no_request_and_is_used_again_when_back() {
    if redis_url().is_none() {
        return;
    }
    let mut server = RedisServer::start().await;
    let url = server.url();
    let p = prefix();
    let cache = Cache::with_redis(settings(), &fast_opts(&url, &p)).unwrap();
    let row = Row::new(1, 0);
    let (n, _) = read_for(&cache, &row, 50, Duration::from_millis(400)).await;
    assert!(n > 50);

    // Stopped (kill -9): every read still answers, from L1 or the database.
    server.kill();
    let (n, worst) = read_for(&cache, &row, 50, Duration::from_millis(800)).await;
    eprintln!("Redis down: {n} reads, slowest {worst:?}");
    assert!(cache.redis_breaker_open(), "the breaker opened");

    // Back on the same port: the breaker closes and Redis serves again.
    let server = RedisServer::start_on(server.port).await;
    until_breaker_closed(&cache, &row).await;
    let other = Cache::with_redis(settings(), &fast_opts(&url, &p)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A value written to Redis now is found there by another instance.
    let probe = Row::new(1, 0);
    cache
        .get_or_load(Key::Product(999), probe.loader())
        .await
        .unwrap();
    let loads = probe.loads();
    other
        .get_or_load(Key::Product(999), probe.loader())
        .await
        .unwrap();
    assert_eq!(
        probe.loads(),
        loads,
        "the second instance read it from Redis"
    );

    // Slow: the server stalls for 1.5 s; reads go on at the deadline's cost, not the stall's.
    let stall = {
        let port = server.port;
        std::thread::spawn(move || {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "DEBUG", "SLEEP", "1.5"])
                .output()
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (n, worst) = read_for(&cache, &row, 50, Duration::from_millis(1000)).await;
    eprintln!("Redis stalled: {n} reads, slowest {worst:?}");
    assert!(
        worst < Duration::from_millis(500),
        "a stalled Redis held a read for {worst:?}"
    );
    let _ = stall.join();

    // Full: writes to Redis are refused (OOM); reads still answer.
    until_breaker_closed(&cache, &row).await;
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    server.cli(&["CONFIG", "SET", "maxmemory", "1"]);
    let fresh = Cache::with_redis(settings(), &fast_opts(&url, &p)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (n, _) = read_for(&fresh, &Row::new(1, 0), 200, Duration::from_millis(500)).await;
    assert!(n > 0);
}

/// A writes while it cannot reach Redis (so the Redis copy of the old version stays), B learns of the
/// write over the database feed and then has to flush (its feed reconnected): B must not read the old
/// version back from Redis.
#[tokio::test]
async fn a_flush_does_not_bring_back_a_value_a_write_replaced() {
    let Some(url) = redis_url() else { return };
    let p = prefix();
    let feed = Arc::new(common::LocalBus::new(tokio::sync::broadcast::channel(64).0));
    // A's Redis is a port nobody listens on: every Redis call of A fails.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let a = Cache::with_redis(settings(), &opts(&dead_url, &p)).unwrap();
    let b = Cache::with_redis(settings(), &opts(&url, &p)).unwrap();
    let _ga = a.start_bus(vec![feed.clone()]);
    let _gb = b.start_bus(vec![feed.clone()]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let row = Row::new(1, 0);
    // B reads version 1: it is now in B's L1 and in Redis.
    assert_eq!(
        b.get_or_load(Key::Product(7), row.loader())
            .await
            .unwrap()
            .0,
        present(1)
    );
    row.set(2);
    a.invalidate(Change {
        products: vec![(7, Some(2))],
        ..Change::default()
    })
    .await;
    eventually(Duration::from_secs(3), "B sees version 2", || {
        let b = b.clone();
        let l = row.loader();
        async move { b.get_or_load(Key::Product(7), l).await.unwrap().0 == present(2) }
    })
    .await;
    // B's only feed reconnects: B flushes its values. Redis still has version 1 (A could not invalidate
    // it, and B's own load of version 2 may or may not have replaced it): put it back to be sure.
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("{p}p:7"))
        .arg("P1:{\"version\":1}")
        .query_async(&mut c)
        .await
        .unwrap();
    feed.lose();
    // Until the flush, B answers from L1; the first answer after it is the one that matters.
    eventually(Duration::from_secs(3), "B flushed", || {
        let b = b.clone();
        let l = row.loader();
        async move {
            let (v, s) = b.get_or_load(Key::Product(7), l).await.unwrap();
            assert_eq!(
                v,
                present(2),
                "B went back to the version the write replaced"
            );
            s != Source::Hit
        }
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            b.get_or_load(Key::Product(7), row.loader())
                .await
                .unwrap()
                .0,
            present(2),
            "B went back to the version the write replaced"
        );
    }
}
