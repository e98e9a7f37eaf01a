//! The storefront's cart and checkout, stateless like the rest: the cart is a cookie (`tf_cart`,
//! `id-qty.id-qty...`, checked on every read), the customer a signed customer token in a cookie
//! (`tf_customer`, made at the first checkout), orders go through the API's `orders::place`.
//!
//! Adding to the cart is a plain form on product pages; those pages are shared by every client (cached,
//! with no per-client token), so that form is protected by the browser's own headers instead: a POST
//! whose `Sec-Fetch-Site` says another site, or whose `Origin` names another host, is refused. The cart
//! page's forms and checkout carry the CSRF field of the admin pages. With `Accept: application/json`
//! (the script's in-place add) the answer is the cart's size instead of a redirect.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tenfold_catalog::{Money, Product, ProductId};
use tenfold_pages::shop::{self, CartLine, OrderLine};
use tenfold_store::StockItem;

use crate::error::ApiError;
use crate::routes::html::{page, see_other};
use crate::routes::pages::{error_page, nav, want, Want};
use crate::session;
use crate::App;

const CART_COOKIE: &str = "tf_cart";
const CUSTOMER_COOKIE: &str = "tf_customer";
/// Lines in a cart, at most.
const MAX_LINES: usize = 50;
/// Units of one product in a cart, at most.
const MAX_QUANTITY: u32 = 1000;
/// How long the customer and cart cookies last: 30 days.
const CUSTOMER_TTL_S: u64 = 30 * 24 * 3600;

/// The cart in a request's cookie: valid lines only, in the order they were added.
fn read_cart(headers: &HeaderMap) -> Vec<(i64, u32)> {
    let Some(raw) = session::cookie(headers, CART_COOKIE) else {
        return Vec::new();
    };
    let mut lines: Vec<(i64, u32)> = Vec::new();
    for part in raw.split('.') {
        let Some((id, q)) = part.split_once('-') else {
            continue;
        };
        let (Ok(id), Ok(q)) = (id.parse::<i64>(), q.parse::<u32>()) else {
            continue;
        };
        if id > 0 && (1..=MAX_QUANTITY).contains(&q) && !lines.iter().any(|(i, _)| *i == id) {
            lines.push((id, q));
        }
        if lines.len() == MAX_LINES {
            break;
        }
    }
    lines
}

fn cart_cookie(headers: &HeaderMap, lines: &[(i64, u32)]) -> Option<HeaderValue> {
    let value = lines
        .iter()
        .map(|(id, q)| format!("{id}-{q}"))
        .collect::<Vec<_>>()
        .join(".");
    let max_age = if lines.is_empty() { 0 } else { CUSTOMER_TTL_S };
    session::set_cookie(headers, CART_COOKIE, &value, "/", max_age)
}

async fn ordering_off(app: &App, w: &Want) -> Response {
    message(
        app,
        w,
        StatusCode::SERVICE_UNAVAILABLE,
        "Ordering is off",
        "Orders cannot be placed on this instance.",
    )
    .await
}

async fn form_expired(app: &App, w: &Want) -> Response {
    message(
        app,
        w,
        StatusCode::FORBIDDEN,
        "The form has expired",
        "Go back, reload the page and send it again.",
    )
    .await
}

async fn message(app: &App, w: &Want, status: StatusCode, title: &str, text: &str) -> Response {
    let cats = nav(app).await;
    page(
        status,
        tenfold_pages::message(&w.chrome(cats), title, text),
        &[],
    )
}

/// Ordering needs the customer-token key (an API key) and the order shards.
pub(crate) fn ordering(app: &App) -> Option<&crate::customer::TokenKey> {
    app.inner
        .token_key
        .as_ref()
        .filter(|_| app.inner.orders.get().is_some())
}

/// True when the browser says the form came from another site.
fn cross_site(headers: &HeaderMap) -> bool {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = h("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    match (h("origin"), h("host")) {
        (Some(origin), Some(host)) => origin == "null" || origin.split("://").nth(1) != Some(host),
        _ => false,
    }
}

/// The add-to-cart form.
#[derive(Debug, Deserialize)]
pub(crate) struct Add {
    product_id: i64,
    #[serde(default = "one")]
    quantity: u32,
}

fn one() -> u32 {
    1
}

