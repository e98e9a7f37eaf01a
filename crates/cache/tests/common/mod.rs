//! Shared by the cache's integration tests: a simulated database row and its loader, and a bounded wait.

#![allow(dead_code)] // each test binary uses its own subset

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tenfold_cache::{Cache, ChangeFeed, FeedError, FeedEvent, Key, Source, Value};

/// The cached form of version `v` of the row.
pub(crate) fn present(v: i64) -> Value {
    Value::Present {
        version: v,
        body: Bytes::from(format!("{{\"version\":{v}}}")),
    }
}

/// A database row shared by every "instance": its version (0 = absent), the loads that reached it and
/// how long one takes.
#[derive(Clone)]
pub(crate) struct Row {
    pub(crate) version: Arc<AtomicI64>,
    loads: Arc<AtomicUsize>,
    delay: Duration,
}

impl Row {
    pub(crate) fn new(version: i64, delay_ms: u64) -> Row {
        Row {
            version: Arc::new(AtomicI64::new(version)),
            loads: Arc::new(AtomicUsize::new(0)),
            delay: Duration::from_millis(delay_ms),
        }
    }

    pub(crate) fn set(&self, version: i64) {
        self.version.store(version, Ordering::SeqCst);
    }

    /// The loader: reads the version first, then waits (as a query whose answer is in flight).
    pub(crate) fn loader(
        &self,
    ) -> impl Fn() -> BoxFuture<'static, Result<Value, String>> + Clone + Send + Sync + 'static
    {
        let row = self.clone();
        move || {
            let row = row.clone();
            Box::pin(async move {
                row.loads.fetch_add(1, Ordering::SeqCst);
                let v = row.version.load(Ordering::SeqCst);
                tokio::time::sleep(row.delay).await;
                Ok(if v == 0 { Value::Absent } else { present(v) })
            })
        }
    }

    pub(crate) fn loads(&self) -> usize {
        self.loads.load(Ordering::SeqCst)
    }
}

/// Polls `f` until it holds, failing the test after `bound`.
pub(crate) async fn eventually<F, Fut>(bound: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An in-process feed: a broadcast channel standing in for a transport (the real transports are tested
/// against real Redis, PostgreSQL and SQLite). `lose()` makes every subscriber report a reconnect.
pub(crate) struct LocalBus {
    tx: tokio::sync::broadcast::Sender<String>,
    lost: tokio::sync::broadcast::Sender<()>,
}

impl LocalBus {
    pub(crate) fn new(tx: tokio::sync::broadcast::Sender<String>) -> LocalBus {
        LocalBus {
            tx,
            lost: tokio::sync::broadcast::channel(4).0,
        }
    }

    /// Every subscriber reports that it resubscribed (as after a dropped connection).
    pub(crate) fn lose(&self) {
        let _ = self.lost.send(());
    }
}

#[async_trait::async_trait]
impl ChangeFeed for LocalBus {
    fn name(&self) -> &'static str {
        "local"
    }
    async fn publish(&self, payload: &str) -> Result<(), FeedError> {
        let _ = self.tx.send(payload.to_owned());
        Ok(())
    }
    async fn subscribe(&self, tx: tokio::sync::mpsc::Sender<FeedEvent>) {
        let mut rx = self.tx.subscribe();
        let mut lost = self.lost.subscribe();
        if tx.send(FeedEvent::Lost("subscribed")).await.is_err() {
            return;
        }
        loop {
            let ev = tokio::select! {
                p = rx.recv() => match p {
                    Ok(p) => FeedEvent::Payload(p),
                    Err(_) => return,
                },
                _ = lost.recv() => FeedEvent::Lost("reconnected"),
            };
            if tx.send(ev).await.is_err() {
                return;
            }
        }
    }
}

/// Waits until `cache` loads `key` again (from `row`) instead of answering from L1: it has flushed.
pub(crate) async fn until_reloaded(cache: &Cache, key: Key, row: &Row) {
    eventually(Duration::from_secs(5), "the cache flushed", || {
        let (cache, key, row) = (cache.clone(), key.clone(), row.clone());
        async move { cache.get_or_load(key, row.loader()).await.unwrap().1 == Source::Loaded }
    })
    .await;
}
