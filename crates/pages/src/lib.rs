//! Role: the storefront's HTML. Pages are maud templates compiled into the binary (every interpolation
//! is escaped unless marked otherwise), rendered from domain values the app has already loaded; this
//! crate does no I/O. Each page is complete and usable without JavaScript: navigation is links, filters
//! and search are GET forms, and the one script ([`assets`]: `enhance.js`) only improves what already
//! works (live suggestions over the same search, the next page's items appended from the same link).
//!
//! Invariants: no page refers to another host (assets are served by the app under `/assets/`, with
//! fingerprinted names); every form field has a label and every image an `alt`; images carry their
//! width and height so nothing moves as they load.
//!
//! Entry points: [`Chrome`], [`home`], [`products`], [`product`], [`message`], [`assets::get`],
//! [`assets::url`].

pub mod admin;
pub mod assets;
pub mod shop;

use maud::{html, Markup, DOCTYPE};
use tenfold_catalog::{Category, Money, Product};

/// What every page shares: whether to load the enhancement script, whether the client asked for less
/// data, and which degradable features are on.
#[derive(Debug, Clone)]
pub struct Chrome {
    /// Load `enhance.js` (off when the enhancements flag is off).
    pub enhance: bool,
    /// The client sent `Save-Data: on`: smaller images, no prefetching.
    pub save_data: bool,
    /// Text search is on (else the search form is not offered).
    pub search: bool,
    /// Categories for the navigation.
    pub categories: Vec<Category>,
    /// Ordering works here (a cart link, add-to-cart forms).
    pub ordering: bool,
}

/// One image of a product, with the renditions a browser may choose from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Alternative text.
    pub alt: String,
    /// Intrinsic width and height of the largest rendition (for the aspect ratio).
    pub width: u32,
    /// See `width`.
    pub height: u32,
    /// `(url, width)` of each rendition in one format, smallest first.
    pub jpeg: Vec<(String, u32)>,
    /// The same in WebP.
    pub webp: Vec<(String, u32)>,
}

/// A price for people: `12.50 EUR`, `1200 JPY`.
pub fn price(m: &Money) -> String {
    let digits = tenfold_catalog::Currency::parse(&m.currency)
        .map(|c| c.minor_digits())
        .unwrap_or(2) as u32;
    if digits == 0 {
        return format!("{} {}", m.amount_minor, m.currency);
    }
    let unit = 10i64.pow(digits);
    format!(
        "{}.{:0width$} {}",
        m.amount_minor / unit,
        m.amount_minor % unit,
        m.currency,
        width = digits as usize
    )
}

pub(crate) fn layout(c: &Chrome, title: &str, search_value: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" data-save-data=(if c.save_data { "1" } else { "0" }) {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · tenfold" }
                // No favicon request (one less round trip on a first visit).
                link rel="icon" href="data:,";
                link rel="stylesheet" href=(assets::url("app.css"));

                @if c.enhance {
                    script src=(assets::url("enhance.js")) defer {}
                }
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.site {
                    a.brand href="/" { "tenfold" }
                    @if c.search {
                        form.search action="/search" method="get" role="search" {
                            label.visually-hidden for="q" { "Search products" }
                            input #q type="search" name="q" value=(search_value) maxlength="100"
                                placeholder="Search products" data-suggest;
                            button type="submit" { "Search" }
                        }
                    }
                    nav aria-label="Categories" {
                        ul {
                            li { a href="/products" { "All products" } }
                            @if c.ordering { li { a href="/cart" { "Cart" } } }
                            @for cat in &c.categories {
                                li { a href={ "/products?category=" (cat.slug) } { (cat.name) } }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (body) }
                footer.site { "tenfold — a product catalog that works without JavaScript and faster with it." }
            }
        }
    }
}

fn card(p: &Product) -> Markup {
    html! {
        li.card data-id=(p.id) {
            a.name href={ "/products/" (p.id) } { (p.name) }
            span.price { (price(&p.price)) }
            span.stock { @if p.stock > 0 { (p.stock) " in stock" } @else { "Out of stock" } }
        }
    }
}

/// `/`: categories and featured products.
pub fn home(c: &Chrome, featured: &[Product]) -> Markup {
    layout(
        c,
        "Home",
        "",
        html! {
            h1 { "Product catalog" }
            h2 { "Categories" }
            ul.categories {
                @for cat in &c.categories {
                    li { a href={ "/products?category=" (cat.slug) } { (cat.name) " (" (cat.product_count) ")" } }
                }
            }
            h2 { "Featured" }
            ul.grid data-items { @for p in featured { (card(p)) } }
            p { a.button href="/products" { "Browse all products" } }
        },
    )
}