/// `POST /cart`: adds to the cart.
pub(crate) async fn add(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<Add>, FormRejection>,
) -> Response {
    let w = want(&app, &headers);
    if ordering(&app).is_none() {
        return ordering_off(&app, &w).await;
    }
    if cross_site(&headers) {
        return message(
            &app,
            &w,
            StatusCode::FORBIDDEN,
            "Not from this site",
            "That form was sent from another site.",
        )
        .await;
    }
    let Ok(Form(f)) = form else {
        return message(
            &app,
            &w,
            StatusCode::BAD_REQUEST,
            "That form is not valid",
            "Choose a quantity between 1 and 1000.",
        )
        .await;
    };
    if f.product_id <= 0 || !(1..=MAX_QUANTITY).contains(&f.quantity) {
        return message(
            &app,
            &w,
            StatusCode::UNPROCESSABLE_ENTITY,
            "That form is not valid",
            "Choose a quantity between 1 and 1000.",
        )
        .await;
    }
    let mut lines = read_cart(&headers);
    let full = lines.len() >= MAX_LINES;
    match lines.iter_mut().find(|(id, _)| *id == f.product_id) {
        Some((_, q)) => *q = (*q + f.quantity).min(MAX_QUANTITY),
        None if !full => lines.push((f.product_id, f.quantity)),
        None => {
            return message(
                &app,
                &w,
                StatusCode::UNPROCESSABLE_ENTITY,
                "Your cart is full",
                "A cart holds 50 products at most.",
            )
            .await
        }
    }
    let cookie = cart_cookie(&headers, &lines);
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let count: u32 = lines.iter().map(|(_, q)| q).sum();
        let mut resp =
            axum::Json(serde_json::json!({ "count": count, "lines": lines.len() })).into_response();
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(c) = cookie {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        return resp;
    }
    see_other("/cart", &[cookie])
}

async fn load_lines(app: &App, cart: &[(i64, u32)]) -> Result<Vec<CartLine>, ApiError> {
    let mut out = Vec::with_capacity(cart.len());
    for &(id, quantity) in cart {
        let Ok(pid) = ProductId::new(id) else {
            continue;
        };
        let value = crate::routes::products::product_value(app, pid, None).await?;
        let Some((_, body)) = crate::cached::present(value) else {
            continue; // deleted since: dropped from the cart
        };
        let p: Product =
            serde_json::from_slice(&body).map_err(|e| ApiError::Internal(Box::new(e)))?;
        out.push(CartLine {
            product_id: p.id,
            name: p.name,
            price: p.price,
            quantity,
            stock: p.stock,
        });
    }
    Ok(out)
}

/// `?placed=` etc. on the cart page.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CartNotice {
    error: Option<String>,
}

/// `GET /cart`.
pub(crate) async fn cart(
    State(app): State<App>,
    headers: HeaderMap,
    q: Result<Query<CartNotice>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let w = want(&app, &headers);
    let (Some(_), Some(key)) = (ordering(&app), &app.inner.session_key) else {
        return ordering_off(&app, &w).await;
    };
    let cart = read_cart(&headers);
    let lines = match load_lines(&app, &cart).await {
        Ok(l) => l,
        Err(e) => return error_page(&w, e),
    };
    let cats = nav(&app).await;
    let (csrf_cookie, set) = session::csrf_cookie(&headers);
    let notice = q.ok().and_then(|q| q.0.error).map(|e| match e.as_str() {
        "stock" => {
            "There is not enough stock for every line any more: the cart shows what is left."
        }
        _ => "The order could not be placed. Try again in a moment.",
    });
    page(
        StatusCode::OK,
        shop::cart(
            &w.chrome(cats),
            &key.csrf_field(&csrf_cookie),
            &lines,
            notice,
        ),
        &[set],
    )
}

/// A cart form: its CSRF field, a product and a quantity (0 removes the line).
#[derive(Debug, Deserialize)]
pub(crate) struct Update {
    csrf: String,
    product_id: i64,
    quantity: u32,
}

fn csrf_ok(app: &App, headers: &HeaderMap, field: &str) -> bool {
    app.inner
        .session_key
        .as_ref()
        .is_some_and(|k| k.form_ok(headers, field))
}

/// A posted cart form, if it parsed and its CSRF field (`csrf`) matches; else the page that says what is
/// wrong (`hint`: how to send a valid one).
async fn posted<T>(
    app: &App,
    w: &Want,
    headers: &HeaderMap,
    form: Result<Form<T>, FormRejection>,
    csrf: impl Fn(&T) -> &str,
    hint: &str,
) -> Result<T, Response> {
    let Ok(Form(f)) = form else {
        let r = message(
            app,
            w,
            StatusCode::BAD_REQUEST,
            "That form is not valid",
            hint,
        );
        return Err(r.await);
    };
    if !csrf_ok(app, headers, csrf(&f)) {
        return Err(form_expired(app, w).await);
    }
    Ok(f)
}

/// `POST /cart/update`.
pub(crate) async fn update(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<Update>, FormRejection>,
) -> Response {
    let w = want(&app, &headers);
    let hint = "Quantities are whole numbers from 0 to 1000.";
    let f = match posted(&app, &w, &headers, form, |f: &Update| &f.csrf, hint).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let mut lines = read_cart(&headers);
    let q = f.quantity.min(MAX_QUANTITY);
    if q == 0 {
        lines.retain(|(id, _)| *id != f.product_id);
    } else if let Some(l) = lines.iter_mut().find(|(id, _)| *id == f.product_id) {
        l.1 = q;
    }
    see_other("/cart", &[cart_cookie(&headers, &lines)])
}

