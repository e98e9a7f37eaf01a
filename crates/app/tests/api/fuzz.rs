//! Property test: whatever a client throws at the API, the answer is never a 5xx.

use axum::body::Body;
use axum::http::Request;
use proptest::prelude::*;
use tenfold_test_support::{Engine, TestDb, TEST_API_KEY};
use tower::ServiceExt;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("\u{0}\u{202e}\u{fffd}𝔘𝔫𝔦")),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::hash_map(
                prop_oneof![
                    Just("sku".to_owned()),
                    Just("name".to_owned()),
                    Just("price".to_owned()),
                    Just("stock".to_owned()),
                    Just("category".to_owned()),
                    Just("amount_minor".to_owned()),
                    Just("currency".to_owned()),
                    "\\PC{0,8}"
                ],
                inner,
                0..7
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| serde_json::to_vec(&v).unwrap_or_default()),
        prop::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,100}".prop_map(String::into_bytes),
        Just(b"{\"sku\":\"A\",\"price\":{\"amount_minor\":1e400}}".to_vec()),
        Just(b"[".repeat(10_000)),
        (1usize..3).prop_map(|n| vec![b'x'; n * 1024 * 1024]),
    ]
}

fn path() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/api/products".to_owned()),
        Just("/api/categories".to_owned()),
        any::<i64>().prop_map(|n| format!("/api/products/{n}")),
        "[a-zA-Z0-9%._~-]{0,30}".prop_map(|s| format!("/api/products/{s}")),
        "[a-z0-9=&%+]{0,60}".prop_map(|q| format!("/api/products?{q}")),
        ("[a-z_]{1,8}", "[A-Za-z0-9%+._-]{0,300}")
            .prop_map(|(k, v)| format!("/api/products?{k}={v}")),
        prop_oneof![Just("limit"), Just("cursor"), Just("q"), Just("category")].prop_flat_map(
            |k| "[A-Za-z0-9%+._-]{0,120}".prop_map(move |v| format!("/api/products?{k}={v}"))
        ),
    ]
}

#[test]
fn no_input_gets_a_server_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (db, app) = rt.block_on(async {
        let db = TestDb::new(Engine::Sqlite).await;
        let store = db.store().await;
        tenfold_seed::seed(&store, 20, 1, false).await.unwrap();
        let http = tenfold_test_support::HttpConfig {
            api_key: Some(TEST_API_KEY.to_owned().into()),
            ..Default::default()
        };
        (db, tenfold_app::App::new(store, http).router())
    });
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(400);
    let methods = prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PATCH"),
        Just("DELETE"),
        Just("PUT"),
        Just("HEAD")
    ];
    let cts = prop_oneof![
        Just(Some("application/json")),
        Just(Some("application/merge-patch+json")),
        Just(Some("text/plain; charset=utf-8")),
        Just(None)
    ];
    let if_match = prop_oneof![
        Just(None),
        Just(Some("\"v1\"")),
        Just(Some("*")),
        Just(Some("garbage")),
        Just(Some("W/\"v99999999999999999999\""))
    ];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    });
    runner
        .run(
            &(methods, path(), body(), cts, if_match, any::<bool>()),
            |(method, path, body, ct, if_match, authed)| {
                let mut req = Request::builder().method(method).uri(&path);
                if let Some(ct) = ct {
                    req = req.header("content-type", ct);
                }
                if let Some(m) = if_match {
                    req = req.header("if-match", m);
                }
                if authed {
                    req = req.header("authorization", format!("Bearer {TEST_API_KEY}"));
                }
                let req = req
                    .body(Body::from(body))
                    .map_err(|e| TestCaseError::reject(e.to_string()))?;
                let status = rt
                    .block_on(app.clone().oneshot(req))
                    .map_err(|e| TestCaseError::fail(format!("{e:?}")))?
                    .status();
                prop_assert!(status.as_u16() < 500, "{method} {path} -> {status}");
                Ok(())
            },
        )
        .unwrap();
    drop(db);
}
