//! `tenfold shards move` as an operator runs it: two `tenfold app` processes take orders on PostgreSQL
//! shard servers (started by scripts/pg-cluster.sh) while a bucket moves to the other shard and back.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tenfold_store::shards::bucket_of;
use tenfold_test_support::{run_ok, serve_printing_addr, PgCluster, Served, TEST_API_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_tenfold");

fn enabled() -> bool {
    std::env::var("TENFOLD_TEST_POSTGRES_URL").is_ok_and(|v| !v.is_empty())
}

fn tenfold(cluster: &PgCluster) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TENFOLD_DATABASE_URL")
        .env_remove("TENFOLD_CONFIG")
        .env("TENFOLD_API_KEY", TEST_API_KEY)
        .args(["--database-url", &cluster.primary]);
    for s in &cluster.shards {
        c.args(["--shard-url", s]);
    }
    c
}

fn start_app(cluster: &PgCluster) -> Served {
    serve_printing_addr(tenfold(cluster).args(["app", "--listen", "127.0.0.1:0"]))
}

fn run(cluster: &PgCluster, args: &[&str]) -> String {
    run_ok(tenfold(cluster).args(args))
}

async fn token(http: &reqwest::Client, base: &str, customer: i64) -> String {
    let v: serde_json::Value = http
        .post(format!("{base}/api/customers/{customer}/tokens"))
        .bearer_auth(TEST_API_KEY)
        .json(&serde_json::json!({ "ttl_s": 3600 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["token"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bucket_moves_and_back_under_order_load_with_no_error_and_no_lost_or_doubled_order() {
    if !enabled() {
        return;
    }
    let cluster = tokio::task::spawn_blocking(|| PgCluster::start(0, 2, 0))
        .await
        .unwrap();
    run(&cluster, &["migrate"]);
    run(&cluster, &["seed", "--products", "10"]);
    let apps = [start_app(&cluster), start_app(&cluster)];
    let http = reqwest::Client::new();
    let stock = 1_000_000;
    let r = http
        .patch(format!("{}/api/products/1", apps[0].base))
        .bearer_auth(TEST_API_KEY)
        .json(&serde_json::json!({ "stock": stock }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    // Four customers in the bucket that moves, two elsewhere.
    let x = bucket_of(4);
    let mut customers: Vec<i64> = (1..).filter(|&c| bucket_of(c) == x).take(4).collect();
    customers.extend([9_001, 9_002]);
    let home: u16 = run(&cluster, &["shards", "bucket", "--customer", "4"])
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for (i, &c) in customers.iter().enumerate() {
        let (http, stop) = (http.clone(), stop.clone());
        let base = apps[i % 2].base.clone();
        let tok = token(&http, &base, c).await;
        writers.push(tokio::spawn(async move {
            let (mut ids, mut errors) = (Vec::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) && ids.len() < 20_000 {
                let r = http
                    .post(format!("{base}/api/orders"))
                    .bearer_auth(&tok)
                    .json(&serde_json::json!({ "customer_id": c, "items": [{ "product_id": 1, "quantity": 1 }] }))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == 201 => {
                        let v: serde_json::Value = r.json().await.unwrap();
                        ids.push(v["id"].as_i64().unwrap());
                    }
                    Ok(r) => errors.push(format!("{} {}", r.status(), r.text().await.unwrap())),
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (c, tok, ids, errors)
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let b = x.get().to_string();
    let there = (1 - home).to_string();
    let out = tokio::task::block_in_place(|| {
        run(
            &cluster,
            &["shards", "move", "--bucket", &b, "--to", &there],
        )
    });
    assert!(
        out.contains(&format!(
            "moved bucket {b} from shard {home} to shard {there}"
        )),
        "{out}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let back = tokio::task::block_in_place(|| {
        run(
            &cluster,
            &["shards", "move", "--bucket", &b, "--to", &home.to_string()],
        )
    });
    assert!(back.contains("moved bucket"), "{back}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut placed: HashMap<i64, (String, Vec<i64>)> = HashMap::new();
    let mut total = 0;
    for w in writers {
        let (c, tok, ids, errors) = w.await.unwrap();
        assert!(
            errors.is_empty(),
            "customer {c}: {} errors, first {:?}",
            errors.len(),
            errors.first()
        );
        total += ids.len();
        placed.insert(c, (tok, ids));
    }
    eprintln!("{total} orders placed; {out}; {back}");
    assert!(total > 100, "the load ran: {total}");

    // Every order once: found by id through either instance, and each customer's list is exactly its own.
    for (&c, (tok, ids)) in &placed {
        let mut listed = Vec::new();
        let mut before: Option<i64> = None;
        loop {
            let mut url = format!("{}/api/customers/{c}/orders?limit=100", apps[1].base);
            if let Some(b) = before {
                url.push_str(&format!("&before={b}"));
            }
            let page: serde_json::Value = http
                .get(url)
                .bearer_auth(tok)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            listed.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|o| o["id"].as_i64().unwrap()),
            );
            match page["next_before"].as_i64() {
                Some(n) => before = Some(n),
                None => break,
            }
        }
        assert_eq!(
            listed.len(),
            ids.len(),
            "customer {c}: no order missing or listed twice"
        );
        assert_eq!(
            listed.into_iter().collect::<BTreeSet<_>>(),
            ids.iter().copied().collect::<BTreeSet<_>>()
        );
        for (i, id) in ids.iter().enumerate().step_by(25) {
            let r = http
                .get(format!("{}/api/orders/{id}", apps[i % 2].base))
                .bearer_auth(tok)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "order {id}");
        }
    }
    // The stock went down once per order (as the catalog says; the cache follows within moments).
    let mut left = 0;
    for _ in 0..50 {
        let p: serde_json::Value = http
            .get(format!("{}/api/products/1", apps[0].base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        left = p["stock"].as_i64().unwrap();
        if left == stock - total as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(left, stock - total as i64);
    let status = run(&cluster, &["shards", "status"]);
    assert!(status.contains("moves in progress: none"), "{status}");
    let held: i64 = status
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4 && f[0].parse::<u16>().is_ok()).then(|| f[2].parse::<i64>().unwrap())
        })
        .sum();
    assert_eq!(held, total as i64, "{status}");
}
