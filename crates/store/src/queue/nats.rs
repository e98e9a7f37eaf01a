//! The NATS JetStream backend of the job queue. The `jobs` table stays the record of every job (state,
//! attempts, lease and fencing token, progress, result), so queries, the admin API, idempotency keys,
//! cancellation and fencing are the database backend's; JetStream replaces the claim query as the way
//! workers find work, and its redelivery replaces the lease reaper as the way lost work comes back.
//!
//! - Outbox: an enqueue writes the job and a `job_outbox` row in one transaction (so it is
//!   transactional with the rows the job works on). A relay task in every process that has the queue
//!   publishes due rows (scheduled jobs stay in the outbox until their time) with `Nats-Msg-Id` =
//!   job id, row id and due time (distinct across a re-created database too), so a relay that dies
//!   between publishing and deleting is deduplicated by the stream, then deletes them (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so relays do not collide).
//! - One work-queue stream; subject `{prefix}.{queue}.{kind}.{band}`, band `hi`/`mid`/`lo` for
//!   priority above, at or below 0; one durable pull consumer per subject (ack wait = the lease,
//!   bounded MaxDeliver). A worker fetches from its queues in order, each queue's bands high to low,
//!   and only from the kinds it runs (a worker without ffmpeg never receives a video job).
//! - A fetched message names a job; the claim is the database's (`UPDATE ... WHERE state = 'queued'`,
//!   a new fencing token). A message whose job is finished, cancelled or gone is acked; one whose job
//!   is not due yet, or still leased to a live worker (a duplicate), is nak'd with that delay.
//! - Heartbeats renew the lease in the database and send an in-progress ack (resetting ack wait);
//!   completion and permanent failure ack; a retry naks with the backoff as its delay; a release naks.
//! - A killed worker's messages are redelivered after ack wait; the job's expired lease is reaped and
//!   it is claimed again (or dead-lettered when its attempts are spent) — attempts count claims, not
//!   deliveries, so the dead-letter decision is the database's, as on the other backends.
//! - Lost messages (MaxDeliver reached, a purged stream, a producer without NATS configured): every
//!   30 s (or `sweep_after`, if shorter) a relay puts back in the outbox the jobs queued and due for longer than `sweep_after` whose
//!   subject has no message in the stream.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Notify;

use super::{now_ms, on_queue, JobState, QueuePool};
use crate::StoreError;

/// Where the NATS backend publishes and how its consumers behave.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// The NATS server (`nats://host:4222`).
    pub url: String,
    /// The JetStream stream (created if missing, with work-queue retention).
    pub stream: String,
    /// Subjects are `{prefix}.{queue}.{kind}.{band}`.
    pub subject_prefix: String,
    /// A message delivered this many times is dropped by the server (the sweeper publishes its job
    /// again if it is still queued). Attempts (claims) are counted in the database, not here.
    pub max_deliver: i64,
    /// A job queued and due this long whose subject has no message is published again.
    pub sweep_after: Duration,
}

impl NatsOptions {
    /// Defaults: stream `TENFOLD_JOBS`, prefix `tenfold.jobs`, MaxDeliver 100, sweep after 5 min.
    pub fn new(url: &str) -> NatsOptions {
        NatsOptions {
            url: url.to_owned(),
            stream: "TENFOLD_JOBS".into(),
            subject_prefix: "tenfold.jobs".into(),
            max_deliver: 100,
            sweep_after: Duration::from_secs(300),
        }
    }
}

/// A claimed job's message, kept in its lease for acks.
pub(super) type Delivery = Arc<jetstream::Message>;

const BANDS: [&str; 3] = ["hi", "mid", "lo"];
/// A worker has a consumer per queue, kind and band (15 for 1 queue and 5 kinds), and a fetch is a
/// round trip: one that finds a consumer empty skips it for this long, unless a wake-up (something
/// was published) came since, so a busy worker's claims ask the consumers that have work. A
/// redelivery (a retry's backoff ending, a dead worker's ack wait) may wait this long more.
const EMPTY_SKIP: Duration = Duration::from_millis(50);
const RELAY_BATCH: i64 = 256;

