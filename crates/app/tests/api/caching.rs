//! Caching as a client sees it: validators and Cache-Control, one database read for many concurrent
//! misses, and writes through one instance seen through another (over SQLite's change feed and
//! PostgreSQL's LISTEN/NOTIFY), checked against a model.

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tenfold_test_support::{
    engines, spawn_app, spawn_app_on, CacheConfig, CountingStore, HttpConfig, TestApp, TestDb,
};

use crate::helpers::{auth, client, create_category, create_product};

async fn patch_name(app: &TestApp, id: i64, name: &str) -> i64 {
    let r = crate::helpers::patch_product(app, id, json!({ "name": name })).await;
    assert_eq!(r.headers()["cache-control"], "no-store");
    r.json::<Value>().await.unwrap()["version"]
        .as_i64()
        .unwrap()
}

/// The version a GET of the product shows, or `None` for 404.
async fn version_via(app: &TestApp, id: i64) -> Option<i64> {
    let r = client()
        .get(app.url(&format!("/api/products/{id}")))
        .send()
        .await
        .unwrap();
    match r.status() {
        StatusCode::NOT_FOUND => None,
        StatusCode::OK => Some(
            r.json::<Value>().await.unwrap()["version"]
                .as_i64()
                .unwrap(),
        ),
        s => panic!("unexpected status {s}"),
    }
}

/// A GET with `If-None-Match: tag`.
async fn conditional_get(url: impl reqwest::IntoUrl, tag: &str) -> reqwest::Response {
    client()
        .get(url)
        .header("if-none-match", tag)
        .send()
        .await
        .unwrap()
}

