//! Role: the worker runtime of the asynchronous-processing factor. A [`Worker`] claims due jobs of its
//! queues from the durable queue (`tenfold_store::queue`), runs each with the [`Handler`] registered for
//! its kind, renews its lease with heartbeats while it runs, and records the outcome: done with a result,
//! a retryable failure (backoff, then dead letter), or a permanent one (bad input: failed at once).
//!
//! Invariants: a job runs at most `concurrency` at a time per worker; a job whose lease was lost (this
//! worker stalled and another claimed it) or that was cancelled is abandoned, and its outcome is not
//! recorded (the queue's fencing refuses it anyway); a handler that panics fails its attempt, not the
//! worker; on shutdown the worker stops claiming, gives running jobs `grace` to finish, and releases the
//! rest unrun (the attempt does not count). Handlers must be idempotent: delivery is at least once.
//!
//! Entry points: [`Worker::new`], [`Worker::run`], [`Registry`], [`Handler`], [`builtin`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use tenfold_store::queue::{Beat, Failure, Job, JobQueue, Lease};
use tenfold_store::StoreError;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

pub mod builtin;
pub mod imports;
pub mod media;
pub mod video;

/// Why a handler's attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth trying again later (a dependency was down, a timeout).
    #[error("{0}")]
    Retry(String),
    /// The job cannot succeed (bad input): it ends failed, with this reason, and is not retried.
    #[error("{0}")]
    Permanent(String),
}

/// What a handler sees of its job.
pub struct JobCtx {
    /// The job as claimed (its `attempts` counts this one; its `checkpoint` is where an earlier attempt
    /// got to).
    pub job: Job,
    progress: Arc<AtomicU8>,
    queue: Arc<JobQueue>,
    lease: Lease,
}

impl JobCtx {
    /// The queue the job came from (for handlers that record what they made next to it, such as the
    /// media table's renditions).
    pub fn queue(&self) -> &JobQueue {
        &self.queue
    }

    /// Reports progress (0-100); it reaches the queue with the next heartbeat.
    pub fn progress(&self, percent: u8) {
        self.progress.store(percent.min(100), Ordering::Relaxed);
    }

    /// Saves where the job got to, durably, so that an attempt after a crash resumes there. Fails (and the
    /// handler should stop) when this worker no longer holds the job.
    pub async fn checkpoint(&self, at: &serde_json::Value) -> Result<(), JobError> {
        match self.queue.save_checkpoint(&self.lease, at).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(JobError::Retry(
                "the job's lease was lost (or it was cancelled) while it ran".into(),
            )),
            Err(e) => Err(JobError::Retry(format!("cannot save a checkpoint: {e}"))),
        }
    }
}

/// Runs jobs of one kind.
#[async_trait::async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Does the job; returns its result. Must be idempotent (a job may run more than once).
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError>;
}

/// The handlers a worker has, by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds the handler of `kind`.
    pub fn register(mut self, kind: &str, handler: impl Handler) -> Registry {
        self.handlers.insert(kind.to_owned(), Arc::new(handler));
        self
    }

    /// The kinds this registry can run (a worker claims only these).
    pub fn kinds(&self) -> Vec<String> {
        let mut k: Vec<String> = self.handlers.keys().cloned().collect();
        k.sort();
        k
    }
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Its name in the queue (`worker` column) and in logs.
    pub name: String,
    /// The queues it serves.
    pub queues: Vec<String>,
    /// Jobs at once.
    pub concurrency: usize,
    /// A lease's length; heartbeats renew it every third of it.
    pub lease: Duration,
    /// How often an idle worker looks for work without a wake-up.
    pub poll: Duration,
    /// How long shutdown waits for running jobs before releasing them.
    pub grace: Duration,
    /// Done and cancelled jobs older than this are deleted (checked every minute).
    pub retention: Duration,
}

impl WorkerOptions {
    /// Options for `queues` with defaults: 4 at once, 30 s leases, 1 s poll, 10 s grace, 24 h retention.
    pub fn new(name: &str, queues: &[&str]) -> WorkerOptions {
        WorkerOptions {
            name: name.to_owned(),
            queues: queues.iter().map(|q| (*q).to_owned()).collect(),
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            grace: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
        }
    }
}

/// What a worker did before it stopped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WorkerReport {
    /// Jobs completed.
    pub done: u64,
    /// Attempts that failed (retryable or not).
    pub failed: u64,
    /// Jobs abandoned because their lease was lost or they were cancelled.
    pub abandoned: u64,
    /// Jobs released unrun (or unfinished) at shutdown.
    pub released: u64,
}

/// A worker over one queue database.
pub struct Worker {
    queue: Arc<JobQueue>,
    registry: Registry,
    opts: WorkerOptions,
}

#[derive(Default)]
struct Counts {
    done: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    abandoned: std::sync::atomic::AtomicU64,
}

impl Worker {
    /// A worker running `registry`'s kinds from `opts.queues`.
    pub fn new(queue: Arc<JobQueue>, registry: Registry, opts: WorkerOptions) -> Worker {
        Worker {
            queue,
            registry,
            opts,
        }
    }

