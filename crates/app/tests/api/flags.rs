//! Feature flags over HTTP: the admin routes, read-only maintenance mode (writes refused with 503 and
//! Retry-After, reads and the flag routes still working), and the features that turn off (search, deep
//! pages, imports) while the core keeps answering; uploads keep working with renditions deferred.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};
use tenfold_test_support::{engines, spawn_app_with_jobs, TestDb, TEST_API_KEY};

use crate::helpers::{client, create_category, product_body};

async fn put_flag(base: &str, name: &str, body: Value) -> reqwest::Response {
    client()
        .put(format!("{base}/api/admin/flags/{name}"))
        .bearer_auth(TEST_API_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Waits (bounded) until the instance serves the flags at `version` or later.
async fn until_version(base: &str, version: i64) {
    let t = Instant::now();
    loop {
        let v: Value = client()
            .get(format!("{base}/api/admin/flags"))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["version"].as_i64().unwrap() >= version {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "flags never reached {version}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn create(base: &str, sku: &str) -> reqwest::Response {
    client()
        .post(format!("{base}/api/products"))
        .bearer_auth(TEST_API_KEY)
        .json(&product_body(sku, "lamps"))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn flags_are_listed_set_and_unset_with_clear_errors_for_bad_input() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        let list: Value = client()
            .get(format!("{base}/api/admin/flags"))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(list["stale"], false);
        let names: Vec<&str> = list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["search", "deep_pages", "renditions", "imports", "read_only"]
        );
        assert!(list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["set"] == false));
        // Without the API key: refused.
        let r = client()
            .get(format!("{base}/api/admin/flags"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        // Bad input: a clear 4xx, never a 5xx.
        for (name, body) in [
            ("Bad Name", json!({"enabled": true})),
            ("search", json!({"enabled": true, "percent": 101})),
            ("search", json!({"enabled": true, "note": "x".repeat(201)})),
        ] {
            let r = put_flag(&base, name, body.clone()).await;
            assert_eq!(
                r.status(),
                StatusCode::UNPROCESSABLE_ENTITY,
                "{name} {body}"
            );
            assert_eq!(r.headers()["content-type"], "application/problem+json");
        }
        let r = put_flag(&base, "search", json!({"enabled": "yes"})).await;
        assert!(r.status().is_client_error(), "{}", r.status());
        let r = put_flag(
            &base,
            "search",
            json!({"enabled": true, "percent": 25, "note": "rollout"}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            (v["enabled"].clone(), v["percent"].clone()),
            (json!(true), json!(25))
        );
        until_version(&base, 1).await;
        let r = client()
            .delete(format!("{base}/api/admin/flags/search"))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{engine:?}");
        let r = client()
            .delete(format!("{base}/api/admin/flags/search"))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn read_only_mode_refuses_writes_and_keeps_reads_working() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        create_category(&j.app, "lamps").await;
        assert_eq!(create(&base, "RO-1").await.status(), StatusCode::CREATED);

        assert_eq!(
            put_flag(
                &base,
                "read_only",
                json!({"enabled": true, "note": "migration"})
            )
            .await
            .status(),
            StatusCode::OK
        );
        until_version(&base, 1).await;
        let r = create(&base, "RO-2").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert!(r.headers().contains_key("retry-after"));
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains("read-only"), "{p}");
        // Every write, not only creates.
        let r = client()
            .delete(format!("{base}/api/products/1"))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Reads keep working.
        let r = client()
            .get(format!("{base}/api/products"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        // The flag routes stay writable, so maintenance can end.
        assert_eq!(
            put_flag(&base, "read_only", json!({"enabled": false}))
                .await
                .status(),
            StatusCode::OK
        );
        until_version(&base, 2).await;
        assert_eq!(create(&base, "RO-2").await.status(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn degradable_features_turn_off_while_the_core_keeps_answering() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        create_category(&j.app, "lamps").await;
        for i in 0..3 {
            assert_eq!(
                create(&base, &format!("DG-{i}")).await.status(),
                StatusCode::CREATED
            );
        }
        let page: Value = client()
            .get(format!("{base}/api/products?limit=1"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let next = page["next_cursor"].as_str().unwrap().to_owned();
        for flag in ["search", "deep_pages", "imports", "renditions"] {
            assert_eq!(
                put_flag(&base, flag, json!({"enabled": false}))
                    .await
                    .status(),
                StatusCode::OK
            );
        }
        until_version(&base, 4).await;
        let off = |path: String| {
            let base = base.clone();
            async move {
                let r = client().get(format!("{base}{path}")).send().await.unwrap();
                assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
                assert!(r.headers().contains_key("retry-after"));
                r.json::<Value>().await.unwrap()
            }
        };
        let p = off("/api/products?q=lamp".into()).await;
        assert!(p["detail"].as_str().unwrap().contains("search"), "{p}");
        off(format!("/api/products?limit=1&cursor={next}")).await;
        // The core: a product, the first page.
        for path in ["/api/products/1", "/api/products?limit=1"] {
            let r = client().get(format!("{base}{path}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{engine:?} {path}");
        }
        // Imports are refused before the body is read.
        let r = client()
            .post(format!("{base}/api/imports"))
            .bearer_auth(TEST_API_KEY)
            .header("content-type", "text/csv")
            .body("sku,name\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Uploads are still taken; their renditions wait.
        let png = {
            let mut out = std::io::Cursor::new(Vec::new());
            image_png(&mut out);
            out.into_inner()
        };
        let r = client()
            .post(format!("{base}/api/products/1/media"))
            .bearer_auth(TEST_API_KEY)
            .body(png)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{engine:?}");
        let v: Value = r.json().await.unwrap();
        let id = v["job"]["id"].as_i64().unwrap();
        let job = j.queue.get(id).await.unwrap().unwrap();
        let wait = job.run_at_ms - job.created_ms;
        assert!(wait >= 14 * 60 * 1000, "renditions deferred: {wait} ms");
        // Back on: search answers again.
        for flag in ["search", "deep_pages", "imports", "renditions"] {
            put_flag(&base, flag, json!({"enabled": true})).await;
        }
        until_version(&base, 8).await;
        let r = client()
            .get(format!("{base}/api/products?q=lamp"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// A small valid PNG.
fn image_png(out: &mut std::io::Cursor<Vec<u8>>) {
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]));
    img.write_to(out, image::ImageFormat::Png).unwrap();
}