/// Polls until `f` holds, for at most `bound`; returns how long it took.
async fn within<F, Fut>(bound: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test]
async fn catalog_reads_carry_validators_and_may_be_cached_by_clients() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let app = spawn_app(&db).await;
    create_category(&app, "books").await;
    let p = create_product(&app, "TF-1", "books").await;
    let id = p["id"].as_i64().unwrap();

    let r = client()
        .get(app.url(&format!("/api/products/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.headers()["content-type"], "application/json");
    let cc = r.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(
        cc.starts_with("public, max-age=") && cc.contains("stale-while-revalidate="),
        "{cc}"
    );
    assert_eq!(r.headers()["vary"], "accept-encoding");

    // The client already has this version: 304, no body, the same validators.
    for inm in ["\"v1\"", "W/\"v1\"", "\"v0\", \"v1\"", "*"] {
        let r = conditional_get(app.url(&format!("/api/products/{id}")), inm).await;
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{inm}");
        assert_eq!(r.headers()["etag"], "\"v1\"");
        assert!(r.text().await.unwrap().is_empty());
    }
    let r = conditional_get(app.url(&format!("/api/products/{id}")), "\"v0\"").await;
    assert_eq!(r.status(), StatusCode::OK);

    // Lists: a weak tag of the page; a write to a product on it changes the tag at once.
    let list = app.url("/api/products?category=books");
    let r = client().get(&list).send().await.unwrap();
    let tag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(tag.starts_with("W/\""), "{tag}");
    let r = conditional_get(&list, &tag).await;
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    patch_name(&app, id, "Renamed").await;
    let r = conditional_get(&list, &tag).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["items"][0]["name"],
        "Renamed"
    );
    assert_eq!(version_via(&app, id).await, Some(2));

    // The cache reports itself.
    let m = crate::helpers::metrics_text(&app).await;
    for series in [
        "cache_requests_total{tier=\"l1\",result=\"hit\"}",
        "cache_requests_total{tier=\"l1\",result=\"miss\"}",
        "cache_loads_total",
        "cache_invalidations_total{source=\"local\"}",
    ] {
        assert!(m.contains(series), "{series} missing from /metrics");
    }

    // Errors, operations and metrics are never cacheable.
    for path in ["/api/products/999", "/healthz", "/readyz", "/metrics"] {
        let r = client().get(app.url(path)).send().await.unwrap();
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
    }
    app.stop().await;
}

/// `n` clients, each with one HTTP/2 connection, so that 1,000 requests are in flight at once without
/// 1,000 sockets.
fn h2_clients(n: usize) -> Vec<Client> {
    (0..n)
        .map(|_| {
            Client::builder()
                .no_proxy()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        })
        .collect()
}

#[tokio::test]
async fn a_thousand_concurrent_misses_of_one_key_read_the_database_once() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let real = db.store().await;
    tenfold_seed::seed(&real, 20, 1, false).await.unwrap();
    // Each read takes 200 ms, so every request arrives while the first read is in flight.
    let counting = CountingStore::slow(real, Duration::from_millis(200));
    let app = spawn_app_on(counting.clone(), unshed(), &CacheConfig::default()).await;
    let clients = h2_clients(4);
    for (path, status) in [
        ("/api/products/7", StatusCode::OK),
        // Unknown ids are remembered too: a flood of them reaches the database once.
        ("/api/products/99999", StatusCode::NOT_FOUND),
        ("/api/products?limit=10", StatusCode::OK),
    ] {
        let before = counting.reads();
        let mut tasks = Vec::new();
        for i in 0..1000 {
            let c = clients[i % clients.len()].clone();
            let url = app.url(path);
            tasks.push(tokio::spawn(async move {
                c.get(url).send().await.unwrap().status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), status, "{path}");
        }
        assert_eq!(
            counting.reads() - before,
            1,
            "{path}: 1,000 concurrent misses, one read"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn caching_off_reads_the_database_every_time() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let real = db.store().await;
    tenfold_seed::seed(&real, 5, 1, false).await.unwrap();
    let counting = CountingStore::new(real);
    let off = CacheConfig {
        enabled: false,
        ..CacheConfig::default()
    };
    let app = spawn_app_on(counting.clone(), HttpConfig::default(), &off).await;
    for _ in 0..10 {
        assert_eq!(version_via(&app, 2).await, Some(1));
    }
    assert_eq!(counting.reads(), 10);
    app.stop().await;
}

#[tokio::test]
async fn a_write_through_one_instance_is_seen_through_another() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let a = spawn_app(&db).await;
        let b = spawn_app(&db).await;
        create_category(&a, "books").await;
        create_category(&a, "games").await;
        let id = create_product(&a, "TF-1", "books").await["id"]
            .as_i64()
            .unwrap();
        let bound = Duration::from_secs(3);

        // B caches the product, the lists and the categories.
        assert_eq!(version_via(&b, id).await, Some(1));
        let books = |app: &TestApp| app.url("/api/products?category=books");
        let names = |v: Value| -> Vec<String> {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["name"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(
            names(crate::helpers::get_json(books(&b)).await),
            ["Product TF-1"]
        );
        let count = |v: Value, slug: &str| {
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["slug"] == slug)
                .map(|c| c["product_count"].as_i64().unwrap())
        };
        assert_eq!(
            count(
                crate::helpers::get_json(b.url("/api/categories")).await,
                "games"
            ),
            Some(0)
        );

        // A changes it: B shows the change within the bound (product, list page).
        let v = patch_name(&a, id, "Renamed").await;
        let took = within(bound, "product via B", || async {
            version_via(&b, id).await == Some(v)
        })
        .await;
        within(bound, "list via B", || async {
            names(crate::helpers::get_json(books(&b)).await) == ["Renamed"]
        })
        .await;
        eprintln!("{engine:?}: a write through A was visible through B after {took:?}");

        // Moved to another category: both lists and the counts follow.
        let r = client()
            .patch(a.url(&format!("/api/products/{id}")))
            .header("authorization", auth())
            .json(&json!({"category": "games"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        within(bound, "move via B", || async {
            names(crate::helpers::get_json(books(&b)).await).is_empty()
                && count(
                    crate::helpers::get_json(b.url("/api/categories")).await,
                    "games",
                ) == Some(1)
        })
        .await;

        // Deleted: B answers 404.
        let r = client()
            .delete(a.url(&format!("/api/products/{id}")))
            .header("authorization", auth())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        within(bound, "delete via B", || async {
            version_via(&b, id).await.is_none()
        })
        .await;

        // Created after B remembered the id as unknown: B shows it.
        let next = id + 1;
        assert_eq!(version_via(&b, next).await, None);
        let created = create_product(&a, "TF-2", "books").await["id"]
            .as_i64()
            .unwrap();
        assert_eq!(created, next);
        within(bound, "create via B", || async {
            version_via(&b, next).await == Some(1)
        })
        .await;
        a.stop().await;
        b.stop().await;
    }
}

/// Random writes and reads over two instances, checked against a model of the latest versions: the
/// writing instance shows its own write at once, the other within the bound, and no instance ever shows
/// a version older than one it has shown before.
#[tokio::test]
async fn no_stale_value_survives_a_write_randomized_against_a_model() {
    let mut variants: Vec<(tenfold_test_support::Engine, CacheConfig)> = engines()
        .into_iter()
        .map(|e| (e, CacheConfig::default()))
        .collect();
    if let Some(redis) = with_redis() {
        variants.push((tenfold_test_support::Engine::Sqlite, redis));
    }
    for (engine, cache) in variants {
        let db = TestDb::new(engine).await;
        let apps = [
            spawn_app_on(db.store().await, HttpConfig::default(), &cache).await,
            spawn_app_on(db.store().await, HttpConfig::default(), &cache).await,
        ];
        tenfold_seed::seed(&apps[0].store, 12, 3, false)
            .await
            .unwrap();
        let mut model: Vec<i64> = vec![1; 13]; // index = id; seeded products start at version 1
        let mut seen: [Vec<i64>; 2] = [vec![0; 13], vec![0; 13]];
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let ops = if std::env::var("TENFOLD_SOAK").is_ok() {
            2_000
        } else {
            150
        };
        let bound = Duration::from_secs(3);
        for step in 0..ops {
            let id = rng.random_range(1..=12i64);
            let i = rng.random_range(0..2usize);
            if rng.random_bool(0.3) {
                let v = patch_name(&apps[i], id, &format!("step {step}")).await;
                assert_eq!(v, model[id as usize] + 1);
                model[id as usize] = v;
                // Read-your-writes on the instance that wrote.
                assert_eq!(version_via(&apps[i], id).await, Some(v), "step {step}");
                seen[i][id as usize] = v;
                // The other one converges within the bound.
                let other = &apps[1 - i];
                within(bound, "the other instance", || async {
                    version_via(other, id).await == Some(v)
                })
                .await;
                seen[1 - i][id as usize] = v;
            } else {
                let v = version_via(&apps[i], id).await.unwrap();
                assert!(
                    v >= seen[i][id as usize],
                    "step {step}: instance {i} went back from v{} to v{v} for product {id}",
                    seen[i][id as usize]
                );
                assert!(v <= model[id as usize], "a version from the future");
                assert_eq!(
                    v, model[id as usize],
                    "step {step}: a stale value after convergence"
                );
                seen[i][id as usize] = v;
            }
        }
        let [a, b] = apps;
        a.stop().await;
        b.stop().await;
    }
}

fn with_redis() -> Option<CacheConfig> {
    let url = std::env::var("TENFOLD_TEST_REDIS_URL").ok()?;
    Some(CacheConfig {
        redis_url: Some(url.into()),
        // These tests are about coordination through Redis, not about its deadline: a loaded machine
        // must not turn a slow answer into "Redis is down".
        redis_timeout_ms: 1_000,
        redis_prefix: format!("tenfold-test:{}:", rand::random::<u64>()),
        ..CacheConfig::default()
    })
}

#[tokio::test]
async fn with_redis_a_thousand_misses_over_two_instances_read_the_database_once() {
    let Some(cache) = with_redis() else { return };
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let real = db.store().await;
    tenfold_seed::seed(&real, 20, 1, false).await.unwrap();
    // 100 ms per read: well inside the 300 ms another instance waits on the lease.
    let counting = CountingStore::slow(real, Duration::from_millis(100));
    let a = spawn_app_on(counting.clone(), unshed(), &cache).await;
    let b = spawn_app_on(counting.clone(), unshed(), &cache).await;
    // Both connect to Redis in the background.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let clients = h2_clients(4);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let c = clients[i % clients.len()].clone();
        let url = if i % 2 == 0 {
            a.url("/api/products/9")
        } else {
            b.url("/api/products/9")
        };
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        counting.reads(),
        1,
        "1,000 misses over two instances, one database read"
    );

    // A write through A: B shows it (over Redis pub/sub and the database feed).
    let v = patch_name(&a, 9, "Renamed").await;
    within(Duration::from_secs(3), "B sees the write", || async {
        version_via(&b, 9).await == Some(v)
    })
    .await;
    a.stop().await;
    b.stop().await;
}

/// Two instances sharing a private Redis under HTTP load; Redis is killed mid-load and started again:
/// no request fails, and afterwards an instance with an empty cache finds in Redis what another loaded.
#[tokio::test]
async fn redis_killed_mid_load_fails_no_request_and_is_used_again() {
    if std::env::var("TENFOLD_TEST_REDIS_URL").is_err() {
        return;
    }
    let mut redis = tenfold_test_support::RedisServer::start().await;
    let cache = CacheConfig {
        redis_url: Some(redis.url().into()),
        redis_prefix: "tenfold-test:".into(),
        ..CacheConfig::default()
    };
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let real = db.store().await;
    tenfold_seed::seed(&real, 200, 1, false).await.unwrap();
    let counting = CountingStore::new(real);
    let apps = [
        spawn_app_on(counting.clone(), HttpConfig::default(), &cache).await,
        spawn_app_on(counting.clone(), HttpConfig::default(), &cache).await,
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Readers and a writer, through both instances, for the whole test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4usize {
        let base = apps[w % 2].base.clone();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = w as i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i = (i * 7 + 13) % 200 + 1;
                let r = if w == 3 && i % 5 == 0 {
                    c.patch(format!("{base}/api/products/{i}"))
                        .header("authorization", auth())
                        .json(&json!({"stock": i}))
                        .send()
                        .await
                } else {
                    c.get(format!("{base}/api/products/{i}")).send().await
                };
                match r {
                    Ok(r) if r.status().is_success() => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let redis = tenfold_test_support::RedisServer::start_on(redis.port).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for t in load {
        let (ok, failed) = t.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    assert!(total > 200, "only {total} requests ran");

    // Redis is used again: a value one instance loads now, a fresh instance reads from Redis.
    let id = 150;
    let r = client()
        .patch(apps[0].url(&format!("/api/products/{id}")))
        .header("authorization", auth())
        .json(&json!({"name": "after the outage"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    within(Duration::from_secs(10), "Redis used again", || async {
        // Instance A reads it (from the database or Redis, storing it in Redis)...
        version_via(&apps[0], id).await;
        // ... and an instance with an empty cache finds it there.
        let fresh = spawn_app_on(counting.clone(), HttpConfig::default(), &cache).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let before = counting.reads();
        let v = version_via(&fresh, id).await;
        let from_redis = v.is_some() && counting.reads() == before;
        fresh.stop().await;
        from_redis
    })
    .await;
    drop(redis);
    let [a, b] = apps;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_compressed_representation_has_a_weak_entity_tag() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let app = spawn_app(&db).await;
    create_category(&app, "books").await;
    let mut body = crate::helpers::product_body("TF-LONG", "books");
    body["description"] = json!("A long description that compresses well. ".repeat(30));
    let r = client()
        .post(app.url("/api/products"))
        .header("authorization", auth())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let url = app.url(&format!("/api/products/{id}"));
    let plain = Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .unwrap();
    let r = plain.get(&url).send().await.unwrap();
    assert_eq!(r.headers()["etag"], "\"v1\"");
    let r = plain
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.headers()["etag"], "W/\"v1\"");
    // Either tag validates either representation.
    for tag in ["\"v1\"", "W/\"v1\""] {
        let r = plain
            .get(&url)
            .header("accept-encoding", "gzip")
            .header("if-none-match", tag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED, "{tag}");
    }
    app.stop().await;
}

/// Settings without load shedding: these tests send a thousand requests at once to test coalescing,
/// which an adaptive concurrency limit would (rightly) shed.
fn unshed() -> HttpConfig {
    HttpConfig {
        load_shedding: false,
        ..HttpConfig::default()
    }
}

#[tokio::test]
async fn with_the_database_down_cached_products_are_served_stale() {
    if !engines().contains(&tenfold_test_support::Engine::Postgres) {
        return;
    }
    let cluster = tenfold_test_support::PgCluster::start(0, 0, 0);
    let mut opts = tenfold_store::ConnectOptions::new(&cluster.primary);
    opts.acquire_timeout = Duration::from_millis(500);
    let store = tenfold_store::connect(&opts).await.unwrap();
    store.migrate().await.unwrap();
    tenfold_seed::seed(&store, 5, 1, false).await.unwrap();
    // Fresh for 100 ms, no stale-while-revalidate: after that a read goes to the database, and only
    // when that fails is the old value served.
    let cache = CacheConfig {
        ttl_ms: 100,
        stale_while_revalidate_ms: 0,
        stale_if_error_ms: 60_000,
        ..CacheConfig::default()
    };
    let app = spawn_app_on(store, HttpConfig::default(), &cache).await;
    let first: Value = client()
        .get(app.url("/api/products/1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    cluster.kill("primary");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = client()
        .get(app.url("/api/products/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "served stale while the database is down"
    );
    assert_eq!(r.json::<Value>().await.unwrap(), first);
    // Never cached: nothing to fall back on, so a clear 503.
    let r = client()
        .get(app.url("/api/products/2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
}