fn band(priority: i64) -> &'static str {
    match priority {
        p if p > 0 => "hi",
        0 => "mid",
        _ => "lo",
    }
}

/// A name as one subject token and part of a consumer name: letters, digits and '-' stay, '_' doubles,
/// anything else is `_xx` (hex), so distinct names stay distinct.
fn token(s: &str) -> String {
    let mut t = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' => t.push(b as char),
            b'_' => t.push_str("__"),
            _ => t.push_str(&format!("_{b:02x}")),
        }
    }
    t
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

/// The JetStream side of a queue.
pub(super) struct Dispatch {
    /// The connection, the options and the outbox's pool, shared with the relay task.
    relay: Arc<Relay>,
    consumers: tokio::sync::Mutex<HashMap<String, PullConsumer>>,
    /// Consumers a fetch found empty: the wake-up epoch then, and until when fetches skip them (see
    /// [`EMPTY_SKIP`]).
    empty_until: std::sync::Mutex<HashMap<String, (u64, Instant)>>,
    /// Bumped by every wake-up a [`super::Waker`] of this queue receives (a relay published).
    pub(super) epoch: Arc<AtomicU64>,
    relay_task: tokio::task::JoinHandle<()>,
}

impl Drop for Dispatch {
    fn drop(&mut self) {
        self.relay_task.abort();
    }
}

