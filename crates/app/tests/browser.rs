//! The storefront in a real browser: headless Chromium from Debian's packages, driven over WebDriver
//! (chromedriver) with fantoccini. With JavaScript off every step works through links and forms; with
//! it on, live search suggests, infinite scroll appends the next page without duplicates, and a failing
//! enhancement request falls back to the plain link. Accessibility basics (labels, alt text, keyboard
//! use) are checked on the main pages. Screenshots go to `target/screenshots/` (not committed).
//!
//! scripts/test.sh installs `chromium` and `chromium-driver` when they are missing.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use tenfold_test_support::{spawn_app_with_jobs, Engine, JobsApp, TestDb};

/// chromedriver on a free loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("chromedriver")
        .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (Debian package chromium-driver; scripts/test.sh installs it)");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

async fn browser(d: &Driver, javascript: bool) -> Client {
    let mut prefs = json!({});
    if !javascript {
        prefs["profile.managed_default_content_settings.javascript"] = json!(2);
    }
    let caps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=412,900", "--no-proxy-server", "--disable-extensions"],
            "prefs": prefs,
        },
    }))
    .unwrap();
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a Chromium session")
}

async fn seeded() -> (TestDb, JobsApp) {
    let db = TestDb::new(Engine::Sqlite).await;
    let j = spawn_app_with_jobs(&db).await;
    tenfold_seed::seed(&db.store().await, 60, 11, false)
        .await
        .unwrap();
    // Every product in stock, so that every page offers its cart form.
    for id in 1..=60 {
        let r = reqwest::Client::new()
            .patch(format!("{}/api/products/{id}", j.app.base))
            .bearer_auth(tenfold_test_support::TEST_API_KEY)
            .json(&json!({"stock": 25}))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }
    (db, j)
}

async fn screenshot(c: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(png) = c.screenshot().await {
        let _ = std::fs::write(dir.join(format!("{name}.png")), png);
    }
}

async fn path(c: &Client) -> String {
    let u = c.current_url().await.unwrap();
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_owned(),
    }
}

/// Clicks the first element `css` selects.
async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap();
}

/// The page's heading, if it can be read now (None while a navigation replaces the page).
async fn h1_now(c: &Client) -> Option<String> {
    c.find(Locator::Css("h1")).await.ok()?.text().await.ok()
}

