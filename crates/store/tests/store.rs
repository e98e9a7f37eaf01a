//! The store API on every engine: SQLite always, PostgreSQL when TENFOLD_TEST_POSTGRES_URL is set.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use tenfold_catalog::{
    CategorySlug, Money, NewCategory, NewCategoryInput, NewProduct, NewProductInput, ProductId,
    ProductPatch, ProductPatchInput,
};
use tenfold_store::{Cursor, ListQuery, Sort, StoreError};
use tenfold_test_support::{engines, TestDb};

fn category(slug: &str) -> NewCategory {
    NewCategory::parse(&NewCategoryInput {
        slug: slug.into(),
        name: slug.into(),
    })
    .unwrap()
}

fn product(sku: &str, cat: &str, name: &str) -> NewProduct {
    NewProduct::parse(&NewProductInput {
        sku: sku.into(),
        name: name.into(),
        description: String::new(),
        price: Money {
            amount_minor: 100,
            currency: "EUR".into(),
        },
        stock: 1,
        category: cat.into(),
    })
    .unwrap()
}

fn patch(input: ProductPatchInput) -> ProductPatch {
    ProductPatch::parse(&input).unwrap()
}

fn id(n: i64) -> ProductId {
    ProductId::new(n).unwrap()
}

#[tokio::test]
async fn writes_keep_versions_and_category_counts_exact() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let s = db.store().await;
        let ready = s.readiness().await.unwrap();
        assert!(ready.migrations_current(), "{engine:?} {ready:?}");
        s.create_category(&category("a")).await.unwrap();
        s.create_category(&category("b")).await.unwrap();
        assert!(matches!(
            s.create_category(&category("a")).await,
            Err(StoreError::Conflict(_))
        ));

        let p = s.create_product(&product("S1", "a", "One")).await.unwrap();
        assert_eq!(p.version, 1);
        assert!(matches!(
            s.create_product(&product("S1", "a", "Again")).await,
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            s.create_product(&product("S2", "zz", "Nowhere")).await,
            Err(StoreError::UnknownCategory(_))
        ));

        // Stale version: nothing changes, the current version is reported.
        let moved = s
            .update_product(
                id(p.id),
                &patch(ProductPatchInput {
                    category: Some("b".into()),
                    ..Default::default()
                }),
                Some(1),
            )
            .await
            .unwrap();
        assert_eq!((moved.version, moved.category.as_str()), (2, "b"));
        match s
            .update_product(
                id(p.id),
                &patch(ProductPatchInput {
                    category: Some("a".into()),
                    ..Default::default()
                }),
                Some(1),
            )
            .await
        {
            Err(StoreError::VersionMismatch { current: 2 }) => {}
            other => panic!("{engine:?}: {other:?}"),
        }
        // An unknown category in a patch rolls back the whole change.
        assert!(matches!(
            s.update_product(
                id(p.id),
                &patch(ProductPatchInput {
                    category: Some("zz".into()),
                    ..Default::default()
                }),
                None
            )
            .await,
            Err(StoreError::UnknownCategory(_))
        ));
        let counts = |cats: Vec<tenfold_catalog::Category>| {
            cats.into_iter()
                .map(|c| (c.slug, c.product_count))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            counts(s.list_categories().await.unwrap()),
            [("a".into(), 0), ("b".into(), 1)],
            "{engine:?}"
        );

        assert!(matches!(
            s.delete_product(id(p.id), Some(1)).await,
            Err(StoreError::VersionMismatch { current: 2 })
        ));
        assert!(matches!(
            s.update_product(
                id(999),
                &patch(ProductPatchInput {
                    stock: Some(1),
                    ..Default::default()
                }),
                None
            )
            .await,
            Err(StoreError::NotFound)
        ));
        s.delete_product(id(p.id), Some(2)).await.unwrap();
        assert!(matches!(
            s.delete_product(id(p.id), None).await,
            Err(StoreError::NotFound)
        ));
        assert_eq!(
            counts(s.list_categories().await.unwrap()),
            [("a".into(), 0), ("b".into(), 0)]
        );

        // Ids are never reused after a delete.
        let q = s
            .create_product(&product("S3", "a", "Three"))
            .await
            .unwrap();
        assert!(q.id > p.id, "{engine:?}");
        s.close().await;
    }
}