    /// Runs until `shutdown` completes, then stops claiming, waits up to `grace` for running jobs and
    /// releases those still running (and those claimed but not started).
    ///
    /// Throughput: the worker keeps a small buffer of claimed jobs (up to `concurrency`, refilled when
    /// half empty), so a claim fetches a batch rather than one job per finished job; and one completer
    /// task records finished jobs in batches (whatever finished while the previous batch was being
    /// written), so commits do not grow one for one with jobs.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<WorkerReport, StoreError> {
        let kinds = self.registry.kinds();
        let concurrency = self.opts.concurrency.max(1);
        let slots = Arc::new(Semaphore::new(concurrency));
        let running: Arc<Mutex<HashMap<i64, Lease>>> = Arc::default();
        let counts = Arc::new(Counts::default());
        let mut tasks = JoinSet::new();
        // Claimed jobs not started yet, with when they were claimed.
        let mut ready: std::collections::VecDeque<(Instant, Lease)> =
            std::collections::VecDeque::new();
        let mut waker = self.queue.waker(self.opts.poll).await?;
        let (done_tx, done_rx) = tokio::sync::mpsc::channel::<Done>(concurrency * 4);
        let completer = tokio::spawn(complete_in_batches(
            self.queue.clone(),
            done_rx,
            counts.clone(),
        ));
        let mut last_prune = Instant::now();
        let mut idle = false;
        tokio::pin!(shutdown);
        loop {
            while tasks.try_join_next().is_some() {}
            if last_prune.elapsed() >= Duration::from_secs(60) {
                last_prune = Instant::now();
                match self.queue.prune(self.opts.retention).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(pruned = n, "deleted finished jobs past their retention")
                    }
                    Err(e) => tracing::warn!(error = %e, "pruning finished jobs failed"),
                }
            }
            // Start buffered jobs in the free slots.
            while let Some(permit) = (!ready.is_empty())
                .then(|| slots.clone().try_acquire_owned().ok())
                .flatten()
            {
                let Some((claimed, lease)) = ready.pop_front() else {
                    break;
                };
                // A job that waited in the buffer for a third of its lease (long jobs ahead of it) has
                // its lease renewed before it starts, or is dropped if another worker has taken it.
                if claimed.elapsed() >= self.opts.lease / 3 {
                    match self.queue.heartbeat(&lease, self.opts.lease, None).await {
                        Ok(tenfold_store::queue::Beat::Renewed) => {}
                        Ok(_) => {
                            counts.abandoned.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, job = lease.job.id, "could not renew a buffered job's lease; releasing it");
                            let _ = self.queue.release(&lease).await;
                            continue;
                        }
                    }
                }
                let Some(handler) = self.registry.handlers.get(&lease.job.kind).cloned() else {
                    let _ = self.queue.release(&lease).await;
                    continue;
                };
                lock(&running).insert(lease.job.id, lease.clone());
                let (queue, opts, running, counts, done_tx) = (
                    self.queue.clone(),
                    self.opts.clone(),
                    running.clone(),
                    counts.clone(),
                    done_tx.clone(),
                );
                tasks.spawn(async move {
                    let id = lease.job.id;
                    run_one(&queue, handler, lease, &opts, &counts, &done_tx).await;
                    lock(&running).remove(&id);
                    drop(permit);
                });
            }
            // Refill the buffer when it is half empty (and the queue had work last time we looked).
            let busy = concurrency - slots.available_permits();
            let want = (2 * concurrency).saturating_sub(busy + ready.len());
            if !idle && ready.len() <= concurrency / 2 && want > 0 {
                match self
                    .queue
                    .claim(
                        &self.opts.queues,
                        &kinds,
                        &self.opts.name,
                        want as u32,
                        self.opts.lease,
                    )
                    .await
                {
                    Ok(leases) if !leases.is_empty() => {
                        let now = Instant::now();
                        ready.extend(leases.into_iter().map(|l| (now, l)));
                        continue;
                    }
                    Ok(_) => idle = true,
                    Err(e) => {
                        tracing::warn!(error = %e, "claiming jobs failed; trying again");
                        idle = true;
                    }
                }
            }
            let free = slots.available_permits();
            tokio::select! {
                () = &mut shutdown => break,
                // Nothing buffered: wait for a sign of work (or the poll interval).
                () = waker.wait(), if ready.is_empty() && free > 0 => idle = false,
                // Jobs buffered or all slots busy: wait for a slot.
                _ = tasks.join_next(), if !tasks.is_empty() => idle = ready.len() > concurrency / 2 && idle,
            }
        }
        // Shutdown: no more claims; buffered jobs go back; running ones get the grace period, then are
        // released unfinished.
        let mut released = 0;
        for (_, l) in ready.drain(..) {
            if self.queue.release(&l).await.unwrap_or(false) {
                released += 1;
            }
        }
        let drained = tokio::time::timeout(self.opts.grace, async {
            while tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
            let left: Vec<Lease> = lock(&running).drain().map(|(_, l)| l).collect();
            for l in left {
                if self.queue.release(&l).await.unwrap_or(false) {
                    released += 1;
                }
            }
        }
        drop(done_tx);
        let _ = completer.await;
        Ok(WorkerReport {
            done: counts.done.load(Ordering::Relaxed),
            failed: counts.failed.load(Ordering::Relaxed),
            abandoned: counts.abandoned.load(Ordering::Relaxed),
            released,
        })
    }
}

