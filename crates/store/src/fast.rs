//! The SQLite hot path: point reads and bounded index scans run inline on the calling thread.
//!
//! Why: a primary-key lookup on a WAL-mode SQLite file costs a few microseconds of CPU, while handing it to
//! another thread and back (what sqlx's per-connection worker threads, or `spawn_blocking`, do) costs several
//! times that. The benchmark in docs/benchmarks.md measured the hand-off path at under a quarter of
//! `/healthz` throughput. So reads whose cost is bounded by an index (`get_product`, and `list_products`
//! without text search: at most 101 rows of an index range) use a small pool of read-only rusqlite
//! connections directly; scans whose cost grows with the table (text search) keep going through sqlx.
//!
//! The pool never blocks: when every connection is in use (more threads than connections) the caller
//! falls back to the sqlx path.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rusqlite::{Connection, OpenFlags, OptionalExtension};
use tenfold_catalog::{Money, Product};

/// Read-only connections to one SQLite file, opened on demand up to `max`.
pub(crate) struct FastReads {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max: usize,
    open: std::sync::atomic::AtomicUsize,
    closed: AtomicBool,
}

const PRODUCT_COLS: usize = 11;

impl FastReads {
    pub(crate) fn new(path: PathBuf, max: usize) -> FastReads {
        FastReads {
            path,
            idle: Mutex::new(Vec::new()),
            max,
            open: std::sync::atomic::AtomicUsize::new(0),
            closed: AtomicBool::new(false),
        }
    }

    fn checkout(&self) -> Option<Connection> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        if let Some(c) = self.idle.lock().ok()?.pop() {
            return Some(c);
        }
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match self.connect() {
            Ok(c) => Some(c),
            Err(e) => {
                self.open.fetch_sub(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot open a fast-path SQLite reader; using the pooled path");
                None
            }
        }
    }

    fn checkin(&self, conn: Connection) {
        if self.closed.load(Ordering::Relaxed) {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            idle.push(conn);
        }
    }

    fn connect(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY
                | OpenFlags::SQLITE_OPEN_NO_MUTEX
                | OpenFlags::SQLITE_OPEN_URI,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.set_prepared_statement_cache_capacity(16);
        // 8 MiB of page cache per reader (SQLite's default is 2 MiB): the hot part of the catalog stays in
        // memory without a read() per lookup, and the few readers keep RSS well inside its budget.
        conn.pragma_update(None, "cache_size", -8192)?;
        Ok(conn)
    }

    /// Drops the idle connections; later calls fall back to the pooled path.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Runs `f` on a fast connection, or returns `None` when none is free.
    fn with<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Option<rusqlite::Result<T>> {
        let conn = self.checkout()?;
        let out = f(&conn);
        self.checkin(conn);
        Some(out)
    }

    /// One product by id (`sql` selects the product columns with one `?` for the id).
    pub(crate) fn get_product(
        &self,
        sql: &str,
        id: i64,
    ) -> Option<rusqlite::Result<Option<Product>>> {
        self.with(|c| {
            c.prepare_cached(sql)?
                .query_row([id], product_row)
                .optional()
        })
    }

    /// A page of products (`sql` has the list statement's placeholders, bound in order).
    pub(crate) fn list_products(
        &self,
        sql: &str,
        params: &[&dyn rusqlite::ToSql],
    ) -> Option<rusqlite::Result<Vec<Product>>> {
        self.with(|c| {
            let mut stmt = c.prepare_cached(sql)?;
            let rows = stmt.query_map(params, product_row)?;
            rows.collect()
        })
    }
}

fn timestamp(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<DateTime<Utc>> {
    let text: String = row.get(idx)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
        })
}

fn product_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    debug_assert_eq!(row.as_ref().column_count(), PRODUCT_COLS);
    Ok(Product {
        id: row.get(0)?,
        sku: row.get(1)?,
        name: row.get(2)?,
        description: row.get(3)?,
        price: Money {
            amount_minor: row.get(4)?,
            currency: row.get(5)?,
        },
        stock: row.get(6)?,
        category: row.get(7)?,
        created_at: timestamp(row, 8)?,
        updated_at: timestamp(row, 9)?,
        version: row.get(10)?,
    })
}