/// What a list page shows.
#[derive(Debug, Clone, Default)]
pub struct ListView<'a> {
    /// The page heading.
    pub heading: &'a str,
    /// The category filter in force.
    pub category: Option<&'a str>,
    /// The search text in force (search pages).
    pub q: Option<&'a str>,
    /// The action of the filter form (`/products` or `/search`).
    pub action: &'a str,
    /// The items.
    pub items: &'a [Product],
    /// The order (`id`, `price`, `-price`).
    pub sort: &'a str,
    /// The URL of the next page, if any.
    pub next: Option<String>,
    /// A message above the list (a feature turned off, nothing found).
    pub notice: Option<&'a str>,
}

/// `/products` and `/search`: a filter form (plain GET), the items, and a link to the next page.
pub fn products(c: &Chrome, v: &ListView<'_>) -> Markup {
    layout(
        c,
        v.heading,
        v.q.unwrap_or(""),
        html! {
            h1 { (v.heading) }
            form.filters action=(v.action) method="get" {
                @if let Some(q) = v.q {
                    input type="hidden" name="q" value=(q);
                }
                label for="category" {
                    "Category"
                    select #category name="category" {
                        option value="" selected[v.category.is_none()] { "All" }
                        @for cat in &c.categories {
                            option value=(cat.slug) selected[v.category == Some(cat.slug.as_str())] { (cat.name) }
                        }
                    }
                }
                label for="sort" {
                    "Sort by"
                    select #sort name="sort" {
                        option value="id" selected[v.sort == "id" || v.sort.is_empty()] { "Catalog order" }
                        option value="price" selected[v.sort == "price"] { "Price, low to high" }
                        option value="-price" selected[v.sort == "-price"] { "Price, high to low" }
                    }
                }
                button type="submit" { "Apply" }
            }
            @if let Some(n) = v.notice {
                p.notice role="status" { (n) }
            }
            @if v.items.is_empty() && v.notice.is_none() {
                p { "No products match." }
            }
            ul.grid data-items { @for p in v.items { (card(p)) } }
            @if let Some(next) = &v.next {
                nav.pager aria-label="Pages" {
                    a.button rel="next" href=(next) { "Next page" }
                }
            }
        },
    )
}

