//! HTTP tests of the catalog service over real sockets, on SQLite and (when configured) PostgreSQL.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod admin;
mod caching;
mod concurrency;
mod customers;
mod errors;
mod flags;
mod fuzz;
mod helpers;
mod imports;
mod jobs;
mod media;
mod orders;
mod overload;
mod protocol;
mod ratelimit;
mod replicas;
mod routes;
mod shop;
mod storefront;