impl Dispatch {
    /// Connects, makes sure the stream exists and starts the relay over the outbox in `pool`'s database.
    pub(super) async fn start(pool: QueuePool, opts: NatsOptions) -> Result<Dispatch, StoreError> {
        let client = async_nats::ConnectOptions::new()
            .name("tenfold-jobs")
            .connect(opts.url.as_str())
            .await
            .map_err(|e| StoreError::setup(format!("connecting to NATS at {}", opts.url), e))?;
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(jetstream::stream::Config {
            name: opts.stream.clone(),
            subjects: vec![format!("{}.>", opts.subject_prefix)],
            retention: jetstream::stream::RetentionPolicy::WorkQueue,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(|e| {
            StoreError::setup(format!("creating the JetStream stream {}", opts.stream), e)
        })?;
        let relay = Arc::new(Relay {
            pool,
            js,
            client,
            opts,
            wake: Notify::new(),
        });
        Ok(Dispatch {
            relay_task: tokio::spawn(relay_loop(relay.clone())),
            relay,
            consumers: tokio::sync::Mutex::default(),
            empty_until: std::sync::Mutex::default(),
            epoch: Arc::default(),
        })
    }

    /// Tells this process's relay that the outbox has rows.
    pub(super) fn outbox_written(&self) {
        self.relay.wake.notify_one();
    }

    /// Publishes everything due in the outbox now (a short-lived process calls this before it exits).
    pub(super) async fn flush(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self.relay.once(true).await?;
            total += n;
            if n < RELAY_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// Core-NATS wake-ups the relay sends after it publishes.
    pub(super) async fn wake_subscription(&self) -> Result<async_nats::Subscriber, StoreError> {
        self.relay
            .client
            .subscribe(wake_subject(&self.relay.opts))
            .await
            .map_err(unavailable)
    }

    async fn consumer(
        &self,
        name: &str,
        queue: &str,
        kind: &str,
        band: &str,
        ack_wait: Duration,
    ) -> Result<PullConsumer, StoreError> {
        if let Some(c) = self.consumers.lock().await.get(name) {
            return Ok(c.clone());
        }
        let stream = self
            .relay
            .js
            .get_stream(&self.relay.opts.stream)
            .await
            .map_err(unavailable)?;
        let c: PullConsumer = stream
            .get_or_create_consumer(
                name,
                jetstream::consumer::pull::Config {
                    durable_name: Some(name.to_owned()),
                    filter_subject: subject(&self.relay.opts, queue, kind, band),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait,
                    max_deliver: self.relay.opts.max_deliver,
                    max_ack_pending: 10_000,
                    ..Default::default()
                },
            )
            .await
            .map_err(unavailable)?;
        self.consumers
            .lock()
            .await
            .insert(name.to_owned(), c.clone());
        Ok(c)
    }

    /// Up to `n` messages of `queues` (in order; bands high to low; then `kinds`), each naming a job.
    pub(super) async fn fetch(
        &self,
        queues: &[String],
        kinds: &[String],
        n: usize,
        ack_wait: Duration,
    ) -> Result<Vec<(i64, Delivery)>, StoreError> {
        let mut out = Vec::new();
        'all: for queue in queues {
            for band in BANDS {
                for kind in kinds {
                    let want = n.saturating_sub(out.len());
                    if want == 0 {
                        break 'all;
                    }
                    let name = format!(
                        "{}_{}_{}_{band}",
                        self.relay.opts.stream,
                        token(queue),
                        token(kind)
                    );
                    let now = Instant::now();
                    let epoch = self.epoch.load(Ordering::Relaxed);
                    if lock(&self.empty_until)
                        .get(&name)
                        .is_some_and(|(e, t)| *e == epoch && *t > now)
                    {
                        continue;
                    }
                    let c = self.consumer(&name, queue, kind, band, ack_wait).await?;
                    let before = out.len();
                    let mut batch = c
                        .fetch()
                        .max_messages(want)
                        .messages()
                        .await
                        .map_err(unavailable)?;
                    while let Some(m) = batch.next().await {
                        let m = m.map_err(StoreError::Unavailable)?;
                        match std::str::from_utf8(&m.payload)
                            .ok()
                            .and_then(|s| s.parse::<i64>().ok())
                        {
                            Some(id) => out.push((id, Arc::new(m))),
                            // Not ours: nothing can run it.
                            None => {
                                tracing::warn!(subject = %m.subject, "a job message without a job id; dropping it");
                                let _ = m.ack_with(AckKind::Term).await;
                            }
                        }
                    }
                    let mut empty = lock(&self.empty_until);
                    if out.len() == before {
                        empty.insert(name, (epoch, now + EMPTY_SKIP));
                    } else {
                        empty.remove(&name);
                    }
                }
            }
        }
        Ok(out)
    }
}

fn subject(opts: &NatsOptions, queue: &str, kind: &str, band: &str) -> String {
    format!(
        "{}.{}.{}.{band}",
        opts.subject_prefix,
        token(queue),
        token(kind)
    )
}

fn wake_subject(opts: &NatsOptions) -> String {
    format!("{}_wake", opts.subject_prefix)
}

/// Acks a message, ignoring errors: an ack that does not arrive means a redelivery, which the
/// database's state turns into another ack.
pub(super) async fn ack(d: &Option<Delivery>, kind: AckKind) {
    if let Some(m) = d {
        if let Err(e) = m.ack_with(kind).await {
            tracing::debug!(error = %e, "a job message's ack was not sent");
        }
    }
}

/// Gives a message back (a nak, with a delay or none) and waits for the server to confirm it, so that
/// the job can be fetched again as soon as this returns (a released job is claimable at once, as on
/// the database backend).
pub(super) async fn give_back(d: &Option<Delivery>, delay: Option<Duration>) {
    if let Some(m) = d {
        if let Err(e) = m.double_ack_with(AckKind::Nak(delay)).await {
            tracing::debug!(error = %e, "a job message's nak was not confirmed");
        }
    }
}

/// What to do with a fetched message whose job the claim did not take.
pub(super) fn settle_unclaimed(
    state: Option<(JobState, i64, Option<i64>)>,
    now: i64,
) -> Option<AckKind> {
    match state {
        // Finished, cancelled or gone: nothing to run.
        None => Some(AckKind::Ack),
        Some((s, _, _)) if s.is_finished() => Some(AckKind::Ack),
        // Not due yet: come back when it is.
        Some((JobState::Queued, run_at, _)) => Some(AckKind::Nak(Some(Duration::from_millis(
            (run_at - now).max(0) as u64,
        )))),
        // Leased to a live worker (a duplicate message): come back when the lease would end.
        Some((JobState::Running, _, Some(until))) if until >= now => Some(AckKind::Nak(Some(
            Duration::from_millis((until - now) as u64 + 100),
        ))),
        // Running under an expired lease: the caller reaps it and claims again.
        Some(_) => None,
    }
}

struct Relay {
    pool: QueuePool,
    js: jetstream::Context,
    client: async_nats::Client,
    opts: NatsOptions,
    /// Rung by this process's enqueues.
    wake: Notify,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: i64,
    job_id: i64,
    queue: String,
    kind: String,
    priority: i64,
    due_ms: i64,
}

async fn relay_loop(relay: Arc<Relay>) {
    let mut last_sweep = Instant::now();
    let mut failing = false;
    loop {
        tokio::select! {
            () = relay.wake.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        loop {
            match relay.once(false).await {
                Ok(n) => {
                    if failing {
                        tracing::info!("the job outbox relay publishes again");
                        failing = false;
                    }
                    if n < RELAY_BATCH as u64 {
                        break;
                    }
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "the job outbox relay cannot publish; the jobs wait in the outbox");
                        failing = true;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            }
        }
        if last_sweep.elapsed() >= relay.opts.sweep_after.min(Duration::from_secs(30)) {
            last_sweep = Instant::now();
            match relay.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    jobs = n,
                    "queued jobs had no message in JetStream; published them again"
                ),
                Err(e) => tracing::warn!(error = %e, "sweeping for lost job messages failed"),
            }
        }
    }
}

impl Relay {
    /// Publishes one batch of due outbox rows and deletes them; returns how many. PostgreSQL: relays
    /// skip rows another relay is publishing; a `barrier` waits for them instead (so that when it
    /// returns, everything due before the call is in the stream).
    async fn once(&self, barrier: bool) -> Result<u64, StoreError> {
        let now = now_ms();
        match &self.pool {
            QueuePool::Postgres(p) => {
                let mut tx = p.begin().await?;
                let rows: Vec<OutboxRow> = sqlx::query_as(if barrier {
                    "SELECT id, job_id, queue, kind, priority, due_ms FROM job_outbox WHERE due_ms <= $1 \
                     ORDER BY due_ms, id LIMIT $2 FOR UPDATE"
                } else {
                    "SELECT id, job_id, queue, kind, priority, due_ms FROM job_outbox WHERE due_ms <= $1 \
                     ORDER BY due_ms, id LIMIT $2 FOR UPDATE SKIP LOCKED"
                })
                .bind(now)
                .bind(RELAY_BATCH)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    return Ok(0);
                }
                self.publish(&rows).await?;
                let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
                sqlx::query("DELETE FROM job_outbox WHERE id = ANY($1)")
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                self.woke();
                Ok(rows.len() as u64)
            }
            QueuePool::Sqlite(p) => {
                // One writer: no row locks. Two processes' relays may both publish a row; the stream's
                // duplicate window drops the second (same Nats-Msg-Id).
                let rows: Vec<OutboxRow> = sqlx::query_as(
                    "SELECT id, job_id, queue, kind, priority, due_ms FROM job_outbox WHERE due_ms <= ?1 \
                     ORDER BY due_ms, id LIMIT ?2",
                )
                .bind(now)
                .bind(RELAY_BATCH)
                .fetch_all(p)
                .await?;
                if rows.is_empty() {
                    return Ok(0);
                }
                self.publish(&rows).await?;
                let ids = serde_json::to_string(&rows.iter().map(|r| r.id).collect::<Vec<_>>())
                    .map_err(|e| StoreError::Other(Box::new(e)))?;
                sqlx::query("DELETE FROM job_outbox WHERE id IN (SELECT value FROM json_each(?1))")
                    .bind(ids)
                    .execute(p)
                    .await?;
                self.woke();
                Ok(rows.len() as u64)
            }
        }
    }

