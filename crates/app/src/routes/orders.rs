//! `/api/orders` and `/api/customers/{id}/orders`: orders placed by customers (customer tokens), stock
//! taken atomically on the catalog, the order written to its customer's shard.

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tenfold_catalog::{ProductId, ValidationErrors};
use tenfold_store::shards::{bucket_of, OrderId};
use tenfold_store::{Order, OrderLine, OrderShards, StockItem, StoreError};
use utoipa::{IntoParams, ToSchema};

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ApiJson, ApiQuery, CustomerAuth, CustomerIdPath};
use crate::{cached, App};

/// Most lines in one order.
const MAX_LINES: usize = 50;
/// Most of one product in one line.
const MAX_QUANTITY: u32 = 1000;

/// One line of a new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrderLine {
    /// The product.
    #[schema(minimum = 1)]
    pub product_id: i64,
    /// How many, 1 to 1,000.
    #[schema(minimum = 1, maximum = 1000)]
    pub quantity: u32,
}

/// A new order.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOrder {
    /// The customer placing it (must be the customer of the token).
    pub customer_id: i64,
    /// 1 to 50 lines.
    pub items: Vec<NewOrderLine>,
}

/// An order, with each line as it was when bought.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderView {
    /// Its id.
    pub id: i64,
    /// Who placed it.
    pub customer_id: i64,
    /// The lines: product, and its name and unit price at the time.
    pub items: Vec<OrderLineView>,
    /// The total, in minor units.
    pub total_minor: i64,
    /// ISO 4217 currency of every amount.
    pub currency: String,
    /// When it was placed (RFC 3339).
    pub created_at: String,
}

/// A line of a placed order.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderLineView {
    /// The product.
    pub product_id: i64,
    /// Its name when bought.
    pub name: String,
    /// Its unit price when bought, in minor units.
    pub price_minor: i64,
    /// How many.
    pub quantity: u32,
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        OrderView {
            id: o.id.get(),
            customer_id: o.customer_id,
            items: o
                .lines
                .into_iter()
                .map(|l| OrderLineView {
                    product_id: l.product_id,
                    name: l.name,
                    price_minor: l.price_minor,
                    quantity: l.quantity,
                })
                .collect(),
            total_minor: o.total_minor,
            currency: o.currency,
            created_at: o.created_at,
        }
    }
}

fn shards(app: &App) -> ApiResult<&OrderShards> {
    app.inner
        .orders
        .get()
        .map(|s| s.as_ref())
        .ok_or_else(|| ApiError::Unavailable {
            detail: "orders are not available on this instance (no order shards are open)".into(),
            retry_after: std::time::Duration::from_secs(5),
        })
}

fn own(who: &CustomerAuth, customer_id: i64) -> ApiResult<()> {
    if who.customer_id == customer_id {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this token is customer {}'s; it cannot act for customer {customer_id}",
            who.customer_id
        )))
    }
}

