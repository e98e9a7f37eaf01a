//! The storefront: HTML pages over the same cached reads as the API (`/`, `/products`, `/products/{id}`,
//! `/search`) and the static assets (`/assets/{name}`). The markup is `tenfold-pages`; this module loads
//! what a page shows and answers with it.
//!
//! A rendered page is kept in a small per-instance memo keyed by everything it was made from (the
//! versions of the cached values, the flags and `Save-Data`), with its brotli and gzip bodies made once;
//! the key is also its ETag, so a conditional request gets its 304 without rendering anything, and a
//! write (a new version in the cache) yields a new page at once. Non-essential features follow their
//! flags here too: with `search` off the search form is gone and `/search` says so; with `deep_pages`
//! off a later page shows the first one and says why; with `enhancements` off no script is sent.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tenfold_cache::Value;
use tenfold_catalog::{CategorySlug, Product, ProductId};
use tenfold_pages::{Chrome, Image, ListView};
use tenfold_store::queue::MediaRenditions;
use tenfold_store::{Cursor, ListQuery, Sort};

use crate::error::ApiError;
use crate::routes::products::{
    categories_value, page_value, product_value, CategoryList, ProductPage,
};
use crate::{cached, App};

/// Products on a list page, and featured on the home page.
const PAGE: u32 = 24;
const FEATURED: u32 = 8;

/// A page as sent: its ETag and its bodies.
pub(crate) struct Rendered {
    etag: HeaderValue,
    status: StatusCode,
    raw: Bytes,
    br: Bytes,
    gz: Bytes,
}

/// Rendered pages of this instance, by the hash of their inputs.
pub(crate) type Memo = moka::sync::Cache<u64, Arc<Rendered>>;

/// Each product's media with renditions ready, read from the media table at most every 2 s per product
/// on each instance (renditions appear when a worker finishes; a product page shows them within 2 s).
pub(crate) type MediaMemo = moka::sync::Cache<i64, Arc<Vec<MediaRenditions>>>;

/// The media memo: 10,000 products, 2 s each.
pub(crate) fn media_memo() -> MediaMemo {
    moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(std::time::Duration::from_secs(2))
        .build()
}

/// Images shown on a product page, at most.
const MAX_IMAGES: u32 = 12;

async fn product_media(app: &App, id: i64) -> Arc<Vec<MediaRenditions>> {
    if let Some(m) = app.inner.media_memo.get(&id) {
        return m;
    }
    let Some(queue) = app.inner.jobs.get() else {
        return Arc::default();
    };
    match queue.product_media(id, MAX_IMAGES).await {
        Ok(list) => {
            let list = Arc::new(list);
            app.inner.media_memo.insert(id, list.clone());
            list
        }
        Err(e) => {
            // Images are not essential: the page goes out without them.
            tracing::warn!(product = id, error = %e, "cannot read the product's media");
            Arc::default()
        }
    }
}

/// The `<picture>` data of a media row's renditions (images only; a video's poster is a rendition too).
fn image_of(m: &MediaRenditions, alt: String) -> Option<Image> {
    let mut jpeg = Vec::new();
    let mut webp = Vec::new();
    let (mut width, mut height) = (0, 0);
    for r in m.renditions.as_array()? {
        let url = r["url"].as_str()?.to_owned();
        let w = u32::try_from(r["width"].as_u64()?).ok()?;
        let h = u32::try_from(r["height"].as_u64()?).ok()?;
        match r["format"].as_str()? {
            "jpg" => jpeg.push((url, w)),
            "webp" => webp.push((url, w)),
            _ => continue,
        }
        if w > width {
            (width, height) = (w, h);
        }
    }
    if jpeg.is_empty() {
        return None;
    }
    jpeg.sort_by_key(|(_, w)| *w);
    webp.sort_by_key(|(_, w)| *w);
    Some(Image {
        alt,
        width,
        height,
        jpeg,
        webp,
    })
}

/// A memo of at most `mib` MiB of pages.
pub(crate) fn memo(mib: u64) -> Memo {
    moka::sync::Cache::builder()
        .max_capacity(mib * 1024 * 1024)
        .weigher(|_, r: &Arc<Rendered>| {
            (r.raw.len() + r.br.len() + r.gz.len() + 128).min(u32::MAX as usize) as u32
        })
        .build()
}

