//! The admin pages: sign-in with the API key, the product list, create and edit forms, job states. Every
//! form carries a CSRF token (a hidden field) and works without JavaScript.

use maud::{html, Markup};
use tenfold_catalog::Product;

use crate::{layout, price, Chrome};

/// The values of a product form as typed (shown again when they are refused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductForm {
    /// SKU.
    pub sku: String,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Price in major units as typed (`12.50`).
    pub price: String,
    /// ISO 4217 code.
    pub currency: String,
    /// Units in stock.
    pub stock: String,
    /// Category slug.
    pub category: String,
}

impl ProductForm {
    /// A form filled with a product's values.
    pub fn of(p: &Product) -> ProductForm {
        let shown = price(&p.price);
        ProductForm {
            sku: p.sku.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            price: shown
                .rsplit_once(' ')
                .map_or(shown.clone(), |(n, _)| n.to_owned()),
            currency: p.price.currency.clone(),
            stock: p.stock.to_string(),
            category: p.category.clone(),
        }
    }
}

/// A refused field and why.
pub type FieldErrors = [(String, String)];

fn errors_for<'a>(errors: &'a FieldErrors, field: &str) -> Vec<&'a str> {
    errors
        .iter()
        .filter(|(f, _)| f == field)
        .map(|(_, m)| m.as_str())
        .collect()
}

fn admin_nav(csrf: &str) -> Markup {
    html! {
        nav.admin aria-label="Admin" {
            a href="/admin" { "Products" } " · "
            a href="/admin/products/new" { "New product" } " · "
            a href="/admin/jobs" { "Jobs" } " · "
            form.inline action="/admin/sign-out" method="post" {
                input type="hidden" name="csrf" value=(csrf);
                button type="submit" { "Sign out" }
            }
        }
    }
}

/// `/admin/sign-in`.
pub fn sign_in(c: &Chrome, csrf: &str, error: Option<&str>) -> Markup {
    layout(
        c,
        "Sign in",
        "",
        html! {
            h1 { "Sign in to the admin pages" }
            @if let Some(e) = error { p.notice role="alert" { (e) } }
            form.stack action="/admin/sign-in" method="post" {
                input type="hidden" name="csrf" value=(csrf);
                label for="api_key" { "API key" }
                input #api_key type="password" name="api_key" required autocomplete="current-password";
                button type="submit" { "Sign in" }
            }
        },
    )
}

/// `/admin`: products with links to edit them.
pub fn products(c: &Chrome, csrf: &str, items: &[Product], next: Option<&str>) -> Markup {
    layout(
        c,
        "Admin",
        "",
        html! {
            (admin_nav(csrf))
            h1 { "Products" }
            table.admin {
                thead { tr { th scope="col" { "Id" } th scope="col" { "SKU" } th scope="col" { "Name" } th scope="col" { "Price" } th scope="col" { "Stock" } } }
                tbody {
                    @for p in items {
                        tr {
                            td { (p.id) }
                            td { (p.sku) }
                            td { a href={ "/admin/products/" (p.id) } { (p.name) } }
                            td { (price(&p.price)) }
                            td { (p.stock) }
                        }
                    }
                }
            }
            @if let Some(n) = next {
                p { a.button rel="next" href=(n) { "Next page" } }
            }
        },
    )
}

fn field(
    id: &str,
    label: &str,
    value: &str,
    errors: &FieldErrors,
    input: impl FnOnce(&str, &str) -> Markup,
) -> Markup {
    let errs = errors_for(errors, id);
    let err_id = format!("{id}-error");
    html! {
        div.field {
            label for=(id) { (label) }
            (input(id, value))
            @if !errs.is_empty() {
                p.error id=(err_id) { (errs.join("; ")) }
            }
        }
    }
}

/// Where a product form goes and what it says besides its values.
#[derive(Debug, Clone, Copy)]
pub struct FormPage<'a> {
    /// The CSRF field.
    pub csrf: &'a str,
    /// The heading.
    pub title: &'a str,
    /// Where it posts.
    pub action: &'a str,
    /// The version shown, when editing (sent back as the condition of the write).
    pub version: Option<i64>,
    /// Refused fields.
    pub errors: &'a FieldErrors,
    /// A message above the form.
    pub notice: Option<&'a str>,
}