/// Place an order: the stock of every line is taken at once (or none is), then the order is kept with
/// each product's name and price as they are now.
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    request_body(content = NewOrder, content_type = "application/json"),
    security(("customer_token" = [])),
    responses(
        (status = 201, description = "Placed", body = OrderView, headers(("Location" = String, description = "URL of the order"))),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid customer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token is another customer's", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not enough stock", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid lines or unknown products", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn place_order(
    State(app): State<App>,
    who: CustomerAuth,
    ApiJson(new): ApiJson<NewOrder>,
) -> ApiResult<Response> {
    own(&who, new.customer_id)?;
    let mut errs = ValidationErrors::default();
    if new.items.is_empty() || new.items.len() > MAX_LINES {
        let _: Option<()> = errs.check(
            "items",
            Err(format!(
                "an order has 1 to {MAX_LINES} lines (got {})",
                new.items.len()
            )),
        );
    }
    let mut items = Vec::with_capacity(new.items.len());
    for (i, l) in new.items.iter().enumerate() {
        let id = errs.check(
            &format!("items[{i}].product_id"),
            ProductId::new(l.product_id)
                .map_err(|_| "product ids are positive integers".to_owned()),
        );
        let q = errs.check(
            &format!("items[{i}].quantity"),
            if (1..=MAX_QUANTITY).contains(&l.quantity) {
                Ok(l.quantity)
            } else {
                Err(format!("quantity must be between 1 and {MAX_QUANTITY}"))
            },
        );
        if let (Some(product_id), Some(quantity)) = (id, q) {
            items.push(StockItem {
                product_id,
                quantity,
            });
        }
    }
    if !errs.0.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    let order = place(&app, new.customer_id, &items).await?;
    let location = HeaderValue::from_str(&format!("/api/orders/{}", order.id.get())).ok();
    let mut resp = (StatusCode::CREATED, Json(OrderView::from(order))).into_response();
    if let Some(l) = location {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    Ok(resp)
}

/// Places an order of `items` for `customer_id` (the API and the storefront's checkout).
pub(crate) async fn place(app: &App, customer_id: i64, items: &[StockItem]) -> ApiResult<Order> {
    let shards = shards(app)?;
    // Two orders of one millisecond and bucket get the same id only if their salts collide (one in
    // 4,096 across instances; never within one): the loser places its order again under a new id.
    for _ in 0..4 {
        if let Some(order) = place_once(app, shards, customer_id, items).await? {
            return Ok(order);
        }
    }
    Err(ApiError::Conflict(
        "no free order id was found in 4 attempts; place the order again".into(),
    ))
}

/// An order by id, if it exists.
pub(crate) async fn find(app: &App, id: i64) -> ApiResult<Option<Order>> {
    let Some(id) = OrderId::from_i64(id) else {
        return Ok(None);
    };
    Ok(shards(app)?.get(id).await?)
}

/// A per-process sequence for order-id salts, from a random start: ids made by one instance in one
/// millisecond never collide.
fn salt() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: std::sync::OnceLock<AtomicU16> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| AtomicU16::new(rand::random()))
        .fetch_add(1, Ordering::Relaxed)
}

/// Takes the stock and writes the order under a fresh id; `None` when the id collided with another
/// order's (nothing is kept: the caller tries again).
async fn place_once(
    app: &App,
    shards: &OrderShards,
    customer_id: i64,
    items: &[StockItem],
) -> ApiResult<Option<Order>> {
    let store = app.store();
    let id = OrderId::new(bucket_of(customer_id), crate::customer::now_ms(), salt());
    // Takes the stock and records a reservation for this order id, in one transaction.
    let taken = match store.take_stock(id.get(), items).await {
        Err(StoreError::OrderIdTaken(_)) => return Ok(None),
        r => r?,
    };
    let currency = taken
        .first()
        .map(|t| t.currency.clone())
        .unwrap_or_default();
    // From here on the stock is taken: a failure known to have written nothing gives it back; otherwise
    // (and if this process dies first) the reconciler does, unless the order was written.
    let give_back = || async {
        if let Err(e) = store.give_back_stock(id.get()).await {
            tracing::error!(error = %e, order = id.get(), "could not give back the stock of a failed order; the reconciler will");
        }
    };
    if taken.iter().any(|t| t.currency != currency) {
        give_back().await;
        return Err(ApiError::field(
            "items",
            "every product of one order must be priced in the same currency",
        ));
    }
    let order = Order {
        id,
        customer_id,
        total_minor: taken
            .iter()
            .map(|t| t.price_minor * i64::from(t.quantity))
            .sum(),
        lines: taken
            .iter()
            .map(|t| OrderLine {
                product_id: t.product_id,
                name: t.name.clone(),
                price_minor: t.price_minor,
                quantity: t.quantity,
            })
            .collect(),
        currency,
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    };
    // The stock changed: cached products and pages must not show the old stock.
    app.cache()
        .invalidate(tenfold_cache::Change {
            products: taken
                .iter()
                .map(|t| (t.product_id, Some(t.version)))
                .collect(),
            // The pages that show these products' stock: the unfiltered lists and their categories'.
            tags: std::iter::once(cached::list_tag(None))
                .chain(taken.iter().map(|t| cached::list_tag(Some(&t.category))))
                .collect(),
            all_lists: false,
        })
        .await;
    let (written, uncertain) = insert_settled(shards, &order).await;
    match written {
        Ok(()) => {}
        Err(StoreError::OrderIdTaken(_)) => {
            give_back().await;
            return Ok(None);
        }
        Err(e) if uncertain => {
            // A try may have committed with its answer lost: giving the stock back now could leave a
            // written order without its stock. The reservation stays; the reconciler looks for the order on
            // its shard before it gives anything back.
            tracing::error!(error = %e, order = order.id.get(), "could not write an order to its shard, and it may be there; the reconciler will settle its stock");
            return Err(e.into());
        }
        Err(e) => {
            tracing::error!(error = %e, order = order.id.get(), "could not write an order to its shard; giving the stock back");
            give_back().await;
            return Err(e.into());
        }
    }
    if let Err(e) = store.release_reservation(id.get()).await {
        // The order is written; the reconciler will find it and drop the reservation.
        tracing::warn!(error = %e, order = id.get(), "could not release an order's reservation");
    }
    Ok(Some(order))
}

