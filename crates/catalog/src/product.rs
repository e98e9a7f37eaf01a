use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::validate::{text, ValidationErrors};
use crate::Currency;

/// Largest price accepted, in minor units (one trillion major units of a two-digit currency).
pub const MAX_PRICE_MINOR: i64 = 100_000_000_000_000;
/// Largest stock level accepted.
pub const MAX_STOCK: i64 = 1_000_000_000;

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The validated text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// A product's numeric id (positive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ProductId(i64);

impl ProductId {
    /// Parses an id: positive integers only.
    pub fn new(id: i64) -> Result<Self, String> {
        if id > 0 {
            Ok(ProductId(id))
        } else {
            Err(format!("product ids are positive integers (got {id})"))
        }
    }

    /// The raw id.
    pub fn get(self) -> i64 {
        self.0
    }
}

string_newtype!(
    /// A stock-keeping unit: 1–64 characters of `A–Z a–z 0–9 . _ -`, starting with a letter or digit.
    Sku
);

impl Sku {
    /// Parses a SKU.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok_len = (1..=64).contains(&raw.len());
        let ok_first = raw
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if ok_len && ok_first && ok_chars {
            Ok(Sku(raw.to_owned()))
        } else {
            Err("sku must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit".into())
        }
    }
}

string_newtype!(
    /// A product name: 1–200 characters after trimming, no control characters.
    ProductName
);

impl ProductName {
    /// Parses a product name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        text(raw, "name", 1, 200).map(ProductName)
    }
}

string_newtype!(
    /// A product description: at most 5,000 characters.
    Description
);

impl Description {
    /// Parses a description (may be empty).
    pub fn parse(raw: &str) -> Result<Self, String> {
        text(raw, "description", 0, 5000).map(Description)
    }
}

string_newtype!(
    /// A category's URL-safe identifier: lower-case words of `a–z 0–9` joined by single hyphens, 1–64 characters.
    CategorySlug
);

impl CategorySlug {
    /// Parses a slug.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let ok = (1..=64).contains(&raw.len())
            && raw.split('-').all(|w| {
                !w.is_empty()
                    && w.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            });
        if ok {
            Ok(CategorySlug(raw.to_owned()))
        } else {
            Err("category must be a slug: lower-case letters and digits in words joined by single hyphens, 1-64 characters (e.g. \"garden-tools\")".into())
        }
    }
}

string_newtype!(
    /// A category's display name: 1–100 characters.
    CategoryName
);

impl CategoryName {
    /// Parses a category name.
    pub fn parse(raw: &str) -> Result<Self, String> {
        text(raw, "name", 1, 100).map(CategoryName)
    }
}

/// A price: an amount in the currency's minor unit (cents for EUR) and an ISO 4217 currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    amount_minor: i64,
    currency: Currency,
}

impl Price {
    /// Parses a price from its parts.
    pub fn new(amount_minor: i64, currency: &str) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let amount = errs.check("price.amount_minor", Self::amount(amount_minor));
        let currency = errs.check("price.currency", Currency::parse(currency));
        match (amount, currency) {
            (Some(amount_minor), Some(currency)) => Ok(Price {
                amount_minor,
                currency,
            }),
            _ => Err(errs),
        }
    }

    fn amount(v: i64) -> Result<i64, String> {
        if (0..=MAX_PRICE_MINOR).contains(&v) {
            Ok(v)
        } else {
            Err(format!(
                "amount_minor must be between 0 and {MAX_PRICE_MINOR} (got {v})"
            ))
        }
    }

    /// The amount in minor units.
    pub fn amount_minor(&self) -> i64 {
        self.amount_minor
    }

    /// The currency.
    pub fn currency(&self) -> Currency {
        self.currency
    }
}

/// A stock level: 0 to one billion units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stock(i64);

impl Stock {
    /// Parses a stock level.
    pub fn new(v: i64) -> Result<Self, String> {
        if (0..=MAX_STOCK).contains(&v) {
            Ok(Stock(v))
        } else {
            Err(format!("stock must be between 0 and {MAX_STOCK} (got {v})"))
        }
    }

    /// The number of units.
    pub fn get(self) -> i64 {
        self.0
    }
}

