//! Answers the storefront's form handlers share: an HTML page that is never cached, and the 303 after a
//! form, each with the cookies the handler sets.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use maud::Markup;

/// A page with `no-store`, setting `cookies` (those that are `Some`).
pub(crate) fn page(status: StatusCode, html: Markup, cookies: &[Option<HeaderValue>]) -> Response {
    let mut resp = (status, html.into_string()).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies.iter().flatten() {
        h.append(header::SET_COOKIE, c.clone());
    }
    resp
}

/// 303 See Other to `to`, setting `cookies`.
pub(crate) fn see_other(to: &str, cookies: &[Option<HeaderValue>]) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies.iter().flatten() {
        h.append(header::SET_COOKIE, c.clone());
    }
    resp
}
