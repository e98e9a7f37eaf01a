//! The durable job queue, in the catalog's own database (SQLite or PostgreSQL), so that a job can be
//! enqueued in the same transaction as the row it works on.
//!
//! Semantics (the same on both engines, and what the NATS backend must match):
//! - At-least-once: a claimed job is leased until `lease_until`; the worker renews the lease with
//!   heartbeats; a lease that expires puts the job back (or dead-letters it once its attempts are spent).
//! - Fencing: every claim gives the job a new `lease` token (its time and random bits) and hands it to
//!   the worker; heartbeats, completion, failure and release name the token and change nothing once
//!   another claim has taken the job (or it was cancelled).
//! - Retries with exponential backoff and full jitter; `max_attempts` spent → `dead` with the reason;
//!   a permanent failure (bad input) → `failed`, never retried. Dead jobs go back with `retry_dead`.
//! - Idempotency keys: enqueueing a key that exists returns the existing job.
//! - Priorities (higher first within a queue; a worker serves its queues in the order it lists them),
//!   run-at scheduling, cancellation (a running job's worker sees it at its next heartbeat).
//! - PostgreSQL claims a batch with `FOR UPDATE SKIP LOCKED`; SQLite has one writer, so a claim is one
//!   `UPDATE ... RETURNING`. Finished jobs are pruned after a retention period, and the table is created
//!   with a low fill factor so that state changes are HOT updates (PostgreSQL bloat stays bounded).

use std::str::FromStr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

use crate::side::{on_side as on_queue, SidePool as QueuePool};
use crate::StoreError;

pub use nats::NatsOptions;

/// The channel PostgreSQL wake-ups are sent on.
const CHANNEL: &str = "tenfold_jobs";

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting to be claimed (maybe not before `run_at`).
    Queued,
    /// Claimed by a worker, under a lease.
    Running,
    /// Finished; `result` holds what it produced.
    Done,
    /// Ended by a permanent error (bad input); not retried.
    Failed,
    /// Its attempts are spent; `last_error` says why. `retry_dead` puts it back.
    Dead,
    /// Cancelled before it finished.
    Cancelled,
}

impl JobState {
    /// Its name, as stored and as the API shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> Result<JobState, StoreError> {
        Ok(match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "dead" => JobState::Dead,
            "cancelled" => JobState::Cancelled,
            other => return Err(StoreError::Other(format!("bad job state {other:?}").into())),
        })
    }

    /// Whether the job will not change any more (unless a dead job is retried).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Dead | JobState::Cancelled
        )
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The queue (workers choose the queues they serve).
    pub queue: String,
    /// What to do (a worker runs only kinds it has a handler for).
    pub kind: String,
    /// The handler's input.
    pub args: serde_json::Value,
    /// Higher runs first.
    pub priority: i32,
    /// Not before this (Unix ms); now when `None`.
    pub run_at_ms: Option<i64>,
    /// Attempts before the job is dead-lettered.
    pub max_attempts: u32,
    /// A key that makes enqueueing idempotent: the same key again returns the first job.
    pub idempotency_key: Option<String>,
}

impl NewJob {
    /// A job of `kind` on `queue` with default priority (0), now, 20 attempts, no key.
    pub fn new(queue: &str, kind: &str, args: serde_json::Value) -> NewJob {
        NewJob {
            queue: queue.to_owned(),
            kind: kind.to_owned(),
            args,
            priority: 0,
            run_at_ms: None,
            max_attempts: 20,
            idempotency_key: None,
        }
    }
}

/// An uploaded original, as the media table records it.
#[derive(Debug, Clone)]
pub struct NewMedia {
    /// Where the original is (a blob key).
    pub blob_key: String,
    /// Its type, from its bytes (`jpeg`, `png`, `mp4`...).
    pub media_type: String,
    /// Bytes.
    pub size: u64,
}

/// A value bound to a statement of [`JobQueue::fenced_update`].
enum Bind {
    Int(i64),
    OptInt(Option<i64>),
    Text(String),
}

/// A product's media with the renditions its job made.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaRenditions {
    /// The media row.
    pub id: i64,
    /// The original's blob key.
    pub blob_key: String,
    /// What the job recorded: `[{name, format, width, height, bytes, url}, ...]`.
    pub renditions: serde_json::Value,
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its input.
    pub args: serde_json::Value,
    /// Where it is.
    pub state: JobState,
    /// Higher runs first.
    pub priority: i32,
    /// Not before (Unix ms).
    pub run_at_ms: i64,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// 0-100, as the worker last reported.
    pub progress: u8,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// What it produced (when done).
    pub result: Option<serde_json::Value>,
    /// The idempotency key it was enqueued with.
    pub idempotency_key: Option<String>,
    /// The worker holding it (when running).
    pub worker: Option<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms of the last change.
    pub updated_ms: i64,
    /// Unix ms when it finished.
    pub finished_ms: Option<i64>,
    /// Where the job got to, as its handler last saved it (see [`JobQueue::save_checkpoint`]).
    pub checkpoint: Option<serde_json::Value>,
}

/// A claimed job and the fencing token its worker must show.
#[derive(Debug, Clone)]
pub struct Lease {
    /// The job, as claimed.
    pub job: Job,
    /// The claim's number: later calls with an older token change nothing.
    pub token: i64,
    /// NATS backend: the message the job came in, acked as the job ends.
    delivery: Option<nats::Delivery>,
}

/// What a heartbeat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The lease is renewed.
    Renewed,
    /// The job was cancelled: stop working on it.
    Cancelled,
    /// Another claim has the job (this worker's lease expired): stop, and do not complete it.
    Lost,
}

