use reqwest::StatusCode;
use serde_json::{json, Value};
use tenfold_test_support::{engines, spawn_app, TestDb};

use crate::helpers::*;

#[tokio::test]
async fn product_lifecycle_on_every_engine() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let app = spawn_app(&db).await;
        let c = client();
        create_category(&app, "lighting").await;
        create_category(&app, "audio").await;

        // Create: 201, Location, ETag.
        let r = c
            .post(app.url("/api/products"))
            .header("authorization", auth())
            .json(&product_body("LAMP-1", "lighting"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::CREATED, "{engine:?}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        assert_eq!(r.headers()["etag"], "\"v1\"");
        let created: Value = r.json().await.unwrap();
        assert_eq!(location, format!("/api/products/{}", created["id"]));
        assert_eq!(
            created["price"],
            json!({"amount_minor": 1999, "currency": "EUR"})
        );
        assert_eq!(created["version"], 1);

        // Read it back.
        let r = c.get(app.url(&location)).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["etag"], "\"v1\"");
        let read: Value = r.json().await.unwrap();
        assert_eq!(read, created);

        // Patch with the current ETag: new version, category counts move.
        let r = c
            .patch(app.url(&location))
            .header("authorization", auth())
            .header("if-match", "\"v1\"")
            .json(&json!({"stock": 0, "category": "audio", "price": {"amount_minor": 500, "currency": "JPY"}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["etag"], "\"v2\"");
        let patched: Value = r.json().await.unwrap();
        assert_eq!(
            (
                patched["stock"].clone(),
                patched["category"].clone(),
                patched["version"].clone()
            ),
            (json!(0), json!("audio"), json!(2))
        );
        assert_eq!(
            patched["name"], created["name"],
            "fields not in the patch are kept"
        );
        let cats: Value = get_json(app.url("/api/categories")).await;
        let count = |slug: &str| {
            cats["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["slug"] == slug)
                .unwrap()["product_count"]
                .clone()
        };
        assert_eq!((count("lighting"), count("audio")), (json!(0), json!(1)));

        // A stale ETag: 412, nothing changes.
        let r = c
            .patch(app.url(&location))
            .header("authorization", auth())
            .header("if-match", "\"v1\"")
            .json(&json!({"stock": 5}))
            .send()
            .await
            .unwrap();
        let p = problem(r, StatusCode::PRECONDITION_FAILED).await;
        assert!(p["detail"].as_str().unwrap().contains("version 2"), "{p}");
        // A stale ETag on delete: 412.
        let r = c
            .delete(app.url(&location))
            .header("authorization", auth())
            .header("if-match", "\"v1\"")
            .send()
            .await
            .unwrap();
        problem(r, StatusCode::PRECONDITION_FAILED).await;
        // If-Match listing several tags, one current: allowed.
        let r = c
            .patch(app.url(&location))
            .header("authorization", auth())
            .header("if-match", "\"v1\", \"v2\"")
            .json(&json!({"stock": 7}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);

        // Delete: 204, then 404 for reads, patches and deletes; the count drops.
        let r = c
            .delete(app.url(&location))
            .header("authorization", auth())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        problem(
            c.get(app.url(&location)).send().await.unwrap(),
            StatusCode::NOT_FOUND,
        )
        .await;
        problem(
            c.patch(app.url(&location))
                .header("authorization", auth())
                .json(&json!({"stock": 1}))
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
        )
        .await;
        problem(
            c.delete(app.url(&location))
                .header("authorization", auth())
                .send()
                .await
                .unwrap(),
            StatusCode::NOT_FOUND,
        )
        .await;
        let cats: Value = get_json(app.url("/api/categories")).await;
        assert!(
            cats["items"]
                .as_array()
                .unwrap()
                .iter()
                .all(|c| c["product_count"] == 0),
            "{cats}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn listing_filters_searches_and_paginates() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let app = spawn_app(&db).await;
        let c = client();
        create_category(&app, "lighting").await;
        create_category(&app, "audio").await;
        for i in 0..25 {
            let cat = if i % 5 == 0 { "audio" } else { "lighting" };
            let mut body = product_body(&format!("SKU-{i:03}"), cat);
            body["name"] = json!(if i % 10 == 3 {
                format!("Brass 100%_lamp {i}")
            } else {
                format!("Oak lamp {i}")
            });
            let r = c
                .post(app.url("/api/products"))
                .header("authorization", auth())
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::CREATED);
        }
        // Category filter with pagination via the `next` link.
        let mut url = app.url("/api/products?category=audio&limit=2");
        let mut seen = Vec::new();
        loop {
            let page: Value = get_json(&url).await;
            for p in page["items"].as_array().unwrap() {
                assert_eq!(p["category"], "audio");
                seen.push(p["sku"].as_str().unwrap().to_owned());
            }
            match page["next"].as_str() {
                Some(next) => url = app.url(next),
                None => break,
            }
        }
        assert_eq!(
            seen,
            ["SKU-000", "SKU-005", "SKU-010", "SKU-015", "SKU-020"]
        );
        // Search is case-insensitive and treats % and _ literally.
        let page: Value = get_json(app.url("/api/products?q=BRASS%20100%25_")).await;
        let skus: Vec<_> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["sku"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(skus, ["SKU-003", "SKU-013", "SKU-023"]);
        let page: Value = get_json(app.url("/api/products?q=%25")).await;
        assert_eq!(
            page["items"].as_array().unwrap().len(),
            3,
            "only names with a literal %"
        );
        // Default page size 20, no cursor on the last page.
        let page: Value = get_json(app.url("/api/products")).await;
        assert_eq!(page["items"].as_array().unwrap().len(), 20);
        let page: Value = get_json(app.url(&format!(
            "/api/products?cursor={}",
            page["next_cursor"].as_str().unwrap()
        )))
        .await;
        assert_eq!(page["items"].as_array().unwrap().len(), 5);
        assert!(page.get("next_cursor").is_none());
        // Bad parameters.
        for (q, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("cursor=nope", "cursor"),
            ("category=Not%20A%20Slug", "category"),
        ] {
            let p = problem(
                c.get(app.url(&format!("/api/products?{q}")))
                    .send()
                    .await
                    .unwrap(),
                StatusCode::UNPROCESSABLE_ENTITY,
            )
            .await;
            assert_eq!(p["errors"][0]["field"], field, "{q}: {p}");
        }
        problem(
            c.get(app.url("/api/products?limit=abc"))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
        app.stop().await;
    }
}

#[tokio::test]
async fn operational_endpoints() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let app = spawn_app(&db).await;
    let c = client();
    let r = c.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let r: Value = get_json(app.url("/readyz")).await;
    assert_eq!(r, json!({"status": "ready", "database": "sqlite"}));
    c.get(app.url("/api/products/1")).send().await.unwrap();
    let m = c
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            "http_requests_total{route=\"/api/products/{id}\",method=\"GET\",status=\"404\"}"
        ),
        "{m}"
    );
    assert!(m.contains("http_request_duration_seconds_bucket"), "{m}");
    assert!(
        m.contains("db_pool_connections{pool=\"read\",state=\"idle\"}"),
        "{m}"
    );
    // The OpenAPI document describes every route.
    let doc: Value = get_json(app.url("/api/openapi.json")).await;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/api/products",
        "/api/products/{id}",
        "/api/categories",
        "/healthz",
        "/readyz",
        "/metrics",
        "/api/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing");
    }
    assert!(doc["paths"]["/api/products/{id}"]["patch"]["responses"]["412"].is_object());
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    assert!(doc["paths"]["/api/products"]["get"]["responses"]["503"].is_object());
    assert!(doc["paths"]["/healthz"]["get"]["responses"]
        .get("503")
        .is_none());
    assert_eq!(
        doc["components"]["schemas"]["ProductPatchInput"]["minProperties"],
        1
    );
    assert!(doc["components"]["schemas"]["ProductPatchInput"]
        .get("maxProperties")
        .is_none());
    app.stop().await;
}

#[tokio::test]
async fn readiness_fails_when_migrations_are_missing() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let store = tenfold_store::connect(&tenfold_store::ConnectOptions::new(&db.url))
        .await
        .unwrap();
    let app = tenfold_app::App::new(store, Default::default());
    let r = tower::ServiceExt::oneshot(
        app.router(),
        axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
    assert!(String::from_utf8_lossy(&body).contains("tenfold migrate"));
}
