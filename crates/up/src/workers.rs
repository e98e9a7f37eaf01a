//! The background workers of `tenfold up`: `tenfold worker` child processes, restarted when they crash
//! and scaled between a minimum and a maximum on the job queue's depth and oldest-job age.
//!
//! Scaling rule (sampled every second, a cooldown between decisions):
//! - up one worker when the ready jobs per worker exceed `up_backlog_per_worker`, or the oldest ready
//!   job has waited longer than `up_oldest`;
//! - down one worker after `down_after` consecutive samples with no ready job and running jobs that fit
//!   in one worker fewer.
//!
//! Each decision is logged with its reason and counted in `up_worker_scale_events_total{direction}`;
//! `up_workers` is the number running.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tenfold_store::queue::JobQueue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::{oneshot, Mutex};
use tokio::task::JoinHandle;

/// How the pool runs and scales workers.
#[derive(Debug, Clone)]
pub struct WorkerPoolOptions {
    /// The `tenfold` executable.
    pub exe: PathBuf,
    /// Environment for every worker (database URL, log settings).
    pub env: Vec<(String, String)>,
    /// The database the queue lives in (the pool reads its stats).
    pub database_url: String,
    /// Queues the workers serve.
    pub queues: Vec<String>,
    /// Jobs at once per worker.
    pub concurrency: u16,
    /// Workers at start.
    pub workers: usize,
    /// Fewest workers.
    pub min: usize,
    /// Most workers.
    pub max: usize,
    /// Scale up above this many ready jobs per worker.
    pub up_backlog_per_worker: f64,
    /// Scale up when the oldest ready job has waited longer than this.
    pub up_oldest: Duration,
    /// Scale down after this many idle samples in a row.
    pub down_after: u32,
    /// Between samples.
    pub sample_every: Duration,
    /// Between decisions.
    pub cooldown: Duration,
    /// A stopping worker gets this long (its own grace, plus margin) before it is killed.
    pub stop_grace: Duration,
}

struct Slot {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

struct Inner {
    opts: WorkerPoolOptions,
    slots: Mutex<Vec<Slot>>,
    target: AtomicUsize,
    shutting_down: AtomicBool,
}

/// The pool. Cheap to clone.
#[derive(Clone)]
pub struct WorkerPool {
    inner: Arc<Inner>,
}

impl WorkerPool {
    /// Starts `opts.workers` workers and the autoscaler.
    pub async fn start(opts: WorkerPoolOptions) -> anyhow::Result<WorkerPool> {
        let queue = JobQueue::connect(&opts.database_url, Duration::from_secs(10)).await?;
        let n = opts.workers.clamp(opts.min, opts.max.max(opts.min));
        let pool = WorkerPool {
            inner: Arc::new(Inner {
                opts,
                slots: Mutex::new(Vec::new()),
                target: AtomicUsize::new(n),
                shutting_down: AtomicBool::new(false),
            }),
        };
        pool.reconcile().await;
        tokio::spawn(pool.clone().autoscale(queue));
        Ok(pool)
    }

    /// Workers running (or restarting) now.
    pub async fn count(&self) -> usize {
        self.inner.slots.lock().await.len()
    }

    async fn reconcile(&self) {
        let mut slots = self.inner.slots.lock().await;
        let target = self.inner.target.load(Ordering::Relaxed);
        while slots.len() < target {
            let (stop, stopped) = oneshot::channel();
            let task = tokio::spawn(run_slot(self.inner.opts.clone(), stopped));
            slots.push(Slot { stop, task });
        }
        while slots.len() > target {
            if let Some(s) = slots.pop() {
                let _ = s.stop.send(());
                let _ = s.task.await;
            }
        }
        metrics::gauge!("up_workers").set(slots.len() as f64);
    }

