//! Orders over HTTP: customer tokens, atomic stock, snapshots, and orders spread over two shards.

use std::sync::Arc;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use tenfold_store::OrderShards;
use tenfold_test_support::{spawn_app_full, CacheConfig, Engine, HttpConfig, TestApp, TestDb};

use crate::helpers::{auth, client, get_json};

async fn shards_in(
    catalog: &tenfold_store::Store,
    dir: &std::path::Path,
    n: usize,
) -> Arc<OrderShards> {
    let urls: Vec<String> = (0..n)
        .map(|i| format!("sqlite://{}/orders-{i}.db", dir.display()))
        .collect();
    Arc::new(
        OrderShards::connect(catalog.clone(), &urls, std::time::Duration::from_secs(3))
            .await
            .unwrap(),
    )
}

async fn token(app: &TestApp, customer: i64) -> String {
    let r = client()
        .post(app.url(&format!("/api/customers/{customer}/tokens")))
        .header("authorization", auth())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn order(c: &Client, app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    c.post(app.url("/api/orders"))
        .header("authorization", format!("Bearer {token}"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn orders_are_placed_with_a_snapshot_and_read_only_by_their_customer() {
    let db = TestDb::new(Engine::Sqlite).await;
    let store = db.store().await;
    tenfold_seed::seed(&store, 20, 1, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shards = shards_in(&store, dir.path(), 2).await;
    let app = spawn_app_full(
        store,
        HttpConfig::default(),
        &CacheConfig::default(),
        Some(shards.clone()),
    )
    .await;
    let (t5, t6) = (token(&app, 5).await, token(&app, 6).await);
    let p1 = get_json(app.url("/api/products/1")).await;
    // Cache the category's list page before the order.
    get_json(app.url(&format!(
        "/api/products?category={}&limit=100",
        p1["category"].as_str().unwrap()
    )))
    .await;
    let p2 = get_json(app.url("/api/products/2")).await;

    let r = order(
        &client(),
        &app,
        &t5,
        json!({"customer_id": 5, "items": [
        {"product_id": 1, "quantity": 2}, {"product_id": 2, "quantity": 1}]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let o: Value = r.json().await.unwrap();
    let id = o["id"].as_i64().unwrap();
    assert_eq!(o["customer_id"], 5);
    assert_eq!(o["items"][0]["name"], p1["name"]);
    assert_eq!(o["items"][0]["price_minor"], p1["price"]["amount_minor"]);
    let total = 2 * p1["price"]["amount_minor"].as_i64().unwrap()
        + p2["price"]["amount_minor"].as_i64().unwrap();
    assert_eq!(o["total_minor"], total);
    // The stock moved, and cached reads show it at once.
    let after = get_json(app.url("/api/products/1")).await;
    assert_eq!(
        after["stock"].as_i64().unwrap(),
        p1["stock"].as_i64().unwrap() - 2
    );
    let page = get_json(app.url(&format!(
        "/api/products?category={}&limit=100",
        p1["category"].as_str().unwrap()
    )))
    .await;
    let listed = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == 1)
        .unwrap();
    assert_eq!(
        listed["stock"], after["stock"],
        "the cached list page shows the new stock"
    );

    // The snapshot stays when the product changes later.
    crate::helpers::patch_product(&app, 1, json!({"name": "Renamed"})).await;
    let read = |t: String, path: String| {
        let app_url = app.url(&path);
        async move {
            client()
                .get(app_url)
                .header("authorization", format!("Bearer {t}"))
                .send()
                .await
                .unwrap()
        }
    };
    let r = read(t5.clone(), format!("/api/orders/{id}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.json::<Value>().await.unwrap()["items"][0]["name"],
        p1["name"]
    );
    // Only its customer sees it.
    assert_eq!(
        read(t6.clone(), format!("/api/orders/{id}")).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        read(t6.clone(), "/api/customers/5/orders".into())
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        read(t5.clone(), "/api/orders/999999".into()).await.status(),
        StatusCode::NOT_FOUND
    );
    let r = client()
        .get(app.url(&format!("/api/orders/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Acting for another customer, bad lines, unknown products, too much: clear refusals, stock intact.
    let stocks_before: Vec<Value> = futures::future::join_all(
        [3, 4].map(|id| get_json(app.url(&format!("/api/products/{id}")))),
    )
    .await
    .into_iter()
    .map(|p| p["stock"].clone())
    .collect();
    let c = client();
    for (body, status) in [
        (
            json!({"customer_id": 6, "items": [{"product_id": 1, "quantity": 1}]}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"customer_id": 5, "items": []}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"customer_id": 5, "items": [{"product_id": 1, "quantity": 0}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"customer_id": 5, "items": [{"product_id": 999999, "quantity": 1}]}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            json!({"customer_id": 5, "items": [{"product_id": 3, "quantity": 1000}, {"product_id": 4, "quantity": 1}]}),
            StatusCode::CONFLICT,
        ),
    ] {
        let r = order(&c, &app, &t5, body.clone()).await;
        assert_eq!(r.status(), status, "{body}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let stocks_after: Vec<Value> = futures::future::join_all(
        [3, 4].map(|id| get_json(app.url(&format!("/api/products/{id}")))),
    )
    .await
    .into_iter()
    .map(|p| p["stock"].clone())
    .collect();
    assert_eq!(stocks_after, stocks_before, "a refused order took stock");
    crate::helpers::patch_product(&app, 5, json!({"stock": 1000})).await;

    // Many customers: their orders land on both shards, and each is found by id and by customer.
    let mut placed = Vec::new();
    for customer in 100..140i64 {
        let t = token(&app, customer).await;
        let r = order(
            &c,
            &app,
            &t,
            json!({"customer_id": customer, "items": [{"product_id": 5, "quantity": 1}]}),
        )
        .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        placed.push((
            customer,
            t,
            r.json::<Value>().await.unwrap()["id"].as_i64().unwrap(),
        ));
    }
    let counts = shards.counts().await.unwrap();
    assert!(
        counts.iter().all(|&n| n > 0),
        "orders on every shard: {counts:?}"
    );
    for (customer, t, id) in placed {
        assert_eq!(
            read(t.clone(), format!("/api/orders/{id}")).await.status(),
            StatusCode::OK
        );
        let page: Value = read(t, format!("/api/customers/{customer}/orders"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(page["items"][0]["id"], id);
    }
    app.stop().await;
}

#[tokio::test]
async fn a_thousand_concurrent_orders_for_a_stock_of_a_hundred_sell_a_hundred() {
    let db = TestDb::new(Engine::Sqlite).await;
    let store = db.store().await;
    tenfold_seed::seed(&store, 3, 1, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app_full(
        store.clone(),
        HttpConfig {
            // A thousand orders at once tests the stock, not overload control.
            load_shedding: false,
            ..HttpConfig::default()
        },
        &CacheConfig::default(),
        Some(shards_in(&store, dir.path(), 2).await),
    )
    .await;
    crate::helpers::patch_product(&app, 2, json!({"stock": 100})).await;
    let t = token(&app, 9).await;
    let clients: Vec<Client> = (0..4)
        .map(|_| {
            Client::builder()
                .no_proxy()
                .http2_prior_knowledge()
                .build()
                .unwrap()
        })
        .collect();
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let (c, url, t) = (clients[i % 4].clone(), app.url("/api/orders"), t.clone());
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .header("authorization", format!("Bearer {t}"))
                .json(&json!({"customer_id": 9, "items": [{"product_id": 2, "quantity": 1}]}))
                .send()
                .await
                .unwrap()
                .status()
        }));
    }
    let (mut placed, mut refused) = (0, 0);
    for task in tasks {
        match task.await.unwrap() {
            StatusCode::CREATED => placed += 1,
            StatusCode::CONFLICT => refused += 1,
            s => panic!("unexpected {s}"),
        }
    }
    assert_eq!((placed, refused), (100, 900));
    assert_eq!(get_json(app.url("/api/products/2")).await["stock"], 0);
    app.stop().await;
}

/// A process that dies between taking the stock and writing the order leaves a reservation; the
/// reconciler gives that stock back, and only drops the reservation of an order that was written.
#[tokio::test]
async fn the_reconciler_gives_back_the_stock_of_orders_that_were_never_written() {
    use tenfold_store::shards::{bucket_of, OrderId};
    use tenfold_store::{Order, OrderLine, StockItem};
    let db = TestDb::new(Engine::Sqlite).await;
    let store = db.store().await;
    tenfold_seed::seed(&store, 3, 1, false).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let shards = shards_in(&store, dir.path(), 2).await;
    let before = store
        .get_product(tenfold_catalog::ProductId::new(1).unwrap())
        .await
        .unwrap()
        .unwrap()
        .stock;
    let item = [StockItem {
        product_id: tenfold_catalog::ProductId::new(1).unwrap(),
        quantity: 1,
    }];
    // "Crashed" after taking the stock: no order.
    let lost = OrderId::new(bucket_of(7), 1_800_000_000_000, 1);
    store.take_stock(lost.get(), &item).await.unwrap();
    // Crashed after writing the order, before releasing the reservation.
    let written = OrderId::new(bucket_of(8), 1_800_000_000_000, 2);
    let taken = store.take_stock(written.get(), &item).await.unwrap();
    shards
        .insert(&Order {
            id: written,
            customer_id: 8,
            lines: vec![OrderLine {
                product_id: 1,
                name: taken[0].name.clone(),
                price_minor: taken[0].price_minor,
                quantity: 1,
            }],
            total_minor: taken[0].price_minor,
            currency: taken[0].currency.clone(),
            created_at: "2027-01-15T08:00:00Z".into(),
        })
        .await
        .unwrap();
    // Young reservations are left alone (their requests may still be running).
    assert_eq!(
        tenfold_app::reconcile_orders(&store, &shards, 60_000)
            .await
            .unwrap(),
        (0, 0)
    );
    assert_eq!(
        tenfold_app::reconcile_orders(&store, &shards, 0)
            .await
            .unwrap(),
        (1, 1)
    );
    let after = store
        .get_product(tenfold_catalog::ProductId::new(1).unwrap())
        .await
        .unwrap()
        .unwrap()
        .stock;
    assert_eq!(after, before - 1, "only the written order keeps its stock");
    assert!(store.stale_reservations(0).await.unwrap().is_empty());
    assert_eq!(
        tenfold_app::reconcile_orders(&store, &shards, 0)
            .await
            .unwrap(),
        (0, 0)
    );
}

/// A shard that commits an order and loses the answer (its connection drops before the reply): the order
/// is written, so the client gets it and its stock stays taken, once; nothing is left for the reconciler.
#[tokio::test]
async fn an_order_whose_write_answer_was_lost_keeps_its_stock_and_is_answered() {
    if !tenfold_test_support::engines().contains(&Engine::Postgres) {
        return;
    }
    let catalog_db = TestDb::new(Engine::Sqlite).await;
    let store = catalog_db.store().await;
    tenfold_seed::seed(&store, 3, 1, false).await.unwrap();
    let shard_db = TestDb::new(Engine::Postgres).await;
    let cutter = tenfold_test_support::AnswerCutter::start(&shard_db.url).await;
    let shards = Arc::new(
        OrderShards::connect(
            store.clone(),
            &[cutter.url().to_owned()],
            std::time::Duration::from_secs(3),
        )
        .await
        .unwrap(),
    );
    let app = spawn_app_full(
        store.clone(),
        HttpConfig::default(),
        &CacheConfig::default(),
        Some(shards.clone()),
    )
    .await;
    let t5 = token(&app, 5).await;
    let stock = || async {
        store
            .get_product(tenfold_catalog::ProductId::new(1).unwrap())
            .await
            .unwrap()
            .unwrap()
            .stock
    };
    let before = stock().await;

    cutter.arm();
    let r = order(
        &client(),
        &app,
        &t5,
        json!({"customer_id": 5, "items": [{"product_id": 1, "quantity": 2}]}),
    )
    .await;
    assert_eq!(
        cutter.cuts(),
        1,
        "the shard's answer to the order's write was lost"
    );
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap()
    );
    let placed: Value = r.json().await.unwrap();
    let id = tenfold_store::shards::OrderId::from_i64(placed["id"].as_i64().unwrap()).unwrap();
    assert!(
        shards.get(id).await.unwrap().is_some(),
        "the order is on its shard"
    );
    assert_eq!(
        stock().await,
        before - 2,
        "the written order keeps its stock, taken once"
    );
    assert!(
        store.stale_reservations(0).await.unwrap().is_empty(),
        "the reservation was released"
    );
    // The reconciler finds nothing to give back.
    assert_eq!(
        tenfold_app::reconcile_orders(&store, &shards, 0)
            .await
            .unwrap(),
        (0, 0)
    );
    assert_eq!(stock().await, before - 2);
    app.stop().await;
}