/// How a failed attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Worth another attempt (after backoff), until the attempts are spent.
    Retryable,
    /// Bad input: the job ends `failed` at once.
    Permanent,
}

/// One queue's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: String,
    /// Queued and due now.
    pub ready: i64,
    /// Queued for later.
    pub scheduled: i64,
    /// Claimed by workers.
    pub running: i64,
    /// Dead-lettered.
    pub dead: i64,
    /// Ended by a permanent failure.
    pub failed: i64,
    /// Done (until pruned).
    pub done: i64,
    /// How long the oldest due job has waited, in ms (0 when none).
    pub oldest_ready_ms: i64,
}

/// Retry backoff: attempt n waits a random time in [d/2, d], d = min(base × 2^(n-1), cap).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first retry's delay.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
        }
    }
}

impl Backoff {
    /// The delay before the retry that follows attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
        let d = exp.min(self.cap);
        let half = d / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// The queue, over its own pool on the catalog's database.
pub struct JobQueue {
    pool: QueuePool,
    /// PostgreSQL: a pool whose commits do not wait for the WAL flush (`synchronous_commit = off`), for
    /// claims and heartbeats. Losing one in a crash only means the job is claimed again or its lease
    /// ends sooner: at least once either way. Any later durable commit (an enqueue, a completion) flushes
    /// the WAL up to it, so a completion can never be kept while the claim it followed is lost.
    relaxed: Option<QueuePool>,
    url: String,
    backoff: Backoff,
    /// PostgreSQL: when this process last sent a wake-up (ms), so bursts send one.
    last_wake: AtomicI64,
    /// When this process last reaped expired leases (ms): claims reap at most once a second.
    last_reap: AtomicI64,
    wake_pending: Arc<std::sync::atomic::AtomicBool>,
    /// The NATS JetStream backend, when configured (see [`nats`]).
    nats: Option<nats::Dispatch>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const COLS: &str = "id, queue, kind, args, state, priority, run_at, attempts, max_attempts, progress, \
                    last_error, result, idempotency_key, worker, created_ms, updated_ms, finished_ms, lease, checkpoint";

#[derive(sqlx::FromRow)]
struct JobRow {
    id: i64,
    queue: String,
    kind: String,
    args: String,
    state: String,
    priority: i64,
    run_at: i64,
    attempts: i64,
    max_attempts: i64,
    progress: i64,
    last_error: Option<String>,
    result: Option<String>,
    idempotency_key: Option<String>,
    worker: Option<String>,
    created_ms: i64,
    updated_ms: i64,
    finished_ms: Option<i64>,
    lease: i64,
    checkpoint: Option<String>,
}

fn job_of(r: JobRow) -> Result<(Job, i64), StoreError> {
    let json = |s: &str| serde_json::from_str(s).map_err(|e| StoreError::Other(Box::new(e)));
    Ok((
        Job {
            id: r.id,
            queue: r.queue,
            kind: r.kind,
            args: json(&r.args)?,
            state: JobState::parse(&r.state)?,
            priority: r.priority as i32,
            run_at_ms: r.run_at,
            attempts: r.attempts as u32,
            max_attempts: r.max_attempts as u32,
            progress: r.progress.clamp(0, 100) as u8,
            last_error: r.last_error,
            result: r.result.as_deref().map(json).transpose()?,
            idempotency_key: r.idempotency_key,
            worker: r.worker,
            created_ms: r.created_ms,
            updated_ms: r.updated_ms,
            finished_ms: r.finished_ms,
            checkpoint: r.checkpoint.as_deref().map(json).transpose()?,
        },
        r.lease,
    ))
}

/// A new job's row (its values bound by `bind_job!`, in this order).
const INSERT_JOB: &str =
    "INSERT INTO jobs (queue, kind, args, state, priority, run_at, attempts, max_attempts, \
     progress, idempotency_key, created_ms, updated_ms, lease) \
     VALUES (?, ?, ?, 'queued', ?, ?, 0, ?, 0, ?, ?, ?, 0)";

/// Binds a `NewJob`'s values to an `INSERT_JOB` query (`args`: its JSON text; `now`: Unix ms).
macro_rules! bind_job {
    ($q:expr, $job:expr, $args:expr, $now:expr) => {
        $q.bind(&$job.queue)
            .bind(&$job.kind)
            .bind(&$args)
            .bind(i64::from($job.priority))
            .bind($job.run_at_ms.unwrap_or($now))
            .bind(i64::from($job.max_attempts.max(1)))
            .bind(&$job.idempotency_key)
            .bind($now)
            .bind($now)
    };
}

/// The outbox row of a job just written (a `JobRow`), in the same transaction (NATS backend).
const INSERT_OUTBOX: &str =
    "INSERT INTO job_outbox (job_id, queue, kind, priority, due_ms) VALUES (?, ?, ?, ?, ?)";

macro_rules! write_outbox {
    ($tx:expr, $ph:expr, $row:expr) => {
        sqlx::query(&$ph(INSERT_OUTBOX))
            .bind($row.id)
            .bind(&$row.queue)
            .bind(&$row.kind)
            .bind($row.priority)
            .bind($row.run_at)
            .execute(&mut *$tx)
            .await?
    };
}

mod nats;

/// "`id` is one of the JSON array bound as one `?` parameter". PostgreSQL: `= ANY(ARRAY(...))`, an
/// init plan, so the plan always looks the ids up in the primary key (an `IN (subquery)` may be planned
/// as a hash join over every queued job).
fn id_in_json(pool: &QueuePool) -> &'static str {
    match pool {
        QueuePool::Sqlite(_) => "id IN (SELECT value FROM json_each(?))",
        QueuePool::Postgres(_) => {
            "id = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(? AS jsonb))::bigint))"
        }
    }
}

/// RETURNING gives no order: restores claim order within each queue (queues stay in their order).
fn sort_claimed(out: &mut [Lease], queues: &[String]) {
    out.sort_by(|a, b| {
        let qa = queues.iter().position(|q| *q == a.job.queue);
        let qb = queues.iter().position(|q| *q == b.job.queue);
        qa.cmp(&qb)
            .then(b.job.priority.cmp(&a.job.priority))
            .then(a.job.run_at_ms.cmp(&b.job.run_at_ms))
            .then(a.job.id.cmp(&b.job.id))
    });
}

impl JobQueue {
    /// Opens the queue on the database `url` names (the catalog's), with its own small pool. The tables
    /// come from the catalog's migrations.
    pub async fn connect(url: &str, acquire_timeout: Duration) -> Result<JobQueue, StoreError> {
        // One connection on SQLite: it has one writer, and every queue operation but reads writes.
        let pool = QueuePool::connect(url, "jobs", acquire_timeout, 8).await?;
        let relaxed = match &pool {
            QueuePool::Postgres(_) => {
                let o = PgConnectOptions::from_str(url)
                    .map_err(|e| StoreError::setup("parsing the queue's database URL", e))?
                    .application_name("tenfold-jobs")
                    .options([("synchronous_commit", "off")]);
                Some(QueuePool::Postgres(
                    PgPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(acquire_timeout)
                        .connect_lazy_with(o),
                ))
            }
            QueuePool::Sqlite(_) => None,
        };
        Ok(JobQueue {
            pool,
            relaxed,
            url: url.to_owned(),
            backoff: Backoff::default(),
            last_wake: AtomicI64::new(0),
            last_reap: AtomicI64::new(0),
            wake_pending: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            nats: None,
        })
    }

