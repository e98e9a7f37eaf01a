use reqwest::StatusCode;
use serde_json::json;
use tenfold_test_support::{spawn_app, spawn_app_with, Engine, HttpConfig, TestDb};

use crate::helpers::*;

#[tokio::test]
async fn every_error_status_is_problem_json_with_a_clear_message() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = spawn_app(&db).await;
    let c = client();
    create_category(&app, "lighting").await;
    create_product(&app, "DUP-1", "lighting").await;
    let post = |body: &'static str, ct: Option<&'static str>| {
        let mut r = c
            .post(app.url("/api/products"))
            .header("authorization", auth())
            .body(body);
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        r.send()
    };

    // 400: malformed JSON, saying where.
    let p = problem(
        post("{\"sku\": \"A\",\n \"name\": }", Some("application/json"))
            .await
            .unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;
    let d = p["detail"].as_str().unwrap();
    assert!(d.contains("not valid JSON") && d.contains("line 2"), "{d}");
    problem(
        post("", Some("application/json")).await.unwrap(),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // 422: wrong types name the field path.
    let p = problem(
        post(r#"{"sku":"A","name":"n","price":{"amount_minor":"12","currency":"EUR"},"stock":1,"category":"lighting"}"#, Some("application/json")).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "price.amount_minor", "{p}");
    // 422: a number too large for the field.
    let p = problem(
        post(r#"{"sku":"A","name":"n","price":{"amount_minor":99999999999999999999999,"currency":"EUR"},"stock":1,"category":"lighting"}"#, Some("application/json")).await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(p["errors"][0]["field"], "price.amount_minor", "{p}");
    // 422: unknown fields are refused by name.
    let p = problem(
        post(r#"{"sku":"A","colour":"red"}"#, Some("application/json"))
            .await
            .unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("colour"), "{p}");
    // 422: every invalid field is listed.
    let r = c
        .post(app.url("/api/products"))
        .header("authorization", auth())
        .json(&json!({"sku": "bad sku!", "name": "", "price": {"amount_minor": -1, "currency": "eur"}, "stock": -1, "category": "x y"}))
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    let fields: Vec<_> = p["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        fields,
        [
            "sku",
            "name",
            "price.amount_minor",
            "price.currency",
            "stock",
            "category"
        ]
    );
    // 422: unknown category.
    let r = c
        .post(app.url("/api/products"))
        .header("authorization", auth())
        .json(&product_body("NEW-1", "nowhere"))
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(p["errors"][0]["field"], "category");
    // 422: empty patch.
    let r = c
        .patch(app.url("/api/products/1"))
        .header("authorization", auth())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNPROCESSABLE_ENTITY).await;

    // 409: duplicate SKU, on create and on patch; duplicate category.
    let r = c
        .post(app.url("/api/products"))
        .header("authorization", auth())
        .json(&product_body("DUP-1", "lighting"))
        .send()
        .await
        .unwrap();
    let p = problem(r, StatusCode::CONFLICT).await;
    assert!(p["detail"].as_str().unwrap().contains("DUP-1"));
    create_product(&app, "DUP-2", "lighting").await;
    let r = c
        .patch(app.url("/api/products/2"))
        .header("authorization", auth())
        .json(&json!({"sku": "DUP-1"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::CONFLICT).await;
    let r = c
        .post(app.url("/api/categories"))
        .header("authorization", auth())
        .json(&json!({"slug": "lighting", "name": "Again"}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::CONFLICT).await;

    // 415: not JSON, or no content type.
    problem(
        post("{}", Some("text/plain")).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    problem(
        post("{}", None).await.unwrap(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;

    // 413: larger than the body limit (1 MiB by default).
    let big = format!("{{\"sku\":\"{}\"}}", "x".repeat(2 * 1024 * 1024));
    let r = c
        .post(app.url("/api/products"))
        .header("authorization", auth())
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::PAYLOAD_TOO_LARGE).await;

    // 401 / 403.
    let r = c
        .post(app.url("/api/products"))
        .json(&product_body("Z-1", "lighting"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer realm=\"tenfold\"");
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = c
        .post(app.url("/api/products"))
        .header("authorization", "Basic abc")
        .json(&product_body("Z-1", "lighting"))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::UNAUTHORIZED).await;
    let r = c
        .delete(app.url("/api/products/1"))
        .header("authorization", "Bearer wrong-key-wrong-key")
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::FORBIDDEN).await;

    // 404: unknown product, unknown route.
    problem(
        c.get(app.url("/api/products/999999")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    problem(
        c.get(app.url("/nope")).send().await.unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    // 400: malformed id and If-Match.
    for id in ["abc", "0", "-3", "99999999999999999999"] {
        problem(
            c.get(app.url(&format!("/api/products/{id}")))
                .send()
                .await
                .unwrap(),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    let r = c
        .patch(app.url("/api/products/1"))
        .header("authorization", auth())
        .header("if-match", "v1")
        .json(&json!({"stock": 1}))
        .send()
        .await
        .unwrap();
    problem(r, StatusCode::BAD_REQUEST).await;

    // 405 with Allow.
    let r = c.put(app.url("/api/products/1")).send().await.unwrap();
    let allow = r.headers()["allow"].to_str().unwrap().to_owned();
    assert!(
        allow.contains("GET") && allow.contains("PATCH") && allow.contains("DELETE"),
        "{allow}"
    );
    problem(r, StatusCode::METHOD_NOT_ALLOWED).await;

    // Nothing above left a trace: the duplicate and failed writes changed nothing.
    let cats: serde_json::Value = get_json(app.url("/api/categories")).await;
    assert_eq!(cats["items"][0]["product_count"], 2);
    app.stop().await;
}

#[tokio::test]
async fn writes_are_refused_without_a_configured_key() {
    let db = TestDb::new(Engine::Sqlite).await;
    let store = db.store().await;
    let app = tenfold_app::App::new(store, HttpConfig::default());
    let req = axum::http::Request::post("/api/categories")
        .header("content-type", "application/json")
        .header("authorization", "Bearer anything-at-all-123")
        .body(axum::body::Body::from(r#"{"slug":"a","name":"A"}"#))
        .unwrap();
    let r = tower::ServiceExt::oneshot(app.router(), req).await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn request_deadline_answers_503_with_retry_after() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The deadline covers reading the body: a client that stops half-way gets a clean 503.
    let db = TestDb::new(Engine::Sqlite).await;
    let app = spawn_app_with(
        &db,
        HttpConfig {
            request_timeout_ms: 200,
            ..HttpConfig::default()
        },
    )
    .await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/categories HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"slug\":",
        auth()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered within 5 s")
        .unwrap();
    let text = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 503"), "{text}");
    assert!(
        text.contains("retry-after: 1")
            && text.contains("application/problem+json")
            && text.contains("200 ms"),
        "{text}"
    );
    app.stop().await;
}
