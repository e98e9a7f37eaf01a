//! Catalog domain types.
//!
//! Role: the vocabulary of the catalog (products, categories, prices) as parsed newtypes, so that a value
//! that exists is a valid one. Input shapes (`NewProductInput`, `ProductPatchInput`, ...) are what clients
//! send; `parse` turns them into domain values or into a list of per-field errors.
//!
//! Invariant: no constructor of a domain value skips validation; every store and handler works on parsed
//! values only. Entry points: [`NewProduct::parse`], [`ProductPatch::parse`], [`NewCategory::parse`].

mod currency;
mod product;
mod validate;

pub use currency::Currency;
pub use product::{
    Category, CategoryName, CategorySlug, Description, Money, NewCategory, NewCategoryInput,
    NewProduct, NewProductInput, Price, Product, ProductId, ProductName, ProductPatch,
    ProductPatchInput, Sku, Stock, MAX_PRICE_MINOR, MAX_STOCK,
};
pub use validate::{FieldError, ValidationErrors};