/// An amount of money as clients send and receive it: integer minor units and an ISO 4217 currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// Amount in the currency's minor unit (cents for EUR, yen for JPY).
    #[schema(minimum = 0, maximum = 100_000_000_000_000_i64, example = 1999)]
    pub amount_minor: i64,
    /// ISO 4217 currency code.
    #[schema(example = "EUR", pattern = "^[A-Z]{3}$")]
    pub currency: String,
}

/// A product as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Product {
    /// Server-assigned id.
    pub id: i64,
    /// Unique stock-keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Free-text description.
    pub description: String,
    /// Price.
    pub price: Money,
    /// Units in stock.
    pub stock: i64,
    /// Slug of the product's category.
    pub category: String,
    /// When the product was created.
    pub created_at: DateTime<Utc>,
    /// When the product last changed.
    pub updated_at: DateTime<Utc>,
    /// Incremented by every change; the ETag is derived from it.
    pub version: i64,
}

/// The body of `POST /api/products`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProductInput {
    /// Unique stock-keeping unit.
    #[schema(example = "TF-0001", pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub sku: String,
    /// Display name (1-200 characters, not blank, no control characters).
    #[schema(
        example = "Walnut desk lamp",
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
    /// Description (at most 5,000 characters, no control characters but newline and tab).
    #[serde(default)]
    #[schema(
        max_length = 5000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub description: String,
    /// Price.
    pub price: Money,
    /// Units in stock.
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
    /// Slug of an existing category.
    #[schema(
        example = "lighting",
        pattern = "^[a-z0-9]+(-[a-z0-9]+)*$",
        max_length = 64
    )]
    pub category: String,
}

/// A validated new product.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    /// SKU.
    pub sku: Sku,
    /// Name.
    pub name: ProductName,
    /// Description.
    pub description: Description,
    /// Price.
    pub price: Price,
    /// Stock.
    pub stock: Stock,
    /// Category.
    pub category: CategorySlug,
}

impl NewProduct {
    /// Validates every field, reporting all invalid ones at once.
    pub fn parse(input: &NewProductInput) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let sku = errs.check("sku", Sku::parse(&input.sku));
        let name = errs.check("name", ProductName::parse(&input.name));
        let description = errs.check("description", Description::parse(&input.description));
        let price = match Price::new(input.price.amount_minor, &input.price.currency) {
            Ok(p) => Some(p),
            Err(e) => {
                errs.0.extend(e.0);
                None
            }
        };
        let stock = errs.check("stock", Stock::new(input.stock));
        let category = errs.check("category", CategorySlug::parse(&input.category));
        match (sku, name, description, price, stock, category) {
            (
                Some(sku),
                Some(name),
                Some(description),
                Some(price),
                Some(stock),
                Some(category),
            ) if errs.0.is_empty() => Ok(NewProduct {
                sku,
                name,
                description,
                price,
                stock,
                category,
            }),
            _ => Err(errs),
        }
    }
}

/// The body of `PATCH /api/products/{id}`: only the fields present change; at least one must be.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductPatchInput {
    /// New SKU.
    #[schema(nullable = false, pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    pub sku: Option<String>,
    /// New name.
    #[schema(
        nullable = false,
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub name: Option<String>,
    /// New description.
    #[schema(
        nullable = false,
        max_length = 5000,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub description: Option<String>,
    /// New price (both parts).
    #[schema(nullable = false)]
    pub price: Option<Money>,
    /// New stock level.
    #[schema(nullable = false, minimum = 0, maximum = 1_000_000_000)]
    pub stock: Option<i64>,
    /// New category slug.
    #[schema(
        nullable = false,
        pattern = "^[a-z0-9]+(-[a-z0-9]+)*$",
        max_length = 64
    )]
    pub category: Option<String>,
}

/// A validated partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductPatch {
    /// SKU.
    pub sku: Option<Sku>,
    /// Name.
    pub name: Option<ProductName>,
    /// Description.
    pub description: Option<Description>,
    /// Price.
    pub price: Option<Price>,
    /// Stock.
    pub stock: Option<Stock>,
    /// Category.
    pub category: Option<CategorySlug>,
}

