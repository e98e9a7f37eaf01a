use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tenfold_test_support::{spawn_app, Engine, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

async fn seeded_app(db: &TestDb, n: u64) -> tenfold_test_support::TestApp {
    let app = spawn_app(db).await;
    tenfold_seed::seed(&app.store, n, 1, false).await.unwrap();
    app
}

#[tokio::test]
async fn responses_are_compressed_by_negotiation_above_the_minimum() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = seeded_app(&db, 50).await;
    // A raw client, so that we see the encoding on the wire.
    let raw = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .unwrap();
    for enc in ["gzip", "br", "zstd"] {
        let r = raw
            .get(app.url("/api/products?limit=50"))
            .header("accept-encoding", enc)
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.headers()
                .get("content-encoding")
                .and_then(|v| v.to_str().ok()),
            Some(enc)
        );
        assert!(r.headers().get("vary").is_some_and(|v| v
            .to_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("accept-encoding")));
    }
    // The decoding client gets the same JSON back.
    let plain: Value = raw
        .get(app.url("/api/products?limit=50"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let decoded: Value = client()
        .get(app.url("/api/products?limit=50"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plain, decoded);
    // Small bodies are sent as they are.
    let r = raw
        .get(app.url("/healthz"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    app.stop().await;
}

#[tokio::test]
async fn http2_cleartext_and_http1_keep_alive_share_the_port() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = seeded_app(&db, 5).await;
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(app.url("/api/products/1")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), StatusCode::OK);
    // Several HTTP/1.1 requests on one connection.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let req = format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    for _ in 0..3 {
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    }
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_echoed_or_made() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = spawn_app(&db).await;
    let c = client();
    let r = c
        .get(app.url("/api/products/77"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    let p: Value = r.json().await.unwrap();
    assert_eq!(
        p["request_id"], "abc-123",
        "problem bodies quote the request id"
    );
    // Made when absent or unacceptable (too long).
    for given in [None, Some("x".repeat(200))] {
        let mut req = c.get(app.url("/healthz"));
        if let Some(g) = &given {
            req = req.header("x-request-id", g);
        }
        let r = req.send().await.unwrap();
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(id.len(), 36, "{id}");
    }
    app.stop().await;
}

#[tokio::test]
async fn oversized_headers_get_431_and_slow_headers_are_cut_off() {
    let db = TestDb::new(Engine::Sqlite).await;
    let app = spawn_app_with_short_header_timeout(&db).await;
    let c = client();
    let r = c
        .get(app.url("/healthz"))
        .header("x-big", "a".repeat(64 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Slowloris: headers never finish; the server closes the connection after the header timeout.
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection that never finished its headers stayed open"
    );
    // And the service still serves everyone else.
    assert_eq!(
        c.get(app.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    app.stop().await;
}

async fn spawn_app_with_short_header_timeout(db: &TestDb) -> tenfold_test_support::TestApp {
    tenfold_test_support::spawn_app_with(
        db,
        tenfold_test_support::HttpConfig {
            header_read_timeout_ms: 300,
            ..Default::default()
        },
    )
    .await
}