#[tokio::test]
async fn keyset_pages_cover_every_row_once_with_filters() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let s = db.store().await;
        s.ensure_categories(&[category("a"), category("b")])
            .await
            .unwrap();
        for i in 0..53 {
            let cat = if i % 3 == 0 { "b" } else { "a" };
            let name = if i % 4 == 0 {
                format!("Red_{i}")
            } else {
                format!("Blue {i}")
            };
            s.create_product(&product(&format!("K{i}"), cat, &name))
                .await
                .unwrap();
        }
        for (cat, search, expect) in [
            (None, None, 53),
            (Some("b"), None, 18),
            (None, Some("red_"), 14),
            (Some("b"), Some("RED"), 5),
        ] {
            let mut after: Option<Cursor> = None;
            let mut seen = Vec::new();
            loop {
                let q = ListQuery {
                    category: cat.map(|c| CategorySlug::parse(c).unwrap()),
                    search: search.map(str::to_owned),
                    after,
                    limit: 4,
                    sort: Sort::Id,
                };
                let page = s.list_products(&q).await.unwrap();
                assert!(page.items.len() <= 4);
                seen.extend(page.items.iter().map(|p| p.id));
                match page.next {
                    Some(c) => after = Some(c),
                    None => break,
                }
            }
            let mut sorted = seen.clone();
            sorted.dedup();
            assert_eq!(sorted.len(), expect, "{engine:?} {cat:?} {search:?}");
            assert!(seen.windows(2).all(|w| w[0] < w[1]));
        }
        s.close().await;
    }
}

#[tokio::test]
async fn pages_sorted_by_price_cover_every_row_once_in_order_even_with_equal_prices() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let s = db.store().await;
        s.migrate().await.unwrap();
        s.ensure_categories(&[category("a"), category("b")])
            .await
            .unwrap();
        for i in 0..41i64 {
            let cat = if i % 3 == 0 { "b" } else { "a" };
            // Many equal prices, so the id must break the ties across page boundaries.
            let input = NewProductInput {
                sku: format!("P{i}"),
                name: format!("Thing {i}"),
                description: String::new(),
                price: Money {
                    amount_minor: (i * 7) % 5 * 100,
                    currency: "EUR".into(),
                },
                stock: 1,
                category: cat.into(),
            };
            s.create_product(&NewProduct::parse(&input).unwrap())
                .await
                .unwrap();
        }
        for sort in [Sort::PriceAsc, Sort::PriceDesc] {
            for (cat, search, expect) in [
                (None, None, 41),
                (Some("b"), None, 14),
                (Some("a"), Some("thing 1"), 8),
            ] {
                let mut after: Option<Cursor> = None;
                let mut seen: Vec<(i64, i64)> = Vec::new();
                loop {
                    let q = ListQuery {
                        category: cat.map(|c| CategorySlug::parse(c).unwrap()),
                        search: search.map(str::to_owned),
                        after,
                        limit: 3,
                        sort,
                    };
                    let page = s.list_products(&q).await.unwrap();
                    seen.extend(page.items.iter().map(|p| (p.price.amount_minor, p.id)));
                    match page.next {
                        Some(c) => {
                            assert!(c.fits(sort));
                            after = Some(c);
                        }
                        None => break,
                    }
                }
                let unique: std::collections::HashSet<_> = seen.iter().map(|x| x.1).collect();
                assert_eq!(
                    unique.len(),
                    expect,
                    "{engine:?} {sort:?} {cat:?} {search:?}"
                );
                assert_eq!(seen.len(), expect, "no row twice");
                let mut want = seen.clone();
                want.sort();
                if sort == Sort::PriceDesc {
                    want.reverse();
                }
                assert_eq!(seen, want, "{engine:?} {sort:?}: in (price, id) order");
            }
        }
        s.close().await;
    }
}

#[tokio::test]
async fn seeding_is_deterministic_and_idempotent() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let s = db.store().await;
        let first = tenfold_seed::seed(&s, 2_500, 42, false).await.unwrap();
        assert_eq!((first.products_added, first.products_total), (2_500, 2_500));
        let again = tenfold_seed::seed(&s, 2_500, 42, false).await.unwrap();
        assert_eq!(
            (
                again.products_added,
                again.categories_added,
                again.products_total
            ),
            (0, 0, 2_500)
        );
        let total: i64 = s
            .list_categories()
            .await
            .unwrap()
            .iter()
            .map(|c| c.product_count)
            .sum();
        assert_eq!(total, 2_500, "category counts match the products");
        let p = s.get_product(id(1)).await.unwrap().unwrap();
        assert_eq!(
            NewProduct::parse(&NewProductInput {
                sku: p.sku.clone(),
                name: p.name.clone(),
                description: p.description.clone(),
                price: p.price.clone(),
                stock: p.stock,
                category: p.category.clone()
            })
            .unwrap(),
            tenfold_seed::generate(0, 42).unwrap(),
            "{engine:?}: the stored product is the generated one"
        );
        s.close().await;
    }
}