/// The checkout form.
#[derive(Debug, Deserialize)]
pub(crate) struct Checkout {
    csrf: String,
}

/// `POST /checkout`: places the cart as an order for this browser's customer (made on the first
/// order), empties the cart, and shows the order.
pub(crate) async fn checkout(
    State(app): State<App>,
    headers: HeaderMap,
    form: Result<Form<Checkout>, FormRejection>,
) -> Response {
    let w = want(&app, &headers);
    let Some(tokens) = ordering(&app) else {
        return ordering_off(&app, &w).await;
    };
    let hint = "Go back to the cart and try again.";
    if let Err(r) = posted(&app, &w, &headers, form, |f: &Checkout| &f.csrf, hint).await {
        return r;
    }
    let cart = read_cart(&headers);
    if cart.is_empty() {
        return see_other("/cart", &[]);
    }
    let now = crate::customer::now_ms() / 1000;
    let (customer, new_cookie) =
        match session::cookie(&headers, CUSTOMER_COOKIE).and_then(|t| tokens.verify(t, now).ok()) {
            Some((id, _)) => (id, None),
            None => {
                // A new customer: a random positive id (63 bits; a collision is negligible).
                let id = (rand::random::<u64>() >> 1).max(1) as i64;
                let token = tokens.issue(id, now + CUSTOMER_TTL_S);
                (
                    id,
                    session::set_cookie(&headers, CUSTOMER_COOKIE, &token, "/", CUSTOMER_TTL_S),
                )
            }
        };
    let items: Vec<StockItem> = cart
        .iter()
        .filter_map(|&(id, quantity)| {
            Some(StockItem {
                product_id: ProductId::new(id).ok()?,
                quantity,
            })
        })
        .collect();
    match crate::routes::orders::place(&app, customer, &items).await {
        Ok(order) => see_other(
            &format!("/orders/{}?placed=1", order.id.get()),
            &[new_cookie, cart_cookie(&headers, &[])],
        ),
        Err(ApiError::Conflict(_)) => see_other("/cart?error=stock", &[new_cookie]),
        Err(ApiError::Validation(_)) => {
            // A product in the cart no longer exists: drop the lines that do not load.
            let known: Vec<(i64, u32)> = match load_lines(&app, &cart).await {
                Ok(lines) => lines.iter().map(|l| (l.product_id, l.quantity)).collect(),
                Err(_) => cart.clone(),
            };
            see_other(
                "/cart?error=gone",
                &[new_cookie, cart_cookie(&headers, &known)],
            )
        }
        Err(e) => error_page(&w, e),
    }
}

/// `?placed=1` after checkout.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Placed {
    placed: Option<String>,
}

/// `GET /orders/{id}`: an order of this browser's customer.
pub(crate) async fn order(
    State(app): State<App>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    q: Result<Query<Placed>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let w = want(&app, &headers);
    let not_found = || async {
        message(
            &app,
            &w,
            StatusCode::NOT_FOUND,
            "Not found",
            "There is no such order of yours.",
        )
        .await
    };
    let Some(tokens) = ordering(&app) else {
        return not_found().await;
    };
    let now = crate::customer::now_ms() / 1000;
    let Some((customer, _)) =
        session::cookie(&headers, CUSTOMER_COOKIE).and_then(|t| tokens.verify(t, now).ok())
    else {
        return not_found().await;
    };
    let Ok(id) = raw.parse::<i64>() else {
        return not_found().await;
    };
    let order = match crate::routes::orders::find(&app, id).await {
        Ok(Some(o)) if o.customer_id == customer => o,
        Ok(_) => return not_found().await,
        Err(e) => return error_page(&w, e),
    };
    let cats = nav(&app).await;
    let money = |amount_minor: i64| Money {
        amount_minor,
        currency: order.currency.clone(),
    };
    let lines: Vec<OrderLine> = order
        .lines
        .iter()
        .map(|l| OrderLine {
            product_id: l.product_id,
            name: l.name.clone(),
            price: money(l.price_minor),
            quantity: l.quantity,
        })
        .collect();
    let placed = q.ok().and_then(|q| q.0.placed).is_some();
    page(
        StatusCode::OK,
        shop::order(
            &w.chrome(cats),
            id,
            &lines,
            &money(order.total_minor),
            &order.created_at,
            placed,
        ),
        &[],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cart_cookie_is_read_back_and_bad_parts_are_dropped() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=b; tf_cart=3-3.4-1.x-2.5-0.6-1001.3-9.7-2"),
        );
        assert_eq!(read_cart(&h), vec![(3, 3), (4, 1), (7, 2)]);
        let set = cart_cookie(&h, &read_cart(&h)).unwrap();
        assert!(set.to_str().unwrap().starts_with("tf_cart=3-3.4-1.7-2;"));
    }
}