    /// Moves job dispatch to NATS JetStream (see [`nats`]): enqueues also write the transactional
    /// outbox, which this process's relay publishes; claims fetch from JetStream. Every process that
    /// enqueues or works on the queue should be configured alike (a job enqueued without it reaches
    /// JetStream through the sweeper, after `sweep_after`).
    pub async fn with_nats(mut self, opts: NatsOptions) -> Result<JobQueue, StoreError> {
        // The relay's deletes (and the sweeper's re-inserts) need no flush: one lost in a crash only
        // means a message published again, which the stream deduplicates or a claim turns into an ack.
        let pool = self.relaxed.clone().unwrap_or_else(|| self.pool.clone());
        self.nats = Some(nats::Dispatch::start(pool, opts).await?);
        Ok(self)
    }

    /// NATS backend: publishes what is due in the outbox now (a short-lived process that enqueued
    /// calls this before it exits; long-lived ones have their relay). Returns how many; 0 without NATS.
    pub async fn flush_outbox(&self) -> Result<u64, StoreError> {
        match &self.nats {
            Some(d) => d.flush().await,
            None => Ok(0),
        }
    }

    /// The retry backoff (default: 1 s doubling to 10 min).
    pub fn with_backoff(mut self, backoff: Backoff) -> JobQueue {
        self.backoff = backoff;
        self
    }

    /// Enqueues a job; with an idempotency key that exists, returns the existing job instead (and
    /// `false`).
    pub async fn enqueue(&self, new: &NewJob) -> Result<(Job, bool), StoreError> {
        let now = now_ms();
        let args = serde_json::to_string(&new.args).map_err(|e| StoreError::Other(Box::new(e)))?;
        let sql = format!("{INSERT_JOB} ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLS}");
        let row: Option<JobRow> = match (&self.pool, self.nats.is_some()) {
            // PostgreSQL with NATS: the job and its outbox row in one statement (one round trip).
            (QueuePool::Postgres(p), true) => {
                let sql = format!(
                    "WITH j AS ({INSERT_JOB} ON CONFLICT (idempotency_key) DO NOTHING RETURNING {COLS}), \
                     o AS (INSERT INTO job_outbox (job_id, queue, kind, priority, due_ms) \
                           SELECT id, queue, kind, priority, run_at FROM j) \
                     SELECT {COLS} FROM j"
                );
                bind_job!(
                    sqlx::query_as(&crate::sql::dollar_params(&sql)),
                    new,
                    args,
                    now
                )
                .fetch_optional(p)
                .await?
            }
            _ => on_queue!(&self.pool, |p, ph| {
                if self.nats.is_some() {
                    let mut tx = p.begin().await?;
                    let row: Option<JobRow> = bind_job!(sqlx::query_as(&ph(&sql)), new, args, now)
                        .fetch_optional(&mut *tx)
                        .await?;
                    if let Some(r) = &row {
                        write_outbox!(tx, ph, r);
                    }
                    tx.commit().await?;
                    row
                } else {
                    bind_job!(sqlx::query_as(&ph(&sql)), new, args, now)
                        .fetch_optional(p)
                        .await?
                }
            }),
        };
        match row {
            Some(r) => {
                self.wake(&new.queue).await;
                Ok((job_of(r)?.0, true))
            }
            None => {
                let sql = format!("SELECT {COLS} FROM jobs WHERE idempotency_key = ?");
                let r: JobRow = on_queue!(&self.pool, |p, ph| {
                    sqlx::query_as(&ph(&sql))
                        .bind(&new.idempotency_key)
                        .fetch_one(p)
                        .await?
                });
                Ok((job_of(r)?.0, false))
            }
        }
    }

