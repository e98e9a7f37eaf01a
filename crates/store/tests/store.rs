//! The store API on every engine: SQLite always, PostgreSQL when TENFOLD_TEST_POSTGRES_URL is set.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use tenfold_catalog::{
    CategorySlug, Money, NewCategory, NewCategoryInput, NewProduct, NewProductInput, ProductId,
    ProductPatch, ProductPatchInput,
};
use tenfold_store::{Cursor, ListQuery, StoreError};
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