impl ProductPatch {
    /// Validates every present field; an empty patch is an error.
    pub fn parse(input: &ProductPatchInput) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let mut patch = ProductPatch {
            sku: input
                .sku
                .as_deref()
                .and_then(|v| errs.check("sku", Sku::parse(v))),
            name: input
                .name
                .as_deref()
                .and_then(|v| errs.check("name", ProductName::parse(v))),
            description: input
                .description
                .as_deref()
                .and_then(|v| errs.check("description", Description::parse(v))),
            price: None,
            stock: input.stock.and_then(|v| errs.check("stock", Stock::new(v))),
            category: input
                .category
                .as_deref()
                .and_then(|v| errs.check("category", CategorySlug::parse(v))),
        };
        if let Some(p) = &input.price {
            match Price::new(p.amount_minor, &p.currency) {
                Ok(p) => patch.price = Some(p),
                Err(e) => errs.0.extend(e.0),
            }
        }
        if errs.0.is_empty() && patch == ProductPatch::default() {
            errs.push("", "the patch changes nothing: give at least one of sku, name, description, price, stock, category");
        }
        errs.into_result(|| patch)
    }
}

/// A category as the API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Category {
    /// URL-safe identifier.
    pub slug: String,
    /// Display name.
    pub name: String,
    /// Number of products in the category (kept up to date on every write).
    pub product_count: i64,
}

/// The body of `POST /api/categories`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewCategoryInput {
    /// URL-safe identifier.
    #[schema(
        example = "lighting",
        pattern = "^[a-z0-9]+(-[a-z0-9]+)*$",
        max_length = 64
    )]
    pub slug: String,
    /// Display name.
    #[schema(
        example = "Lighting",
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u001F\u007F-\u009F][^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$"
    )]
    pub name: String,
}

/// A validated new category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCategory {
    /// Slug.
    pub slug: CategorySlug,
    /// Name.
    pub name: CategoryName,
}

impl NewCategory {
    /// Validates both fields.
    pub fn parse(input: &NewCategoryInput) -> Result<Self, ValidationErrors> {
        let mut errs = ValidationErrors::default();
        let slug = errs.check("slug", CategorySlug::parse(&input.slug));
        let name = errs.check("name", CategoryName::parse(&input.name));
        match (slug, name) {
            (Some(slug), Some(name)) => Ok(NewCategory { slug, name }),
            _ => Err(errs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn input() -> NewProductInput {
        NewProductInput {
            sku: "TF-1".into(),
            name: " Lamp ".into(),
            description: String::new(),
            price: Money {
                amount_minor: 1999,
                currency: "EUR".into(),
            },
            stock: 3,
            category: "lighting".into(),
        }
    }

    #[test]
    fn valid_product_parses_and_trims() {
        let p = NewProduct::parse(&input()).expect("valid");
        assert_eq!(p.name.as_str(), "Lamp");
        assert_eq!(p.price.amount_minor(), 1999);
    }

    #[test]
    fn every_bad_field_is_reported() {
        let mut i = input();
        i.sku = "bad sku".into();
        i.name = "  ".into();
        i.price = Money {
            amount_minor: -1,
            currency: "eur".into(),
        };
        i.stock = -5;
        i.category = "Garden Tools".into();
        let errs = NewProduct::parse(&i).unwrap_err();
        let fields: Vec<_> = errs.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "sku",
                "name",
                "price.amount_minor",
                "price.currency",
                "stock",
                "category"
            ]
        );
    }

    #[test]
    fn empty_patch_is_rejected() {
        assert!(ProductPatch::parse(&ProductPatchInput::default()).is_err());
        let p = ProductPatch::parse(&ProductPatchInput {
            stock: Some(0),
            ..Default::default()
        })
        .expect("valid");
        assert_eq!(p.stock.map(Stock::get), Some(0));
    }

    #[test]
    fn slugs() {
        assert!(CategorySlug::parse("garden-tools").is_ok());
        for bad in ["", "-a", "a-", "a--b", "A", "a b", "é"] {
            assert!(CategorySlug::parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC*", n in any::<i64>()) {
            let _ = Sku::parse(&s);
            let _ = ProductName::parse(&s);
            let _ = CategorySlug::parse(&s);
            let _ = Price::new(n, &s);
            let _ = Stock::new(n);
        }

        #[test]
        fn accepted_skus_match_the_documented_pattern(s in "[A-Za-z0-9][A-Za-z0-9._-]{0,63}") {
            prop_assert!(Sku::parse(&s).is_ok());
        }
    }
}
