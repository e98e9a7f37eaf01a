//! `/api/products` and `/api/categories`.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tenfold_catalog::{
    Category, CategorySlug, NewCategory, NewCategoryInput, NewProduct, NewProductInput, Product,
    ProductId, ProductPatch, ProductPatchInput,
};
use tenfold_store::{Cursor, ListQuery, Sort, MAX_PAGE};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery, ProductIdPath, ReadAfter, Writer, CONSISTENCY_TOKEN};
use crate::{cached, App};
use tenfold_cache::{Key, Value};
use tenfold_store::StoreError;

/// Default page size of `GET /api/products`.
const DEFAULT_PAGE: u32 = 20;

/// The strong ETag of a product version.
pub(crate) fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"v{version}\"")).unwrap_or(HeaderValue::from_static("\"v0\""))
}

/// Adds the `Consistency-Token` of the state after this write (PostgreSQL), for reads that must see it.
async fn with_token(app: &App, mut resp: Response) -> Response {
    match app.store().consistency_token().await {
        Ok(Some(t)) => {
            if let Ok(v) = HeaderValue::from_str(&t.to_string()) {
                resp.headers_mut().insert(CONSISTENCY_TOKEN, v);
            }
        }
        Ok(None) => {}
        // The write is done; only the token is missing, and reads without it still work.
        Err(e) => tracing::warn!(error = %e, "no consistency token for a write's response"),
    }
    resp
}

fn with_etag(status: StatusCode, product: Product) -> Response {
    let tag = etag(product.version);
    let mut resp = (status, Json(product)).into_response();
    resp.headers_mut().insert(header::ETAG, tag);
    resp
}

/// What an If-Match header asks for.
enum IfMatch {
    /// No header: unconditional.
    Absent,
    /// `*`: the resource must exist.
    Any,
    /// One of these versions.
    Versions(Vec<i64>),
}

fn if_match(headers: &HeaderMap) -> ApiResult<IfMatch> {
    let values: Vec<&str> = headers
        .get_all(header::IF_MATCH)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| ApiError::BadRequest("If-Match must be ASCII".into()))
        })
        .collect::<Result<_, _>>()?;
    if values.is_empty() {
        return Ok(IfMatch::Absent);
    }
    let mut versions = Vec::new();
    for tag in values
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
    {
        if tag == "*" {
            return Ok(IfMatch::Any);
        }
        // Weak tags are accepted too: the version names the state whatever the encoding.
        let inner = tag.strip_prefix("W/").unwrap_or(tag);
        let v = inner
            .strip_prefix("\"v")
            .and_then(|t| t.strip_suffix('"'))
            .and_then(|n| n.parse::<i64>().ok());
        match v {
            Some(v) => versions.push(v),
            // An entity tag we never issued cannot match.
            None if inner.starts_with('"') && inner.ends_with('"') && inner.len() >= 2 => {}
            None => {
                return Err(ApiError::BadRequest(format!(
                    "If-Match must be \"*\" or a list of entity tags such as \"v3\" (got {})",
                    tag.chars().take(60).collect::<String>()
                )))
            }
        }
    }
    Ok(IfMatch::Versions(versions))
}

/// Resolves If-Match to the single version the store must find, checking membership first when the
/// header lists several tags.
async fn expected_version(
    app: &App,
    id: tenfold_catalog::ProductId,
    headers: &HeaderMap,
) -> ApiResult<Option<i64>> {
    let stale = || {
        ApiError::PreconditionFailed(
            "the product has changed since you read it: fetch it again and retry".into(),
        )
    };
    let wanted = match if_match(headers)? {
        IfMatch::Absent => return Ok(None),
        IfMatch::Versions(v) if v.is_empty() => return Err(stale()),
        IfMatch::Versions(v) if v.len() == 1 => return Ok(Some(v[0])),
        IfMatch::Versions(v) => Some(v),
        IfMatch::Any => None,
    };
    // `*` or several tags: find the current version, check it is acceptable, then make the write
    // conditional on exactly that version, so a change in between still fails with 412.
    let current = app.store().get_product(id).await?;
    match (current, wanted) {
        (None, _) => Err(ApiError::PreconditionFailed(format!(
            "product {} does not exist",
            id.get()
        ))),
        (Some(p), Some(v)) if !v.contains(&p.version) => Err(stale()),
        (Some(p), _) => Ok(Some(p.version)),
    }
}

fn not_found(id: tenfold_catalog::ProductId) -> ApiError {
    ApiError::NotFound(format!("there is no product with id {}", id.get()))
}