/// A hash over the parts of a page's identity: FNV-1a's step over 8-byte words (a cached body is hashed
/// on every request, so a byte at a time would cost microseconds), stable across instances and builds,
/// since it is also the ETag another instance may be asked to match.
struct Fingerprint(u64);

/// The assets' names change with their bytes: a new build is a new page.
fn assets_hash() -> u64 {
    static HASH: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HASH.get_or_init(|| {
        let mut f = Fingerprint(0xcbf2_9ce4_8422_2325);
        for a in tenfold_pages::assets::all() {
            f.add(a.name.as_bytes());
        }
        f.0
    })
}

impl Fingerprint {
    fn new(kind: &str) -> Fingerprint {
        let mut f = Fingerprint(assets_hash());
        f.add(kind.as_bytes());
        f
    }

    fn add(&mut self, bytes: &[u8]) -> &mut Self {
        const PRIME: u64 = 0x0100_0000_01b3;
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.0 = (self.0 ^ u64::from_le_bytes(b)).wrapping_mul(PRIME);
            self.0 ^= self.0 >> 29;
        }
        for &b in words.remainder() {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(PRIME);
        }
        // The length ends each part, so ("ab", "c") and ("a", "bc") differ.
        self.0 = (self.0 ^ (bytes.len() as u64 | 1 << 63)).wrapping_mul(PRIME);
        self
    }
}

/// The request's view of the page chrome, before the categories are known.
pub(crate) struct Want {
    enhance: bool,
    search: bool,
    save_data: bool,
    ordering: bool,
}

pub(crate) fn want(app: &App, headers: &HeaderMap) -> Want {
    let client = crate::routes::flags::client_key(headers);
    let flags = app.flags();
    Want {
        enhance: flags.is_on(&tenfold_flags::ENHANCEMENTS, client),
        search: flags.is_on(&tenfold_flags::SEARCH, client),
        save_data: headers
            .get("save-data")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("on")),
        ordering: crate::routes::shop_pages::ordering(app).is_some(),
    }
}

impl Want {
    fn add_to(&self, f: &mut Fingerprint) {
        f.add(&[
            u8::from(self.enhance),
            u8::from(self.search),
            u8::from(self.save_data),
            u8::from(self.ordering),
        ]);
    }

    pub(crate) fn chrome(&self, categories: Vec<tenfold_catalog::Category>) -> Chrome {
        Chrome {
            ordering: self.ordering,
            enhance: self.enhance,
            save_data: self.save_data,
            search: self.search,
            categories,
        }
    }
}

fn body_of(v: Value) -> Option<(i64, Bytes)> {
    cached::present(v)
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::Internal(Box::new(e)))
}

/// The categories for the navigation: their cached body (part of every page's identity) and values.
pub(crate) async fn categories(app: &App) -> Result<Bytes, ApiError> {
    Ok(body_of(categories_value(app).await?)
        .map(|(_, b)| b)
        .unwrap_or_default())
}

/// The categories for a page's navigation, decoded (none when they cannot be read: the page goes out
/// anyway).
pub(crate) async fn nav(app: &App) -> Vec<tenfold_catalog::Category> {
    categories(app)
        .await
        .ok()
        .and_then(|b| category_list(&b).ok())
        .unwrap_or_default()
}

pub(crate) fn category_list(body: &[u8]) -> Result<Vec<tenfold_catalog::Category>, ApiError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    Ok(decode::<CategoryList>(body)?.items)
}

/// Answers with the memoized page `key`, rendering it with `render` if it is not there; 304 when the
/// client has it.
fn answer(
    app: &App,
    headers: &HeaderMap,
    key: u64,
    render: impl FnOnce() -> Result<(StatusCode, String), ApiError>,
) -> Result<Response, ApiError> {
    let etag = HeaderValue::from_str(&format!("W/\"h{key:016x}\""))
        .map_err(|e| ApiError::Internal(Box::new(e)))?;
    let vary = HeaderValue::from_static("accept-encoding, save-data");
    if cached::not_modified(headers, &etag) {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        let h = resp.headers_mut();
        h.insert(header::ETAG, etag);
        h.insert(header::CACHE_CONTROL, app.inner.caching.public.clone());
        h.insert(header::VARY, vary);
        return Ok(resp);
    }
    let page = match app.inner.pages.get(&key) {
        Some(p) => p,
        None => {
            let (status, html) = render()?;
            let page = Arc::new(compress(etag, status, html));
            if status.is_success() {
                app.inner.pages.insert(key, page.clone());
            }
            page
        }
    };
    let mut resp = precompressed(headers, [&page.br, &page.gz, &page.raw]);
    *resp.status_mut() = page.status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::VARY, vary);
    if page.status.is_success() {
        h.insert(header::ETAG, page.etag.clone());
        h.insert(header::CACHE_CONTROL, app.inner.caching.public.clone());
    } else {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    Ok(resp)
}