/// The page's heading (waiting, bounded, while a navigation replaces the page).
async fn h1(c: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(t) = h1_now(c).await {
            return t;
        }
        assert!(Instant::now() < deadline, "no heading to read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the page at `want` (a path prefix) has loaded with heading `heading`.
async fn arrived(c: &Client, want: &str, heading: Option<&str>) {
    until(&format!("{want} to load"), || async {
        path(c).await.starts_with(want)
            && match heading {
                Some(h) => h1_now(c).await.as_deref() == Some(h),
                None => h1_now(c).await.is_some(),
            }
    })
    .await;
}

async fn ids_on_page(c: &Client) -> Vec<String> {
    let mut out = Vec::new();
    for e in c.find_all(Locator::Css("[data-id]")).await.unwrap() {
        out.push(e.attr("data-id").await.unwrap().unwrap());
    }
    out
}

/// Waits (bounded) until `check` holds.
async fn until<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every visible form field has a label; every image has alt text.
async fn accessible(c: &Client, page: &str) {
    for field in c
        .find_all(Locator::Css("input:not([type=hidden]), select, textarea"))
        .await
        .unwrap()
    {
        let id = field.attr("id").await.unwrap();
        let aria = field.attr("aria-label").await.unwrap();
        let labelled = match id {
            Some(id) => !c
                .find_all(Locator::Css(&format!("label[for=\"{id}\"]")))
                .await
                .unwrap()
                .is_empty(),
            None => false,
        };
        assert!(
            labelled || aria.is_some_and(|a| !a.is_empty()),
            "{page}: a field without a label: {}",
            field.html(false).await.unwrap()
        );
    }
    for img in c.find_all(Locator::Css("img")).await.unwrap() {
        assert!(
            img.attr("alt").await.unwrap().is_some(),
            "{page}: an image without alt"
        );
    }
    let lang = c
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("lang")
        .await
        .unwrap();
    assert_eq!(
        lang.as_deref(),
        Some("en"),
        "{page}: the page names its language"
    );
}

#[tokio::test]
async fn without_javascript_every_step_works_through_links_and_forms() {
    let (_db, j) = seeded().await;
    let d = driver().await;
    let c = browser(&d, false).await;
    let base = j.app.base.clone();

    c.goto(&base).await.unwrap();
    assert_eq!(h1(&c).await, "Product catalog");
    let enhanced = c
        .find(Locator::Css("html"))
        .await
        .unwrap()
        .attr("data-enhanced")
        .await
        .unwrap();
    assert_eq!(enhanced, None, "JavaScript is really off");
    accessible(&c, "home").await;
    screenshot(&c, "nojs-home").await;

    // Home → category.
    let cat = c.find(Locator::Css("ul.categories a")).await.unwrap();
    let cat_href = cat.attr("href").await.unwrap().unwrap();
    cat.click().await.unwrap();
    arrived(&c, &cat_href, None).await;
    assert_eq!(path(&c).await, cat_href);
    accessible(&c, "category").await;
    screenshot(&c, "nojs-category").await;

    // The filter form posts (GET) and keeps working: all products.
    c.find(Locator::Css("select#category"))
        .await
        .unwrap()
        .select_by_value("")
        .await
        .unwrap();
    click(&c, "form.filters button").await;
    arrived(&c, "/products", Some("All products")).await;

    // Pagination by the plain link.
    let first = ids_on_page(&c).await;
    click(&c, "a[rel=next]").await;
    until("the next page", || async {
        path(&c).await.contains("cursor=") && h1_now(&c).await.is_some()
    })
    .await;
    let second = ids_on_page(&c).await;
    assert!(!second.is_empty());
    assert!(second.iter().all(|id| !first.contains(id)));

    // → a product.
    let link = c.find(Locator::Css("li.card a.name")).await.unwrap();
    let name = link.text().await.unwrap();
    link.click().await.unwrap();
    arrived(&c, "/products/", Some(&name)).await;
    accessible(&c, "product").await;
    screenshot(&c, "nojs-product").await;

    // → search, through the form.
    let word = name.split_whitespace().next().unwrap().to_owned();
    let q = c.find(Locator::Css("input[name=q]")).await.unwrap();
    q.send_keys(&word).await.unwrap();
    click(&c, "form.search button").await;
    arrived(&c, "/search?q=", None).await;
    let found = c.find_all(Locator::Css("li.card a.name")).await.unwrap();
    let mut names = Vec::new();
    for f in found {
        names.push(f.text().await.unwrap());
    }
    assert!(names.contains(&name), "{word:?} found {names:?}");
    accessible(&c, "search").await;
    screenshot(&c, "nojs-search").await;

    // → cart → checkout, by forms alone.
    c.goto(&format!("{base}/products/1")).await.unwrap();
    {
        click(&c, "form[data-cart] button").await;
        until("the cart page", || async { path(&c).await == "/cart" }).await;
        assert!(
            !c.find_all(Locator::Css("td a[href='/products/1']"))
                .await
                .unwrap()
                .is_empty(),
            "the product is in the cart"
        );
        accessible(&c, "cart").await;
        screenshot(&c, "nojs-cart").await;
        click(&c, "form[action='/checkout'] button").await;
        until("the order page", || async {
            path(&c).await.starts_with("/orders/")
        })
        .await;
        assert!(c
            .find(Locator::Css("p.notice"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
            .contains("your order is placed"));
        screenshot(&c, "nojs-order").await;
    }
    c.close().await.unwrap();
    j.app.stop().await;
}

#[tokio::test]
async fn with_javascript_search_suggests_and_scrolling_appends_pages_without_duplicates() {
    let (_db, j) = seeded().await;
    let d = driver().await;
    let c = browser(&d, true).await;
    let base = j.app.base.clone();

    c.goto(&format!("{base}/products")).await.unwrap();
    until("the script to run", || async {
        c.find(Locator::Css("html[data-enhanced='1']"))
            .await
            .is_ok()
    })
    .await;

    // Infinite scroll: scrolling to the end appends every page once.
    until("all 60 products on one page", || async {
        let _ = c
            .execute("window.scrollTo(0, document.body.scrollHeight)", vec![])
            .await;
        ids_on_page(&c).await.len() >= 60
    })
    .await;
    let ids = ids_on_page(&c).await;
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(ids.len(), 60, "no duplicates");
    assert_eq!(unique.len(), 60);
    assert!(
        c.find_all(Locator::Css("a[rel=next]"))
            .await
            .unwrap()
            .is_empty(),
        "the link is gone after the last page"
    );
    assert_eq!(
        path(&c).await,
        "/products",
        "appended in place, no navigation"
    );
    screenshot(&c, "js-scrolled").await;

    // Live search: suggestions while typing, each a link to a product.
    let name = c
        .find(Locator::Css("li.card a.name"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let word = name.split_whitespace().next().unwrap().to_owned();
    let q = c.find(Locator::Css("input[name=q]")).await.unwrap();
    q.send_keys(&word).await.unwrap();
    let first = c
        .wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(".suggest a"))
        .await
        .unwrap();
    screenshot(&c, "js-suggest").await;
    let suggested = first.text().await.unwrap();
    assert!(
        suggested.to_lowercase().contains(&word.to_lowercase()),
        "{suggested:?} for {word:?}"
    );
    // By keyboard: down to the first suggestion, Enter follows it.
    q.send_keys(&Key::Down.to_string()).await.unwrap();
    c.active_element()
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    arrived(&c, "/products/", Some(&suggested)).await;

    // In-place add to cart: the page stays, the form says so.
    let product_url = path(&c).await;
    {
        click(&c, "form[data-cart] button").await;
        until("the in-place confirmation", || async {
            match c.find(Locator::Css("form[data-cart] .added")).await {
                Ok(e) => e.text().await.unwrap_or_default().contains("in your cart"),
                Err(_) => false,
            }
        })
        .await;
        assert_eq!(path(&c).await, product_url, "no navigation");
    }
    c.close().await.unwrap();
    j.app.stop().await;
}

#[tokio::test]
async fn a_failing_enhancement_falls_back_to_the_plain_link_and_the_keyboard_reaches_everything() {
    let (_db, j) = seeded().await;
    let d = driver().await;
    let c = browser(&d, true).await;
    let base = j.app.base.clone();

    c.goto(&format!("{base}/products")).await.unwrap();
    until("the script to run", || async {
        c.find(Locator::Css("html[data-enhanced='1']"))
            .await
            .is_ok()
    })
    .await;
    let before = ids_on_page(&c).await;
    // Every request the script makes now fails (as on a flaky network).
    c.execute(
        "window.fetch = function () { return Promise.reject(new Error('offline')); }",
        vec![],
    )
    .await
    .unwrap();
    let next = c.find(Locator::Css("a[rel=next]")).await.unwrap();
    let href = next.attr("href").await.unwrap().unwrap();
    next.click().await.unwrap();
    until("the plain link to navigate", || async {
        path(&c).await == href
    })
    .await;
    let after = ids_on_page(&c).await;
    assert!(!after.is_empty() && after.iter().all(|id| !before.contains(id)));

    // Keyboard alone: the first Tab reaches the skip link; then the search field; typing and Enter
    // submit the form.
    c.goto(&base).await.unwrap();
    c.find(Locator::Css("body"))
        .await
        .unwrap()
        .send_keys(&Key::Tab.to_string())
        .await
        .unwrap();
    let focused = c.active_element().await.unwrap();
    assert_eq!(
        focused.attr("class").await.unwrap().as_deref(),
        Some("skip")
    );
    let mut reached_search = false;
    for _ in 0..5 {
        c.active_element()
            .await
            .unwrap()
            .send_keys(&Key::Tab.to_string())
            .await
            .unwrap();
        if c.active_element()
            .await
            .unwrap()
            .attr("name")
            .await
            .unwrap()
            .as_deref()
            == Some("q")
        {
            reached_search = true;
            break;
        }
    }
    assert!(reached_search, "the search field is reachable by Tab");
    let field = c.active_element().await.unwrap();
    field.send_keys("a").await.unwrap();
    field.send_keys(&Key::Enter.to_string()).await.unwrap();
    until("the search page", || async {
        path(&c).await.starts_with("/search?q=a")
    })
    .await;
    c.close().await.unwrap();
    j.app.stop().await;
}

#[tokio::test]
async fn an_admin_signs_in_and_uploads_a_picture_with_progress() {
    let (_db, j) = seeded().await;
    let d = driver().await;
    let c = browser(&d, true).await;
    let base = j.app.base.clone();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("photo.png");
    image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8 * 4, y as u8 * 5, 90]))
        .save(&file)
        .unwrap();

    c.goto(&format!("{base}/admin")).await.unwrap();
    assert_eq!(path(&c).await, "/admin/sign-in");
    accessible(&c, "sign-in").await;
    c.find(Locator::Css("#api_key"))
        .await
        .unwrap()
        .send_keys(tenfold_test_support::TEST_API_KEY)
        .await
        .unwrap();
    click(&c, "form.stack button").await;
    until("the admin page", || async { path(&c).await == "/admin" }).await;
    c.goto(&format!("{base}/admin/products/1")).await.unwrap();
    accessible(&c, "edit").await;
    screenshot(&c, "admin-edit").await;
    c.find(Locator::Css("input[type=file]"))
        .await
        .unwrap()
        .send_keys(file.to_str().unwrap())
        .await
        .unwrap();
    click(&c, "form[data-upload] button").await;
    until("the upload to finish", || async {
        path(&c).await.contains("uploaded=")
    })
    .await;
    let notice = c.find(Locator::Css("p.notice")).await.unwrap();
    assert!(notice.text().await.unwrap().contains("Upload received"));
    let stats = j.queue.stats().await.unwrap();
    assert_eq!(stats.iter().map(|s| s.ready).sum::<i64>(), 1);
    c.close().await.unwrap();
    j.app.stop().await;
}
