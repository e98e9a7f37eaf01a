//! The admin pages: sign-in with the API key into a signed session cookie, CSRF tokens on every form,
//! product create and edit through plain forms (POST, then 303), conflicts and bad input as pages.

use reqwest::header::{COOKIE, LOCATION};
use reqwest::StatusCode;
use tenfold_test_support::{spawn_app_with_jobs, Engine, TestDb, TEST_API_KEY};

use crate::helpers::{browser, csrf, Jar};

async fn get(base: &str, path: &str, jar: &mut Jar) -> (StatusCode, String, Option<String>) {
    let r = browser()
        .get(format!("{base}{path}"))
        .header(COOKIE, jar.header())
        .send()
        .await
        .unwrap();
    jar.take(&r);
    let loc = r
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), r.text().await.unwrap(), loc)
}

async fn post(
    base: &str,
    path: &str,
    jar: &mut Jar,
    form: &[(&str, &str)],
) -> (StatusCode, String, Option<String>) {
    let r = browser()
        .post(format!("{base}{path}"))
        .header(COOKIE, jar.header())
        .form(form)
        .send()
        .await
        .unwrap();
    jar.take(&r);
    let loc = r
        .headers()
        .get(LOCATION)
        .map(|v| v.to_str().unwrap().to_owned());
    (r.status(), r.text().await.unwrap(), loc)
}