/// A 200 with the body the client can take: brotli, else gzip, else as is (`[br, gzip, raw]`), with its
/// Content-Encoding.
fn precompressed(headers: &HeaderMap, [br, gz, raw]: [&Bytes; 3]) -> Response {
    let (body, encoding) = if accepts(headers, "br") {
        (br.clone(), Some("br"))
    } else if accepts(headers, "gzip") {
        (gz.clone(), Some("gzip"))
    } else {
        (raw.clone(), None)
    };
    let mut resp = body.into_response();
    if let Some(e) = encoding {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
    }
    resp
}

/// True when Accept-Encoding lists `coding` without `q=0`.
fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    headers
        .get_all(header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| {
            let mut parts = v.split(';');
            parts
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case(coding))
                && !parts.any(|p| {
                    p.trim()
                        .strip_prefix("q=")
                        .and_then(|q| q.trim().parse::<f32>().ok())
                        == Some(0.0)
                })
        })
}

fn compress(etag: HeaderValue, status: StatusCode, html: String) -> Rendered {
    use std::io::Write;
    let raw = Bytes::from(html);
    let mut br = Vec::with_capacity(raw.len() / 3);
    {
        // Quality 6: most of brotli's gain at a fraction of 11's cost; each page is compressed once.
        let mut w = brotli::CompressorWriter::new(&mut br, 4096, 6, 22);
        let _ = w.write_all(&raw);
    }
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(raw.len() / 3),
        flate2::Compression::new(6),
    );
    let _ = gz.write_all(&raw);
    let gz = gz.finish().unwrap_or_default();
    Rendered {
        etag,
        status,
        raw,
        br: Bytes::from(br),
        gz: Bytes::from(gz),
    }
}