/// Get one product.
#[utoipa::path(
    get,
    path = "/api/products/{id}",
    tag = "products",
    params(
        ("id" = i64, Path, description = "Product id", minimum = 1),
        ("Consistency-Token" = Option<String>, Header, nullable = false, pattern = "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$",
            description = "From a write's response: the read sees that write (served by an up-to-date replica or the primary, not from a cache)"),
    ),
    responses(
        (status = 200, description = "The product; ETag carries its version", body = Product,
            headers(("ETag" = String, description = "Strong entity tag of this version"))),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_product(
    State(app): State<App>,
    ProductIdPath(id): ProductIdPath,
    ReadAfter(after): ReadAfter,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let value = product_value(&app, id, after).await?;
    let (version, body) = cached::present(value).ok_or_else(|| not_found(id))?;
    Ok(cached::answer(
        &headers,
        body,
        etag(version),
        &app.inner.caching.public,
    ))
}

/// A product as the cache holds it (its JSON and version), loaded from the store on a miss; with a
/// consistency token, read from a replica that has the write (or the primary), not from the cache.
pub(crate) async fn product_value(
    app: &App,
    id: ProductId,
    after: Option<tenfold_store::ConsistencyToken>,
) -> ApiResult<Value> {
    let store = app.store().clone();
    let load = move || {
        let store = store.clone();
        async move {
            Ok::<_, StoreError>(match store.get_product(id).await? {
                Some(p) => Value::Present {
                    version: p.version,
                    body: cached::to_body(&p),
                },
                None => Value::Absent,
            })
        }
    };
    Ok(match after {
        Some(t) => tenfold_store::read_at_least(t, load()).await?,
        None => {
            app.cache()
                .get_or_load(Key::Product(id.get()), load)
                .await?
                .0
        }
    })
}

/// Query parameters of `GET /api/products`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListParams {
    /// Only products in this category (a slug).
    #[param(
        nullable = false,
        pattern = "^[a-z0-9]+(-[a-z0-9]+)*$",
        max_length = 64
    )]
    category: Option<String>,
    /// Only products whose name contains this text (at most 100 characters, no control characters).
    #[param(
        nullable = false,
        max_length = 100,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"
    )]
    q: Option<String>,
    /// The `next_cursor` of the previous page (opaque).
    #[param(nullable = false, pattern = "^[A-Za-z0-9_-]{1,64}$")]
    cursor: Option<String>,
    /// Page size, 1-100 (default 20).
    #[param(nullable = false, minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The order: `id` (default), `price` (cheapest first) or `-price`; a cursor continues the order it
    /// came from.
    #[param(nullable = false, pattern = "^(id|price|-price)$")]
    sort: Option<String>,
}

/// One page of products.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ProductPage {
    /// Products in id order.
    pub items: Vec<Product>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
    /// The URL of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// List products, filtered and keyset-paginated.
#[utoipa::path(
    get,
    path = "/api/products",
    tag = "products",
    params(
        ListParams,
        ("Consistency-Token" = Option<String>, Header, nullable = false, pattern = "^[0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8}$",
            description = "From a write's response: the page reflects that write"),
    ),
    responses(
        (status = 200, description = "A page of products", body = ProductPage),
        (status = 400, description = "Malformed query string", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameter values", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_products(
    State(app): State<App>,
    ApiQuery(p): ApiQuery<ListParams>,
    ReadAfter(read_after): ReadAfter,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut errs = tenfold_catalog::ValidationErrors::default();
    let limit = match p.limit {
        None => Some(DEFAULT_PAGE),
        Some(n) if (1..=i64::from(MAX_PAGE)).contains(&n) => Some(n as u32),
        Some(n) => errs.check(
            "limit",
            Err(format!("limit must be between 1 and {MAX_PAGE} (got {n})")),
        ),
    };
    let category = p
        .category
        .as_deref()
        .and_then(|c| errs.check("category", CategorySlug::parse(c)));
    let search = match p.q.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(q) => errs.check("q", search_text(q).map(str::to_owned)),
    };
    let sort = match p.sort.as_deref() {
        None => Some(Sort::Id),
        Some(s) => errs.check("sort", Sort::parse(s)),
    };
    let after = p
        .cursor
        .as_deref()
        .and_then(|c| errs.check("cursor", Cursor::decode(c)));
    if let (Some(a), Some(s)) = (after, sort) {
        if !a.fits(s) {
            let _: Option<()> = errs.check(
                "cursor",
                Err("this cursor continues a listing in another order: pass the same sort as the page it came from".into()),
            );
        }
    }
    if !errs.0.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    // Degradable features, each behind its flag: text search and pages beyond the first.
    if search.is_some() {
        crate::routes::flags::require(&app, &tenfold_flags::SEARCH, &headers)?;
    }
    if after.is_some() {
        crate::routes::flags::require(&app, &tenfold_flags::DEEP_PAGES, &headers)?;
    }
    let limit = limit.unwrap_or(DEFAULT_PAGE);
    let query = ListQuery {
        category,
        search,
        after,
        limit,
        sort: sort.unwrap_or_default(),
    };
    let value = page_value(&app, query, p.cursor.as_deref(), read_after).await?;
    Ok(cached::answer_page(
        &headers,
        value,
        &app.inner.caching.public,
    ))
}

