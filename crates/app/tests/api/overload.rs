//! Overload: open-loop load (bounded in time) far above what an instance can serve, half of it
//! sheddable: the critical requests are served while the sheddable ones are refused at once with 503
//! and Retry-After, and nothing else goes wrong.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenfold_test_support::{spawn_app_on, CacheConfig, CountingStore, HttpConfig, TestDb};

use crate::helpers::client;

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    shed: AtomicU64,
    other: AtomicU64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_requests_are_served_while_sheddable_ones_are_shed() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let real = db.store().await;
    tenfold_seed::seed(&real, 20, 1, false).await.unwrap();
    // Every product read takes 20 ms and nothing is cached: 8 in flight serve at most 400 reads/s.
    let slow = CountingStore::slow(real, Duration::from_millis(20));
    let settings = HttpConfig {
        concurrency_limit_initial: 8,
        concurrency_limit_min: 8,
        concurrency_limit_max: 8,
        degrade_after_ms: 200,
        recover_after_ms: 1_000,
        ..HttpConfig::default()
    };
    let cache = CacheConfig {
        enabled: false,
        ..CacheConfig::default()
    };
    let app = spawn_app_on(slow, settings, &cache).await;
    let url = app.url("/api/products/3");
    let http = client();
    let (critical, sheddable) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    // Open loop for 1.5 s: a sheddable request every millisecond (1,000/s, 2.5 times the capacity by
    // itself) and a critical one every tenth (100/s); each waits for nobody.
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut tasks = Vec::new();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(1500) {
        tick.tick().await;
        n += 1;
        let is_critical = n % 10 == 0;
        let (http, url) = (http.clone(), url.clone());
        let tally = if is_critical {
            critical.clone()
        } else {
            sheddable.clone()
        };
        tasks.push(tokio::spawn(async move {
            let mut req = http.get(url).timeout(Duration::from_secs(10));
            if !is_critical {
                req = req.header("x-criticality", "sheddable");
            }
            match req.send().await {
                Ok(r) if r.status() == 200 => tally.ok.fetch_add(1, Ordering::Relaxed),
                Ok(r) if r.status() == 503 && r.headers().contains_key("retry-after") => {
                    tally.shed.fetch_add(1, Ordering::Relaxed)
                }
                _ => tally.other.fetch_add(1, Ordering::Relaxed),
            };
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let get = |t: &Tally| {
        (
            t.ok.load(Ordering::Relaxed),
            t.shed.load(Ordering::Relaxed),
            t.other.load(Ordering::Relaxed),
        )
    };
    let (c, s) = (get(&critical), get(&sheddable));
    eprintln!("critical (ok, shed, other) = {c:?}; sheddable = {s:?}");
    assert_eq!((c.2, s.2), (0, 0), "only 200s and 503s with Retry-After");
    let c_total = c.0 + c.1;
    assert!(c_total > 50, "the load ran ({c_total} critical requests)");
    assert!(
        c.0 * 100 >= c_total * 95,
        "critical requests succeed under overload: {c:?}"
    );
    assert!(
        s.1 * 2 >= s.0 + s.1,
        "most sheddable requests are shed: {s:?}"
    );

    // The shedding lasted well past degrade_after (200 ms): the ladder turned degradable features off on
    // this instance (the flag listing says which; /metrics has the step)...
    let auto_off = |app: &tenfold_test_support::TestApp| {
        let url = app.url("/api/admin/flags");
        async move {
            let v: serde_json::Value = client()
                .get(url)
                .bearer_auth(tenfold_test_support::TEST_API_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["flags"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|f| f["auto_off"] == true)
                .map(|f| f["name"].as_str().unwrap().to_owned())
                .collect::<Vec<String>>()
        }
    };
    let off = auto_off(&app).await;
    assert!(off.contains(&"deep_pages".to_owned()), "{off:?}");
    let metrics = crate::helpers::metrics_text(&app).await;
    assert!(metrics.contains("degradation_step"), "{metrics}");
    if off.contains(&"search".to_owned()) {
        let r = http
            .get(app.url("/api/products?q=lamp"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "search is off while degraded");
        let p: serde_json::Value = r.json().await.unwrap();
        assert!(
            p["detail"].as_str().unwrap().contains("automatically"),
            "{p}"
        );
    }
    // ...and, calm again, back on a step at a time (1 s each, 3 steps at most).
    let t = Instant::now();
    loop {
        let off = auto_off(&app).await;
        if off.is_empty() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "never recovered: {off:?} still off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("recovered {:?} after the load stopped", t.elapsed());
    let r = http
        .get(app.url("/api/products?q=lamp"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "search is back");
}
