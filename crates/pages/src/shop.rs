//! The cart, checkout and order pages: plain forms (POST, then a redirect), a CSRF field on each.

use maud::{html, Markup};
use tenfold_catalog::Money;

use crate::{layout, price, Chrome};

/// A line of the cart, with what it costs now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CartLine {
    /// The product.
    pub product_id: i64,
    /// Its name now.
    pub name: String,
    /// Its unit price now.
    pub price: Money,
    /// How many.
    pub quantity: u32,
    /// Units in stock now.
    pub stock: i64,
}

/// `/cart`: the lines, a form per line to change its quantity, the totals and the checkout button.
pub fn cart(c: &Chrome, csrf: &str, lines: &[CartLine], notice: Option<&str>) -> Markup {
    let mut totals: Vec<Money> = Vec::new();
    for l in lines {
        let add = l.price.amount_minor.saturating_mul(i64::from(l.quantity));
        match totals.iter_mut().find(|t| t.currency == l.price.currency) {
            Some(t) => t.amount_minor = t.amount_minor.saturating_add(add),
            None => totals.push(Money {
                amount_minor: add,
                currency: l.price.currency.clone(),
            }),
        }
    }
    layout(
        c,
        "Cart",
        "",
        html! {
            h1 { "Your cart" }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            @if lines.is_empty() {
                p { "Your cart is empty. " a href="/products" { "Browse the catalog" } "." }
            } @else {
                table.admin {
                    thead { tr { th scope="col" { "Product" } th scope="col" { "Price" } th scope="col" { "Quantity" } } }
                    tbody {
                        @for l in lines {
                            tr {
                                td { a href={ "/products/" (l.product_id) } { (l.name) }
                                     @if l.stock < i64::from(l.quantity) { " " span.error { "(only " (l.stock.max(0)) " left)" } } }
                                td { (price(&l.price)) }
                                td {
                                    form.inline action="/cart/update" method="post" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="product_id" value=(l.product_id);
                                        label.visually-hidden for={ "q" (l.product_id) } { "Quantity of " (l.name) }
                                        input id={ "q" (l.product_id) } type="number" name="quantity" min="0" max="1000" value=(l.quantity) size="4";
                                        " "
                                        button type="submit" { "Update" }
                                    }
                                    " "
                                    form.inline action="/cart/update" method="post" {
                                        input type="hidden" name="csrf" value=(csrf);
                                        input type="hidden" name="product_id" value=(l.product_id);
                                        input type="hidden" name="quantity" value="0";
                                        button type="submit" aria-label={ "Remove " (l.name) } { "Remove" }
                                    }
                                }
                            }
                        }
                    }
                }
                p.price { "Total: " @for (i, t) in totals.iter().enumerate() { @if i > 0 { " + " } (price(t)) } }
                @if totals.len() > 1 {
                    p.notice { "An order is in one currency: remove the lines in the other currencies to check out." }
                } @else {
                    form action="/checkout" method="post" {
                        input type="hidden" name="csrf" value=(csrf);
                        button type="submit" { "Place order" }
                    }
                }
            }
        },
    )
}

/// A placed order's line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLine {
    /// The product.
    pub product_id: i64,
    /// Its name when bought.
    pub name: String,
    /// Its unit price when bought.
    pub price: Money,
    /// How many.
    pub quantity: u32,
}

/// `/orders/{id}`: a placed order.
pub fn order(
    c: &Chrome,
    id: i64,
    lines: &[OrderLine],
    total: &Money,
    placed: &str,
    just_placed: bool,
) -> Markup {
    layout(
        c,
        &format!("Order {id}"),
        "",
        html! {
            h1 { "Order " (id) }
            @if just_placed { p.notice role="status" { "Thank you: your order is placed." } }
            p.muted { "Placed " (placed) }
            table.admin {
                thead { tr { th scope="col" { "Product" } th scope="col" { "Price" } th scope="col" { "Quantity" } } }
                tbody {
                    @for l in lines {
                        tr { td { a href={ "/products/" (l.product_id) } { (l.name) } } td { (price(&l.price)) } td { (l.quantity) } }
                    }
                }
            }
            p.price { "Total: " (price(total)) }
            p { a href="/products" { "Continue shopping" } }
        },
    )
}
