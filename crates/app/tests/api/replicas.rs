//! Reads from PostgreSQL streaming replicas (a private cluster from scripts/pg-cluster.sh): read-your-writes
//! with consistency tokens across instances, lagging replicas skipped, a replica killed under load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tenfold_store::{connect, ConnectOptions, Store};
use tenfold_test_support::{spawn_app_on, CacheConfig, HttpConfig, PgCluster, TestApp};

use crate::helpers::client;

fn enabled() -> bool {
    std::env::var("TENFOLD_TEST_POSTGRES_URL").is_ok_and(|v| !v.is_empty())
}

async fn open(cluster: &PgCluster, replicas: &[String], max_lag: Duration) -> Store {
    let mut o = ConnectOptions::new(&cluster.primary);
    o.replica_urls = replicas.to_vec();
    o.max_replica_lag = max_lag;
    connect(&o).await.unwrap()
}

/// The `server` label the store's metrics give a replica: its `host:port`.
fn server_label(url: &str) -> &str {
    url.trim_start_matches("postgres://postgres@")
        .trim_end_matches("/tenfold")
}

/// Migrates and seeds the primary.
async fn prepare(cluster: &PgCluster, products: u64) {
    let primary = open(cluster, &[], Duration::from_secs(1)).await;
    primary.migrate().await.unwrap();
    tenfold_seed::seed(&primary, products, 1, false)
        .await
        .unwrap();
}

/// Waits until every replica has the seeded data.
async fn caught_up(cluster: &PgCluster, products: u64) {
    for r in &cluster.replicas {
        let replica = connect(&ConnectOptions::new(r)).await.unwrap();
        let start = Instant::now();
        while replica.count_products().await.ok() != Some(products as i64) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "replica never caught up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// PATCHes the stock through `app`; returns the consistency token of the write.
async fn set_stock(app: &TestApp, id: i64, stock: i64) -> String {
    let r = crate::helpers::patch_product(app, id, json!({ "stock": stock })).await;
    r.headers()["consistency-token"]
        .to_str()
        .unwrap()
        .to_owned()
}

async fn stock_via(app: &TestApp, id: i64, token: Option<&str>) -> i64 {
    let mut req = client().get(app.url(&format!("/api/products/{id}")));
    if let Some(t) = token {
        req = req.header("consistency-token", t);
    }
    let r = req.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r.json::<Value>().await.unwrap()["stock"].as_i64().unwrap()
}

#[tokio::test]
async fn read_your_writes_across_instances_through_a_delayed_replica() {
    if !enabled() {
        return;
    }
    // One replica, replaying 2 s late.
    let cluster = PgCluster::start(1, 0, 2_000);
    prepare(&cluster, 20).await;
    let lenient = Duration::from_secs(60);
    let a = spawn_app_on(
        open(&cluster, &cluster.replicas, lenient).await,
        HttpConfig::default(),
        &CacheConfig::default(),
    )
    .await;
    let b = spawn_app_on(
        open(&cluster, &cluster.replicas, lenient).await,
        HttpConfig::default(),
        &CacheConfig::default(),
    )
    .await;
    // Started while the replica has not replayed the schema yet: it must not get reads (it is behind the
    // first position its monitor saw, by an unknown time), so no read even tries it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for id in 1..=20 {
        stock_via(&b, id, None).await;
    }
    let metrics = crate::helpers::metrics_text(&b).await;
    let replica = server_label(&cluster.replicas[0]);
    assert!(
        !metrics.contains(&format!("db_replica_errors_total{{server=\"{replica}\"}}")),
        "a replica that had not replayed the schema got reads"
    );
    caught_up(&cluster, 20).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pairs = if std::env::var("TENFOLD_SOAK").is_ok() {
        1_000
    } else {
        100
    };
    let mut stale = 0;
    for i in 0..pairs {
        let id = i % 20 + 1;
        let token = set_stock(&a, id, 1_000 + i).await;
        if stock_via(&b, id, Some(&token)).await != 1_000 + i {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "{stale} of {pairs} reads with a token were stale");

    // Without the token, B reads the lagging replica: stale.
    let mut stale = 0;
    for i in 0..10 {
        let id = i % 20 + 1;
        set_stock(&a, id, 5_000 + i).await;
        if stock_via(&b, id, None).await != 5_000 + i {
            stale += 1;
        }
    }
    assert!(
        stale > 0,
        "without a token no read was stale: the test would not show what the token does"
    );

    // A malformed token is the client's mistake.
    let r = client()
        .get(b.url("/api/products/1"))
        .header("consistency-token", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // With a 1 s bound, the replica 2 s behind gets no reads: fresh without a token.
    let strict = spawn_app_on(
        open(&cluster, &cluster.replicas, Duration::from_millis(1_000)).await,
        HttpConfig::default(),
        &CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    set_stock(&a, 7, 9_999).await;
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    assert_eq!(
        stock_via(&strict, 7, None).await,
        9_999,
        "a replica past the lag bound served a read"
    );
    for app in [a, b, strict] {
        app.stop().await;
    }
}

#[tokio::test]
async fn a_replica_killed_under_read_load_fails_no_read() {
    if !enabled() {
        return;
    }
    let cluster = PgCluster::start(2, 0, 0);
    prepare(&cluster, 50).await;
    caught_up(&cluster, 50).await;
    let app = spawn_app_on(
        open(&cluster, &cluster.replicas, Duration::from_secs(1)).await,
        HttpConfig::default(),
        &CacheConfig {
            enabled: false,
            ..CacheConfig::default()
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for w in 0..4i64 {
        let (base, stop) = (app.base.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let c = client();
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = w;
            while !stop.load(Ordering::Relaxed) {
                i = i % 50 + 1;
                match c.get(format!("{base}/api/products/{i}")).send().await {
                    Ok(r) if r.status() == StatusCode::OK => ok += 1,
                    Ok(r) => failed.push(r.status().to_string()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let replica2 = server_label(&cluster.replicas[1]).to_owned();
    let count = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("{name}{{server=\"{replica2}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    cluster.kill("replica2");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    // Open: the replica is out of rotation after its first failed read, or before any when the
    // monitor's probe noticed first (and the monitor keeps it out while its probes fail), so a dead
    // replica costs at most a handful of reads their retry, not every read.
    let m = crate::helpers::metrics_text(&app).await;
    let errors = count(&m, "db_replica_errors_total");
    assert!(errors <= 8.0, "{errors} reads went to the dead replica");
    let served_before = count(&m, "db_reads_total");
    cluster.restart_stopped();
    // Closed again: a probe finds it answering, and it serves reads again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = crate::helpers::metrics_text(&app).await;
        if count(&m, "db_reads_total") > served_before {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restarted replica never served again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for r in readers {
        let (ok, failed) = r.await.unwrap();
        assert!(
            failed.is_empty(),
            "failed reads: {:?}",
            &failed[..failed.len().min(5)]
        );
        total += ok;
    }
    assert!(total > 100, "only {total} reads ran");
    // The replicas did serve reads (their ports make these series this test's own).
    let metrics = crate::helpers::metrics_text(&app).await;
    for r in &cluster.replicas {
        let server = server_label(r);
        let served: f64 = metrics
            .lines()
            .find(|l| l.starts_with(&format!("db_reads_total{{server=\"{server}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0);
        assert!(
            served > 0.0,
            "replica {server} served no reads: {}",
            metrics
                .lines()
                .filter(|l| l.starts_with("db_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    app.stop().await;
}
