//! Feature flags: `/api/admin/flags` to list, set and unset them (API key), the read-only maintenance
//! mode as middleware, and the guard that answers 503 for a feature that is turned off.

use std::time::Duration;

use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tenfold_flags::Flag;
use tenfold_store::flags::FlagRecord;
use utoipa::ToSchema;

use crate::extract::{ApiJson, Writer};
use crate::{ApiError, ApiResult, App, Problem};

/// How long a client told that a feature is off should wait before trying again.
const OFF_RETRY: Duration = Duration::from_secs(30);

/// The stable key a percentage rollout sorts a client by: `X-Client-Key` if the client sends one, else
/// its address as the load balancer forwarded it (the first `X-Forwarded-For` hop).
pub(crate) fn client_key(headers: &HeaderMap) -> Option<&str> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty() && v.len() <= 200)
    };
    header("x-client-key")
        .or_else(|| header("x-forwarded-for").and_then(|v| v.split(',').next().map(str::trim)))
}

/// `Err(503)` when `flag` is off for this client.
pub(crate) fn require(app: &App, flag: &Flag, headers: &HeaderMap) -> ApiResult<()> {
    let flags = app.flags();
    if flags.is_on(flag, client_key(headers)) {
        return Ok(());
    }
    let why = if flags.is_auto_off(flag) {
        "turned off automatically while this instance is overloaded"
    } else {
        "turned off for now"
    };
    Err(ApiError::Unavailable {
        detail: format!(
            "{} is {why} (feature flag \"{}\"); the core of the service keeps working",
            flag.feature, flag.name
        ),
        retry_after: OFF_RETRY,
    })
}

/// Read-only maintenance mode: while the `read_only` flag is on, every write to the API answers 503
/// with Retry-After before its body is read; reads, and the flag routes themselves, keep working.
pub(crate) async fn read_only(State(app): State<App>, req: Request, next: Next) -> Response {
    let write = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let path = req.uri().path();
    // Every write to the database: the API's, and the storefront's checkout and admin edits (a cart
    // change only sets a cookie, and signing in writes nothing).
    let writes_data = (path.starts_with("/api/") && !path.starts_with("/api/admin/flags"))
        || path == "/checkout"
        || path.starts_with("/admin/products");
    if write && writes_data && app.flags().is_on(&tenfold_flags::READ_ONLY, None) {
        return ApiError::Unavailable {
            detail: "the service is in read-only maintenance mode: reads work, writes are refused until it ends".into(),
            retry_after: Duration::from_secs(60),
        }
        .into_response();
    }
    next.run(req).await
}

/// A flag as an instance serves it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FlagView {
    /// Its name.
    pub name: String,
    /// What it switches (known flags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    /// Its value when not set (known flags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
    /// Whether it is set in the flag table (else the default applies).
    pub set: bool,
    /// On (for everyone, or for `percent` of clients).
    pub enabled: bool,
    /// The share of clients it is on for, when a percentage rollout.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// Why it is set this way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Unix ms of the last change (set flags).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub updated_ms: Option<i64>,
    /// Turned off on this instance by the degradation ladder (it is overloaded), whatever the table says.
    #[serde(default)]
    pub auto_off: bool,
}

/// The flags of this instance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FlagsView {
    /// The flag table's change number these are as of (-1: never read).
    pub version: i64,
    /// True while the flag table cannot be read: these are the last flags read.
    pub stale: bool,
    /// Known flags (set or at their default), then any other set flag.
    pub flags: Vec<FlagView>,
}

/// A flag's new value.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FlagInput {
    /// On or off.
    pub enabled: bool,
    /// On for this share of clients only (0-100; sticky per client).
    pub percent: Option<u8>,
    /// Why (shown in listings; at most 200 characters).
    pub note: Option<String>,
}

