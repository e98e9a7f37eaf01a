//! The storefront's admin pages: sign in with the API key (a signed, stateless session cookie), list,
//! create and edit products, see the job queues. Plain forms (POST, then a 303 redirect), a CSRF token on
//! every one; nothing here needs JavaScript. The pages are never cached (`no-store`).

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::Markup;
use serde::Deserialize;
use subtle::ConstantTimeEq;
use tenfold_catalog::{
    Currency, FieldError, Money, NewProduct, NewProductInput, Product, ProductId, ProductPatch,
    ProductPatchInput,
};
use tenfold_pages::admin::{self, ProductForm, QueueRow};
use tenfold_pages::Chrome;
use tenfold_store::{Cursor, ListQuery};

use crate::error::ApiError;
use crate::routes::products::{create, update};
use crate::session::{self, SessionKey, SESSION_COOKIE, SESSION_TTL_S};
use crate::App;

/// Products per admin page.
const PAGE: u32 = 50;
/// Jobs on the jobs page.
const LATEST_JOBS: u32 = 50;

/// A page with `no-store`, and the CSRF cookie when it was new.
fn page(status: StatusCode, html: Markup, set_csrf: Option<HeaderValue>) -> Response {
    crate::routes::html::page(status, html, &[set_csrf])
}

fn see_other(to: &str) -> Response {
    crate::routes::html::see_other(to, &[])
}

async fn chrome(app: &App) -> Chrome {
    let categories = crate::routes::pages::nav(app).await;
    Chrome {
        // The script shows upload progress here.
        enhance: true,
        save_data: false,
        search: false,
        ordering: false,
        categories,
    }
}

async fn message(app: &App, status: StatusCode, title: &str, text: &str) -> Response {
    page(
        status,
        tenfold_pages::message(&chrome(app).await, title, text),
        None,
    )
}

/// The signing key, or the page saying the admin pages are off (no API key configured).
async fn key(app: &App) -> Result<&SessionKey, Response> {
    match &app.inner.session_key {
        Some(k) => Ok(k),
        None => Err(message(
            app,
            StatusCode::FORBIDDEN,
            "Admin pages are off",
            "This instance has no API key configured (set TENFOLD_API_KEY), so nobody can sign in.",
        )
        .await),
    }
}

/// A signed-in request's key and CSRF field (and a new CSRF cookie, if one had to be made); otherwise
/// the redirect to the sign-in page.
async fn signed_in(
    app: &App,
    headers: &HeaderMap,
) -> Result<(String, Option<HeaderValue>), Response> {
    let k = key(app).await?;
    if !session::cookie(headers, SESSION_COOKIE).is_some_and(|t| k.valid(t)) {
        return Err(see_other("/admin/sign-in"));
    }
    let (cookie, set) = session::csrf_cookie(headers);
    Ok((k.csrf_field(&cookie), set))
}

/// Checks a POST's CSRF field against its cookie.
async fn check_csrf(app: &App, headers: &HeaderMap, field: &str) -> Result<(), Response> {
    if key(app).await?.form_ok(headers, field) {
        Ok(())
    } else {
        Err(message(
            app,
            StatusCode::FORBIDDEN,
            "The form has expired",
            "This form was not sent from a page of this site, or it is too old. Go back, reload the page and send it again.",
        )
        .await)
    }
}

/// A posted form that carries a CSRF field.
trait Posted {
    fn csrf(&self) -> &str;
}

/// The form, if it parsed and its CSRF field matches; else the page that says what is wrong.
async fn posted<T: Posted>(
    app: &App,
    headers: &HeaderMap,
    form: Result<Form<T>, FormRejection>,
) -> Result<T, Response> {
    let Form(f) = match form {
        Ok(f) => f,
        Err(e) => return Err(bad_form(app, e).await),
    };
    check_csrf(app, headers, f.csrf()).await?;
    Ok(f)
}

async fn bad_form(app: &App, e: FormRejection) -> Response {
    message(
        app,
        StatusCode::BAD_REQUEST,
        "That form is not valid",
        &e.body_text(),
    )
    .await
}

/// `GET /admin/sign-in`.
pub(crate) async fn sign_in_page(State(app): State<App>, headers: HeaderMap) -> Response {
    let k = match key(&app).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let (cookie, set) = session::csrf_cookie(&headers);
    page(
        StatusCode::OK,
        admin::sign_in(&chrome(&app).await, &k.csrf_field(&cookie), None),
        set,
    )
}