/// A finished job waiting to be recorded done.
struct Done {
    lease: Lease,
    result: serde_json::Value,
}

/// Records completions: the first one waiting, plus every other that arrived meanwhile, in one
/// statement. Until it runs, a finished job is still `running` under its lease; if this process dies
/// first, the lease expires and the job runs again (at least once).
async fn complete_in_batches(
    queue: Arc<JobQueue>,
    mut rx: tokio::sync::mpsc::Receiver<Done>,
    counts: Arc<Counts>,
) {
    let mut batch = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < 256 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        let items: Vec<(&Lease, &serde_json::Value)> =
            batch.iter().map(|d| (&d.lease, &d.result)).collect();
        match queue.complete_many(&items).await {
            Ok(ids) => {
                counts.done.fetch_add(ids.len() as u64, Ordering::Relaxed);
                let lost = batch.len() - ids.len();
                if lost > 0 {
                    counts.abandoned.fetch_add(lost as u64, Ordering::Relaxed);
                    tracing::warn!(lost, "finished jobs whose leases were lost (or that were cancelled) were not recorded done");
                }
                for d in &batch {
                    if ids.contains(&d.lease.job.id) {
                        metrics::counter!("jobs_done_total", "kind" => d.lease.job.kind.clone())
                            .increment(1);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, jobs = batch.len(), "could not record finished jobs; their leases will expire and they will run again")
            }
        }
        batch.clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

enum Stop {
    Cancelled,
    Lost,
}

/// One attempt: the handler raced against its heartbeats; the outcome recorded under the lease.
async fn run_one(
    queue: &Arc<JobQueue>,
    handler: Arc<dyn Handler>,
    lease: Lease,
    opts: &WorkerOptions,
    counts: &Counts,
    done: &tokio::sync::mpsc::Sender<Done>,
) {
    let progress = Arc::new(AtomicU8::new(0));
    let ctx = JobCtx {
        job: lease.job.clone(),
        progress: progress.clone(),
        queue: queue.clone(),
        lease: lease.clone(),
    };
    let kind = lease.job.kind.clone();
    let started = Instant::now();
    let work = std::panic::AssertUnwindSafe(handler.run(&ctx)).catch_unwind();
    let beats = async {
        loop {
            tokio::time::sleep(opts.lease / 3).await;
            let p = progress.load(Ordering::Relaxed);
            match queue.heartbeat(&lease, opts.lease, Some(p)).await {
                Ok(Beat::Renewed) => {}
                Ok(Beat::Cancelled) => return Stop::Cancelled,
                Ok(Beat::Lost) => return Stop::Lost,
                // The database is unreachable: keep working; if it stays away the lease expires and
                // another worker runs the job again (at least once).
                Err(e) => tracing::warn!(error = %e, job = lease.job.id, "heartbeat failed"),
            }
        }
    };
    let outcome = tokio::select! {
        r = work => r,
        stop = beats => {
            counts.abandoned.fetch_add(1, Ordering::Relaxed);
            match stop {
                Stop::Cancelled => tracing::info!(job = lease.job.id, "job cancelled; stopped it"),
                Stop::Lost => tracing::warn!(job = lease.job.id, "lost the lease of a running job (another worker has it); stopped it"),
            }
            return;
        }
    };
    metrics::histogram!("job_run_seconds", "kind" => kind.clone())
        .record(started.elapsed().as_secs_f64());
    let recorded = match outcome {
        Ok(Ok(result)) => {
            // Recorded by the completer, in a batch.
            let _ = done.send(Done { lease, result }).await;
            return;
        }
        Ok(Err(e)) => {
            let (why, how, label) = match &e {
                JobError::Retry(m) => (m.clone(), Failure::Retryable, "retryable"),
                JobError::Permanent(m) => (m.clone(), Failure::Permanent, "permanent"),
            };
            counts.failed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("jobs_failed_total", "kind" => kind, "failure" => label).increment(1);
            queue.fail(&lease, &why, how).await
        }
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            counts.failed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("jobs_failed_total", "kind" => kind, "failure" => "panic")
                .increment(1);
            queue
                .fail(
                    &lease,
                    &format!("the handler panicked: {why}"),
                    Failure::Retryable,
                )
                .await
        }
    };
    match recorded {
        Ok(true) => {}
        Ok(false) => {
            counts.abandoned.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                job = lease.job.id,
                "a job's outcome was refused: its lease was lost or it was cancelled"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, job = lease.job.id, "could not record a job's outcome; its lease will expire and it will run again")
        }
    }
}