fn view(r: &FlagRecord) -> FlagView {
    let k = tenfold_flags::known(&r.name);
    FlagView {
        name: r.name.clone(),
        what: k.map(|f| f.what.to_owned()),
        default: k.map(|f| f.default),
        set: true,
        enabled: r.enabled,
        percent: r.percent,
        note: r.note.clone(),
        updated_ms: Some(r.updated_ms),
        auto_off: false,
    }
}

fn flags_view(app: &App) -> FlagsView {
    let flags = app.flags();
    let set = flags.set_flags();
    let mut out: Vec<FlagView> = tenfold_flags::KNOWN
        .iter()
        .map(|k| match set.iter().find(|r| r.name == k.name) {
            Some(r) => view(r),
            None => FlagView {
                name: k.name.to_owned(),
                what: Some(k.what.to_owned()),
                default: Some(k.default),
                set: false,
                enabled: k.default,
                percent: None,
                note: None,
                updated_ms: None,
                auto_off: false,
            },
        })
        .collect();
    for v in &mut out {
        v.auto_off = tenfold_flags::known(&v.name).is_some_and(|k| flags.is_auto_off(&k));
    }
    out.extend(
        set.iter()
            .filter(|r| tenfold_flags::known(&r.name).is_none())
            .map(view),
    );
    FlagsView {
        version: flags.version(),
        stale: flags.is_stale(),
        flags: out,
    }
}

/// A flag name: 1-64 of a-z, 0-9, '_', '-', '.'.
pub fn valid_flag_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b))
}

fn table(app: &App) -> ApiResult<&tenfold_store::flags::FlagTable> {
    app.inner
        .flag_table
        .get()
        .map(|t| &**t)
        .ok_or_else(|| ApiError::Unavailable {
            detail: "feature flags are not configured on this instance".into(),
            retry_after: Duration::from_secs(5),
        })
}

/// The flags this instance serves.
#[utoipa::path(
    get,
    path = "/api/admin/flags",
    tag = "operations",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Known flags (set or at their default) and any other set flag", body = FlagsView),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn list_flags(State(app): State<App>, _w: Writer) -> Json<FlagsView> {
    Json(flags_view(&app))
}

/// Sets a flag; every instance serves the change within about 100 ms.
#[utoipa::path(
    put,
    path = "/api/admin/flags/{name}",
    tag = "operations",
    security(("api_key" = [])),
    params(("name" = String, Path, description = "The flag")),
    request_body = FlagInput,
    responses(
        (status = 200, description = "As stored", body = FlagView),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Bad name, percentage or note", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn set_flag(
    State(app): State<App>,
    _w: Writer,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<FlagInput>,
) -> ApiResult<Json<FlagView>> {
    let mut errs = tenfold_catalog::ValidationErrors::default();
    if !valid_flag_name(&name) {
        errs.check::<()>(
            "name",
            Err("a flag name is 1 to 64 of a-z, 0-9, '_', '-' and '.'".into()),
        );
    }
    if input.percent.is_some_and(|p| p > 100) {
        errs.check::<()>("percent", Err("percent must be between 0 and 100".into()));
    }
    if input.note.as_ref().is_some_and(|n| n.chars().count() > 200) {
        errs.check::<()>("note", Err("note must be at most 200 characters".into()));
    }
    if !errs.0.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    let r = table(&app)?
        .set(&name, input.enabled, input.percent, input.note.as_deref())
        .await?;
    tracing::info!(flag = %name, enabled = r.enabled, percent = ?r.percent, "feature flag set");
    Ok(Json(view(&r)))
}

/// Unsets a flag: its default applies again.
#[utoipa::path(
    delete,
    path = "/api/admin/flags/{name}",
    tag = "operations",
    security(("api_key" = [])),
    params(("name" = String, Path, description = "The flag")),
    responses(
        (status = 204, description = "Unset"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Not set", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn unset_flag(
    State(app): State<App>,
    _w: Writer,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    if table(&app)?.remove(&name).await? {
        tracing::info!(flag = %name, "feature flag unset");
        Ok(axum::http::StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("the flag {name:?} is not set")))
    }
}
