use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::{json, Value};
use tenfold_test_support::{engines, spawn_app, TestDb};

use crate::helpers::*;

#[tokio::test]
async fn pagination_neither_skips_nor_repeats_while_others_insert() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let app = spawn_app(&db).await;
        tenfold_seed::seed(&app.store, 300, 3, false).await.unwrap();
        let before: HashSet<i64> = (1..=300).collect();
        // Writers insert 100 products while a reader walks the catalog 7 at a time.
        let writer = {
            let url = app.url("/api/products");
            tokio::spawn(async move {
                let c = client();
                for i in 0..100 {
                    let r = c
                        .post(&url)
                        .header("authorization", auth())
                        .json(&product_body(&format!("LIVE-{i}"), "audio"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), StatusCode::CREATED);
                }
            })
        };
        let mut seen = Vec::new();
        let mut url = app.url("/api/products?limit=7");
        loop {
            let page: Value = get_json(&url).await;
            seen.extend(
                page["items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["id"].as_i64().unwrap()),
            );
            match page["next"].as_str() {
                Some(n) => url = app.url(n),
                None => break,
            }
            tokio::task::yield_now().await;
        }
        writer.await.unwrap();
        let unique: HashSet<i64> = seen.iter().copied().collect();
        assert_eq!(
            unique.len(),
            seen.len(),
            "{engine:?}: a row was returned twice"
        );
        assert!(
            before.is_subset(&unique),
            "{engine:?}: a row that existed before the walk was skipped"
        );
        assert!(
            seen.windows(2).all(|w| w[0] < w[1]),
            "{engine:?}: pages are in id order"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn racing_patches_with_the_same_if_match_exactly_one_wins() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let app = spawn_app(&db).await;
        create_category(&app, "audio").await;
        create_category(&app, "lighting").await;
        let p = create_product(&app, "RACE-1", "audio").await;
        let url = app.url(&format!("/api/products/{}", p["id"]));
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let url = url.clone();
                tokio::spawn(async move {
                    // Half the racers also move the category, exercising the multi-statement path.
                    let body = if i % 2 == 0 {
                        json!({"stock": i})
                    } else {
                        json!({"stock": i, "category": "lighting"})
                    };
                    client()
                        .patch(&url)
                        .header("authorization", auth())
                        .header("if-match", "\"v1\"")
                        .json(&body)
                        .send()
                        .await
                        .unwrap()
                        .status()
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        let wins = statuses.iter().filter(|s| **s == StatusCode::OK).count();
        let stale = statuses
            .iter()
            .filter(|s| **s == StatusCode::PRECONDITION_FAILED)
            .count();
        assert_eq!((wins, stale), (1, 19), "{engine:?}: {statuses:?}");
        let now: Value = get_json(&url).await;
        assert_eq!(now["version"], 2);
        let cats: Value = get_json(app.url("/api/categories")).await;
        let total: i64 = cats["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["product_count"].as_i64().unwrap())
            .sum();
        assert_eq!(
            total, 1,
            "{engine:?}: category counts stay exact under races: {cats}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn two_instances_on_one_database_answer_identically() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let a = spawn_app(&db).await;
        let b = spawn_app(&db).await;
        tenfold_seed::seed(&a.store, 120, 9, false).await.unwrap();
        // A write through one instance is read through the other.
        let r = client()
            .patch(a.url("/api/products/5"))
            .header("authorization", auth())
            .json(&json!({"name": "Renamed"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        for path in [
            "/api/products/5",
            "/api/products/77",
            "/api/products?limit=50&category=audio",
            "/api/products?q=oak",
            "/api/categories",
            "/api/products/100000",
        ] {
            let ra = client().get(a.url(path)).send().await.unwrap();
            let rb = client().get(b.url(path)).send().await.unwrap();
            assert_eq!(ra.status(), rb.status(), "{path}");
            assert_eq!(ra.headers().get("etag"), rb.headers().get("etag"), "{path}");
            let (mut ja, mut jb): (Value, Value) =
                (ra.json().await.unwrap(), rb.json().await.unwrap());
            // Problem bodies differ only in their request ids.
            for j in [&mut ja, &mut jb] {
                if let Some(o) = j.as_object_mut() {
                    o.remove("request_id");
                }
            }
            assert_eq!(ja, jb, "{engine:?} {path}");
        }
        a.stop().await;
        b.stop().await;
    }
}