/// Search text as a list query takes it (already trimmed): at most 100 characters, no control
/// characters; the API and the storefront's search page check it the same way.
pub(crate) fn search_text(q: &str) -> Result<&str, String> {
    if q.chars().count() > 100 {
        Err("q must be at most 100 characters".into())
    } else if q.chars().any(char::is_control) {
        Err("q must not contain control characters".into())
    } else {
        Ok(q)
    }
}

/// A list page as the cache holds it (the JSON of a [`ProductPage`]), loaded on a miss; `cursor` is
/// the query's cursor as the client sent it.
pub(crate) async fn page_value(
    app: &App,
    query: ListQuery,
    cursor: Option<&str>,
    read_after: Option<tenfold_store::ConsistencyToken>,
) -> ApiResult<Value> {
    let limit = query.limit;
    // Everything that tells this page from another under the same tag.
    let canonical = {
        let mut c = form_urlencoded::Serializer::new(String::new());
        if let Some(s) = &query.search {
            c.append_pair("q", s);
        }
        if let Some(cursor) = cursor {
            c.append_pair("cursor", cursor);
        }
        c.append_pair("limit", &limit.to_string());
        if query.sort != Sort::Id {
            c.append_pair("sort", query.sort.as_str());
        }
        c.finish()
    };
    let key = app.cache().page_key(
        &cached::list_tag(query.category.as_ref().map(|c| c.as_str())),
        &canonical,
    );
    let store = app.store().clone();
    let load = move || {
        let store = store.clone();
        let query = query.clone();
        async move {
            let page = store.list_products(&query).await?;
            Ok::<_, StoreError>(Value::Present {
                version: 0,
                body: cached::to_body(&product_page(page, &query)),
            })
        }
    };
    Ok(match read_after {
        Some(t) => tenfold_store::read_at_least(t, load()).await?,
        None => app.cache().get_or_load(key, load).await?.0,
    })
}

/// The response body of a page: the items, and the cursor and URL of the next page.
fn product_page(page: tenfold_store::Page, q: &ListQuery) -> ProductPage {
    let next_cursor = page.next.map(|c| c.encode());
    let next = next_cursor.as_ref().map(|c| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        if let Some(cat) = &q.category {
            s.append_pair("category", cat.as_str());
        }
        if let Some(search) = &q.search {
            s.append_pair("q", search);
        }
        s.append_pair("cursor", c);
        s.append_pair("limit", &q.limit.to_string());
        if q.sort != Sort::Id {
            s.append_pair("sort", q.sort.as_str());
        }
        format!("/api/products?{}", s.finish())
    });
    ProductPage {
        items: page.items,
        next_cursor,
        next,
    }
}