/// The sign-in form.
#[derive(Debug, Deserialize)]
pub(crate) struct SignIn {
    csrf: String,
    api_key: String,
}

impl Posted for SignIn {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /admin/sign-in`.
pub(crate) async fn sign_in(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<SignIn>, FormRejection>,
) -> Response {
    let f = match posted(&app, &headers, form).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (Some(k), Some(api_key)) = (&app.inner.session_key, &app.inner.api_key) else {
        return key(&app).await.err().unwrap_or_else(|| see_other("/"));
    };
    let right: bool = f
        .api_key
        .as_bytes()
        .ct_eq(secrecy::ExposeSecret::expose_secret(api_key).as_bytes())
        .into();
    if !right {
        let (cookie, set) = session::csrf_cookie(&headers);
        return page(
            StatusCode::FORBIDDEN,
            admin::sign_in(
                &chrome(&app).await,
                &k.csrf_field(&cookie),
                Some("That is not the API key of this deployment."),
            ),
            set,
        );
    }
    crate::routes::html::see_other(
        "/admin",
        &[session::set_cookie(
            &headers,
            SESSION_COOKIE,
            &k.issue(),
            "/admin",
            SESSION_TTL_S,
        )],
    )
}

/// A form with only its CSRF field.
#[derive(Debug, Deserialize)]
pub(crate) struct CsrfOnly {
    csrf: String,
}

impl Posted for CsrfOnly {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

/// `POST /admin/sign-out`.
pub(crate) async fn sign_out(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<CsrfOnly>, FormRejection>,
) -> Response {
    if let Err(r) = posted(&app, &headers, form).await {
        return r;
    }
    crate::routes::html::see_other(
        "/",
        &[session::set_cookie(
            &headers,
            SESSION_COOKIE,
            "",
            "/admin",
            0,
        )],
    )
}

/// `?cursor=` of the product list.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct AdminList {
    cursor: Option<String>,
}

/// `GET /admin`: the products.
pub(crate) async fn home(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<AdminList>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (csrf, set) = match signed_in(&app, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let cursor = match q.ok().and_then(|q| q.0.cursor) {
        Some(c) => match Cursor::decode(&c) {
            Ok(c) => Some(c),
            Err(e) => return message(&app, StatusCode::BAD_REQUEST, "Bad page link", &e).await,
        },
        None => None,
    };
    let query = ListQuery {
        category: None,
        search: None,
        after: cursor,
        limit: PAGE,
        sort: tenfold_store::Sort::Id,
    };
    match app.store().list_products(&query).await {
        Ok(p) => {
            let next = p.next.map(|c| format!("/admin?cursor={}", c.encode()));
            page(
                StatusCode::OK,
                admin::products(&chrome(&app).await, &csrf, &p.items, next.as_deref()),
                set,
            )
        }
        Err(e) => error(&app, e.into()).await,
    }
}

async fn error(app: &App, e: ApiError) -> Response {
    let status = e.into_response().status();
    let text = if status.is_server_error() {
        "The catalog cannot be reached just now. Try again in a moment."
    } else {
        "That did not work."
    };
    message(app, status, "Something went wrong", text).await
}

/// The product form as posted.
#[derive(Debug, Deserialize)]
pub(crate) struct ProductFields {
    csrf: String,
    version: Option<i64>,
    sku: String,
    name: String,
    #[serde(default)]
    description: String,
    price: String,
    currency: String,
    stock: String,
    category: String,
}

impl Posted for ProductFields {
    fn csrf(&self) -> &str {
        &self.csrf
    }
}

impl ProductFields {
    fn form(&self) -> ProductForm {
        ProductForm {
            sku: self.sku.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            price: self.price.clone(),
            currency: self.currency.clone(),
            stock: self.stock.clone(),
            category: self.category.clone(),
        }
    }

    /// The API's input, or the form's own errors (a price or stock that is not a number).
    fn input(&self) -> Result<NewProductInput, Vec<(String, String)>> {
        let mut errs = Vec::new();
        let currency = self.currency.trim().to_owned();
        let amount_minor = match parse_price(&self.price, &currency) {
            Ok(n) => n,
            Err(e) => {
                errs.push(("price".to_owned(), e));
                0
            }
        };
        let stock = match self.stock.trim().parse::<i64>() {
            Ok(n) => n,
            Err(_) => {
                errs.push(("stock".into(), "stock must be a whole number".into()));
                0
            }
        };
        if !errs.is_empty() {
            return Err(errs);
        }
        Ok(NewProductInput {
            sku: self.sku.trim().to_owned(),
            name: self.name.trim().to_owned(),
            description: self.description.trim().to_owned(),
            price: Money {
                amount_minor,
                currency,
            },
            stock,
            category: self.category.trim().to_owned(),
        })
    }
}

/// A price typed in major units (`12.5`, `12.50`, `1200`) in minor units of `currency`.
pub(crate) fn parse_price(typed: &str, currency: &str) -> Result<i64, String> {
    let digits = Currency::parse(currency).map_or(2, |c| c.minor_digits()) as usize;
    let t = typed.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let ok = !whole.is_empty()
        && whole.len() <= 13
        && whole.bytes().all(|b| b.is_ascii_digit())
        && frac.len() <= digits
        && frac.bytes().all(|b| b.is_ascii_digit());
    if !ok {
        return Err(if frac.len() > digits {
            format!("{currency} has {digits} decimal places at most")
        } else {
            "the price must be a number such as 12.50".to_owned()
        });
    }
    let whole: i64 = whole
        .parse()
        .map_err(|_| "the price is too large".to_owned())?;
    let frac: i64 = format!("{frac:0<digits$}").parse().unwrap_or(0);
    whole
        .checked_mul(10i64.pow(digits as u32))
        .and_then(|n| n.checked_add(frac))
        .ok_or_else(|| "the price is too large".to_owned())
}

/// The API's field errors under the form's field names.
fn form_errors(errs: &[FieldError]) -> Vec<(String, String)> {
    errs.iter()
        .map(|e| {
            let field = match e.field.as_str() {
                "price.amount_minor" => "price",
                "price.currency" => "currency",
                f => f,
            };
            (field.to_owned(), e.message.clone())
        })
        .collect()
}

/// `GET /admin/products/new`.
pub(crate) async fn new_product_page(State(app): State<App>, headers: HeaderMap) -> Response {
    let (csrf, set) = match signed_in(&app, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let c = chrome(&app).await;
    let v = ProductForm {
        currency: "EUR".into(),
        stock: "0".into(),
        ..ProductForm::default()
    };
    page(
        StatusCode::OK,
        admin::product_form(
            &c,
            &admin::FormPage {
                csrf: &csrf,
                title: "New product",
                action: "/admin/products/new",
                version: None,
                errors: &[],
                notice: None,
            },
            &v,
        ),
        set,
    )
}

/// `POST /admin/products/new`.
pub(crate) async fn create_product(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<ProductFields>, FormRejection>,
) -> Response {
    let (csrf, set) = match signed_in(&app, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let f = match posted(&app, &headers, form).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let refused = |errors: Vec<(String, String)>, status: StatusCode| {
        let app = app.clone();
        let (csrf, set, v) = (csrf.clone(), set.clone(), f.form());
        async move {
            let c = chrome(&app).await;
            page(
                status,
                admin::product_form(
                    &c,
                    &admin::FormPage {
                        csrf: &csrf,
                        title: "New product",
                        action: "/admin/products/new",
                        version: None,
                        errors: &errors,
                        notice: None,
                    },
                    &v,
                ),
                set,
            )
        }
    };
    let input = match f.input() {
        Ok(i) => i,
        Err(errs) => return refused(errs, StatusCode::UNPROCESSABLE_ENTITY).await,
    };
    let new = match NewProduct::parse(&input) {
        Ok(n) => n,
        Err(v) => return refused(form_errors(&v.0), StatusCode::UNPROCESSABLE_ENTITY).await,
    };
    match create(&app, &new).await {
        Ok(p) => see_other(&format!("/admin/products/{}?saved=1", p.id)),
        Err(ApiError::Conflict(m)) => refused(vec![("sku".into(), m)], StatusCode::CONFLICT).await,
        Err(ApiError::Validation(v)) => {
            refused(form_errors(&v.0), StatusCode::UNPROCESSABLE_ENTITY).await
        }
        Err(e) => error(&app, e).await,
    }
}

fn product_id(raw: &str) -> Option<ProductId> {
    raw.parse::<i64>().ok().and_then(|n| ProductId::new(n).ok())
}

/// `?saved=1` after a save, `?uploaded=<job>` after an upload.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Saved {
    saved: Option<String>,
    uploaded: Option<i64>,
}

/// `GET /admin/products/{id}`.
pub(crate) async fn edit_product_page(
    State(app): State<App>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    q: Result<Query<Saved>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let (csrf, set) = match signed_in(&app, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(id) = product_id(&raw) else {
        return message(
            &app,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such product.",
        )
        .await;
    };
    let p: Product = match app.store().get_product(id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return message(
                &app,
                StatusCode::NOT_FOUND,
                "Not found",
                "There is no such product.",
            )
            .await
        }
        Err(e) => return error(&app, e.into()).await,
    };
    let q = q.map(|q| q.0).unwrap_or_default();
    let notice = match (q.saved, q.uploaded) {
        (_, Some(job)) => Some(format!(
            "Upload received; its processing job {job} is queued (see Jobs). The pictures appear on the product page when it is done."
        )),
        (Some(_), None) => Some("Saved.".to_owned()),
        (None, None) => None,
    };
    let c = chrome(&app).await;
    page(
        StatusCode::OK,
        admin::product_form(
            &c,
            &admin::FormPage {
                csrf: &csrf,
                title: &format!("Edit product {}", p.id),
                action: &format!("/admin/products/{}", p.id),
                version: Some(p.version),
                errors: &[],
                notice: notice.as_deref(),
            },
            &ProductForm::of(&p),
        ),
        set,
    )
}

/// `POST /admin/products/{id}/media`: a multipart form with `csrf` first, then `file`; the file streams
/// into blob storage as an API upload does, then 303 back to the product.
pub(crate) async fn upload(
    State(app): State<App>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    form: Result<axum::extract::Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    if let Err(r) = signed_in(&app, &headers).await {
        return r;
    }
    let Some(id) = product_id(&raw) else {
        return message(
            &app,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such product.",
        )
        .await;
    };
    let mut form = match form {
        Ok(f) => f,
        Err(e) => {
            return message(
                &app,
                StatusCode::BAD_REQUEST,
                "That form is not valid",
                &e.body_text(),
            )
            .await
        }
    };
    let bad = |text: &'static str| {
        let app = app.clone();
        async move {
            message(
                &app,
                StatusCode::BAD_REQUEST,
                "That upload is not valid",
                text,
            )
            .await
        }
    };
    // The token comes first, so a forged form is refused before its file is read.
    match form.next_field().await {
        Ok(Some(f)) if f.name() == Some("csrf") => match f.text().await {
            Ok(t) => {
                if let Err(r) = check_csrf(&app, &headers, &t).await {
                    return r;
                }
            }
            Err(_) => return bad("The form broke off.").await,
        },
        _ => return bad("The form must start with its CSRF field.").await,
    }
    let field = match form.next_field().await {
        Ok(Some(f)) if f.name() == Some("file") => f,
        _ => return bad("Choose a file to upload.").await,
    };
    let client = crate::routes::flags::client_key(&headers);
    match crate::routes::media::store_media(&app, id, client, Box::pin(field)).await {
        Ok((_, _, job)) => see_other(&format!("/admin/products/{}?uploaded={}", id.get(), job.id)),
        Err(e) => {
            let resp = e.into_response();
            let status = resp.status();
            let text = match status {
                StatusCode::PAYLOAD_TOO_LARGE => "The file is larger than uploads may be.",
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    "That file is not an image (JPEG, PNG, WebP, GIF) or a video (MP4, WebM)."
                }
                StatusCode::BAD_REQUEST => "The file is empty, or the upload broke off.",
                StatusCode::NOT_FOUND => "There is no such product.",
                _ => "Uploads are not possible just now. Try again in a moment.",
            };
            message(&app, status, "The upload was not stored", text).await
        }
    }
}

/// `POST /admin/products/{id}`: saves the form if the product is still at the version it showed.
pub(crate) async fn update_product(
    State(app): State<App>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    form: Result<Form<ProductFields>, FormRejection>,
) -> Response {
    let (csrf, set) = match signed_in(&app, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let f = match posted(&app, &headers, form).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let Some(id) = product_id(&raw) else {
        return message(
            &app,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such product.",
        )
        .await;
    };
    let title = format!("Edit product {}", id.get());
    let action = format!("/admin/products/{}", id.get());
    let refused = |errors: Vec<(String, String)>, status: StatusCode, notice: Option<String>| {
        let app = app.clone();
        let (csrf, set, v, title, action) = (
            csrf.clone(),
            set.clone(),
            f.form(),
            title.clone(),
            action.clone(),
        );
        let version = f.version;
        async move {
            let c = chrome(&app).await;
            page(
                status,
                admin::product_form(
                    &c,
                    &admin::FormPage {
                        csrf: &csrf,
                        title: &title,
                        action: &action,
                        version,
                        errors: &errors,
                        notice: notice.as_deref(),
                    },
                    &v,
                ),
                set,
            )
        }
    };
    let input = match f.input() {
        Ok(i) => i,
        Err(errs) => return refused(errs, StatusCode::UNPROCESSABLE_ENTITY, None).await,
    };
    let patch_input = ProductPatchInput {
        sku: Some(input.sku),
        name: Some(input.name),
        description: Some(input.description),
        price: Some(input.price),
        stock: Some(input.stock),
        category: Some(input.category),
    };
    let patch = match ProductPatch::parse(&patch_input) {
        Ok(p) => p,
        Err(v) => return refused(form_errors(&v.0), StatusCode::UNPROCESSABLE_ENTITY, None).await,
    };
    match update(&app, id, &patch, f.version).await {
        Ok(p) => see_other(&format!("/admin/products/{}?saved=1", p.id)),
        Err(ApiError::PreconditionFailed(_)) => {
            refused(
                Vec::new(),
                StatusCode::PRECONDITION_FAILED,
                Some("Someone changed this product since you opened it: reload the page to see their change, then edit again.".into()),
            )
            .await
        }
        Err(ApiError::Conflict(m)) => refused(vec![("sku".into(), m)], StatusCode::CONFLICT, None).await,
        Err(ApiError::Validation(v)) => {
            refused(form_errors(&v.0), StatusCode::UNPROCESSABLE_ENTITY, None).await
        }
        Err(e) => error(&app, e).await,
    }
}

/// `GET /admin/jobs`.
pub(crate) async fn jobs(State(app): State<App>, headers: HeaderMap) -> Response {
    let (csrf, set) = match signed_in(&app, &headers).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let latest = match app.inner.jobs.get() {
        Some(q) => match q.recent(LATEST_JOBS).await {
            Ok(jobs) => jobs
                .into_iter()
                .map(|j| admin::JobRow {
                    id: j.id,
                    what: format!("{}/{}", j.queue, j.kind),
                    state: j.state.as_str().to_owned(),
                    progress: j.progress,
                    attempts: format!("{} of {}", j.attempts, j.max_attempts),
                    last_error: j
                        .last_error
                        .map(|e| e.chars().take(160).collect())
                        .unwrap_or_default(),
                })
                .collect(),
            Err(e) => return error(&app, e.into()).await,
        },
        None => Vec::new(),
    };
    let rows = match app.inner.jobs.get() {
        Some(q) => match q.stats().await {
            Ok(s) => s
                .into_iter()
                .map(|s| QueueRow {
                    queue: s.queue,
                    ready: s.ready,
                    scheduled: s.scheduled,
                    running: s.running,
                    done: s.done,
                    failed: s.failed,
                    dead: s.dead,
                })
                .collect(),
            Err(e) => return error(&app, e.into()).await,
        },
        None => Vec::new(),
    };
    page(
        StatusCode::OK,
        admin::jobs(&chrome(&app).await, &csrf, &rows, &latest),
        set,
    )
}

#[cfg(test)]
mod tests {
    use super::parse_price;

    #[test]
    fn prices_are_typed_in_major_units() {
        assert_eq!(parse_price("12.50", "EUR"), Ok(1250));
        assert_eq!(parse_price("12.5", "EUR"), Ok(1250));
        assert_eq!(parse_price(" 12 ", "EUR"), Ok(1200));
        assert_eq!(parse_price("1200", "JPY"), Ok(1200));
        assert_eq!(parse_price("1.234", "BHD"), Ok(1234));
        assert!(parse_price("12.505", "EUR").is_err());
        assert!(parse_price("1.5", "JPY").is_err());
        assert!(parse_price("-1", "EUR").is_err());
        assert!(parse_price("abc", "EUR").is_err());
        assert!(parse_price("", "EUR").is_err());
        assert!(parse_price("99999999999999999", "EUR").is_err());
    }
}
