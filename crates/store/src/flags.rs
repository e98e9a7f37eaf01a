//! The feature-flag table, in the catalog's database with a small pool of its own. Flags are read as a
//! whole (a few rows) together with the change number, which every write bumps in its transaction; the
//! flag evaluation and the refresh loop live in `tenfold-flags`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::side::{on_side, SidePool};
use crate::StoreError;

/// One flag as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlagRecord {
    /// Its name (1-64 of a-z, 0-9, '_', '-', '.').
    pub name: String,
    /// Off for everyone when false.
    pub enabled: bool,
    /// When enabled: on for this percentage of clients (sticky per client); `None` is everyone.
    pub percent: Option<u8>,
    /// Why it is set this way (shown by `tenfold flags list`).
    pub note: Option<String>,
    /// Unix ms of the last change.
    pub updated_ms: i64,
}

/// The flags table.
#[derive(Clone)]
pub struct FlagTable {
    pool: SidePool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

type Row = (String, i64, Option<i64>, Option<String>, i64);

fn record((name, enabled, percent, note, updated_ms): Row) -> FlagRecord {
    FlagRecord {
        name,
        enabled: enabled != 0,
        percent: percent.map(|p| p.clamp(0, 100) as u8),
        note,
        updated_ms,
    }
}

impl FlagTable {
    /// Opens the table on the database `url` names (the catalog's; its migrations create it).
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<FlagTable, StoreError> {
        Ok(FlagTable {
            pool: SidePool::connect(url, "flags", acquire_timeout, 2).await?,
        })
    }

    /// The change number: it moves whenever any flag is set or removed.
    pub async fn version(&self) -> Result<i64, StoreError> {
        Ok(on_side!(&self.pool, |p, ph| {
            sqlx::query_scalar(&ph("SELECT version FROM flag_changes WHERE id = 1"))
                .fetch_one(p)
                .await?
        }))
    }

    /// Every flag, with the change number they are as of (read in one transaction).
    pub async fn list(&self) -> Result<(i64, Vec<FlagRecord>), StoreError> {
        let (version, rows): (i64, Vec<Row>) = on_side!(&self.pool, |p, ph| {
            let mut tx = p.begin().await?;
            let v: i64 = sqlx::query_scalar(&ph("SELECT version FROM flag_changes WHERE id = 1"))
                .fetch_one(&mut *tx)
                .await?;
            let rows: Vec<Row> = sqlx::query_as(&ph(
                "SELECT name, enabled, percent, note, updated_ms FROM flags ORDER BY name",
            ))
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            (v, rows)
        });
        Ok((version, rows.into_iter().map(record).collect()))
    }

    /// Sets a flag (creating it), bumping the change number; returns it as stored.
    pub async fn set(
        &self,
        name: &str,
        enabled: bool,
        percent: Option<u8>,
        note: Option<&str>,
    ) -> Result<FlagRecord, StoreError> {
        let now = now_ms();
        let upsert = "INSERT INTO flags (name, enabled, percent, note, updated_ms) VALUES (?, ?, ?, ?, ?) \
                      ON CONFLICT (name) DO UPDATE SET enabled = excluded.enabled, percent = excluded.percent, \
                      note = excluded.note, updated_ms = excluded.updated_ms \
                      RETURNING name, enabled, percent, note, updated_ms";
        let bump = "UPDATE flag_changes SET version = version + 1 WHERE id = 1";
        let row: Row = on_side!(&self.pool, |p, ph| {
            let mut tx = p.begin().await?;
            let row: Row = sqlx::query_as(&ph(upsert))
                .bind(name)
                .bind(i64::from(enabled))
                .bind(percent.map(|p| i64::from(p.min(100))))
                .bind(note)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(&ph(bump)).execute(&mut *tx).await?;
            tx.commit().await?;
            row
        });
        Ok(record(row))
    }

    /// Removes a flag (its default applies again); false if there was none.
    pub async fn remove(&self, name: &str) -> Result<bool, StoreError> {
        let delete = "DELETE FROM flags WHERE name = ?";
        let bump = "UPDATE flag_changes SET version = version + 1 WHERE id = 1";
        Ok(on_side!(&self.pool, |p, ph| {
            let mut tx = p.begin().await?;
            let n = sqlx::query(&ph(delete))
                .bind(name)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if n > 0 {
                sqlx::query(&ph(bump)).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            n > 0
        }))
    }
}
