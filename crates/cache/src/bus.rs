//! The invalidation bus: how one instance's writes reach every other instance's L1.
//!
//! A [`ChangeFeed`] moves opaque text payloads (Redis pub/sub, PostgreSQL LISTEN/NOTIFY, or a change-feed
//! table for SQLite). On top of it every instance publishes its changes from one task, numbered 1, 2, 3, ...
//! under a random origin id; a receiver that sees a number skipped for an origin, or is told by the bus
//! that it may have lost messages (a reconnect), flushes its L1: it cannot know what it missed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use tenfold_store::{ChangeFeed, FeedEvent};

use crate::{BusGuard, Inner};

/// What a write changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// Products written: id and new version (`None`: deleted).
    #[serde(rename = "p", default, skip_serializing_if = "Vec::is_empty")]
    pub products: Vec<(i64, Option<i64>)>,
    /// Page tags whose generation moves (`all`, `category:<slug>`, `categories`).
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Every list page is invalidated (a write whose effect on lists is not known precisely).
    #[serde(rename = "a", default, skip_serializing_if = "std::ops::Not::not")]
    pub all_lists: bool,
}

/// A change as sent on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sending instance (random per process).
    #[serde(rename = "o")]
    pub origin: u64,
    /// 1, 2, 3, ... per origin.
    #[serde(rename = "s")]
    pub seq: u64,
    /// What changed.
    #[serde(flatten)]
    pub change: Change,
    /// A heartbeat: no change, `seq` is the sender's latest number (so a lost last message is noticed).
    #[serde(rename = "h", default, skip_serializing_if = "std::ops::Not::not")]
    pub heartbeat: bool,
}

/// How often an instance that has sent changes repeats its latest sequence number.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Messages waiting for one feed; beyond this they are dropped (receivers see the gap).
const LANE_CAPACITY: usize = 4096;

/// Publishes one change from outside a running cache (a one-off process such as `tenfold seed`): a new
/// origin whose first and only message is number 1, which every receiver applies.
pub async fn announce(
    feed: &dyn ChangeFeed,
    change: Change,
) -> Result<(), tenfold_store::FeedError> {
    let msg = Message {
        origin: rand::random::<u64>(),
        seq: 1,
        change,
        heartbeat: false,
    };
    let payload =
        serde_json::to_string(&msg).map_err(|e| tenfold_store::FeedError(e.to_string()))?;
    feed.publish(&payload).await
}