    /// Records an uploaded original of `product_id` and enqueues the job that processes it, in one
    /// transaction. Returns the media row's id and the job.
    pub async fn enqueue_media(
        &self,
        product_id: i64,
        media: &NewMedia,
        job: &NewJob,
    ) -> Result<(i64, Job), StoreError> {
        let now = now_ms();
        let args = serde_json::to_string(&job.args).map_err(|e| StoreError::Other(Box::new(e)))?;
        let insert_job = format!("{INSERT_JOB} RETURNING {COLS}");
        let insert_media =
            "INSERT INTO media (product_id, blob_key, media_type, size, job_id, created_ms) \
                            VALUES (?, ?, ?, ?, ?, ?) RETURNING id";
        let (media_id, row): (i64, JobRow) = on_queue!(&self.pool, |p, ph| {
            let mut tx = p.begin().await?;
            let row: JobRow = bind_job!(sqlx::query_as(&ph(&insert_job)), job, args, now)
                .fetch_one(&mut *tx)
                .await?;
            let id: i64 = sqlx::query_scalar(&ph(insert_media))
                .bind(product_id)
                .bind(&media.blob_key)
                .bind(&media.media_type)
                .bind(media.size as i64)
                .bind(row.id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            if self.nats.is_some() {
                write_outbox!(tx, ph, row);
            }
            tx.commit().await?;
            (id, row)
        });
        self.wake(&job.queue).await;
        Ok((media_id, job_of(row)?.0))
    }

    /// Records the renditions made of the original at `blob_key` (every media row with that original:
    /// the same bytes uploaded twice share it). Idempotent: a job that runs again writes the same.
    pub async fn record_renditions(
        &self,
        blob_key: &str,
        renditions: &serde_json::Value,
    ) -> Result<u64, StoreError> {
        let json = serde_json::to_string(renditions).map_err(|e| StoreError::Other(Box::new(e)))?;
        let sql = "UPDATE media SET renditions = ? WHERE blob_key = ?";
        let n = on_queue!(&self.pool, |p, ph| {
            sqlx::query(&ph(sql))
                .bind(&json)
                .bind(blob_key)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n)
    }

    /// The media of a product whose renditions are ready, oldest first (at most `limit`).
    pub async fn product_media(
        &self,
        product_id: i64,
        limit: u32,
    ) -> Result<Vec<MediaRenditions>, StoreError> {
        let sql = "SELECT id, blob_key, renditions FROM media \
                   WHERE product_id = ? AND renditions IS NOT NULL ORDER BY id LIMIT ?";
        let rows: Vec<(i64, String, String)> = on_queue!(&self.pool, |p, ph| {
            sqlx::query_as(&ph(sql))
                .bind(product_id)
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?
        });
        Ok(rows
            .into_iter()
            .filter_map(|(id, blob_key, r)| {
                Some(MediaRenditions {
                    id,
                    blob_key,
                    renditions: serde_json::from_str(&r).ok()?,
                })
            })
            .collect())
    }

    /// A job by id.
    pub async fn get(&self, id: i64) -> Result<Option<Job>, StoreError> {
        let sql = format!("SELECT {COLS} FROM jobs WHERE id = ?");
        let r: Option<JobRow> = on_queue!(&self.pool, |p, ph| {
            sqlx::query_as(&ph(&sql)).bind(id).fetch_optional(p).await?
        });
        r.map(|r| job_of(r).map(|j| j.0)).transpose()
    }

    /// The most recently created jobs, newest first (at most `limit`; a primary-key range).
    pub async fn recent(&self, limit: u32) -> Result<Vec<Job>, StoreError> {
        let sql = format!("SELECT {COLS} FROM jobs ORDER BY id DESC LIMIT ?");
        let rows: Vec<JobRow> = on_queue!(&self.pool, |p, ph| {
            sqlx::query_as(&ph(&sql))
                .bind(i64::from(limit))
                .fetch_all(p)
                .await?
        });
        rows.into_iter().map(|r| job_of(r).map(|j| j.0)).collect()
    }

    /// Puts the jobs whose lease expired (their worker stopped heartbeating) back in the queue, or
    /// dead-letters those whose attempts are spent. Returns how many.
    pub async fn reap_expired(&self) -> Result<u64, StoreError> {
        let now = now_ms();
        let sql = "UPDATE jobs SET \
             state = CASE WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
             last_error = 'the lease expired: worker ' || COALESCE(worker, 'unknown') || ' stopped heartbeating', \
             finished_ms = CASE WHEN attempts >= max_attempts THEN ? ELSE NULL END, \
             run_at = ?, lease_until = NULL, worker = NULL, updated_ms = ? \
             WHERE state = 'running' AND lease_until < ?";
        Ok(on_queue!(&self.pool, |p, ph| {
            sqlx::query(&ph(sql))
                .bind(now)
                .bind(now)
                .bind(now)
                .bind(now)
                .execute(p)
                .await?
                .rows_affected()
        }))
    }

    /// Claims up to `n` due jobs of `queues` (the first queue first) whose kind is in `kinds`, highest
    /// priority first within a queue, for
    /// `worker`, leased for `lease`. Expired leases are reaped first (at most once a second per process).
    pub async fn claim(
        &self,
        queues: &[String],
        kinds: &[String],
        worker: &str,
        n: u32,
        lease: Duration,
    ) -> Result<Vec<Lease>, StoreError> {
        if n == 0 || queues.is_empty() || kinds.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let last = self.last_reap.load(Ordering::Relaxed);
        if now - last >= 1000
            && self
                .last_reap
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.reap_expired().await?;
        }
        let k = serde_json::to_string(kinds).map_err(|e| StoreError::Other(Box::new(e)))?;
        // The fencing token: the claim's time and 12 random bits, not a counter, so that a claim lost in
        // a database crash (claims commit without waiting for the WAL flush) is never handed out again.
        let token = (now << 12) | i64::from(rand::random::<u16>() & 0xFFF);
        if let Some(d) = &self.nats {
            return self
                .claim_from_nats(d, queues, kinds, worker, n, lease, token)
                .await;
        }
        // Queues are served in the order given (the first has strict priority), each claim scanning
        // that queue's partial index in claim order, so a claim reads about as many rows as it takes.
        let mut rows: Vec<JobRow> = Vec::new();
        for queue in queues {
            let want = i64::from(n) - rows.len() as i64;
            if want <= 0 {
                break;
            }
            let got: Vec<JobRow> = match self.relaxed.as_ref().unwrap_or(&self.pool) {
                QueuePool::Sqlite(p) => {
                    let sql = format!(
                        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease = ?7, \
                         lease_until = ?1, worker = ?2, updated_ms = ?3 \
                         WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND queue = ?4 \
                           AND run_at <= ?3 AND kind IN (SELECT value FROM json_each(?5)) \
                           ORDER BY priority DESC, run_at, id LIMIT ?6) \
                         RETURNING {COLS}"
                    );
                    sqlx::query_as(&sql)
                        .bind(now + lease.as_millis() as i64)
                        .bind(worker)
                        .bind(now)
                        .bind(queue)
                        .bind(&k)
                        .bind(want)
                        .bind(token)
                        .fetch_all(p)
                        .await?
                }
                QueuePool::Postgres(p) => {
                    let sql = format!(
                        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease = $7, \
                         lease_until = $1, worker = $2, updated_ms = $3 \
                         WHERE id IN (SELECT id FROM jobs WHERE state = 'queued' AND queue = $4 \
                           AND run_at <= $3 AND kind = ANY($5) \
                           ORDER BY priority DESC, run_at, id LIMIT $6 FOR UPDATE SKIP LOCKED) \
                         RETURNING {COLS}"
                    );
                    sqlx::query_as(&sql)
                        .bind(now + lease.as_millis() as i64)
                        .bind(worker)
                        .bind(now)
                        .bind(queue)
                        .bind(kinds)
                        .bind(want)
                        .bind(token)
                        .fetch_all(p)
                        .await?
                }
            };
            rows.extend(got);
        }
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let (job, token) = job_of(r)?;
            out.push(Lease {
                job,
                token,
                delivery: None,
            });
        }
        sort_claimed(&mut out, queues);
        Ok(out)
    }