/// Create a product.
#[utoipa::path(
    post,
    path = "/api/products",
    tag = "products",
    request_body(content = NewProductInput, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created", body = Product,
            headers(("Location" = String, description = "URL of the product"), ("ETag" = String, description = "Entity tag"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Duplicate SKU", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_product(
    State(app): State<App>,
    _w: Writer,
    ApiJson(input): ApiJson<NewProductInput>,
) -> ApiResult<Response> {
    let new = NewProduct::parse(&input).map_err(ApiError::Validation)?;
    let product = create(&app, &new).await?;
    let location = HeaderValue::from_str(&format!("/api/products/{}", product.id)).ok();
    let mut resp = with_etag(StatusCode::CREATED, product);
    if let Some(l) = location {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    Ok(with_token(&app, resp).await)
}

/// Change some fields of a product, optionally only if it is still at a version (If-Match).
#[utoipa::path(
    patch,
    path = "/api/products/{id}",
    tag = "products",
    params(
        ("id" = i64, Path, description = "Product id", minimum = 1),
("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#, description = "ETag of the version the change is based on"),
    ),
    request_body(content = ProductPatchInput, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Updated", body = Product, headers(("ETag" = String, description = "Entity tag"))),
        (status = 400, description = "Malformed JSON or If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Duplicate SKU", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The product changed since the given ETag", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn patch_product(
    State(app): State<App>,
    _w: Writer,
    ProductIdPath(id): ProductIdPath,
    headers: HeaderMap,
    ApiJson(input): ApiJson<ProductPatchInput>,
) -> ApiResult<Response> {
    let patch = ProductPatch::parse(&input).map_err(ApiError::Validation)?;
    let expected = expected_version(&app, id, &headers).await?;
    let p = update(&app, id, &patch, expected).await?;
    Ok(with_token(&app, with_etag(StatusCode::OK, p)).await)
}

/// Creates a product and sends its invalidations (the API and the admin pages).
pub(crate) async fn create(app: &App, new: &NewProduct) -> ApiResult<Product> {
    let product = app.store().create_product(new).await?;
    app.cache()
        .invalidate(cached::product_written(
            product.id,
            product.version,
            &product.category,
            true,
        ))
        .await;
    Ok(product)
}

/// Changes a product (if it is still at `expected`, when given) and sends its invalidations.
pub(crate) async fn update(
    app: &App,
    id: ProductId,
    patch: &ProductPatch,
    expected: Option<i64>,
) -> ApiResult<Product> {
    match app.store().update_product(id, patch, expected).await {
        Ok(p) => {
            let change = if patch.category.is_some() {
                cached::product_moved(p.id, Some(p.version))
            } else {
                cached::product_written(p.id, p.version, &p.category, false)
            };
            app.cache().invalidate(change).await;
            Ok(p)
        }
        Err(tenfold_store::StoreError::NotFound) => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

/// Delete a product, optionally only if it is still at a version (If-Match).
#[utoipa::path(
    delete,
    path = "/api/products/{id}",
    tag = "products",
    params(
        ("id" = i64, Path, description = "Product id", minimum = 1),
("If-Match" = Option<String>, Header, nullable = false, pattern = r#"^\s*(\*|(W/)?"[^"]*"(\s*,\s*(W/)?"[^"]*")*)\s*$"#, description = "ETag of the version to delete"),
    ),
    security(("api_key" = [])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Malformed id or If-Match", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 412, description = "The product changed since the given ETag", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_product(
    State(app): State<App>,
    _w: Writer,
    ProductIdPath(id): ProductIdPath,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let expected = expected_version(&app, id, &headers).await?;
    match app.store().delete_product(id, expected).await {
        Ok(()) => {
            app.cache()
                .invalidate(cached::product_moved(id.get(), None))
                .await;
            Ok(with_token(&app, StatusCode::NO_CONTENT.into_response()).await)
        }
        Err(tenfold_store::StoreError::NotFound) => Err(not_found(id)),
        Err(e) => Err(e.into()),
    }
}

/// Every category.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CategoryList {
    /// Categories by slug.
    pub items: Vec<Category>,
}

/// List categories with their product counts.
#[utoipa::path(
    get,
    path = "/api/categories",
    tag = "categories",
    responses((status = 200, description = "All categories", body = CategoryList))
)]
pub(crate) async fn list_categories(
    State(app): State<App>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let value = categories_value(&app).await?;
    Ok(cached::answer_page(
        &headers,
        value,
        &app.inner.caching.public,
    ))
}

/// The category list as the cache holds it (the JSON of a [`CategoryList`]).
pub(crate) async fn categories_value(app: &App) -> ApiResult<Value> {
    let key = app.cache().page_key(cached::CATEGORIES, "");
    let store = app.store().clone();
    let (value, _) = app
        .cache()
        .get_or_load(key, move || {
            let store = store.clone();
            async move {
                Ok::<_, StoreError>(Value::Present {
                    version: 0,
                    body: cached::to_body(&CategoryList {
                        items: store.list_categories().await?,
                    }),
                })
            }
        })
        .await?;
    Ok(value)
}

/// Create a category.
#[utoipa::path(
    post,
    path = "/api/categories",
    tag = "categories",
    request_body(content = NewCategoryInput, content_type = "application/json"),
    security(("api_key" = [])),
    responses(
        (status = 201, description = "Created", body = Category),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Duplicate slug", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn create_category(
    State(app): State<App>,
    _w: Writer,
    ApiJson(input): ApiJson<NewCategoryInput>,
) -> ApiResult<Response> {
    let new = NewCategory::parse(&input).map_err(ApiError::Validation)?;
    let created = app.store().create_category(&new).await?;
    app.cache()
        .invalidate(tenfold_cache::Change {
            tags: vec![cached::CATEGORIES.to_owned()],
            ..Default::default()
        })
        .await;
    Ok(with_token(&app, (StatusCode::CREATED, Json(created)).into_response()).await)
}
