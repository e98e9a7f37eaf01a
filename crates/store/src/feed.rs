//! Change feeds: how one instance tells the others what it wrote (for their caches).
//!
//! [`ChangeFeed`] moves opaque text payloads. The database engines provide one each: PostgreSQL with
//! LISTEN/NOTIFY, the embedded SQLite file with a `cache_feed` table every instance polls (rows are
//! numbered in commit order, so a reader that finds a number missing knows it lost messages). Other
//! transports (Redis pub/sub) implement the same trait elsewhere.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgListener;
use sqlx::{Pool, Postgres, Sqlite};
use tokio::sync::mpsc;

/// What a feed delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedEvent {
    /// A published payload, in publication order per publisher.
    Payload(String),
    /// Messages may have been lost (a (re)subscription, a pruned feed): the receiver must resynchronize.
    Lost(&'static str),
    /// The subscription is down (until the next `Lost`): messages sent meanwhile do not arrive here.
    Down,
}

/// Why a feed operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FeedError(pub String);

/// A transport for change messages.
#[async_trait::async_trait]
pub trait ChangeFeed: Send + Sync + 'static {
    /// A short name for logs and metrics (`redis`, `postgres`, `sqlite`).
    fn name(&self) -> &'static str;
    /// Sends one payload to every subscriber, this instance's included.
    async fn publish(&self, payload: &str) -> Result<(), FeedError>;
    /// Delivers payloads to `tx` until `tx` is closed, reconnecting as needed. Sends
    /// [`FeedEvent::Lost`] first, once subscribed, and again whenever messages may have been missed.
    async fn subscribe(&self, tx: mpsc::Sender<FeedEvent>);
}

/// PostgreSQL: `pg_notify` on one channel; a listener connection per instance.
pub(crate) struct PgFeed {
    pub(crate) pool: Pool<Postgres>,
}

const PG_CHANNEL: &str = "tenfold_cache";
/// NOTIFY payloads must be shorter than 8,000 bytes.
const PG_MAX_PAYLOAD: usize = 7_999;

#[async_trait::async_trait]
impl ChangeFeed for PgFeed {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn publish(&self, payload: &str) -> Result<(), FeedError> {
        if payload.len() > PG_MAX_PAYLOAD {
            return Err(FeedError(format!(
                "a {}-byte message is longer than NOTIFY allows",
                payload.len()
            )));
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(PG_CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| FeedError(e.to_string()))
    }

    async fn subscribe(&self, tx: mpsc::Sender<FeedEvent>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let mut listener = match PgListener::connect_with(&self.pool).await {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the PostgreSQL change listener; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            if let Err(e) = listener.listen(PG_CHANNEL).await {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            backoff = Duration::from_millis(50);
            if tx.send(FeedEvent::Lost("subscribed")).await.is_err() {
                return;
            }
            loop {
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if tx
                            .send(FeedEvent::Payload(n.payload().to_owned()))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    // The connection was lost; sqlx reconnects and re-listens on the next call, but what
                    // was sent meanwhile is gone.
                    Ok(None) => {
                        if tx.send(FeedEvent::Lost("reconnected")).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the PostgreSQL change listener failed; reconnecting");
                        if tx.send(FeedEvent::Down).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        break;
                    }
                }
            }
        }
    }
}

/// SQLite: a table written by the one writer, polled by every instance.
pub(crate) struct SqliteFeed {
    pub(crate) writer: Pool<Sqlite>,
    pub(crate) readers: Pool<Sqlite>,
    pub(crate) poll: Duration,
    pub(crate) keep: Duration,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[async_trait::async_trait]
impl ChangeFeed for SqliteFeed {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    async fn publish(&self, payload: &str) -> Result<(), FeedError> {
        let now = now_ms();
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO cache_feed (payload, created_ms) VALUES (?, ?) RETURNING seq",
        )
        .bind(payload)
        .bind(now)
        .fetch_one(&self.writer)
        .await
        .map_err(|e| FeedError(e.to_string()))?;
        // Prune now and then; readers that fall further behind than `keep` see a gap and resynchronize.
        if seq % 256 == 0 {
            let cutoff = now - self.keep.as_millis() as i64;
            let _ = sqlx::query("DELETE FROM cache_feed WHERE created_ms < ?")
                .bind(cutoff)
                .execute(&self.writer)
                .await;
        }
        Ok(())
    }

    async fn subscribe(&self, tx: mpsc::Sender<FeedEvent>) {
        let mut last: Option<i64> = None;
        let mut ticker = tokio::time::interval(self.poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if tx.is_closed() {
                return;
            }
            let Some(after) = last else {
                // Start at the end: what came before is covered by the resynchronization.
                match sqlx::query_scalar::<_, Option<i64>>("SELECT max(seq) FROM cache_feed")
                    .fetch_one(&self.readers)
                    .await
                {
                    Ok(max) => {
                        last = Some(max.unwrap_or(0));
                        if tx.send(FeedEvent::Lost("subscribed")).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the SQLite change feed failed"),
                }
                continue;
            };
            let rows: Vec<(i64, String)> = match sqlx::query_as(
                "SELECT seq, payload FROM cache_feed WHERE seq > ? ORDER BY seq LIMIT 512",
            )
            .bind(after)
            .fetch_all(&self.readers)
            .await
            {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the SQLite change feed failed");
                    continue;
                }
            };
            let mut expect = after + 1;
            for (seq, payload) in rows {
                if seq != expect && tx.send(FeedEvent::Lost("feed gap")).await.is_err() {
                    return;
                }
                if tx.send(FeedEvent::Payload(payload)).await.is_err() {
                    return;
                }
                expect = seq + 1;
                last = Some(seq);
            }
        }
    }
}