/// Writes an order to its shard. A write whose connection failed while it ran may have committed with its
/// answer lost ([`StoreError::outcome_unknown`]): it is tried again, since writing the same order again is
/// a no-op that tells whether it is there; three tries in all, 20 and 80 ms apart. Failures that wrote
/// nothing (no connection to be had, a fenced bucket) are not tried again. Returns the outcome and whether,
/// on failure, some try may have written the order.
async fn insert_settled(shards: &OrderShards, order: &Order) -> (Result<(), StoreError>, bool) {
    let mut pause = std::time::Duration::from_millis(20);
    let mut tries = 0;
    loop {
        tries += 1;
        match shards.insert(order).await {
            Ok(()) => return (Ok(()), false),
            Err(e) if e.outcome_unknown() && tries < 3 => {
                tracing::warn!(error = %e, order = order.id.get(), "the answer to an order's write was lost; writing it again");
                tokio::time::sleep(pause).await;
                pause *= 4;
            }
            // Only an uncertain try is followed by another, so any try before this one was uncertain.
            Err(e) => {
                let uncertain = tries > 1 || e.outcome_unknown();
                return (Err(e), uncertain);
            }
        }
    }
}

/// Finds reservations older than `older_than_ms` (orders whose placing process may have died): drops those
/// whose order was written, and gives back the stock of the others. Returns (released, given back).
pub async fn reconcile_orders(
    store: &tenfold_store::Store,
    shards: &OrderShards,
    older_than_ms: u64,
) -> Result<(usize, usize), tenfold_store::StoreError> {
    let (mut released, mut given_back) = (0, 0);
    for order_id in store.stale_reservations(older_than_ms).await? {
        let Some(id) = OrderId::from_i64(order_id) else {
            continue;
        };
        if shards.get(id).await?.is_some() {
            store.release_reservation(order_id).await?;
            released += 1;
        } else if !store.give_back_stock(order_id).await?.is_empty() {
            tracing::warn!(
                order = order_id,
                "gave back the stock of an order that was never written"
            );
            given_back += 1;
        }
    }
    Ok((released, given_back))
}

/// An order, read from the shard its id names (only by the customer who placed it).
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    params(("id" = i64, Path, description = "Order id", minimum = 1)),
    security(("customer_token" = [])),
    responses(
        (status = 200, description = "The order", body = OrderView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid customer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another customer's order", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_order(
    State(app): State<App>,
    who: CustomerAuth,
    CustomerIdPath(id): CustomerIdPath,
) -> ApiResult<Json<OrderView>> {
    let not_found = || ApiError::NotFound(format!("there is no order {id}"));
    let id = OrderId::from_i64(id).ok_or_else(not_found)?;
    let order = shards(&app)?.get(id).await?.ok_or_else(not_found)?;
    own(&who, order.customer_id)?;
    Ok(Json(order.into()))
}

/// Query of a customer's orders.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct OrdersQuery {
    /// Only orders older than this order id (the `next_before` of the previous page).
    #[param(nullable = false, minimum = 1)]
    before: Option<i64>,
    /// Page size, 1-100 (default 20).
    #[param(nullable = false, minimum = 1, maximum = 100)]
    limit: Option<u32>,
}

