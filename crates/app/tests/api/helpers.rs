use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use tenfold_test_support::{TestApp, TEST_API_KEY};

pub(crate) fn client() -> Client {
    Client::builder().no_proxy().build().expect("client")
}

/// GETs a URL and parses the JSON body.
pub(crate) async fn get_json(url: impl reqwest::IntoUrl) -> Value {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// PATCHes product `id` through `app` with the API key; asserts 200.
pub(crate) async fn patch_product(app: &TestApp, id: i64, body: Value) -> Response {
    let r = client()
        .patch(app.url(&format!("/api/products/{id}")))
        .header("authorization", auth())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    r
}

/// The Prometheus text of an instance's `/metrics`.
pub(crate) async fn metrics_text(app: &TestApp) -> String {
    client()
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

pub(crate) fn auth() -> String {
    format!("Bearer {TEST_API_KEY}")
}

pub(crate) fn product_body(sku: &str, category: &str) -> Value {
    json!({
        "sku": sku,
        "name": format!("Product {sku}"),
        "description": "A test product.",
        "price": {"amount_minor": 1999, "currency": "EUR"},
        "stock": 10,
        "category": category,
    })
}

pub(crate) async fn create_category(app: &TestApp, slug: &str) {
    let r = client()
        .post(app.url("/api/categories"))
        .header("authorization", auth())
        .json(&json!({"slug": slug, "name": slug.to_uppercase()}))
        .send()
        .await
        .expect("send");
    assert_eq!(
        r.status(),
        StatusCode::CREATED,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

pub(crate) async fn create_product(app: &TestApp, sku: &str, category: &str) -> Value {
    let r = client()
        .post(app.url("/api/products"))
        .header("authorization", auth())
        .json(&product_body(sku, category))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json().await.expect("json")
}

/// Asserts a problem+json response with `status` and returns its body.
pub(crate) async fn problem(r: Response, status: StatusCode) -> Value {
    assert_eq!(r.status(), status);
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(ct, "application/problem+json");
    let body: Value = r.json().await.expect("problem json");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["title"].is_string() && body["type"].is_string());
    assert!(
        body["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    body
}

/// A job as `GET /api/jobs/{id}` shows it.
pub(crate) async fn job_state(base: &str, job: i64) -> Value {
    client()
        .get(format!("{base}/api/jobs/{job}"))
        .bearer_auth(TEST_API_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls a job (up to 30 s) until it is done, failed or dead; returns it.
pub(crate) async fn until_finished(base: &str, job: i64) -> Value {
    for _ in 0..600 {
        let v = job_state(base, job).await;
        if ["done", "failed", "dead"].contains(&v["state"].as_str().unwrap_or_default()) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("job {job} did not finish within 30 s");
}

/// A product in a new category `lamps`; returns its id.
pub(crate) async fn lamp(app: &TestApp) -> i64 {
    create_category(app, "lamps").await;
    create_product(app, "LAMP-1", "lamps").await["id"]
        .as_i64()
        .unwrap()
}

/// A client that acts like a browser submitting forms: no redirects followed (the 303s are checked).
pub(crate) fn browser() -> Client {
    Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The cookies a browser would keep, sent back as one Cookie header. Every cookie this service sets
/// must be HttpOnly and SameSite=Strict.
#[derive(Default)]
pub(crate) struct Jar(Vec<(String, String)>);

impl Jar {
    pub(crate) fn take(&mut self, r: &Response) {
        for v in r.headers().get_all(reqwest::header::SET_COOKIE) {
            let v = v.to_str().unwrap();
            let (kv, attrs) = v.split_once(';').unwrap_or((v, ""));
            let (k, val) = kv.split_once('=').unwrap();
            assert!(attrs.contains("HttpOnly"), "{v}");
            assert!(attrs.contains("SameSite=Strict"), "{v}");
            self.0.retain(|(n, _)| n != k);
            if !attrs.contains("Max-Age=0") {
                self.0.push((k.to_owned(), val.to_owned()));
            }
        }
    }

    pub(crate) fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
}

/// The CSRF field of the first form in a page.
pub(crate) fn csrf(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("a CSRF field in {html}"));
    html[at + 19..].split('"').next().unwrap().to_owned()
}
