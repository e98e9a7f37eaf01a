//! Cached reads: building the cache from the configuration, answering from cached bodies with HTTP
//! validators (ETag, If-None-Match → 304) and Cache-Control, and the invalidations writes send.

use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use secrecy::ExposeSecret;
use tenfold_cache::{Cache, Change, RedisOptions, Settings, Value};
use tenfold_config::CacheConfig;
use tenfold_store::Store;

/// The cache of one app instance, its invalidation channel and the Cache-Control of catalog reads.
pub(crate) struct Caching {
    pub(crate) cache: Cache,
    pub(crate) public: HeaderValue,
    bus: Option<tenfold_cache::BusGuard>,
}

impl Caching {
    /// True when invalidation feeds run (a cache and a runtime to run them on).
    pub(crate) fn has_bus(&self) -> bool {
        self.bus.is_some()
    }

    /// L1 per `cfg`, kept consistent with the other instances through the store's change feed. Starts the
    /// feed's tasks on the current runtime (outside one, the cache stays local).
    pub(crate) fn new(store: &Store, cfg: &CacheConfig) -> Caching {
        let public = HeaderValue::from_str(&format!(
            "public, max-age={}, stale-while-revalidate={}",
            cfg.http_max_age_s, cfg.http_stale_while_revalidate_s
        ))
        .unwrap_or(HeaderValue::from_static("public, max-age=5"));
        if !cfg.enabled {
            return Caching {
                cache: Cache::disabled(),
                public,
                bus: None,
            };
        }
        let settings = Settings {
            capacity_bytes: cfg.capacity_mib * 1024 * 1024,
            ttl: Duration::from_millis(cfg.ttl_ms),
            list_ttl: Duration::from_millis(cfg.list_ttl_ms),
            stale_while_revalidate: Duration::from_millis(cfg.stale_while_revalidate_ms),
            stale_if_error: Duration::from_millis(cfg.stale_if_error_ms),
            negative_ttl: Duration::from_millis(cfg.negative_ttl_ms),
            ..Settings::default()
        };
        let redis = cfg.redis_url.as_ref().map(|u| RedisOptions {
            url: u.expose_secret().to_owned(),
            timeout: Duration::from_millis(cfg.redis_timeout_ms),
            prefix: cfg.redis_prefix.clone(),
        });
        let cache = match redis
            .as_ref()
            .map(|r| Cache::with_redis(settings.clone(), r))
        {
            Some(Ok(c)) => c,
            Some(Err(e)) => {
                // The configuration checked the scheme; anything else is reported and Redis skipped.
                tracing::error!(error = %e, "Redis is configured but unusable; caching without it");
                Cache::new(settings)
            }
            None => Cache::new(settings),
        };
        // The database's own feed always runs; Redis pub/sub, when configured, runs beside it, so an
        // invalidation reaches the others while either is up.
        let mut feeds = vec![store.change_feed()];
        feeds.extend(cache.redis_feed());
        let bus = tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| cache.start_bus(feeds));
        Caching { cache, public, bus }
    }
}

/// Serializes `v` for the cache (a body served as is on every hit).
pub(crate) fn to_body<T: serde::Serialize>(v: &T) -> Bytes {
    let mut body = serde_json::to_vec(v).unwrap_or_default();
    // The Vec grew by doubling; a cached body should hold only its bytes.
    body.shrink_to_fit();
    Bytes::from(body)
}

/// True when an If-None-Match header lists `etag` (weak comparison) or is `*`.
pub(crate) fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    let want = opaque(etag.as_bytes());
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|t| t == "*" || opaque(t.as_bytes()) == want)
}

fn opaque(tag: &[u8]) -> &[u8] {
    tag.strip_prefix(b"W/").unwrap_or(tag)
}

/// A weak entity tag of a body (list pages: their bytes are their version).
pub(crate) fn body_etag(body: &[u8]) -> HeaderValue {
    // FNV-1a, 64 bits: stable across instances and releases, which a std hasher is not.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    HeaderValue::from_str(&format!("W/\"p{h:016x}\""))
        .unwrap_or(HeaderValue::from_static("W/\"p\""))
}

/// 200 with the cached JSON body, or 304 when the client already has this version.
pub(crate) fn answer(
    headers: &HeaderMap,
    body: Bytes,
    etag: HeaderValue,
    cache_control: &HeaderValue,
) -> Response {
    let mut resp = if not_modified(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response()
    };
    let h = resp.headers_mut();
    h.insert(header::ETAG, etag);
    h.insert(header::CACHE_CONTROL, cache_control.clone());
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    resp
}

/// A list page (or the category list): 200 or 304, its ETag a weak hash of the body.
pub(crate) fn answer_page(
    headers: &HeaderMap,
    page: Value,
    cache_control: &HeaderValue,
) -> Response {
    let (_, body) = present(page).unwrap_or_default();
    let tag = body_etag(&body);
    answer(headers, body, tag, cache_control)
}

/// The body of a present value, or `None` for "does not exist".
pub(crate) fn present(v: Value) -> Option<(i64, Bytes)> {
    match v {
        Value::Present { version, body } => Some((version, body)),
        Value::Absent => None,
    }
}

/// Page tags: what invalidates a list page.
pub(crate) fn list_tag(category: Option<&str>) -> String {
    match category {
        Some(c) => format!("category:{c}"),
        None => "all".to_owned(),
    }
}

/// The tag of the category list (its product counts move with product writes).
pub(crate) const CATEGORIES: &str = "categories";

/// A product was created, or changed without moving category.
pub(crate) fn product_written(id: i64, version: i64, category: &str, counts_moved: bool) -> Change {
    let mut tags = vec![list_tag(None), list_tag(Some(category))];
    if counts_moved {
        tags.push(CATEGORIES.to_owned());
    }
    Change {
        products: vec![(id, Some(version))],
        tags,
        all_lists: false,
    }
}

/// A product moved category or was deleted: which lists it left is not known here, so every list goes.
pub(crate) fn product_moved(id: i64, version: Option<i64>) -> Change {
    Change {
        products: vec![(id, version)],
        tags: vec![CATEGORIES.to_owned()],
        all_lists: true,
    }
}
