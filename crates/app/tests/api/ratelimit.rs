//! Per-client rate limits (GCRA): a burst, then 429 with Retry-After; clients are limited separately;
//! two instances sharing Redis share one budget per client; with Redis down each instance still limits
//! on its own.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tenfold_test_support::{spawn_app_on, CacheConfig, HttpConfig, RedisServer, TestApp, TestDb};

use crate::helpers::client;

fn limited(rate: f64, burst: u32) -> HttpConfig {
    HttpConfig {
        rate_limit_per_s: rate,
        rate_limit_burst: burst,
        ..HttpConfig::default()
    }
}

fn redis_cache(url: String) -> CacheConfig {
    CacheConfig {
        redis_url: Some(url.into()),
        redis_timeout_ms: 1_000,
        redis_prefix: format!("tenfold-test:{}:", rand::random::<u64>()),
        ..CacheConfig::default()
    }
}

/// How many of `n` requests from client `key`, spread over `apps` in turn, were let through.
async fn allowed(apps: &[&TestApp], key: &str, n: usize) -> usize {
    let mut ok = 0;
    for i in 0..n {
        let r = client()
            .get(apps[i % apps.len()].url("/api/products/1"))
            .header("x-client-key", key)
            .send()
            .await
            .unwrap();
        match r.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                let wait: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                // One request every 10 s: the next one is let through within 10 s.
                assert!((1..=10).contains(&wait), "Retry-After {wait}");
                let p: Value = r.json().await.unwrap();
                assert_eq!(p["status"], 429);
            }
            s => panic!("unexpected {s}"),
        }
    }
    ok
}

#[tokio::test]
async fn a_client_gets_its_burst_then_429_and_others_are_not_affected() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let store = db.store().await;
    tenfold_seed::seed(&store, 5, 1, false).await.unwrap();
    // One request every 10 s after a burst of 5: within this test, exactly the burst.
    let app = spawn_app_on(store, limited(0.1, 5), &CacheConfig::default()).await;
    assert_eq!(allowed(&[&app], "client-a", 8).await, 5);
    assert_eq!(allowed(&[&app], "client-b", 3).await, 3, "another client");
    // Health is never limited.
    for _ in 0..10 {
        let r = client()
            .get(app.url("/healthz"))
            .header("x-client-key", "client-a")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

#[tokio::test]
async fn two_instances_sharing_redis_share_each_clients_budget() {
    let Ok(url) = std::env::var("TENFOLD_TEST_REDIS_URL") else {
        return;
    };
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let store = db.store().await;
    tenfold_seed::seed(&store, 5, 1, false).await.unwrap();
    let cache = redis_cache(url);
    let a = spawn_app_on(store.clone(), limited(0.1, 6), &cache).await;
    let b = spawn_app_on(store, limited(0.1, 6), &cache).await;
    tokio::time::sleep(Duration::from_millis(300)).await; // both connect to Redis in the background
                                                          // Alternating between the instances does not double the budget.
    assert_eq!(allowed(&[&a, &b], "shared-client", 12).await, 6);
}

#[tokio::test]
async fn with_redis_down_each_instance_still_limits() {
    let mut redis = RedisServer::start().await;
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let store = db.store().await;
    tenfold_seed::seed(&store, 5, 1, false).await.unwrap();
    let app = spawn_app_on(store, limited(0.1, 4), &redis_cache(redis.url())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.kill();
    // Redis is gone: the instance decides alone, with the same rate.
    assert_eq!(allowed(&[&app], "lonely-client", 8).await, 4);
}