/// The create or edit form of a product (with an upload form when editing).
pub fn product_form(c: &Chrome, f: &FormPage<'_>, v: &ProductForm) -> Markup {
    let FormPage {
        csrf,
        title,
        action,
        version,
        errors,
        notice,
    } = *f;
    let text = |name: &'static str, required: bool| {
        move |id: &str, value: &str| {
            html! { input id=(id) name=(name) type="text" value=(value) required[required]; }
        }
    };
    layout(
        c,
        title,
        "",
        html! {
            (admin_nav(csrf))
            h1 { (title) }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            @if !errors.is_empty() {
                p.notice role="alert" { "Some fields need another look." }
            }
            form.stack action=(action) method="post" {
                input type="hidden" name="csrf" value=(csrf);
                @if let Some(ver) = version { input type="hidden" name="version" value=(ver); }
                (field("sku", "SKU", &v.sku, errors, text("sku", true)))
                (field("name", "Name", &v.name, errors, text("name", true)))
                (field("description", "Description", &v.description, errors, |id, value| html! {
                    textarea id=(id) name="description" rows="4" { (value) }
                }))
                (field("price", "Price", &v.price, errors, |id, value| html! {
                    input id=(id) name="price" type="text" inputmode="decimal" value=(value) required;
                }))
                (field("currency", "Currency (ISO 4217)", &v.currency, errors, text("currency", true)))
                (field("stock", "Stock", &v.stock, errors, |id, value| html! {
                    input id=(id) name="stock" type="number" min="0" value=(value) required;
                }))
                (field("category", "Category", &v.category, errors, |id, value| html! {
                    select id=(id) name="category" {
                        @for cat in &c.categories {
                            option value=(cat.slug) selected[cat.slug == value] { (cat.name) }
                        }
                    }
                }))
                button type="submit" { "Save" }
            }
            @if version.is_some() {
                h2 { "Pictures and videos" }
                form.stack action={ (action) "/media" } method="post" enctype="multipart/form-data" data-upload {
                    input type="hidden" name="csrf" value=(csrf);
                    label for="file" { "Image (JPEG, PNG, WebP, GIF) or video (MP4, WebM)" }
                    input #file type="file" name="file" required accept="image/jpeg,image/png,image/webp,image/gif,video/mp4,video/webm";
                    progress value="0" max="100" hidden aria-label="Upload progress" {}
                    button type="submit" { "Upload" }
                }
            }
        },
    )
}

/// One queue's counts on the jobs page.
#[derive(Debug, Clone)]
pub struct QueueRow {
    /// The queue.
    pub queue: String,
    /// Queued and due.
    pub ready: i64,
    /// Queued for later.
    pub scheduled: i64,
    /// Running.
    pub running: i64,
    /// Done (until pruned).
    pub done: i64,
    /// Failed for good.
    pub failed: i64,
    /// Dead-lettered.
    pub dead: i64,
}

/// A job on the jobs page.
#[derive(Debug, Clone)]
pub struct JobRow {
    /// Its id.
    pub id: i64,
    /// Queue and kind (`media/image`).
    pub what: String,
    /// `queued`, `running`, `done`...
    pub state: String,
    /// 0-100.
    pub progress: u8,
    /// Attempts so far, of the most.
    pub attempts: String,
    /// The last error, if any (shortened).
    pub last_error: String,
}

/// `/admin/jobs`: the queues' states and the latest jobs.
pub fn jobs(c: &Chrome, csrf: &str, rows: &[QueueRow], latest: &[JobRow]) -> Markup {
    layout(
        c,
        "Jobs",
        "",
        html! {
            (admin_nav(csrf))
            h1 { "Jobs" }
            @if rows.is_empty() { p { "No jobs yet." } }
            @else {
                table.admin {
                    thead { tr {
                        th scope="col" { "Queue" } th scope="col" { "Ready" } th scope="col" { "Scheduled" }
                        th scope="col" { "Running" } th scope="col" { "Done" } th scope="col" { "Failed" } th scope="col" { "Dead" }
                    } }
                    tbody {
                        @for r in rows {
                            tr { td { (r.queue) } td { (r.ready) } td { (r.scheduled) } td { (r.running) } td { (r.done) } td { (r.failed) } td { (r.dead) } }
                        }
                    }
                }
            }
            @if !latest.is_empty() {
                h2 { "Latest jobs" }
                table.admin {
                    thead { tr {
                        th scope="col" { "Id" } th scope="col" { "Job" } th scope="col" { "State" }
                        th scope="col" { "Progress" } th scope="col" { "Attempts" } th scope="col" { "Last error" }
                    } }
                    tbody {
                        @for j in latest {
                            tr data-job=(j.id) {
                                td { (j.id) } td { (j.what) } td { (j.state) } td { (j.progress) "%" }
                                td { (j.attempts) } td { (j.last_error) }
                            }
                        }
                    }
                }
            }
        },
    )
}