fn stocked(sku: &str, stock: i64) -> NewProduct {
    NewProduct::parse(&NewProductInput {
        sku: sku.into(),
        name: format!("Product {sku}"),
        description: String::new(),
        price: Money {
            amount_minor: 250,
            currency: "EUR".into(),
        },
        stock,
        category: "tools".into(),
    })
    .unwrap()
}

#[tokio::test]
async fn a_thousand_concurrent_orders_never_oversell_a_stock_of_a_hundred() {
    use tenfold_store::StockItem;
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let store = db.store().await;
        store.create_category(&category("tools")).await.unwrap();
        let p = store.create_product(&stocked("HAMMER", 100)).await.unwrap();
        let item = [StockItem {
            product_id: id(p.id),
            quantity: 1,
        }];
        let mut tasks = Vec::new();
        for order in 0..1000 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store.take_stock(order + 1, &item).await
            }));
        }
        let (mut ok, mut refused, mut versions) = (0, 0, Vec::new());
        for t in tasks {
            match t.await.unwrap() {
                Ok(taken) => {
                    ok += 1;
                    assert_eq!(taken[0].name, "Product HAMMER");
                    assert_eq!(taken[0].price_minor, 250);
                    versions.push(taken[0].version);
                }
                Err(StoreError::InsufficientStock {
                    available: 0,
                    requested: 1,
                    ..
                }) => refused += 1,
                Err(e) => panic!("{engine:?}: unexpected {e}"),
            }
        }
        assert_eq!((ok, refused), (100, 900), "{engine:?}");
        let after = store.get_product(id(p.id)).await.unwrap().unwrap();
        assert_eq!(after.stock, 0);
        // Every taking made its own version: 2..=101, each once.
        versions.sort();
        assert_eq!(versions, (2..=101).collect::<Vec<i64>>(), "{engine:?}");
        assert_eq!(after.version, 101);
    }
}

#[tokio::test]
async fn an_order_takes_all_its_stock_or_none_and_can_give_it_back() {
    use tenfold_store::StockItem;
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let store = db.store().await;
        store.create_category(&category("tools")).await.unwrap();
        let a = store.create_product(&stocked("SAW", 5)).await.unwrap();
        let b = store.create_product(&stocked("DRILL", 1)).await.unwrap();
        let items = |qa, qb| {
            [
                StockItem {
                    product_id: id(b.id),
                    quantity: qb,
                },
                StockItem {
                    product_id: id(a.id),
                    quantity: qa,
                },
            ]
        };
        // B is short: nothing is taken, A included.
        match store.take_stock(1, &items(2, 2)).await {
            Err(StoreError::InsufficientStock {
                product_id,
                available: 1,
                requested: 2,
            }) => {
                assert_eq!(product_id, b.id)
            }
            other => panic!("{engine:?}: {other:?}"),
        }
        assert_eq!(store.get_product(id(a.id)).await.unwrap().unwrap().stock, 5);
        // Lines for one product add up; results come in product-id order.
        let taken = store
            .take_stock(
                2,
                &[
                    StockItem {
                        product_id: id(a.id),
                        quantity: 2,
                    },
                    StockItem {
                        product_id: id(b.id),
                        quantity: 1,
                    },
                    StockItem {
                        product_id: id(a.id),
                        quantity: 1,
                    },
                ],
            )
            .await
            .unwrap();
        assert_eq!(
            taken
                .iter()
                .map(|t| (t.product_id, t.quantity))
                .collect::<Vec<_>>(),
            vec![(a.id, 3), (b.id, 1)]
        );
        assert_eq!(store.get_product(id(a.id)).await.unwrap().unwrap().stock, 2);
        // Unknown products are named.
        assert!(matches!(
            store
                .take_stock(
                    3,
                    &[StockItem {
                        product_id: id(999_999),
                        quantity: 1
                    }]
                )
                .await,
            Err(StoreError::UnknownProduct(999_999))
        ));
        // Order 2 holds a reservation; a refused order (1, 3) left none.
        assert_eq!(store.stale_reservations(0).await.unwrap(), vec![2]);
        // Given back by order: the stock returns and the versions move on; twice gives nothing more.
        let versions = store.give_back_stock(2).await.unwrap();
        assert_eq!(versions.len(), 2);
        assert!(store.give_back_stock(2).await.unwrap().is_empty());
        let a_now = store.get_product(id(a.id)).await.unwrap().unwrap();
        assert_eq!((a_now.stock, a_now.version), (5, 3));
        assert_eq!(store.get_product(id(b.id)).await.unwrap().unwrap().stock, 1);
        // A released reservation (the order was written) gives nothing back.
        store
            .take_stock(
                4,
                &items(1, 0).map(|i| StockItem {
                    quantity: i.quantity.max(1),
                    ..i
                }),
            )
            .await
            .unwrap();
        store.release_reservation(4).await.unwrap();
        assert!(store.give_back_stock(4).await.unwrap().is_empty());
        assert!(store.stale_reservations(0).await.unwrap().is_empty());
        // The same order id cannot take stock twice.
        store
            .take_stock(
                5,
                &[StockItem {
                    product_id: id(a.id),
                    quantity: 1,
                }],
            )
            .await
            .unwrap();
        assert!(matches!(
            store
                .take_stock(
                    5,
                    &[StockItem {
                        product_id: id(a.id),
                        quantity: 1
                    }]
                )
                .await,
            Err(StoreError::OrderIdTaken(_))
        ));
    }
}

