//! The stateless catalog HTTP service.
//!
//! Role: routes, handlers, problem+json errors, request ids, metrics, compression, the OpenAPI document,
//! and a server loop that speaks HTTP/1.1 and h2c on one port and drains on shutdown.
//!
//! Invariant: the process holds no per-client state: any instance over the same database answers any
//! request the same way. Every failure is an [`ApiError`] rendered as RFC 9457 problem+json; bad input
//! is always a 4xx, never a 5xx or a panic.
//!
//! Entry points: [`App::new`], [`App::router`] (for `tower::ServiceExt::oneshot` tests), [`App::serve`]
//! (takes a bound listener and a shutdown future), [`App::openapi`].

mod cached;
mod customer;
mod error;
mod extract;
mod observe;
mod routes;
mod serve;
mod session;
mod shed;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use secrecy::SecretString;
use tenfold_config::{CacheConfig, HttpConfig};
use tenfold_store::Store;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::{ApiError, ApiResult, Problem, PROBLEM_JSON};
pub use observe::X_REQUEST_ID;
pub use routes::customers::{CustomerIdentity, CustomerToken, TokenRequest};
pub use routes::jobs::{JobView, QueuesView};
pub use routes::media::UploadAccepted;
pub use routes::ops::Status;
pub use routes::orders::{
    reconcile_orders, DayRevenueView, NewOrder, NewOrderLine, OrderLineView, OrderPage, OrderView,
    RevenueReport,
};
pub use routes::products::{CategoryList, ProductPage};

pub use routes::flags::{valid_flag_name, FlagInput, FlagView, FlagsView};
use routes::{customers, flags, jobs, media, ops, orders, products};