    async fn autoscale(self, queue: JobQueue) {
        let o = self.inner.opts.clone();
        let mut tick = tokio::time::interval(o.sample_every);
        let mut last_change = Instant::now();
        let mut idle_samples = 0u32;
        loop {
            tick.tick().await;
            if self.inner.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            let stats = match queue.active_stats().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "could not read the queue's stats");
                    continue;
                }
            };
            let mine = stats.iter().filter(|s| o.queues.contains(&s.queue));
            let (mut ready, mut running, mut oldest) = (0i64, 0i64, 0i64);
            for s in mine {
                ready += s.ready;
                running += s.running;
                oldest = oldest.max(s.oldest_ready_ms);
            }
            metrics::gauge!("up_jobs_ready").set(ready as f64);
            let workers = self.inner.target.load(Ordering::Relaxed);
            let per = ready as f64 / workers.max(1) as f64;
            idle_samples = if ready == 0
                && running <= (workers.saturating_sub(1) * usize::from(o.concurrency)) as i64
            {
                idle_samples + 1
            } else {
                0
            };
            if last_change.elapsed() < o.cooldown {
                continue;
            }
            let decision = if workers < o.max && per > o.up_backlog_per_worker {
                Some((
                    workers + 1,
                    "up",
                    format!(
                        "{ready} ready jobs, {per:.1} per worker > {}",
                        o.up_backlog_per_worker
                    ),
                ))
            } else if workers < o.max && oldest > o.up_oldest.as_millis() as i64 {
                Some((
                    workers + 1,
                    "up",
                    format!(
                        "the oldest ready job has waited {oldest} ms > {} ms",
                        o.up_oldest.as_millis()
                    ),
                ))
            } else if workers > o.min && idle_samples >= o.down_after {
                Some((workers - 1, "down", format!("no ready job for {idle_samples} samples and {running} running fit in fewer workers")))
            } else {
                None
            };
            if let Some((n, dir, why)) = decision {
                tracing::info!(from = workers, to = n, reason = %why, "autoscale workers");
                metrics::counter!("up_worker_scale_events_total", "direction" => dir).increment(1);
                self.inner.target.store(n, Ordering::Relaxed);
                self.reconcile().await;
                last_change = Instant::now();
                idle_samples = 0;
            }
        }
    }

    /// Stops every worker (each finishes or releases its jobs).
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let slots: Vec<Slot> = self.inner.slots.lock().await.drain(..).collect();
        let mut tasks = Vec::new();
        for s in slots {
            let _ = s.stop.send(());
            tasks.push(s.task);
        }
        futures::future::join_all(tasks).await;
        metrics::gauge!("up_workers").set(0.0);
    }
}

/// One worker slot: runs `tenfold worker`, restarts it with backoff when it exits on its own, and stops
/// it (SIGTERM, then SIGKILL after the grace) when told.
async fn run_slot(o: WorkerPoolOptions, mut stop: oneshot::Receiver<()>) {
    let mut streak = 0u32;
    loop {
        let started = Instant::now();
        let child = Command::new(&o.exe)
            .arg("worker")
            .arg("--queues")
            .arg(o.queues.join(","))
            .arg("--concurrency")
            .arg(o.concurrency.to_string())
            .arg("--exit-on-stdin-eof")
            .envs(o.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a worker");
                if backoff(&mut streak, &mut stop).await {
                    return;
                }
                continue;
            }
        };
        let _stdin = child.stdin.take();
        if let Some(out) = child.stdout.take() {
            // The worker's one line ("worker-PID ready: ..."), then stdout is drained and ignored.
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                if let Ok(Some(l)) = lines.next_line().await {
                    tracing::info!(line = %l, "worker started");
                }
                while let Ok(Some(_)) = lines.next_line().await {}
            });
        }
        tokio::select! {
            status = child.wait() => {
                let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                tracing::warn!(%status, "a worker exited; restarting it");
                metrics::counter!("up_worker_restarts_total").increment(1);
                if started.elapsed() > Duration::from_secs(30) {
                    streak = 0;
                }
                if backoff(&mut streak, &mut stop).await {
                    return;
                }
            }
            _ = &mut stop => {
                if let Some(pid) = child.id() {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGTERM,
                    );
                }
                if tokio::time::timeout(o.stop_grace, child.wait()).await.is_err() {
                    tracing::warn!("a worker did not stop within the grace period; killing it");
                    let _ = child.kill().await;
                }
                return;
            }
        }
    }
}

/// Waits 100 ms doubling to 10 s (or until told to stop: true).
async fn backoff(streak: &mut u32, stop: &mut oneshot::Receiver<()>) -> bool {
    let wait = Duration::from_millis(100 << (*streak).min(7)).min(Duration::from_secs(10));
    *streak += 1;
    tokio::select! {
        () = tokio::time::sleep(wait) => false,
        _ = stop => true,
    }
}