fn srcset(list: &[(String, u32)]) -> String {
    list.iter()
        .map(|(u, w)| format!("{u} {w}w"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn picture(img: &Image, c: &Chrome, eager: bool) -> Markup {
    // Save-Data: only the smallest rendition is offered.
    let (jpeg, webp) = if c.save_data {
        (
            &img.jpeg[..img.jpeg.len().min(1)],
            &img.webp[..img.webp.len().min(1)],
        )
    } else {
        (&img.jpeg[..], &img.webp[..])
    };
    let fallback = jpeg.last().map(|(u, _)| u.as_str()).unwrap_or("");
    let sizes = "(max-width: 40rem) 100vw, 36rem";
    html! {
        picture {
            // Browsers that report prefers-reduced-data pick the smallest rendition on their own.
            @if !c.save_data {
                @if let Some((small, _)) = webp.first().or(jpeg.first()) {
                    source media="(prefers-reduced-data: reduce)" srcset=(small);
                }
            }
            @if !webp.is_empty() {
                source type="image/webp" srcset=(srcset(webp)) sizes=(sizes);
            }
            img src=(fallback) srcset=(srcset(jpeg)) sizes=(sizes) alt=(img.alt)
                width=(img.width) height=(img.height)
                loading=(if eager { "eager" } else { "lazy" }) decoding="async";
        }
    }
}

/// `/products/{id}`: the product, its images and facts.
pub fn product(c: &Chrome, p: &Product, images: &[Image]) -> Markup {
    let category = c
        .categories
        .iter()
        .find(|cat| cat.slug == p.category)
        .map(|cat| cat.name.as_str())
        .unwrap_or(p.category.as_str());
    layout(
        c,
        &p.name,
        "",
        html! {
            nav aria-label="Breadcrumb" {
                a href="/" { "Home" } " › "
                a href={ "/products?category=" (p.category) } { (category) }
            }
            div.product {
                div {
                    @if let Some((first, rest)) = images.split_first() {
                        (picture(first, c, true))
                        @if !rest.is_empty() {
                            ul.thumbs { @for img in rest { li { (picture(img, c, false)) } } }
                        }
                    } @else {
                        div.placeholder role="img" aria-label={ "No image of " (p.name) " yet" } { "No image yet" }
                    }
                }
                div {
                    h1 { (p.name) }
                    p.price { (price(&p.price)) }
                    p { (p.description) }
                    @if c.ordering && p.stock > 0 {
                        form.add action="/cart" method="post" data-cart {
                            input type="hidden" name="product_id" value=(p.id);
                            label for="quantity" { "Quantity" }
                            " "
                            input #quantity type="number" name="quantity" value="1" min="1" max=(p.stock.min(1000)) size="4";
                            " "
                            button type="submit" { "Add to cart" }
                            " "
                            span.added role="status" {}
                        }
                    }
                    dl.facts {
                        dt { "SKU" } dd { (p.sku) }
                        dt { "Availability" } dd { @if p.stock > 0 { (p.stock) " in stock" } @else { "Out of stock" } }
                        dt { "Category" } dd { a href={ "/products?category=" (p.category) } { (category) } }
                    }
                }
            }
        },
    )
}

/// A page that only says something: not found, temporarily unavailable.
pub fn message(c: &Chrome, title: &str, text: &str) -> Markup {
    layout(
        c,
        title,
        "",
        html! {
            h1 { (title) }
            p { (text) }
            p { a href="/" { "Back to the catalog" } }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chrome() -> Chrome {
        Chrome {
            enhance: true,
            save_data: false,
            search: true,
            ordering: true,
            categories: vec![Category {
                slug: "lighting".into(),
                name: "Lighting & <Lamps>".into(),
                product_count: 3,
            }],
        }
    }

    fn lamp(id: i64) -> Product {
        Product {
            id,
            sku: format!("L-{id}"),
            name: format!("Lamp <b>{id}</b>"),
            description: "A \"bright\" lamp & more".into(),
            price: Money {
                amount_minor: 1250,
                currency: "EUR".into(),
            },
            stock: 4,
            category: "lighting".into(),
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
            version: 1,
        }
    }

    #[test]
    fn prices_use_the_currency_minor_unit() {
        let m = |a, c: &str| Money {
            amount_minor: a,
            currency: c.into(),
        };
        assert_eq!(price(&m(1250, "EUR")), "12.50 EUR");
        assert_eq!(price(&m(5, "EUR")), "0.05 EUR");
        assert_eq!(price(&m(1200, "JPY")), "1200 JPY");
        assert_eq!(price(&m(1234, "BHD")), "1.234 BHD");
    }

    #[test]
    fn everything_from_data_is_escaped() {
        let html = product(&chrome(), &lamp(7), &[]).into_string();
        assert!(!html.contains("<b>7</b>"), "{html}");
        assert!(html.contains("Lamp &lt;b&gt;7&lt;/b&gt;"));
        assert!(html.contains("Lighting &amp; &lt;Lamps&gt;"));
        assert!(html.contains("A &quot;bright&quot; lamp &amp; more"));
    }

    #[test]
    fn the_script_is_left_out_when_enhancements_are_off() {
        let mut c = chrome();
        assert!(home(&c, &[]).into_string().contains("/assets/enhance."));
        c.enhance = false;
        let html = home(&c, &[]).into_string();
        assert!(!html.contains("<script"), "{html}");
        c.search = false;
        assert!(!home(&c, &[]).into_string().contains("action=\"/search\""));
    }

    #[test]
    fn save_data_offers_only_the_smallest_rendition() {
        let img = Image {
            alt: "A lamp".into(),
            width: 1200,
            height: 900,
            jpeg: vec![("/s.jpg".into(), 320), ("/l.jpg".into(), 1200)],
            webp: vec![("/s.webp".into(), 320), ("/l.webp".into(), 1200)],
        };
        let full = product(&chrome(), &lamp(1), std::slice::from_ref(&img)).into_string();
        assert!(full.contains("/l.webp 1200w"));
        assert!(
            full.contains("<source media=\"(prefers-reduced-data: reduce)\" srcset=\"/s.webp\">"),
            "{full}"
        );
        assert!(full.contains("width=\"1200\" height=\"900\""));
        let mut c = chrome();
        c.save_data = true;
        let small = product(&c, &lamp(1), &[img]).into_string();
        assert!(
            !small.contains("/l.webp") && !small.contains("/l.jpg"),
            "{small}"
        );
        assert!(small.contains("/s.webp 320w"));
    }
}
