//! A small pool of its own on the catalog's database, for a concern that lives beside the catalog (the
//! job queue, feature flags): its statements are written once with `?` placeholders and run on either
//! engine through [`on_side!`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Pool, Postgres, Sqlite};

use crate::StoreError;

/// A pool on SQLite or PostgreSQL.
#[derive(Clone)]
pub(crate) enum SidePool {
    Sqlite(Pool<Sqlite>),
    Postgres(Pool<Postgres>),
}

impl SidePool {
    /// Opens a pool on the database `url` names for `what` (in errors; PostgreSQL's application name is
    /// `tenfold-{what}`): one connection on SQLite (one writer; the file lock is not fought over), up
    /// to `pg_max` on PostgreSQL.
    pub(crate) async fn connect(
        url: &str,
        what: &str,
        acquire_timeout: Duration,
        pg_max: u32,
    ) -> Result<SidePool, StoreError> {
        let parse = |e| StoreError::setup(format!("parsing the {what} database URL"), e);
        let open = |e| StoreError::setup(format!("opening the {what} pool"), e);
        Ok(if url.starts_with("sqlite:") {
            let o = SqliteConnectOptions::from_str(url)
                .map_err(parse)?
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(5));
            SidePool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(o)
                    .await
                    .map_err(open)?,
            )
        } else {
            let o = PgConnectOptions::from_str(url)
                .map_err(parse)?
                .application_name(&format!("tenfold-{what}"));
            SidePool::Postgres(
                PgPoolOptions::new()
                    .max_connections(pg_max)
                    .acquire_timeout(acquire_timeout)
                    .connect_with(o)
                    .await
                    .map_err(open)?,
            )
        })
    }
}

/// Runs the same statement on either engine, `?` placeholders rewritten for PostgreSQL:
/// `on_side!(&pool, |p, ph| sqlx::query(&ph(SQL)).execute(p).await?)`.
macro_rules! on_side {
    ($pool:expr, |$p:ident, $ph:ident| $body:expr) => {
        match $pool {
            $crate::side::SidePool::Sqlite($p) => {
                let $ph = |s: &str| s.to_owned();
                $body
            }
            $crate::side::SidePool::Postgres($p) => {
                let $ph = |s: &str| $crate::sql::dollar_params(s);
                $body
            }
        }
    };
}
pub(crate) use on_side;