/// An error as a page: the status (and Retry-After) of the API's answer, in HTML.
pub(crate) fn error_page(w: &Want, e: ApiError) -> Response {
    let title = match &e {
        ApiError::NotFound(_) => "Not found",
        ApiError::BadRequest(_) | ApiError::Validation(_) => "That request is not valid",
        ApiError::Unavailable { .. } | ApiError::TooManyRequests { .. } => {
            "Temporarily unavailable"
        }
        _ => "Something went wrong",
    };
    let text = match &e {
        ApiError::Validation(v) => {
            v.0.iter()
                .map(|f| f.message.clone())
                .collect::<Vec<_>>()
                .join("; ")
        }
        ApiError::Internal(_) => {
            "Something went wrong on our side. Please try again in a moment.".to_owned()
        }
        other => other.to_string(),
    };
    let api = e.into_response();
    let c = w.chrome(Vec::new());
    let mut resp = (
        api.status(),
        tenfold_pages::message(&c, title, &text).into_string(),
    )
        .into_response();
    let h = resp.headers_mut();
    for name in [header::RETRY_AFTER, tenfold_http::X_LOAD_SHED.clone()] {
        if let Some(v) = api.headers().get(&name) {
            h.insert(name, v.clone());
        }
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /`.
pub(crate) async fn home(State(app): State<App>, headers: HeaderMap) -> Response {
    let w = want(&app, &headers);
    let result = async {
        let cats = categories(&app).await?;
        let query = ListQuery {
            category: None,
            search: None,
            after: None,
            limit: FEATURED,
            sort: Sort::Id,
        };
        let page = body_of(page_value(&app, query, None, None).await?)
            .map(|(_, b)| b)
            .unwrap_or_default();
        let mut f = Fingerprint::new("home");
        w.add_to(&mut f);
        f.add(&cats).add(&page);
        answer(&app, &headers, f.0, || {
            let categories = category_list(&cats)?;
            let featured: ProductPage = decode(&page)?;
            Ok((
                StatusCode::OK,
                tenfold_pages::home(&w.chrome(categories), &featured.items).into_string(),
            ))
        })
    }
    .await;
    result.unwrap_or_else(|e| error_page(&w, e))
}

/// Query parameters of `/products` and `/search`.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ListParams {
    category: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
    sort: Option<String>,
}

/// `GET /products`.
pub(crate) async fn products(
    State(app): State<App>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    list(app, headers, params.ok().map(|q| q.0), false).await
}

/// `GET /search`.
pub(crate) async fn search(
    State(app): State<App>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    list(app, headers, params.ok().map(|q| q.0), true).await
}

async fn list(app: App, headers: HeaderMap, p: Option<ListParams>, is_search: bool) -> Response {
    let w = want(&app, &headers);
    let result = async {
        let Some(p) = p else {
            return Err(ApiError::BadRequest("the query string is malformed".into()));
        };
        let mut errs = tenfold_catalog::ValidationErrors::default();
        let category = p
            .category
            .as_deref()
            .filter(|c| !c.is_empty())
            .and_then(|c| errs.check("category", CategorySlug::parse(c)));
        let q =
            p.q.as_deref()
                .map(str::trim)
                .filter(|q| !q.is_empty() && is_search);
        if let Some(q) = q {
            errs.check("q", crate::routes::products::search_text(q));
        }
        let sort = match p.sort.as_deref().filter(|s| !s.is_empty()) {
            None => Sort::Id,
            Some(s) => errs.check("sort", Sort::parse(s)).unwrap_or_default(),
        };
        // A cursor from another order starts this one from its first page.
        let mut cursor = p
            .cursor
            .as_deref()
            .filter(|c| !c.is_empty())
            .and_then(|c| errs.check("cursor", Cursor::decode(c)).map(|k| (c, k)))
            .filter(|(_, k)| k.fits(sort));
        if !errs.0.is_empty() {
            return Err(ApiError::Validation(errs));
        }
        let client = crate::routes::flags::client_key(&headers);
        let mut notice = None;
        let deep_pages = app.flags().is_on(&tenfold_flags::DEEP_PAGES, client);
        if cursor.is_some() && !deep_pages {
            notice = Some(off_notice(
                &app,
                &tenfold_flags::DEEP_PAGES,
                "Showing the first page.",
            ));
            cursor = None;
        }
        let searching = match q {
            Some(_) if !w.search => {
                notice = Some(off_notice(
                    &app,
                    &tenfold_flags::SEARCH,
                    "Browse by category meanwhile.",
                ));
                false
            }
            Some(_) => true,
            None => false,
        };
        let cats = categories(&app).await?;
        let page = if is_search && !searching {
            Bytes::new()
        } else {
            let query = ListQuery {
                category: category.clone(),
                search: q.filter(|_| searching).map(str::to_owned),
                after: cursor.map(|(_, k)| k),
                limit: PAGE,
                sort,
            };
            body_of(page_value(&app, query, cursor.map(|(c, _)| c), None).await?)
                .map(|(_, b)| b)
                .unwrap_or_default()
        };
        let mut f = Fingerprint::new(if is_search { "search" } else { "products" });
        w.add_to(&mut f);
        f.add(&cats)
            .add(&page)
            .add(category.as_ref().map_or("", |c| c.as_str()).as_bytes())
            .add(q.unwrap_or("").as_bytes())
            .add(notice.as_deref().unwrap_or("").as_bytes())
            .add(&[u8::from(deep_pages)])
            .add(sort.as_str().as_bytes());
        answer(&app, &headers, f.0, || {
            let categories = category_list(&cats)?;
            let (items, next_cursor) = if page.is_empty() {
                (Vec::new(), None)
            } else {
                let page: ProductPage = decode(&page)?;
                (page.items, page.next_cursor)
            };
            let action = if is_search { "/search" } else { "/products" };
            // With deep pages off, no link leads to one.
            let next = next_cursor.filter(|_| deep_pages).map(|c| {
                let mut s = form_urlencoded::Serializer::new(String::new());
                if let Some(q) = q {
                    s.append_pair("q", q);
                }
                if let Some(cat) = &category {
                    s.append_pair("category", cat.as_str());
                }
                if sort != Sort::Id {
                    s.append_pair("sort", sort.as_str());
                }
                s.append_pair("cursor", &c);
                format!("{action}?{}", s.finish())
            });
            let heading = match (is_search, q, &category) {
                (true, Some(q), _) => format!("Results for “{q}”"),
                (true, None, _) => "Search".to_owned(),
                (false, _, Some(c)) => categories
                    .iter()
                    .find(|x| x.slug == c.as_str())
                    .map_or_else(|| c.as_str().to_owned(), |x| x.name.clone()),
                (false, _, None) => "All products".to_owned(),
            };
            let hint = (is_search && q.is_none() && notice.is_none())
                .then_some("Type what you are looking for above.");
            let view = ListView {
                heading: &heading,
                category: category.as_ref().map(|c| c.as_str()),
                q,
                action,
                items: &items,
                sort: sort.as_str(),
                next,
                notice: notice.as_deref().or(hint),
            };
            Ok((
                StatusCode::OK,
                tenfold_pages::products(&w.chrome(categories), &view).into_string(),
            ))
        })
    }
    .await;
    result.unwrap_or_else(|e| error_page(&w, e))
}

fn off_notice(app: &App, flag: &tenfold_flags::Flag, then: &str) -> String {
    let why = if app.flags().is_auto_off(flag) {
        "turned off for a while because the service is busy"
    } else {
        "turned off for now"
    };
    let mut feature = flag.feature.to_owned();
    if let Some(first) = feature.get(..1) {
        feature = first.to_uppercase() + &feature[1..];
    }
    format!("{feature} is {why}. {then}")
}

/// `GET /products/{id}`.
pub(crate) async fn product(
    State(app): State<App>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Response {
    let w = want(&app, &headers);
    let result = async {
        let id = raw
            .parse::<i64>()
            .ok()
            .and_then(|n| ProductId::new(n).ok())
            .ok_or_else(|| ApiError::NotFound("there is no such product".into()))?;
        let cats = categories(&app).await?;
        let (version, body) = body_of(product_value(&app, id, None).await?)
            .ok_or_else(|| ApiError::NotFound(format!("there is no product {}", id.get())))?;
        let media = product_media(&app, id.get()).await;
        let mut f = Fingerprint::new("product");
        w.add_to(&mut f);
        f.add(&cats)
            .add(&id.get().to_le_bytes())
            .add(&version.to_le_bytes());
        for m in media.iter() {
            f.add(&m.id.to_le_bytes());
        }
        answer(&app, &headers, f.0, || {
            let categories = category_list(&cats)?;
            let p: Product = decode(&body)?;
            let images: Vec<Image> = media
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    let alt = if i == 0 {
                        p.name.clone()
                    } else {
                        format!("{}, picture {}", p.name, i + 1)
                    };
                    image_of(m, alt)
                })
                .collect();
            Ok((
                StatusCode::OK,
                tenfold_pages::product(&w.chrome(categories), &p, &images).into_string(),
            ))
        })
    }
    .await;
    result.unwrap_or_else(|e| error_page(&w, e))
}

/// `GET /assets/{name}`: a fingerprinted asset, cached for a year, precompressed.
pub(crate) async fn asset(Path(name): Path<String>, headers: HeaderMap) -> Response {
    let Some(a) = tenfold_pages::assets::get(&name) else {
        return ApiError::NotFound(format!("there is no asset {name:?}")).into_response();
    };
    let etag = HeaderValue::from_str(&format!("\"{}\"", a.name))
        .unwrap_or(HeaderValue::from_static("\"asset\""));
    let mut resp = if cached::not_modified(&headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        precompressed(
            &headers,
            [
                &Bytes::from_static(a.br),
                &Bytes::from_static(a.gz),
                &Bytes::from_static(a.raw),
            ],
        )
    };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    h.insert(header::ETAG, etag);
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    resp
}

/// Errors a browser gets from outside the page handlers (a shed request, a rate limit, maintenance mode,
/// an unknown path) are problem+json like every error of this service; for a page route asked for by a
/// browser (`Accept: text/html`) this turns them into a page with the same status and headers.
pub(crate) async fn html_errors(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let page_route = !(path.starts_with("/api/")
        || path.starts_with("/media/")
        || path.starts_with("/assets/")
        || matches!(path, "/healthz" | "/readyz" | "/metrics"));
    let wants_html = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    let resp = next.run(req).await;
    let is_problem = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes() == crate::error::PROBLEM_JSON.as_bytes());
    if !(page_route && wants_html && is_problem) {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .unwrap_or_default();
    let problem: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let title = problem["title"].as_str().unwrap_or("Something went wrong");
    let detail = problem["detail"].as_str().unwrap_or("");
    let c = Chrome {
        enhance: false,
        save_data: false,
        search: false,
        ordering: false,
        categories: Vec::new(),
    };
    let html = tenfold_pages::message(&c, title, detail).into_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(html))
}