    /// The NATS backend's claim: messages from JetStream, then the database claim of the jobs they
    /// name (see [`nats`]).
    #[allow(clippy::too_many_arguments)]
    async fn claim_from_nats(
        &self,
        d: &nats::Dispatch,
        queues: &[String],
        kinds: &[String],
        worker: &str,
        n: u32,
        lease: Duration,
        token: i64,
    ) -> Result<Vec<Lease>, StoreError> {
        let mut pending = d.fetch(queues, kinds, n as usize, lease).await?;
        let mut out = Vec::with_capacity(pending.len());
        // Twice at most: a message whose job runs under an expired lease (its worker died) has the
        // lease reaped, then is claimed again.
        for round in 0..2 {
            if pending.is_empty() {
                break;
            }
            let ids: Vec<i64> = pending.iter().map(|(id, _)| *id).collect();
            let mut claimed: std::collections::HashMap<i64, Job> = self
                .claim_ids(&ids, worker, lease, token)
                .await?
                .into_iter()
                .map(|j| (j.id, j))
                .collect();
            let mut unclaimed = Vec::new();
            for (id, m) in pending.drain(..) {
                match claimed.remove(&id) {
                    Some(job) => out.push(Lease {
                        job,
                        token,
                        delivery: Some(m),
                    }),
                    None => unclaimed.push((id, m)),
                }
            }
            if unclaimed.is_empty() {
                break;
            }
            let states = self
                .states(&unclaimed.iter().map(|(id, _)| *id).collect::<Vec<_>>())
                .await?;
            let now = now_ms();
            for (id, m) in unclaimed {
                match nats::settle_unclaimed(states.get(&id).copied(), now) {
                    Some(kind) => nats::ack(&Some(m), kind).await,
                    None if round == 0 => pending.push((id, m)),
                    None => {
                        nats::ack(
                            &Some(m),
                            async_nats::jetstream::AckKind::Nak(Some(Duration::from_secs(1))),
                        )
                        .await
                    }
                }
            }
            if !pending.is_empty() {
                self.reap_expired().await?;
            }
        }
        sort_claimed(&mut out, queues);
        Ok(out)
    }