#[tokio::test]
async fn the_shard_map_is_stored_once_and_read_back() {
    use tenfold_store::shards::{Bucket, ShardMap};
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let store = db.store().await;
        let first = store.shard_map(&ShardMap::even(4).unwrap()).await.unwrap();
        assert_eq!(first, ShardMap::even(4).unwrap());
        // Another initial map with the same shard count does not replace the stored one.
        let moved = ShardMap::even(4)
            .unwrap()
            .with_move(Bucket::new(0).unwrap(), 3)
            .unwrap();
        assert_eq!(store.shard_map(&moved).await.unwrap(), first, "{engine:?}");
        assert!(matches!(
            store.shard_map(&ShardMap::even(2).unwrap()).await,
            Err(StoreError::Conflict(_))
        ));
        // A shard URL added at the end grows the map: the new shards hold nothing until buckets move.
        let grown = store.shard_map(&ShardMap::even(6).unwrap()).await.unwrap();
        assert_eq!(grown.shards(), 6, "{engine:?}");
        assert_eq!(grown.version(), 2);
        assert_eq!(grown.buckets_per_shard(), vec![256, 256, 256, 256, 0, 0]);
    }
}

#[tokio::test]
async fn orders_round_trip_on_a_shard_of_every_engine() {
    use tenfold_store::shards::{bucket_of, OrderId};
    use tenfold_store::{Order, OrderLine, OrderShards};
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let store = db.store().await;
        // One shard, in the catalog's own database.
        let shards = OrderShards::connect(
            store.clone(),
            std::slice::from_ref(&db.url),
            std::time::Duration::from_secs(3),
        )
        .await
        .unwrap();
        let mut ids = Vec::new();
        for n in 0..3u16 {
            let id = OrderId::new(bucket_of(42), 1_800_000_000_000 + u64::from(n), n);
            let o = Order {
                id,
                customer_id: 42,
                lines: vec![OrderLine {
                    product_id: 7,
                    name: "Lamp".into(),
                    price_minor: 1999,
                    quantity: 2,
                }],
                total_minor: 3998,
                currency: "EUR".into(),
                created_at: "2027-01-15T08:00:00Z".into(),
            };
            shards.insert(&o).await.unwrap();
            shards.insert(&o).await.unwrap(); // idempotent
                                              // Another order under the same id (a salt collision) is refused, not taken for a repeat.
            let mut other = o.clone();
            other.total_minor += 1;
            assert!(matches!(
                shards.insert(&other).await,
                Err(StoreError::OrderIdTaken(n)) if n == id.get()
            ));
            assert_eq!(shards.get(id).await.unwrap(), Some(o));
            ids.push(id.get());
        }
        let page = shards.by_customer(42, None, 2).await.unwrap();
        assert_eq!(
            page.iter().map(|o| o.id.get()).collect::<Vec<_>>(),
            vec![ids[2], ids[1]],
            "{engine:?}"
        );
        let rest = shards.by_customer(42, Some(ids[1]), 2).await.unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(shards.counts().await.unwrap(), vec![3]);
        assert!(shards.by_customer(43, None, 10).await.unwrap().is_empty());
    }
}
