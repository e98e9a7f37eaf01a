//! Feature flags over HTTP: the admin routes, read-only maintenance mode (writes refused with 503 and
//! Retry-After, reads and the flag routes still working), and the features that turn off (search, deep
//! pages, imports) while the core keeps answering; uploads keep working with renditions deferred.

use std::time::{Duration, Instant};

use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use tenfold_test_support::{engines, spawn_app_with_jobs, TestDb, TEST_API_KEY};

use crate::helpers::{client, create_category, product_body};

/// A request to the service with the API key.
fn admin(method: Method, base: &str, path: &str) -> reqwest::RequestBuilder {
    client()
        .request(method, format!("{base}{path}"))
        .bearer_auth(TEST_API_KEY)
}

async fn send(r: reqwest::RequestBuilder) -> Response {
    r.send().await.unwrap()
}

async fn get(base: &str, path: &str) -> Response {
    send(client().get(format!("{base}{path}"))).await
}

async fn list_flags(base: &str) -> Value {
    let r = send(admin(Method::GET, base, "/api/admin/flags")).await;
    r.json().await.unwrap()
}

async fn put_flag(base: &str, name: &str, body: Value) -> Response {
    let path = format!("/api/admin/flags/{name}");
    send(admin(Method::PUT, base, &path).json(&body)).await
}

async fn delete_flag(base: &str, name: &str) -> Response {
    let path = format!("/api/admin/flags/{name}");
    send(admin(Method::DELETE, base, &path)).await
}

async fn create(base: &str, sku: &str) -> Response {
    send(admin(Method::POST, base, "/api/products").json(&product_body(sku, "lamps"))).await
}

/// Waits (bounded) until the instance serves the flags at `version` or later.
async fn until_version(base: &str, version: i64) {
    let t = Instant::now();
    loop {
        let v = list_flags(base).await;
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

#[tokio::test]
async fn flags_are_listed_set_and_unset_with_clear_errors_for_bad_input() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        let list = list_flags(&base).await;
        assert_eq!(list["stale"], false);
        let names: Vec<&str> = list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "search",
                "deep_pages",
                "renditions",
                "imports",
                "read_only",
                "enhancements"
            ]
        );
        assert!(list["flags"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["set"] == false));
        // Without the API key: refused.
        let r = get(&base, "/api/admin/flags").await;
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
        let body = json!({"enabled": true, "percent": 25, "note": "rollout"});
        let r = put_flag(&base, "search", body).await;
        assert_eq!(r.status(), StatusCode::OK);
        let v: Value = r.json().await.unwrap();
        assert_eq!((&v["enabled"], &v["percent"]), (&json!(true), &json!(25)));
        until_version(&base, 1).await;
        let r = delete_flag(&base, "search").await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "{engine:?}");
        let r = delete_flag(&base, "search").await;
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

        let on = json!({"enabled": true, "note": "migration"});
        assert_eq!(
            put_flag(&base, "read_only", on).await.status(),
            StatusCode::OK
        );
        until_version(&base, 1).await;
        let r = create(&base, "RO-2").await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{engine:?}");
        assert!(r.headers().contains_key("retry-after"));
        let p: Value = r.json().await.unwrap();
        assert!(p["detail"].as_str().unwrap().contains("read-only"), "{p}");
        // Every write, not only creates.
        let r = send(admin(Method::DELETE, &base, "/api/products/1")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Reads keep working.
        let r = get(&base, "/api/products").await;
        assert_eq!(r.status(), StatusCode::OK);
        let page: Value = r.json().await.unwrap();
        assert_eq!(page["items"].as_array().unwrap().len(), 1);
        // The flag routes stay writable, so maintenance can end.
        let off = json!({"enabled": false});
        assert_eq!(
            put_flag(&base, "read_only", off).await.status(),
            StatusCode::OK
        );
        until_version(&base, 2).await;
        assert_eq!(create(&base, "RO-2").await.status(), StatusCode::CREATED);
    }
}

#[tokio::test]
async fn degradable_features_turn_off_while_the_core_keeps_answering() {
    const FEATURES: [&str; 4] = ["search", "deep_pages", "imports", "renditions"];
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        create_category(&j.app, "lamps").await;
        for i in 0..3 {
            let r = create(&base, &format!("DG-{i}")).await;
            assert_eq!(r.status(), StatusCode::CREATED);
        }
        let page: Value = get(&base, "/api/products?limit=1")
            .await
            .json()
            .await
            .unwrap();
        let next = page["next_cursor"].as_str().unwrap().to_owned();
        for flag in FEATURES {
            let r = put_flag(&base, flag, json!({"enabled": false})).await;
            assert_eq!(r.status(), StatusCode::OK);
        }
        until_version(&base, 4).await;
        for path in [
            "/api/products?q=lamp".to_owned(),
            format!("/api/products?limit=1&cursor={next}"),
        ] {
            let r = get(&base, &path).await;
            assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
            assert!(r.headers().contains_key("retry-after"));
            let p: Value = r.json().await.unwrap();
            assert!(p["detail"].as_str().unwrap().contains("turned off"), "{p}");
        }
        // The core: a product, the first page.
        for path in ["/api/products/1", "/api/products?limit=1"] {
            let r = get(&base, path).await;
            assert_eq!(r.status(), StatusCode::OK, "{engine:?} {path}");
        }
        // Imports are refused before the body is read.
        let import = admin(Method::POST, &base, "/api/imports")
            .header("content-type", "text/csv")
            .body("sku,name\n");
        assert_eq!(send(import).await.status(), StatusCode::SERVICE_UNAVAILABLE);
        // Uploads are still taken; their renditions wait.
        let upload = admin(Method::POST, &base, "/api/products/1/media").body(png());
        let r = send(upload).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{engine:?}");
        let v: Value = r.json().await.unwrap();
        let id = v["job"]["id"].as_i64().unwrap();
        let job = j.queue.get(id).await.unwrap().unwrap();
        let wait = job.run_at_ms - job.created_ms;
        assert!(wait >= 14 * 60 * 1000, "renditions deferred: {wait} ms");
        // Back on: search answers again.
        for flag in FEATURES {
            put_flag(&base, flag, json!({"enabled": true})).await;
        }
        until_version(&base, 8).await;
        let r = get(&base, "/api/products?q=lamp").await;
        assert_eq!(r.status(), StatusCode::OK);
    }
}

/// A small valid PNG.
fn png() -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb([200, 100, 50]));
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}