    /// Claims the named jobs that are queued and due (one new lease `token` for all).
    async fn claim_ids(
        &self,
        ids: &[i64],
        worker: &str,
        lease: Duration,
        token: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let now = now_ms();
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Other(Box::new(e)))?;
        let pool = self.relaxed.as_ref().unwrap_or(&self.pool);
        let sql = format!(
            "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease = ?, \
             lease_until = ?, worker = ?, updated_ms = ? \
             WHERE {} AND state = 'queued' AND run_at <= ? RETURNING {COLS}",
            id_in_json(pool)
        );
        let rows: Vec<JobRow> = on_queue!(pool, |p, ph| {
            sqlx::query_as(&ph(&sql))
                .bind(token)
                .bind(now + lease.as_millis() as i64)
                .bind(worker)
                .bind(now)
                .bind(&ids)
                .bind(now)
                .fetch_all(p)
                .await?
        });
        rows.into_iter().map(|r| job_of(r).map(|j| j.0)).collect()
    }

    /// The state, run-at and lease end of the named jobs (those that exist).
    async fn states(
        &self,
        ids: &[i64],
    ) -> Result<std::collections::HashMap<i64, (JobState, i64, Option<i64>)>, StoreError> {
        let ids = serde_json::to_string(ids).map_err(|e| StoreError::Other(Box::new(e)))?;
        let sql = format!(
            "SELECT id, state, run_at, lease_until FROM jobs WHERE {}",
            id_in_json(&self.pool)
        );
        let rows: Vec<(i64, String, i64, Option<i64>)> = on_queue!(&self.pool, |p, ph| {
            sqlx::query_as(&ph(&sql)).bind(&ids).fetch_all(p).await?
        });
        rows.into_iter()
            .map(|(id, s, run_at, until)| Ok((id, (JobState::parse(&s)?, run_at, until))))
            .collect()
    }

    /// `UPDATE jobs SET {set} WHERE id = ? AND lease = ? AND state = 'running'`, with `binds` for the
    /// placeholders of `set`: true when this lease still held the job (a worker that lost it changes
    /// nothing). `relaxed`: through the pool without synchronous commit, when there is one.
    async fn fenced_update(
        &self,
        lease: &Lease,
        relaxed: bool,
        set: &str,
        binds: &[Bind],
    ) -> Result<bool, StoreError> {
        let sql = format!("UPDATE jobs SET {set} WHERE id = ? AND lease = ? AND state = 'running'");
        let pool = match (&self.relaxed, relaxed) {
            (Some(r), true) => r,
            _ => &self.pool,
        };
        Ok(on_queue!(pool, |p, ph| {
            let text = ph(&sql);
            let mut q = sqlx::query(&text);
            for b in binds {
                q = match b {
                    Bind::Int(v) => q.bind(*v),
                    Bind::OptInt(v) => q.bind(*v),
                    Bind::Text(v) => q.bind(v.as_str()),
                };
            }
            q.bind(lease.job.id)
                .bind(lease.token)
                .execute(p)
                .await?
                .rows_affected()
                == 1
        }))
    }

    /// Renews a lease and records progress (0-100) if given.
    pub async fn heartbeat(
        &self,
        lease: &Lease,
        extend: Duration,
        progress: Option<u8>,
    ) -> Result<Beat, StoreError> {
        let now = now_ms();
        let renewed = self
            .fenced_update(
                lease,
                true,
                "lease_until = ?, progress = COALESCE(?, progress), updated_ms = ?",
                &[
                    Bind::Int(now + extend.as_millis() as i64),
                    Bind::OptInt(progress.map(|x| i64::from(x.min(100)))),
                    Bind::Int(now),
                ],
            )
            .await?;
        if renewed {
            nats::ack(&lease.delivery, AckKind::Progress).await;
            return Ok(Beat::Renewed);
        }
        Ok(match self.get(lease.job.id).await? {
            Some(j) if j.state == JobState::Cancelled => {
                nats::ack(&lease.delivery, AckKind::Ack).await;
                Beat::Cancelled
            }
            _ => Beat::Lost,
        })
    }

    /// Ends a job done with its result; false (and nothing changes) if this lease no longer holds it.
    pub async fn complete(
        &self,
        lease: &Lease,
        result: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let result = serde_json::to_string(result).map_err(|e| StoreError::Other(Box::new(e)))?;
        let done = self
            .fenced_update(
                lease,
                false,
                "state = 'done', result = ?, progress = 100, finished_ms = ?, lease_until = NULL, \
                 updated_ms = ?",
                &[Bind::Text(result), Bind::Int(now), Bind::Int(now)],
            )
            .await?;
        if done {
            nats::ack(&lease.delivery, AckKind::Ack).await;
        }
        Ok(done)
    }

    /// Saves where a running job got to, durably; a later attempt sees it in `Job::checkpoint`. False if
    /// this lease no longer holds the job.
    pub async fn save_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let v = serde_json::to_string(checkpoint).map_err(|e| StoreError::Other(Box::new(e)))?;
        self.fenced_update(
            lease,
            false,
            "checkpoint = ?, updated_ms = ?",
            &[Bind::Text(v), Bind::Int(now)],
        )
        .await
    }

    /// Ends several jobs done in one statement (a worker's completions, batched); returns the ids whose
    /// leases still held them (the others changed nothing).
    pub async fn complete_many(
        &self,
        done: &[(&Lease, &serde_json::Value)],
    ) -> Result<Vec<i64>, StoreError> {
        if done.is_empty() {
            return Ok(Vec::new());
        }
        let now = now_ms();
        let mut rows = Vec::with_capacity(done.len());
        for (lease, result) in done {
            rows.push(serde_json::json!({
                "id": lease.job.id,
                "lease": lease.token,
                "result": serde_json::to_string(result).map_err(|e| StoreError::Other(Box::new(e)))?,
            }));
        }
        let rows = serde_json::Value::Array(rows).to_string();
        let ids: Vec<i64> = match &self.pool {
            QueuePool::Sqlite(p) => {
                sqlx::query_scalar(
                    "UPDATE jobs SET state = 'done', result = v.result, progress = 100, finished_ms = ?1, \
                     lease_until = NULL, updated_ms = ?1 \
                     FROM (SELECT json_extract(value, '$.id') AS id, json_extract(value, '$.lease') AS lease, \
                           json_extract(value, '$.result') AS result FROM json_each(?2)) AS v \
                     WHERE jobs.id = v.id AND jobs.lease = v.lease AND jobs.state = 'running' RETURNING jobs.id",
                )
                .bind(now)
                .bind(&rows)
                .fetch_all(p)
                .await?
            }
            QueuePool::Postgres(p) => {
                sqlx::query_scalar(
                    "UPDATE jobs SET state = 'done', result = v.result, progress = 100, finished_ms = $1, \
                     lease_until = NULL, updated_ms = $1 \
                     FROM jsonb_to_recordset($2::jsonb) AS v(id BIGINT, lease BIGINT, result TEXT) \
                     WHERE jobs.id = v.id AND jobs.lease = v.lease AND jobs.state = 'running' RETURNING jobs.id",
                )
                .bind(now)
                .bind(&rows)
                .fetch_all(p)
                .await?
            }
        };
        if self.nats.is_some() {
            for (lease, _) in done {
                if ids.contains(&lease.job.id) {
                    nats::ack(&lease.delivery, AckKind::Ack).await;
                }
            }
        }
        Ok(ids)
    }

    /// Records a failed attempt: a retryable failure goes back to the queue after a backoff (or is
    /// dead-lettered when the attempts are spent); a permanent one ends the job `failed`. False if this
    /// lease no longer holds the job.
    pub async fn fail(
        &self,
        lease: &Lease,
        error: &str,
        kind: Failure,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let (state, run_at, finished) = match kind {
            Failure::Permanent => (JobState::Failed, now, Some(now)),
            Failure::Retryable if lease.job.attempts >= lease.job.max_attempts => {
                (JobState::Dead, now, Some(now))
            }
            Failure::Retryable => (
                JobState::Queued,
                now + self.backoff.delay(lease.job.attempts).as_millis() as i64,
                None,
            ),
        };
        let error = if state == JobState::Dead {
            format!(
                "{error} (attempt {} of {}; dead-lettered)",
                lease.job.attempts, lease.job.max_attempts
            )
        } else {
            error.to_owned()
        };
        let recorded = self
            .fenced_update(
                lease,
                false,
                "state = ?, last_error = ?, run_at = ?, finished_ms = ?, lease_until = NULL, \
                 worker = NULL, updated_ms = ?",
                &[
                    Bind::Text(state.as_str().to_owned()),
                    Bind::Text(error),
                    Bind::Int(run_at),
                    Bind::OptInt(finished),
                    Bind::Int(now),
                ],
            )
            .await?;
        if recorded {
            // A retry comes back when its backoff ends; a dead or failed job's message is done with.
            match state {
                JobState::Queued => {
                    let delay = Duration::from_millis((run_at - now).max(0) as u64);
                    nats::give_back(&lease.delivery, Some(delay)).await;
                }
                _ => nats::ack(&lease.delivery, AckKind::Ack).await,
            }
        }
        Ok(recorded)
    }

    /// Gives a claimed job back unrun (a worker shutting down): the attempt does not count.
    pub async fn release(&self, lease: &Lease) -> Result<bool, StoreError> {
        let now = now_ms();
        let released = self
            .fenced_update(
                lease,
                false,
                "state = 'queued', attempts = attempts - 1, lease_until = NULL, worker = NULL, \
                 run_at = ?, updated_ms = ?",
                &[Bind::Int(now), Bind::Int(now)],
            )
            .await?;
        if released {
            nats::give_back(&lease.delivery, None).await;
            self.wake(&lease.job.queue).await;
        }
        Ok(released)
    }

    /// Cancels a job that has not finished; returns it as it is now (`None` if there is no such job).
    pub async fn cancel(&self, id: i64) -> Result<Option<Job>, StoreError> {
        let now = now_ms();
        let sql = "UPDATE jobs SET state = 'cancelled', finished_ms = ?, lease_until = NULL, updated_ms = ? \
                   WHERE id = ? AND state IN ('queued', 'running')";
        on_queue!(&self.pool, |p, ph| {
            sqlx::query(&ph(sql))
                .bind(now)
                .bind(now)
                .bind(id)
                .execute(p)
                .await?;
        });
        self.get(id).await
    }

    /// Puts dead jobs (of `queue`, or all) back in the queue with their attempts reset. Returns how many.
    pub async fn retry_dead(&self, queue: Option<&str>) -> Result<u64, StoreError> {
        let now = now_ms();
        let sql = "UPDATE jobs SET state = 'queued', attempts = 0, run_at = ?, finished_ms = NULL, updated_ms = ? \
                   WHERE state = 'dead' AND (? IS NULL OR queue = ?)";
        // NATS backend: each job's outbox row, in the same transaction.
        let outbox = "INSERT INTO job_outbox (job_id, queue, kind, priority, due_ms) \
                      SELECT id, queue, kind, priority, ? FROM jobs WHERE state = 'dead' AND (? IS NULL OR queue = ?)";
        let n = on_queue!(&self.pool, |p, ph| {
            let mut tx = p.begin().await?;
            if self.nats.is_some() {
                sqlx::query(&ph(outbox))
                    .bind(now)
                    .bind(queue)
                    .bind(queue)
                    .execute(&mut *tx)
                    .await?;
            }
            let n = sqlx::query(&ph(sql))
                .bind(now)
                .bind(now)
                .bind(queue)
                .bind(queue)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            n
        });
        if n > 0 {
            self.wake(queue.unwrap_or("")).await;
        }
        Ok(n)
    }

    /// Depth, running, done, dead and failed jobs and the oldest due job's age, per queue. Counting the
    /// done jobs reads every job kept (up to the retention): for people and tests, not for polling.
    pub async fn stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        self.stats_of(true).await
    }

    /// [`JobQueue::stats`] without the done count (always 0): reads only the unfinished, dead and
    /// failed jobs, so it stays cheap however many done jobs are kept (for gauges and autoscalers).
    pub async fn active_stats(&self) -> Result<Vec<QueueStats>, StoreError> {
        self.stats_of(false).await
    }

    async fn stats_of(&self, with_done: bool) -> Result<Vec<QueueStats>, StoreError> {
        let now = now_ms();
        let filter = if with_done {
            ""
        } else {
            "WHERE state IN ('queued', 'running', 'dead', 'failed')"
        };
        let sql = format!("SELECT queue, \
             CAST(sum(CASE WHEN state = 'queued' AND run_at <= ? THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(sum(CASE WHEN state = 'queued' AND run_at > ? THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(sum(CASE WHEN state = 'running' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(sum(CASE WHEN state = 'dead' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END) AS BIGINT), \
             CAST(COALESCE(min(CASE WHEN state = 'queued' AND run_at <= ? THEN run_at END), ?) AS BIGINT) \
             FROM jobs {filter} GROUP BY queue ORDER BY queue");
        #[allow(clippy::type_complexity)]
        let rows: Vec<(String, i64, i64, i64, i64, i64, i64, i64)> =
            on_queue!(&self.pool, |p, ph| {
                sqlx::query_as(&ph(&sql))
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .bind(now)
                    .fetch_all(p)
                    .await?
            });
        Ok(rows
            .into_iter()
            .map(
                |(queue, ready, scheduled, running, dead, failed, done, oldest)| QueueStats {
                    queue,
                    ready,
                    scheduled,
                    running,
                    dead,
                    failed,
                    done,
                    oldest_ready_ms: (now - oldest).max(0),
                },
            )
            .collect())
    }

    /// Deletes jobs that finished (done or cancelled) more than `older_than` ago, in batches; returns
    /// how many. Dead and failed jobs stay until retried or looked at.
    pub async fn prune(&self, older_than: Duration) -> Result<u64, StoreError> {
        let cutoff = now_ms() - older_than.as_millis() as i64;
        let sql = "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE state IN ('done', 'cancelled') \
                   AND finished_ms < ? LIMIT 1000)";
        let mut total = 0;
        loop {
            let n = on_queue!(&self.pool, |p, ph| {
                sqlx::query(&ph(sql))
                    .bind(cutoff)
                    .execute(p)
                    .await?
                    .rows_affected()
            });
            total += n;
            if n < 1000 {
                return Ok(total);
            }
        }
    }

    /// Tells waiting workers there is work. PostgreSQL: one NOTIFY per 20 ms window per process at most
    /// (a burst of enqueues sends one at its start and one at its end), not one per job; SQLite workers
    /// poll instead.
    async fn wake(&self, _queue: &str) {
        // NATS backend: this process's relay publishes, then wakes workers itself.
        if let Some(d) = &self.nats {
            d.outbox_written();
            return;
        }
        let QueuePool::Postgres(p) = &self.pool else {
            return;
        };
        let now = now_ms();
        let last = self.last_wake.load(Ordering::Relaxed);
        if now - last >= 20
            && self
                .last_wake
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let _ = sqlx::query("SELECT pg_notify($1, '')")
                .bind(CHANNEL)
                .execute(p)
                .await;
            return;
        }
        // Inside the window: make sure one more wake-up follows it, for jobs enqueued after the first.
        if !self.wake_pending.swap(true, Ordering::Relaxed) {
            let (p, pending) = (p.clone(), self.wake_pending.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                pending.store(false, Ordering::Relaxed);
                let _ = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(CHANNEL)
                    .execute(&p)
                    .await;
            });
        }
    }

    /// A stream of wake-ups: PostgreSQL notifications on the jobs channel; on SQLite, a tick every
    /// `poll`. Workers also poll at `poll` on PostgreSQL, so a lost notification costs at most that.
    pub async fn waker(&self, poll: Duration) -> Result<Waker, StoreError> {
        if let Some(d) = &self.nats {
            return Ok(Waker {
                listener: None,
                nats: Some((d.wake_subscription().await?, d.epoch.clone())),
                poll,
            });
        }
        let listener = match &self.pool {
            QueuePool::Postgres(_) => {
                let mut l = PgListener::connect(&self.url).await?;
                l.listen(CHANNEL).await?;
                Some(l)
            }
            QueuePool::Sqlite(_) => None,
        };
        Ok(Waker {
            listener,
            nats: None,
            poll,
        })
    }
}

/// Waits for a sign of work (see [`JobQueue::waker`]).
pub struct Waker {
    listener: Option<PgListener>,
    /// NATS: the relays' wake-ups, and the epoch they bump (claims then ask every consumer again).
    nats: Option<(async_nats::Subscriber, Arc<std::sync::atomic::AtomicU64>)>,
    poll: Duration,
}

impl Waker {
    /// Returns at the next notification or after the poll interval, whichever comes first.
    pub async fn wait(&mut self) {
        use futures::StreamExt;
        match (&mut self.listener, &mut self.nats) {
            (Some(l), _) => {
                let _ = tokio::time::timeout(self.poll, l.try_recv()).await;
            }
            (None, Some((s, epoch))) => {
                if let Ok(Some(_)) = tokio::time::timeout(self.poll, s.next()).await {
                    epoch.fetch_add(1, Ordering::Relaxed);
                }
            }
            (None, None) => tokio::time::sleep(self.poll).await,
        }
    }
}