/// A page of a customer's orders, newest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OrderPage {
    /// The orders.
    pub items: Vec<OrderView>,
    /// Pass as `before` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_before: Option<i64>,
}

/// A customer's orders, newest first, from the customer's shard (only by that customer).
#[utoipa::path(
    get,
    path = "/api/customers/{id}/orders",
    tag = "orders",
    params(("id" = i64, Path, description = "Customer id", minimum = 1), OrdersQuery),
    security(("customer_token" = [])),
    responses(
        (status = 200, description = "A page of orders", body = OrderPage),
        (status = 400, description = "Malformed id or query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid customer token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Another customer's orders", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid parameter values", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn customer_orders(
    State(app): State<App>,
    who: CustomerAuth,
    CustomerIdPath(customer): CustomerIdPath,
    ApiQuery(q): ApiQuery<OrdersQuery>,
) -> ApiResult<Json<OrderPage>> {
    own(&who, customer)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        let mut errs = ValidationErrors::default();
        let _: Option<()> = errs.check(
            "limit",
            Err(format!("limit must be between 1 and 100 (got {limit})")),
        );
        return Err(ApiError::Validation(errs));
    }
    let mut orders = shards(&app)?
        .by_customer(customer, q.before, limit + 1)
        .await?;
    let more = orders.len() > limit as usize;
    orders.truncate(limit as usize);
    let next_before = if more {
        orders.last().map(|o| o.id.get())
    } else {
        None
    };
    Ok(Json(OrderPage {
        items: orders.into_iter().map(OrderView::from).collect(),
        next_before,
    }))
}

/// Query of the revenue report.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RevenueQuery {
    /// First day, `YYYY-MM-DD` (UTC), inclusive.
    #[param(nullable = false, pattern = r"^\d{4}-\d{2}-\d{2}$")]
    from: Option<String>,
    /// Last day, `YYYY-MM-DD` (UTC), inclusive.
    #[param(nullable = false, pattern = r"^\d{4}-\d{2}-\d{2}$")]
    to: Option<String>,
}

/// One day's revenue in one currency.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DayRevenueView {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Sum of the orders' totals, in minor units.
    pub total_minor: i64,
    /// How many orders.
    pub orders: i64,
}

/// The revenue report.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RevenueReport {
    /// By day, then currency.
    pub days: Vec<DayRevenueView>,
}

/// Revenue by day over every shard (asked in parallel, merged); API key required.
#[utoipa::path(
    get,
    path = "/api/admin/revenue",
    tag = "orders",
    params(RevenueQuery),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Revenue by day and currency", body = RevenueReport),
        (status = 400, description = "Malformed query", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Wrong API key", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid days", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn revenue(
    State(app): State<App>,
    _w: crate::extract::Writer,
    ApiQuery(q): ApiQuery<RevenueQuery>,
) -> ApiResult<Json<RevenueReport>> {
    let mut errs = ValidationErrors::default();
    for (field, v) in [("from", &q.from), ("to", &q.to)] {
        if let Some(d) = v {
            if chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").is_err() || d.len() != 10 {
                let _: Option<()> = errs.check(
                    field,
                    Err(format!("{field} must be a day such as 2027-01-15")),
                );
            }
        }
    }
    if !errs.0.is_empty() {
        return Err(ApiError::Validation(errs));
    }
    let days = shards(&app)?
        .revenue_by_day(q.from.as_deref(), q.to.as_deref())
        .await?
        .into_iter()
        .map(|d| DayRevenueView {
            day: d.day,
            currency: d.currency,
            total_minor: d.total_minor,
            orders: d.orders,
        })
        .collect();
    Ok(Json(RevenueReport { days }))
}