fn hidden(html: &str, name: &str) -> String {
    let pat = format!("name=\"{name}\" value=\"");
    let at = html
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name} in {html}"));
    html[at + pat.len()..].split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn an_admin_signs_in_creates_and_edits_a_product_through_plain_forms() {
    let db = TestDb::new(Engine::Sqlite).await;
    let j = spawn_app_with_jobs(&db).await;
    tenfold_seed::seed(&db.store().await, 5, 3, false)
        .await
        .unwrap();
    let base = j.app.base.clone();
    let mut jar = Jar::default();

    // Not signed in: sent to the sign-in page.
    let (status, _, loc) = get(&base, "/admin", &mut jar).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(loc.as_deref(), Some("/admin/sign-in"));
    let (status, html, _) = get(&base, "/admin/sign-in", &mut jar).await;
    assert_eq!(status, StatusCode::OK);
    assert!(jar.has("tf_csrf"));
    assert!(html.contains("<label for=\"api_key\">"));
    let token = csrf(&html);

    // A forged form (no token, or another cookie's) is refused.
    let (status, html, _) = post(
        &base,
        "/admin/sign-in",
        &mut jar,
        &[("csrf", "forged"), ("api_key", TEST_API_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("form has expired"), "{html}");
    let mut stranger = Jar::default();
    let (status, _, _) = post(
        &base,
        "/admin/sign-in",
        &mut stranger,
        &[("csrf", &token), ("api_key", TEST_API_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a token without its cookie");
    assert!(!stranger.has("tf_admin"));

    // The wrong key: refused, no session.
    let (status, html, _) = post(
        &base,
        "/admin/sign-in",
        &mut jar,
        &[("csrf", &token), ("api_key", "not-the-key")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(html.contains("not the API key"));
    assert!(!jar.has("tf_admin"));

    // The right key: a session cookie, then the product list.
    let (status, _, loc) = post(
        &base,
        "/admin/sign-in",
        &mut jar,
        &[("csrf", &token), ("api_key", TEST_API_KEY)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(loc.as_deref(), Some("/admin"));
    assert!(jar.has("tf_admin"));
    let (status, html, _) = get(&base, "/admin", &mut jar).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("href=\"/admin/products/1\""), "{html}");

    // Create: bad input comes back with the values and the reasons; good input is saved.
    let (_, html, _) = get(&base, "/admin/products/new", &mut jar).await;
    let token = csrf(&html);
    let category = {
        let at = html.find("<option value=\"").unwrap();
        html[at + 15..].split('"').next().unwrap().to_owned()
    };
    let mut fields = vec![
        ("csrf", token.as_str()),
        ("sku", "ADM-1"),
        ("name", "Admin <lamp>"),
        ("description", "Made in a form."),
        ("price", "12.505"),
        ("currency", "EUR"),
        ("stock", "7"),
        ("category", category.as_str()),
    ];
    let (status, html, _) = post(&base, "/admin/products/new", &mut jar, &fields).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(html.contains("2 decimal places"), "{html}");
    assert!(
        html.contains("value=\"Admin &lt;lamp&gt;\""),
        "values kept, escaped"
    );
    fields[4] = ("price", "12.50");
    let (status, _, loc) = post(&base, "/admin/products/new", &mut jar, &fields).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let loc = loc.unwrap();
    let id: i64 = loc
        .trim_start_matches("/admin/products/")
        .split('?')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let api: serde_json::Value = reqwest::get(format!("{base}/api/products/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["name"], "Admin <lamp>");
    assert_eq!(api["price"]["amount_minor"], 1250);
    // The same SKU again: a conflict, shown on the form.
    let (status, html, _) = post(&base, "/admin/products/new", &mut jar, &fields).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        html.contains("<p class=\"error\" id=\"sku-error\">"),
        "{html}"
    );

    // Edit: saved, and the storefront shows it at once.
    let (_, html, _) = get(&base, &loc, &mut jar).await;
    assert!(html.contains("Saved."));
    let version = hidden(&html, "version");
    let token = csrf(&html);
    let mut edit = vec![
        ("csrf", token.as_str()),
        ("version", version.as_str()),
        ("sku", "ADM-1"),
        ("name", "Admin lamp, renamed"),
        ("description", "Made in a form."),
        ("price", "13"),
        ("currency", "EUR"),
        ("stock", "6"),
        ("category", category.as_str()),
    ];
    let path = format!("/admin/products/{id}");
    let (status, _, _) = post(&base, &path, &mut jar, &edit).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let page = reqwest::get(format!("{base}/products/{id}"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("<h1>Admin lamp, renamed</h1>"));
    assert!(page.contains("13.00 EUR"));
    // The same form again (its version is now old): refused, nothing lost.
    edit[3] = ("name", "A stale edit");
    let (status, html, _) = post(&base, &path, &mut jar, &edit).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED);
    assert!(html.contains("Someone changed this product"), "{html}");

    // A form posted with a session but a forged token changes nothing.
    edit[0] = ("csrf", "forged");
    let (status, _, _) = post(&base, &path, &mut jar, &edit).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let api: serde_json::Value = reqwest::get(format!("{base}/api/products/{id}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(api["name"], "Admin lamp, renamed");

    // Upload a picture through the multipart form: stored, its job queued, back to the product.
    let (_, html, _) = get(&base, &path, &mut jar).await;
    assert!(html.contains("enctype=\"multipart/form-data\""));
    let token = csrf(&html);
    let png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    let boundary = "tenfoldboundary7";
    let mut body = format!(
        "--{boundary}\r\ncontent-disposition: form-data; name=\"csrf\"\r\n\r\n{token}\r\n--{boundary}\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.png\"\r\ncontent-type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&png);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let send = |body: Vec<u8>, cookies: String| {
        let url = format!("{base}{path}/media");
        async move {
            browser()
                .post(url)
                .header(COOKIE, cookies)
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={boundary}"),
                )
                .body(body)
                .send()
                .await
                .unwrap()
        }
    };
    let r = send(body.clone(), jar.header()).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let to = r.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(to.starts_with(&format!("{path}?uploaded=")), "{to}");
    let (_, html, _) = get(&base, &to, &mut jar).await;
    assert!(html.contains("Upload received"), "{html}");
    let stats = j.queue.stats().await.unwrap();
    assert_eq!(stats.iter().map(|s| s.ready).sum::<i64>(), 1, "{stats:?}");
    // Not an image: refused with a page, nothing queued.
    let bad = body
        .windows(png.len())
        .position(|w| w == png.as_slice())
        .map(|at| {
            let mut b = body.clone();
            b[at..at + 8].copy_from_slice(b"<html>xx");
            b
        })
        .unwrap();
    let r = send(bad, jar.header()).await;
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Without a session: to the sign-in page, nothing read.
    let r = send(body.clone(), String::new()).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[LOCATION], "/admin/sign-in");
    let stats = j.queue.stats().await.unwrap();
    assert_eq!(stats.iter().map(|s| s.ready).sum::<i64>(), 1);

    // Jobs, then sign out: the session is gone.
    let (status, html, _) = get(&base, "/admin/jobs", &mut jar).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<h1>Jobs</h1>"));
    let job: i64 = to.rsplit('=').next().unwrap().parse().unwrap();
    let row_at = html
        .find(&format!("<tr data-job=\"{job}\">"))
        .unwrap_or_else(|| panic!("the upload's job is listed: {html}"));
    let row = &html[row_at..html[row_at..].find("</tr>").unwrap() + row_at];
    assert!(
        row.contains("media/image") && row.contains("queued"),
        "{row}"
    );
    let token = csrf(&html);
    let (status, _, _) = post(&base, "/admin/sign-out", &mut jar, &[("csrf", &token)]).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(!jar.has("tf_admin"));
    let (status, _, _) = get(&base, "/admin", &mut jar).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    j.app.stop().await;
}