/// The service: a store and the HTTP settings. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct App {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    store: Store,
    pub(crate) api_key: Option<SecretString>,
    pub(crate) body_limit: usize,
    pub(crate) request_timeout: Duration,
    pub(crate) http: HttpConfig,
    pub(crate) caching: cached::Caching,
    /// Signs and checks customer tokens; derived from the API key (none without one).
    pub(crate) token_key: Option<customer::TokenKey>,
    /// The order shards, once opened (`App::set_order_shards`).
    pub(crate) orders: std::sync::OnceLock<Arc<tenfold_store::OrderShards>>,
    /// The job queue, once opened (`App::set_job_queue`).
    pub(crate) jobs: std::sync::OnceLock<Arc<tenfold_store::queue::JobQueue>>,
    /// Blob storage for uploads, once configured (`App::set_media`).
    pub(crate) media: std::sync::OnceLock<routes::media::Media>,
    /// Feature flags (`App::set_flags`; every flag at its default until then).
    pub(crate) flags: std::sync::OnceLock<Arc<tenfold_flags::Flags>>,
    /// This instance's flags until `set_flags` (every flag at its default; the degradation ladder may
    /// still turn some off here).
    default_flags: Arc<tenfold_flags::Flags>,
    /// The flag table the admin routes write to.
    pub(crate) flag_table: std::sync::OnceLock<Arc<tenfold_store::flags::FlagTable>>,
    /// The adaptive concurrency limit (none with `http.load_shedding = false`).
    pub(crate) limiter: Option<Arc<tenfold_overload::Limiter>>,
    /// Per-client rate limiting (none with `http.rate_limit_per_s = 0`).
    pub(crate) rate_limit: Option<shed::RateLimit>,
    /// Storefront pages rendered and compressed, by the hash of what they were made from.
    pub(crate) pages: routes::pages::Memo,
    /// Products' media with renditions, read at most every 2 s per product.
    pub(crate) media_memo: routes::pages::MediaMemo,
    /// Signs admin sessions and CSRF tokens; derived from the API key (none without one).
    pub(crate) session_key: Option<session::SessionKey>,
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "tenfold catalog API", description = "A product catalog built to scale tenfold and more."),
    modifiers(&BearerAuth),
    tags(
        (name = "products", description = "Products: reads are public, writes need the API key"),
        (name = "categories", description = "Categories"),
        (name = "customers", description = "Customer tokens: issued with the API key, checked without the database"),
        (name = "orders", description = "Orders: stock taken atomically, kept on the customer's shard"),
        (name = "jobs", description = "Background jobs: state, progress and events; queue depth (API key)"),
        (name = "operations", description = "Health, readiness and metrics"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "customer_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

impl App {
    /// A service over `store` with the HTTP settings of `http` and the default cache (L1, invalidated
    /// through the store's change feed).
    pub fn new(store: Store, http: HttpConfig) -> App {
        Self::with_cache(store, http, &CacheConfig::default())
    }

    /// A service with the cache settings of `cache` (`enabled = false`: every read goes to the store).
    /// Call it inside a tokio runtime: the cache's invalidation tasks start on it.
    pub fn with_cache(store: Store, http: HttpConfig, cache: &CacheConfig) -> App {
        // The recorder first: the cache registers its metric handles when it is built.
        observe::prometheus();
        App {
            inner: Arc::new(Inner {
                caching: cached::Caching::new(&store, cache),
                token_key: http.api_key.as_ref().map(|k| {
                    customer::TokenKey::from_api_key(secrecy::ExposeSecret::expose_secret(k))
                }),
                orders: std::sync::OnceLock::new(),
                jobs: std::sync::OnceLock::new(),
                media: std::sync::OnceLock::new(),
                flags: std::sync::OnceLock::new(),
                default_flags: tenfold_flags::Flags::defaults(),
                flag_table: std::sync::OnceLock::new(),
                pages: routes::pages::memo(32),
                media_memo: routes::pages::media_memo(),
                session_key: http.api_key.as_ref().and_then(|k| {
                    session::SessionKey::from_api_key(secrecy::ExposeSecret::expose_secret(k))
                }),
                rate_limit: (http.rate_limit_per_s > 0.0).then(|| {
                    let gcra = tenfold_overload::gcra::Gcra::new(
                        http.rate_limit_per_s,
                        http.rate_limit_burst,
                    );
                    shed::RateLimit {
                        gcra,
                        local: tenfold_overload::gcra::LocalLimiter::new(gcra),
                        rate: http.rate_limit_per_s,
                        burst: http.rate_limit_burst,
                    }
                }),
                limiter: http.load_shedding.then(|| {
                    tenfold_overload::Limiter::new(tenfold_overload::LimiterOptions {
                        initial: http.concurrency_limit_initial,
                        min: http.concurrency_limit_min,
                        max: http.concurrency_limit_max,
                        ..Default::default()
                    })
                }),
                store,
                api_key: http.api_key.clone(),
                body_limit: http.body_limit_bytes,
                request_timeout: Duration::from_millis(http.request_timeout_ms),
                http,
            }),
        }
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Gives the service its order shards (orders answer 503 until then). Once only.
    pub fn set_order_shards(&self, shards: Arc<tenfold_store::OrderShards>) {
        let _ = self.inner.orders.set(shards);
    }

    /// Gives the service the job queue (job routes answer 503 until then). Once only.
    pub fn set_job_queue(&self, queue: Arc<tenfold_store::queue::JobQueue>) {
        let _ = self.inner.jobs.set(queue);
    }

    /// Gives the service its blob storage for uploads, at most `max_upload` bytes each (uploads answer
    /// 503 until then). Once only.
    pub fn set_media(&self, blobs: Arc<tenfold_blobs::DirBlobs>, max_upload: u64) {
        let _ = self
            .inner
            .media
            .set(routes::media::Media { blobs, max_upload });
    }

    /// Gives the service its feature flags (kept fresh by their refresher) and the table the admin
    /// routes change them in. Once only.
    pub fn set_flags(
        &self,
        flags: Arc<tenfold_flags::Flags>,
        table: Arc<tenfold_store::flags::FlagTable>,
    ) {
        let _ = self.inner.flags.set(flags);
        let _ = self.inner.flag_table.set(table);
    }

    /// The flags served: those set with `set_flags`, else every flag at its default.
    pub(crate) fn flags(&self) -> &tenfold_flags::Flags {
        self.inner.flags.get().unwrap_or(&self.inner.default_flags)
    }

    pub(crate) fn cache(&self) -> &tenfold_cache::Cache {
        &self.inner.caching.cache
    }

    fn api() -> (Router<App>, utoipa::openapi::OpenApi) {
        OpenApiRouter::<App>::with_openapi(ApiDoc::openapi())
            .routes(routes!(
                products::get_product,
                products::patch_product,
                products::delete_product
            ))
            .routes(routes!(products::list_products, products::create_product))
            .routes(routes!(
                products::list_categories,
                products::create_category
            ))
            .routes(routes!(customers::issue_token))
            .routes(routes!(customers::me))
            .routes(routes!(orders::place_order))
            .routes(routes!(orders::get_order))
            .routes(routes!(orders::customer_orders))
            .routes(routes!(orders::revenue))
            .routes(routes!(media::upload_media))
            .routes(routes!(media::import_products))
            .routes(routes!(jobs::get_job))
            .routes(routes!(jobs::job_events))
            .routes(routes!(jobs::queue_stats))
            .routes(routes!(flags::list_flags))
            .routes(routes!(flags::set_flag, flags::unset_flag))
            .routes(routes!(ops::healthz))
            .routes(routes!(ops::readyz))
            .routes(routes!(ops::metrics))
            .split_for_parts()
    }

    /// The OpenAPI 3 document of every route, generated from the handlers.
    pub fn openapi() -> utoipa::openapi::OpenApi {
        let mut doc = Self::api().1;
        // A patch must change something. Set here because utoipa-gen 5.5 renders `min_properties` as
        // maxProperties, and route schemas only exist after the router is split.
        if let Some(c) = doc.components.as_mut() {
            if let Some(utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
                c.schemas.get_mut("ProductPatchInput")
            {
                o.min_properties = Some(1);
            }
        }
        // Every operation that reaches the database can answer 503 (database unavailable, or the request
        // deadline passed) with Retry-After; say so once here rather than on each handler.
        let unavailable = utoipa::openapi::ResponseBuilder::new()
            .description("Temporarily unavailable (database unreachable or request deadline exceeded); retry after Retry-After seconds")
            .content(
                PROBLEM_JSON,
                utoipa::openapi::ContentBuilder::new().schema(Some(utoipa::openapi::Ref::from_schema_name("Problem"))).build(),
            )
            .header("Retry-After", utoipa::openapi::HeaderBuilder::new().description(Some("Seconds to wait")).build())
            .build();
        for (path, item) in doc.paths.paths.iter_mut() {
            if path == "/healthz" || path == "/metrics" {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .entry("503".into())
                    .or_insert_with(|| unavailable.clone().into());
            }
        }
        doc.paths.paths.insert(
            "/api/openapi.json".into(),
            utoipa::openapi::path::PathItem::new(
                utoipa::openapi::HttpMethod::Get,
                utoipa::openapi::path::OperationBuilder::new()
                    .tag("operations")
                    .summary(Some("This document"))
                    .response(
                        "200",
                        utoipa::openapi::ResponseBuilder::new()
                            .description("The OpenAPI document")
                            .build(),
                    ),
            ),
        );
        doc
    }

    /// The full router with every middleware, ready to serve or to call with `oneshot`.
    pub fn router(&self) -> Router {
        let (api, _) = Self::api();
        let doc: Arc<[u8]> = serde_json::to_vec(&Self::openapi())
            .unwrap_or_default()
            .into();
        let compress_when = SizeAbove::new(self.inner.http.compression_min_bytes)
            .and(NotForContentType::GRPC)
            .and(NotForContentType::IMAGES)
            .and(NotForContentType::SSE);
        let mut api = api.route(
            "/api/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc.to_vec()) }
            }),
        );
        if let Some(m) = self.inner.media.get() {
            // Originals and renditions have content-derived names: cached forever.
            for sub in ["originals", "renditions"] {
                let files = tower_http::services::ServeDir::new(m.blobs.root().join(sub))
                    .not_found_service(axum::handler::HandlerWithoutStateExt::into_service(
                        || async { ApiError::NotFound("there is no such media file".into()) },
                    ));
                api = api.nest_service(
                    &format!("/media/{sub}"),
                    tower::ServiceBuilder::new()
                        .layer(axum::middleware::from_fn_with_state(
                            m.blobs.clone(),
                            routes::media::guard_reads,
                        ))
                        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
                            header::CACHE_CONTROL,
                            // Only a file found is cached for ever; an error must not be.
                            |r: &axum::http::Response<_>| {
                                r.status().is_success().then(|| {
                                    HeaderValue::from_static("public, max-age=31536000, immutable")
                                })
                            },
                        ))
                        .service(files),
                );
            }
        }
        // The storefront: HTML over the same cached reads.
        let api = api
            .route("/", get(routes::pages::home))
            .route("/products", get(routes::pages::products))
            .route("/products/{id}", get(routes::pages::product))
            .route("/search", get(routes::pages::search))
            .route("/assets/{name}", get(routes::pages::asset))
            .route(
                "/cart",
                get(routes::shop_pages::cart).post(routes::shop_pages::add),
            )
            .route("/cart/update", post(routes::shop_pages::update))
            .route("/checkout", post(routes::shop_pages::checkout))
            .route("/orders/{id}", get(routes::shop_pages::order))
            .route("/admin", get(routes::admin_pages::home))
            .route(
                "/admin/sign-in",
                get(routes::admin_pages::sign_in_page).post(routes::admin_pages::sign_in),
            )
            .route("/admin/sign-out", post(routes::admin_pages::sign_out))
            .route(
                "/admin/products/new",
                get(routes::admin_pages::new_product_page)
                    .post(routes::admin_pages::create_product),
            )
            .route(
                "/admin/products/{id}",
                get(routes::admin_pages::edit_product_page)
                    .post(routes::admin_pages::update_product),
            )
            .route("/admin/jobs", get(routes::admin_pages::jobs))
            .route(
                "/admin/products/{id}/media",
                // The file may be as large as an API upload; the blob writer enforces that limit.
                post(routes::admin_pages::upload).layer(DefaultBodyLimit::disable()),
            );
        api.route_layer(axum::middleware::from_fn_with_state(
            self.clone(),
            shed::shed,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            self.clone(),
            shed::rate_limit,
        ))
        .route_layer(axum::middleware::from_fn(observe::remember_route))
        .fallback(|req: Request| async move {
            ApiError::NotFound(format!(
                "there is no resource at {}",
                req.uri().path().chars().take(200).collect::<String>()
            ))
        })
        .method_not_allowed_fallback(|req: Request| async move {
            ApiError::MethodNotAllowed(req.method().to_string())
        })
        .layer(DefaultBodyLimit::max(self.inner.body_limit))
        .layer(axum::middleware::from_fn_with_state(
            self.clone(),
            flags::read_only,
        ))
        .layer(axum::middleware::from_fn(routes::pages::html_errors))
        .layer(
            CompressionLayer::new()
                .quality(CompressionLevel::Precise(4))
                .compress_when(compress_when),
        )
        .layer(CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| -> Response {
                ApiError::Internal("a handler panicked".into()).into_response()
            },
        ))
        .layer(axum::middleware::from_fn_with_state(
            self.clone(),
            observe::observe,
        ))
        .with_state(self.clone())
    }

    /// Serves HTTP/1.1 and h2c on `listener` until `shutdown` resolves, then stops accepting and gives
    /// in-flight requests the configured grace period to finish.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        // Subscribed to the invalidation feeds before the first request, so no cached read can predate
        // a write this instance did not hear of.
        if self.inner.caching.has_bus()
            && !self.cache().wait_subscribed(Duration::from_secs(5)).await
        {
            tracing::warn!("the cache's invalidation feeds are not subscribed yet; serving anyway");
        }
        // Orders whose placing process died between taking stock and writing the order: checked every
        // 10 s, after a minute (far longer than any request may run).
        let reconciler = self.inner.orders.get().cloned().map(|shards| {
            let store = self.inner.store.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(10));
                loop {
                    tick.tick().await;
                    if let Err(e) = routes::orders::reconcile_orders(&store, &shards, 60_000).await
                    {
                        tracing::warn!(error = %e, "order reconciliation failed; retrying");
                    }
                }
            }))
        });
        let gauges = self
            .inner
            .jobs
            .get()
            .cloned()
            .map(|q| AbortOnDrop(tokio::spawn(routes::jobs::publish_gauges(q))));
        let ladder = (self.inner.http.degradation)
            .then(|| self.inner.limiter.clone())
            .flatten()
            .map(|limiter| AbortOnDrop(tokio::spawn(shed::run_ladder(self.clone(), limiter))));
        let served = serve::serve(self.router(), listener, shutdown, &self.inner.http).await;
        drop(ladder);
        drop(reconciler);
        drop(gauges);
        served
    }
}