    /// Publishes the rows and waits for the stream to store every one.
    async fn publish(&self, rows: &[OutboxRow]) -> Result<(), StoreError> {
        let mut acks = Vec::with_capacity(rows.len());
        for r in rows {
            let msg = jetstream::message::PublishMessage::build()
                .payload(r.job_id.to_string().into())
                .message_id(format!("{}.{}.{}", r.job_id, r.id, r.due_ms));
            acks.push(
                self.js
                    .send_publish(
                        subject(&self.opts, &r.queue, &r.kind, band(r.priority)),
                        msg,
                    )
                    .await
                    .map_err(unavailable)?,
            );
        }
        for a in acks {
            a.await.map_err(unavailable)?;
        }
        Ok(())
    }

    fn woke(&self) {
        let client = self.client.clone();
        let subject = wake_subject(&self.opts);
        tokio::spawn(async move {
            let _ = client.publish(subject, "".into()).await;
        });
    }

    /// Puts back in the outbox the jobs queued and due for longer than `sweep_after` whose subject has
    /// no message in the stream (their message was lost). Returns how many.
    async fn sweep(&self) -> Result<u64, StoreError> {
        let stream = self
            .js
            .get_stream(&self.opts.stream)
            .await
            .map_err(unavailable)?;
        let busy: HashSet<String> = stream
            .info_with_subjects(format!("{}.>", self.opts.subject_prefix))
            .await
            .map_err(unavailable)?
            .try_filter_map(|(s, n)| async move { Ok((n > 0).then_some(s)) })
            .try_collect()
            .await
            .map_err(unavailable)?;
        let now = now_ms();
        let cut = now - self.opts.sweep_after.as_millis() as i64;
        let sql = "SELECT id, queue, kind, priority FROM jobs j WHERE state = 'queued' AND run_at <= ? \
                   AND updated_ms <= ? AND NOT EXISTS (SELECT 1 FROM job_outbox o WHERE o.job_id = j.id) \
                   LIMIT 10000";
        let candidates: Vec<(i64, String, String, i64)> = on_queue!(&self.pool, |p, ph| {
            sqlx::query_as(&ph(sql))
                .bind(cut)
                .bind(cut)
                .fetch_all(p)
                .await?
        });
        let lost: Vec<_> = candidates
            .into_iter()
            .filter(|(_, q, k, pr)| !busy.contains(&subject(&self.opts, q, k, band(*pr))))
            .collect();
        // Touch each job (so it is not swept again for `sweep_after`) and write its outbox row together.
        let touch = "UPDATE jobs SET updated_ms = ? WHERE id = ? AND state = 'queued'";
        let insert =
            "INSERT INTO job_outbox (job_id, queue, kind, priority, due_ms) VALUES (?, ?, ?, ?, ?)";
        let mut n = 0;
        for (id, queue, kind, priority) in lost {
            on_queue!(&self.pool, |p, ph| {
                let mut tx = p.begin().await?;
                let touched = sqlx::query(&ph(touch))
                    .bind(now)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if touched == 1 {
                    sqlx::query(&ph(insert))
                        .bind(id)
                        .bind(&queue)
                        .bind(&kind)
                        .bind(priority)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    n += 1;
                }
                tx.commit().await?;
            });
        }
        if n > 0 {
            self.once(false).await?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_keep_distinct_names_distinct_and_valid() {
        assert_eq!(token("media"), "media");
        assert_eq!(token("media.video"), "media_2evideo");
        assert_eq!(token("a_b"), "a__b");
        assert_ne!(token("a.b"), token("a_2eb"));
        for s in ["a.b", "x y", "*", ">", "q_1"] {
            let t = token(s);
            assert!(!t.contains(['.', ' ', '*', '>']), "{s} → {t}");
        }
    }

    #[test]
    fn bands_follow_priority() {
        assert_eq!(band(5), "hi");
        assert_eq!(band(0), "mid");
        assert_eq!(band(-1), "lo");
    }

    #[test]
    fn unclaimed_messages_are_acked_or_delayed() {
        let now = 10_000;
        assert!(matches!(settle_unclaimed(None, now), Some(AckKind::Ack)));
        assert!(matches!(
            settle_unclaimed(Some((JobState::Done, 0, None)), now),
            Some(AckKind::Ack)
        ));
        assert!(matches!(
            settle_unclaimed(Some((JobState::Queued, 12_000, None)), now),
            Some(AckKind::Nak(Some(d))) if d == Duration::from_millis(2_000)
        ));
        assert!(matches!(
            settle_unclaimed(Some((JobState::Running, 0, Some(11_000))), now),
            Some(AckKind::Nak(Some(d))) if d == Duration::from_millis(1_100)
        ));
        assert!(settle_unclaimed(Some((JobState::Running, 0, Some(9_000))), now).is_none());
    }
}
