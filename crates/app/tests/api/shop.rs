//! The storefront's cart and checkout over HTTP: a cookie cart, stock checked at checkout, the order
//! page shown only to the browser that placed it, and forms from other sites refused.

use std::sync::Arc;

use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;
use tenfold_store::OrderShards;
use tenfold_test_support::{spawn_app_full, CacheConfig, Engine, HttpConfig, TestDb};

use crate::helpers::{browser, csrf, Jar};

async fn send(jar: &mut Jar, req: reqwest::RequestBuilder) -> (StatusCode, String, Option<String>) {
    let r = req.header(COOKIE, jar.header()).send().await.unwrap();
    jar.take(&r);
    let loc = r
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), r.text().await.unwrap(), loc)
}

#[tokio::test]
async fn a_cart_in_a_cookie_checks_out_into_an_order_only_its_browser_sees() {
    let db = TestDb::new(Engine::Sqlite).await;
    let store = db.store().await;
    tenfold_seed::seed(&store, 10, 5, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shards = Arc::new(
        OrderShards::connect(
            store.clone(),
            &[format!("sqlite://{}/orders.db", dir.path().display())],
            std::time::Duration::from_secs(3),
        )
        .await
        .unwrap(),
    );
    let app = spawn_app_full(
        store,
        HttpConfig::default(),
        &CacheConfig::default(),
        Some(shards),
    )
    .await;
    let base = app.base.clone();
    for id in [3, 4, 5] {
        crate::helpers::patch_product(&app, id, serde_json::json!({"stock": 50})).await;
    }
    let c = browser();
    let mut jar = Jar::default();

    // The product page offers the form; two adds of product 3, one of product 4.
    let (_, page, _) = send(&mut jar, c.get(format!("{base}/products/3"))).await;
    assert!(page.contains("action=\"/cart\""), "{page}");
    assert!(page.contains("href=\"/cart\""));
    for (id, q) in [("3", "1"), ("3", "2"), ("4", "1")] {
        let (status, _, loc) = send(
            &mut jar,
            c.post(format!("{base}/cart"))
                .header("sec-fetch-site", "same-origin")
                .form(&[("product_id", id), ("quantity", q)]),
        )
        .await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        assert_eq!(loc.as_deref(), Some("/cart"));
    }
    // The script's in-place add: JSON instead of a redirect.
    let (status, body, _) = send(
        &mut jar,
        c.post(format!("{base}/cart"))
            .header("accept", "application/json")
            .form(&[("product_id", "5")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["count"], 5);
    // From another site: refused, the cart unchanged.
    for (h, v) in [
        ("sec-fetch-site", "cross-site"),
        ("origin", "http://evil.example"),
    ] {
        let (status, _, _) = send(
            &mut jar,
            c.post(format!("{base}/cart"))
                .header(h, v)
                .form(&[("product_id", "6")]),
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{h}: {v}");
    }

    let (status, cart, _) = send(&mut jar, c.get(format!("{base}/cart"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        cart.contains("value=\"3\" size=\"4\""),
        "3 of product 3: {cart}"
    );
    assert!(
        !cart.contains("href=\"/products/6\""),
        "nothing from the other site"
    );
    // Remove product 5 through its form.
    let token = csrf(&cart);
    let (status, _, _) = send(
        &mut jar,
        c.post(format!("{base}/cart/update")).form(&[
            ("csrf", token.as_str()),
            ("product_id", "5"),
            ("quantity", "0"),
        ]),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, cart, _) = send(&mut jar, c.get(format!("{base}/cart"))).await;
    assert!(!cart.contains("href=\"/products/5\""));
    // A forged checkout changes nothing.
    let (status, _, _) = send(
        &mut jar,
        c.post(format!("{base}/checkout"))
            .form(&[("csrf", "forged")]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Checkout: an order, the stock taken, the cart emptied, the order page for this browser only.
    let stock_before: serde_json::Value = reqwest::get(format!("{base}/api/products/3"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, _, loc) = send(
        &mut jar,
        c.post(format!("{base}/checkout"))
            .form(&[("csrf", token.as_str())]),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let loc = loc.unwrap();
    assert!(loc.starts_with("/orders/"), "{loc}");
    let (status, order, _) = send(&mut jar, c.get(format!("{base}{loc}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(order.contains("your order is placed"), "{order}");
    assert!(order.contains("href=\"/products/3\"") && order.contains("href=\"/products/4\""));
    let stock_after: serde_json::Value = reqwest::get(format!("{base}/api/products/3"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stock_after["stock"].as_i64().unwrap(),
        stock_before["stock"].as_i64().unwrap() - 3
    );
    let (_, cart, _) = send(&mut jar, c.get(format!("{base}/cart"))).await;
    assert!(cart.contains("Your cart is empty"));
    let mut stranger = Jar::default();
    let (status, _, _) = send(&mut stranger, c.get(format!("{base}{loc}"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "another browser");

    // More than the stock: refused at checkout, back to the cart with the reason.
    send(
        &mut jar,
        c.post(format!("{base}/cart"))
            .header("sec-fetch-site", "same-origin")
            .form(&[("product_id", "7"), ("quantity", "1000")]),
    )
    .await;
    let (_, cart, _) = send(&mut jar, c.get(format!("{base}/cart"))).await;
    let token = csrf(&cart);
    let (status, _, loc) = send(
        &mut jar,
        c.post(format!("{base}/checkout"))
            .form(&[("csrf", token.as_str())]),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(loc.as_deref(), Some("/cart?error=stock"));
    let (_, cart, _) = send(&mut jar, c.get(format!("{base}/cart?error=stock"))).await;
    assert!(cart.contains("not enough stock"), "{cart}");
    assert!(cart.contains("only "), "the line says what is left");
    app.stop().await;
}
