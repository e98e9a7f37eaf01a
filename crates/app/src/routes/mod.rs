//! Route handlers, grouped by resource.

pub(crate) mod admin_pages;
pub(crate) mod customers;
pub(crate) mod flags;
pub(crate) mod html;
pub(crate) mod jobs;
pub(crate) mod media;
pub(crate) mod ops;
pub(crate) mod orders;
pub(crate) mod pages;
pub(crate) mod products;
pub(crate) mod shop_pages;
