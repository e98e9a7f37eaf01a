//! CSV bulk imports: accepted at once, run by a worker with a row-level error report, resumed from their
//! checkpoint after a crash, failed with a clear reason when the file is not CSV.

use std::fmt::Write;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tenfold_jobs::{builtin, imports::ImportProducts, Worker, WorkerOptions};
use tenfold_test_support::{engines, spawn_app_with_jobs, JobsApp, TestDb, TEST_API_KEY};

use crate::helpers::{create_category, until_finished};

fn csv(from: usize, to: usize) -> String {
    let mut s = String::from("sku,name,description,price_minor,currency,stock,category\n");
    for i in from..to {
        writeln!(
            s,
            "IMP-{i:06},Imported lamp {i},\"A lamp, number {i}\",{},EUR,{},lamps",
            100 + i,
            i % 50
        )
        .unwrap();
    }
    s
}

async fn post_import(base: &str, body: String) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/imports"))
        .bearer_auth(TEST_API_KEY)
        .header("content-type", "text/csv")
        .body(body)
        .send()
        .await
        .unwrap()
}

fn start_worker(
    j: &JobsApp,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let mut opts = WorkerOptions::new("import-worker", &["import"]);
    opts.poll = Duration::from_millis(20);
    let registry = builtin::registry().register(
        "import",
        ImportProducts::new(j.blobs.clone(), j.app.store.clone()),
    );
    let w = Worker::new(j.queue.clone(), registry, opts);
    let task = tokio::spawn(async move {
        w.run(async {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    (stop, task)
}

#[tokio::test]
async fn an_import_reports_bad_rows_and_imports_the_others_once() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        create_category(&j.app, "lamps").await;
        let mut body = csv(0, 1200);
        body.push_str("BAD-1,Bad price,,abc,EUR,1,lamps\n");
        body.push_str("BAD-2,Unknown category,,100,EUR,1,nowhere\n");
        body.push_str("BAD-3,,,100,EUR,1,lamps\n");
        body.push_str(&csv(0, 5)[body.find('\n').unwrap() + 1..]); // 5 repeated SKUs
                                                                   // A list page and the category counts cached before the import...
        let list = |base: String| async move {
            reqwest::get(format!("{base}/api/products?category=lamps&limit=5"))
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        };
        assert_eq!(
            list(base.clone()).await["items"].as_array().unwrap().len(),
            0
        );
        let r = post_import(&base, body).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{engine:?}");
        let job = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
        let (stop, task) = start_worker(&j);
        let end = until_finished(&base, job).await;
        assert_eq!(end["state"], "done", "{engine:?}: {end}");
        // ...show the imported products soon after, not after their TTL (the job announces them).
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while list(base.clone()).await["items"].as_array().unwrap().len() < 5 {
            assert!(
                std::time::Instant::now() < deadline,
                "{engine:?}: the cached list never showed the import"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let cats: Value = reqwest::get(format!("{base}/api/categories"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(cats["items"][0]["product_count"], 1200, "{cats}");
        let res = &end["result"];
        assert_eq!(res["rows"], 1208);
        assert_eq!(res["imported"], 1200);
        assert_eq!(res["existing"], 5);
        assert_eq!(res["error_count"], 3);
        let lines: Vec<u64> = res["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect();
        assert_eq!(lines, vec![1202, 1203, 1204], "{res}");
        let bad_price = &res["errors"][0]["errors"];
        assert_eq!(bad_price.as_array().unwrap().len(), 1, "{res}");
        assert_eq!(bad_price[0]["field"], "price.amount_minor");
        assert_eq!(
            bad_price[0]["message"],
            "must be a whole number (got \"abc\")"
        );
        assert!(res["errors"][1]["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"));
        assert_eq!(j.app.store.count_products().await.unwrap(), 1200);

        // A file that is not CSV, or lacks a column: failed at once, with the reason.
        for (body, why) in [
            (
                "sku,name,description,price_minor,currency,stock,category\na,b\n".to_owned(),
                "not valid CSV",
            ),
            ("sku,name\nX,Y\n".to_owned(), "lacks the column"),
        ] {
            let id = post_import(&base, body)
                .await
                .json::<Value>()
                .await
                .unwrap()["id"]
                .as_i64()
                .unwrap();
            let end = until_finished(&base, id).await;
            assert_eq!(end["state"], "failed", "{end}");
            assert!(end["last_error"].as_str().unwrap().contains(why), "{end}");
        }
        let r = post_import(&base, String::new()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        stop.send(()).unwrap();
        task.await.unwrap();
        j.app.stop().await;
    }
}

#[tokio::test]
async fn an_import_resumes_from_its_checkpoint_after_a_crash() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        create_category(&j.app, "lamps").await;
        let r = post_import(&base, csv(0, 600)).await;
        let job = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
        // A worker took the job, got through 500 rows (as its checkpoint says) and died.
        let lease = j
            .queue
            .claim(
                &["import".into()],
                &["import".into()],
                "dead",
                1,
                Duration::from_millis(200),
            )
            .await
            .unwrap()
            .remove(0);
        assert_eq!(lease.job.id, job);
        assert!(j
            .queue
            .save_checkpoint(
                &lease,
                &json!({"row": 500, "imported": 500, "existing": 0, "error_count": 0, "errors": []})
            )
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (stop, task) = start_worker(&j);
        let end = until_finished(&base, job).await;
        assert_eq!(end["state"], "done", "{engine:?}: {end}");
        assert_eq!(end["attempts"], 2);
        assert_eq!(end["result"]["resumed_from"], 500);
        assert_eq!(end["result"]["imported"], 600);
        // Resumed, not restarted: only the rows after the checkpoint were inserted by this attempt.
        assert_eq!(
            j.app.store.count_products().await.unwrap(),
            100,
            "{engine:?}"
        );
        stop.send(()).unwrap();
        task.await.unwrap();
        j.app.stop().await;
    }
}
