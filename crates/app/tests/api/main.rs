//! HTTP tests of the catalog service over real sockets, on SQLite and (when configured) PostgreSQL.

mod concurrency;
mod errors;
mod fuzz;
mod helpers;
mod protocol;
mod routes;