pub(crate) fn start(inner: Arc<Inner>, feeds: Vec<Arc<dyn ChangeFeed>>) -> BusGuard {
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Change>();
    if let Ok(mut outbox) = inner.outbox.lock() {
        *outbox = Some(out_tx);
    }
    let origin = inner.origin;
    let mut tasks = Vec::new();
    // One publisher per feed, so a feed that is down does not hold up the others.
    let mut lanes: Vec<mpsc::Sender<Arc<str>>> = Vec::new();
    for feed in &feeds {
        let (tx, mut rx) = mpsc::channel::<Arc<str>>(LANE_CAPACITY);
        lanes.push(tx);
        let feed = feed.clone();
        let inner = inner.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(payload) = rx.recv().await {
                // Two quick retries; then the message is dropped on this feed. Its number stays used,
                // so a receiver that gets it over no feed sees a gap and flushes.
                for attempt in 0..3u32 {
                    match feed.publish(&payload).await {
                        Ok(()) => break,
                        Err(e) => {
                            inner.stats.publish_errors.increment(1);
                            tracing::debug!(feed = feed.name(), attempt, error = %e, "publishing a cache invalidation failed");
                            tokio::time::sleep(Duration::from_millis(10 << (2 * attempt))).await;
                        }
                    }
                }
            }
        }));
    }
    // The sequencer numbers this instance's changes, in the order they were made, and repeats the latest
    // number now and then.
    tasks.push(tokio::spawn(async move {
        let mut seq = 0u64;
        let mut beat = tokio::time::interval(HEARTBEAT);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let msg = tokio::select! {
                change = out_rx.recv() => {
                    let Some(change) = change else { return };
                    seq += 1;
                    Message { origin, seq, change, heartbeat: false }
                }
                _ = beat.tick() => {
                    if seq == 0 {
                        continue;
                    }
                    Message { origin, seq, change: Change::default(), heartbeat: true }
                }
            };
            let Ok(payload) = serde_json::to_string(&msg) else {
                continue;
            };
            let payload: Arc<str> = payload.into();
            for lane in &lanes {
                if lane.try_send(payload.clone()).is_err() {
                    tracing::warn!("a cache invalidation feed is backed up; dropping a message (receivers will resynchronize)");
                }
            }
        }
    }));
    let n = feeds.len();
    let (in_tx, mut in_rx) = mpsc::channel::<(usize, FeedEvent)>(1024);
    // Feeds subscribe in order, each after the one before it has (or after 2 s): the first feed (the
    // database's) is then subscribed before the others, so their reconnects are covered by it.
    let mut previous: Option<tokio::sync::oneshot::Receiver<()>> = None;
    for (i, feed) in feeds.into_iter().enumerate() {
        let (tx, mut rx) = mpsc::channel::<FeedEvent>(256);
        let after = previous.take();
        tasks.push(tokio::spawn(async move {
            if let Some(after) = after {
                let _ = tokio::time::timeout(Duration::from_secs(2), after).await;
            }
            feed.subscribe(tx).await
        }));
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        previous = Some(first_rx);
        let all = in_tx.clone();
        tasks.push(tokio::spawn(async move {
            let mut first = Some(first_tx);
            while let Some(ev) = rx.recv().await {
                if all.send((i, ev)).await.is_err() {
                    return;
                }
                if let Some(f) = first.take() {
                    let _ = f.send(());
                }
            }
        }));
    }
    drop(in_tx);
    let applier = tokio::spawn(async move {
        let mut last: HashMap<u64, u64> = HashMap::new();
        // When each feed's current subscription began.
        let mut since: Vec<Option<std::time::Instant>> = vec![None; n];
        while let Some((i, ev)) = in_rx.recv().await {
            match ev {
                FeedEvent::Down => since[i] = None,
                FeedEvent::Lost(reason) => {
                    let before = since[i].replace(std::time::Instant::now());
                    // Another feed that has been subscribed since before this one's previous subscription
                    // (or, for a first subscription, at all) carried everything this one can have
                    // missed since: no flush, and what L1 knows stays in force.
                    let covered = since.iter().enumerate().any(|(j, t)| {
                        j != i
                            && match (t, before) {
                                (Some(t), Some(b)) => *t <= b,
                                (Some(_), None) => true,
                                (None, _) => false,
                            }
                    });
                    if covered {
                        tracing::debug!(
                            reason,
                            "a feed resubscribed; another stayed up, so nothing was lost"
                        );
                        continue;
                    }
                    last.clear();
                    inner.flush(reason).await;
                    inner.subscribed.send_replace(true);
                }
                FeedEvent::Payload(p) => {
                    let msg: Message = match serde_json::from_str(&p) {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "ignoring a malformed cache invalidation message");
                            continue;
                        }
                    };
                    if msg.origin == origin {
                        continue;
                    }
                    if msg.heartbeat {
                        match last.get(&msg.origin) {
                            Some(&prev) if msg.seq > prev => {
                                // The sender's latest messages never arrived.
                                inner.flush("gap").await;
                                last.insert(msg.origin, msg.seq);
                            }
                            Some(_) => {}
                            None => {
                                last.insert(msg.origin, msg.seq);
                            }
                        }
                        continue;
                    }
                    match last.insert(msg.origin, msg.seq) {
                        Some(prev) if msg.seq != prev + 1 => {
                            if msg.seq <= prev {
                                // A duplicate (the same message over another feed): already applied.
                                last.insert(msg.origin, prev);
                                continue;
                            }
                            inner.flush("gap").await;
                        }
                        _ => {}
                    }
                    inner.stats.invalidations_remote.increment(1);
                    // Applied on its own task: a key whose load is in flight (its lock held) must not
                    // hold up the invalidations of other keys. Tombstones keep the highest version, so
                    // the order in which two changes of one key land does not matter.
                    let inner = inner.clone();
                    tokio::spawn(async move { inner.apply(&msg.change).await });
                }
            }
        }
    });
    tasks.push(applier);
    BusGuard { tasks }
}
