//! The storefront over HTTP (the browser tests are in crates/tenfold/tests/browser.rs): complete pages,
//! links that lead everywhere, validators, assets, budgets, and flags that switch features off.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::json;
use tenfold_test_support::{engines, spawn_app_with_jobs, Engine, TestApp, TestDb};

use crate::helpers::{client, patch_product};

/// A client that sees bodies as sent (no automatic decompression).
fn raw_client() -> Client {
    Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .no_zstd()
        .build()
        .unwrap()
}

async fn page(app: &TestApp, path: &str) -> (StatusCode, String) {
    let r = client().get(app.url(path)).send().await.unwrap();
    let status = r.status();
    let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/html"), "{path}: {ct}");
    (status, r.text().await.unwrap())
}

/// Every `href="..."` in a page, unescaped.
fn hrefs(html: &str) -> Vec<String> {
    html.split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(|s| s.replace("&amp;", "&"))
        .collect()
}

/// The product ids listed on a page (`data-id`).
fn ids(html: &str) -> Vec<i64> {
    html.split("data-id=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next()?.parse().ok())
        .collect()
}

fn next_link(html: &str) -> Option<String> {
    let at = html.find("rel=\"next\"")?;
    let tag_start = html[..at].rfind('<')?;
    let tag = &html[tag_start..html[at..].find('>')? + at];
    hrefs(tag).into_iter().next()
}

async fn seeded(engine: Engine, products: u64) -> (TestDb, tenfold_test_support::JobsApp) {
    let db = TestDb::new(engine).await;
    let j = spawn_app_with_jobs(&db).await;
    tenfold_seed::seed(&db.store().await, products, 7, false)
        .await
        .unwrap();
    (db, j)
}

#[tokio::test]
async fn pages_are_complete_html_and_every_product_is_reachable_by_links() {
    for engine in engines() {
        let (_db, j) = seeded(engine, 60).await;
        let app = &j.app;
        let (status, home) = page(app, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert!(home.starts_with("<!DOCTYPE html>"), "{engine:?}");
        assert!(home.contains("<form class=\"search\" action=\"/search\" method=\"get\""));
        assert!(home.contains("/assets/enhance."), "the script is linked");
        assert_eq!(ids(&home).len(), 8, "featured products");
        let categories: Vec<String> = hrefs(&home)
            .into_iter()
            .filter(|h| h.starts_with("/products?category="))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        assert!(!categories.is_empty());

        // All products, page after page: each once.
        let mut seen = Vec::new();
        let mut next = Some("/products".to_owned());
        let mut pages = 0;
        while let Some(path) = next {
            let (status, html) = page(app, &path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            seen.extend(ids(&html));
            next = next_link(&html);
            pages += 1;
            assert!(pages < 10, "pagination does not end");
        }
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(seen.len(), 60, "{engine:?}: {pages} pages");
        assert_eq!(unique.len(), 60, "no product twice");

        // Per category: the filter form's values and the links agree, and the counts add up.
        let mut total = 0;
        for c in &categories {
            let mut next = Some(c.clone());
            while let Some(path) = next {
                let (_, html) = page(app, &path).await;
                total += ids(&html).len();
                next = next_link(&html);
                if let Some(n) = &next {
                    assert!(
                        n.contains("category="),
                        "the next page keeps the filter: {n}"
                    );
                }
            }
        }
        assert_eq!(total, 60);

        // A product page: its name, price and a link back to its category.
        let id = seen[3];
        let p: serde_json::Value = client()
            .get(app.url(&format!("/api/products/{id}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let (status, html) = page(app, &format!("/products/{id}")).await;
        assert_eq!(status, StatusCode::OK);
        let name = p["name"].as_str().unwrap().replace('&', "&amp;");
        assert!(html.contains(&format!("<h1>{name}</h1>")), "{html}");
        assert!(html.contains(&format!(
            "href=\"/products?category={}\"",
            p["category"].as_str().unwrap()
        )));

        // Search through the plain form.
        let word = p["name"]
            .as_str()
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let (status, html) = page(app, &format!("/search?q={word}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            ids(&html).contains(&id),
            "searching {word:?} finds product {id}"
        );
        assert!(
            html.contains(&format!("value=\"{word}\"")),
            "the form keeps the text"
        );
        j.app.stop().await;
    }
}

#[tokio::test]
async fn html_has_validators_and_a_write_changes_the_page_at_once() {
    let (_db, j) = seeded(Engine::Sqlite, 5).await;
    let app = &j.app;
    let r = client().get(app.url("/products/2")).send().await.unwrap();
    let etag = r.headers()["etag"].clone();
    assert!(r.headers()["vary"].to_str().unwrap().contains("save-data"));
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .starts_with("public"));
    let r = client()
        .get(app.url("/products/2"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_MODIFIED);

    patch_product(app, 2, json!({"name": "Renamed <lamp>"})).await;
    let r = client()
        .get(app.url("/products/2"))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "a new version is a new page");
    assert_ne!(r.headers()["etag"], etag);
    let html = r.text().await.unwrap();
    assert!(html.contains("<h1>Renamed &lt;lamp&gt;</h1>"), "{html}");

    // Save-Data is a different page (and says so).
    let r = client()
        .get(app.url("/products/2"))
        .header("save-data", "on")
        .send()
        .await
        .unwrap();
    assert!(r.text().await.unwrap().contains("data-save-data=\"1\""));
    j.app.stop().await;
}

#[tokio::test]
async fn bad_input_gets_an_html_page_with_the_right_status() {
    let (_db, j) = seeded(Engine::Sqlite, 3).await;
    let app = &j.app;
    for (path, status) in [
        ("/products/999999", StatusCode::NOT_FOUND),
        ("/products/abc", StatusCode::NOT_FOUND),
        ("/products/-1", StatusCode::NOT_FOUND),
        (
            "/products?cursor=not-a-cursor",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "/products?category=Not%20A%20Slug",
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        ("/search?q=%01bad", StatusCode::UNPROCESSABLE_ENTITY),
    ] {
        let (got, html) = page(app, path).await;
        assert_eq!(got, status, "{path}: {html}");
        assert!(html.contains("<h1>"), "{path}: a page a person can read");
        assert!(html.contains("href=\"/\""), "{path}: a way back");
    }
    let long = "x".repeat(101);
    let (got, _) = page(app, &format!("/search?q={long}")).await;
    assert_eq!(got, StatusCode::UNPROCESSABLE_ENTITY);
    let r = client()
        .get(app.url("/assets/app.0000000000.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    j.app.stop().await;
}

#[tokio::test]
async fn assets_are_fingerprinted_immutable_precompressed_and_within_budget() {
    let (_db, j) = seeded(Engine::Sqlite, 30).await;
    let app = &j.app;
    let (_, home) = page(app, "/").await;
    let assets: Vec<String> = hrefs(&home)
        .into_iter()
        .chain(
            home.split("src=\"")
                .skip(1)
                .filter_map(|s| s.split('"').next().map(str::to_owned)),
        )
        .filter(|h| h.starts_with("/assets/"))
        .collect();
    assert_eq!(assets.len(), 2, "{assets:?}");
    let (mut js, mut css) = (0, 0);
    for a in &assets {
        let mut sizes = Vec::new();
        for enc in ["br", "gzip", "identity"] {
            let r = raw_client()
                .get(app.url(a))
                .header("accept-encoding", enc)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), StatusCode::OK, "{a}");
            assert_eq!(
                r.headers()["cache-control"],
                "public, max-age=31536000, immutable"
            );
            let got = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned());
            assert_eq!(
                got.as_deref(),
                (enc != "identity").then_some(enc),
                "{a} {enc}"
            );
            sizes.push(r.bytes().await.unwrap().len());
        }
        assert!(sizes[0] < sizes[2] && sizes[1] < sizes[2], "{a}: {sizes:?}");
        if a.ends_with(".js") {
            js += sizes[1].max(sizes[0]);
        } else {
            css += sizes[1].max(sizes[0]);
        }
    }
    // Budgets, compressed (the larger of brotli and gzip).
    assert!(js <= 20 * 1024, "JavaScript {js} bytes compressed");
    assert!(css <= 15 * 1024, "CSS {css} bytes compressed");
    for enc in ["br", "gzip"] {
        let r = raw_client()
            .get(app.url("/products/1"))
            .header("accept-encoding", enc)
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-encoding"], enc);
        let n = r.bytes().await.unwrap().len();
        assert!(n <= 14 * 1024, "product page HTML {n} bytes as {enc}");
    }
    // No request to another host: every URL in every main page is a path on this one.
    for path in ["/", "/products", "/products/1", "/search?q=a"] {
        let (_, html) = page(app, path).await;
        for attr in ["href=\"", "src=\"", "srcset=\"", "action=\""] {
            for v in html.split(attr).skip(1).filter_map(|s| s.split('"').next()) {
                assert!(
                    v.starts_with('/') || v.starts_with('#') || v == "data:,",
                    "{path}: {attr}{v}"
                );
            }
        }
        assert!(
            !html.contains("//"),
            "{path}: no protocol-relative or absolute URL"
        );
    }
    j.app.stop().await;
}

#[tokio::test]
async fn flags_switch_storefront_features_off_and_pages_keep_working() {
    let (_db, j) = seeded(Engine::Sqlite, 40).await;
    let app = &j.app;
    let (_, first) = page(app, "/products").await;
    let deep = next_link(&first).expect("a second page");

    for (flag, on) in [
        ("search", false),
        ("deep_pages", false),
        ("enhancements", false),
    ] {
        j.flags.set(flag, on, None, Some("test")).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, home) = page(app, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!home.contains("<script"), "no script with enhancements off");
    assert!(
        !home.contains("action=\"/search\""),
        "no search form with search off"
    );
    let (status, html) = page(app, "/search?q=lamp").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Text search is turned off"), "{html}");
    let (status, html) = page(app, &deep).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("Paging beyond the first page is turned off"),
        "{html}"
    );
    assert_eq!(ids(&html), ids(&first), "the first page instead");
    assert!(next_link(&html).is_none(), "and no link further");

    for flag in ["search", "deep_pages", "enhancements"] {
        j.flags.remove(flag).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, html) = page(app, &deep).await;
    assert!(!html.contains("turned off"));
    assert_ne!(ids(&html), ids(&first));
    j.app.stop().await;
}

#[tokio::test]
async fn lists_sort_by_price_in_the_form_the_links_and_the_api() {
    let (_db, j) = seeded(Engine::Sqlite, 45).await;
    let app = &j.app;
    let price_of = |html: &str| -> Vec<f64> {
        html.split("<span class=\"price\">")
            .skip(1)
            .filter_map(|s| s.split(' ').next()?.parse().ok())
            .collect()
    };
    for (sort, ascending) in [("price", true), ("-price", false)] {
        let mut next = Some(format!("/products?sort={sort}"));
        let (mut prices, mut ids_seen) = (Vec::new(), Vec::new());
        while let Some(path) = next {
            let (status, html) = page(app, &path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(
                html.contains(&format!("<option value=\"{sort}\" selected>")),
                "{path}"
            );
            prices.extend(price_of(&html));
            ids_seen.extend(ids(&html));
            next = next_link(&html);
            if let Some(n) = &next {
                assert!(n.contains(&format!("sort={sort}")), "{n}");
            }
        }
        assert_eq!(ids_seen.len(), 45);
        assert_eq!(ids_seen.iter().collect::<HashSet<_>>().len(), 45);
        let mut want = prices.clone();
        want.sort_by(|a, b| a.partial_cmp(b).unwrap());
        if !ascending {
            want.reverse();
        }
        assert_eq!(prices, want, "{sort}");
    }
    // The API takes the same orders; a cursor only continues its own.
    let r = client()
        .get(app.url("/api/products?sort=-price&limit=5"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = r.json().await.unwrap();
    let next = v["next"].as_str().unwrap().to_owned();
    assert!(next.contains("sort=-price"), "{next}");
    let cursor = v["next_cursor"].as_str().unwrap();
    let r = client()
        .get(app.url(&format!("/api/products?cursor={cursor}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = client()
        .get(app.url("/api/products?sort=name"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    j.app.stop().await;
}

#[tokio::test]
async fn errors_outside_the_page_handlers_are_pages_for_browsers_and_problems_for_the_api() {
    let (_db, j) = seeded(Engine::Sqlite, 3).await;
    let app = &j.app;
    let get = |path: &str, accept: &'static str| {
        let url = app.url(path);
        async move {
            client()
                .get(url)
                .header("accept", accept)
                .send()
                .await
                .unwrap()
        }
    };
    let browser = "text/html,application/xhtml+xml,*/*;q=0.8";
    let r = get("/no/such/page", browser).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("there is no resource at /no/such/page"));
    let r = get("/api/no/such", browser).await;
    assert_eq!(r.headers()["content-type"], "application/problem+json");
    let r = get("/no/such/page", "application/json").await;
    assert_eq!(r.headers()["content-type"], "application/problem+json");

    // Maintenance: checkout gets a page saying so, with its Retry-After (the cart itself, a cookie,
    // still works).
    j.flags
        .set("read_only", true, None, Some("test"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client()
        .post(app.url("/cart"))
        .header("accept", browser)
        .form(&[("product_id", "1")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK, "the cart works in maintenance");
    let r = client()
        .post(app.url("/checkout"))
        .header("accept", browser)
        .form(&[("csrf", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key("retry-after"));
    let html = r.text().await.unwrap();
    assert!(
        html.starts_with("<!DOCTYPE html>") && html.contains("<h1>"),
        "{html}"
    );
    j.flags.remove("read_only").await.unwrap();
    j.app.stop().await;
}
