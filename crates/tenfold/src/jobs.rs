//! `tenfold worker` and `tenfold jobs`: wiring of the queue (tenfold-store) and the worker runtime
//! (tenfold-jobs).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tenfold_config::Config;
use tenfold_store::queue::{JobQueue, NatsOptions, NewJob};

use crate::cli::JobsAction;
use crate::UsageError;

/// The queue of a command that does not otherwise use the catalog: its tables come with the catalog's
/// migrations, so the catalog is opened (and migrated, if configured) first.
async fn open_queue(config: &Config) -> anyhow::Result<JobQueue> {
    let store = crate::commands::open_store(config, config.database.auto_migrate).await?;
    store.close().await;
    connect_queue(config).await
}

/// The job queue on the configured database (already migrated).
pub(crate) async fn connect_queue(config: &Config) -> anyhow::Result<JobQueue> {
    let url = config.database.url.expose_secret();
    let queue = JobQueue::connect(
        url,
        Duration::from_millis(config.database.acquire_timeout_ms),
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the job queue on {}",
            tenfold_config::mask_password(url)
        )
    })?;
    let j = &config.jobs;
    let Some(nats) = &j.nats_url else {
        return Ok(queue);
    };
    let mut opts = NatsOptions::new(nats.expose_secret());
    opts.stream = j.nats_stream.clone();
    opts.subject_prefix = j.nats_subject_prefix.clone();
    opts.max_deliver = j.nats_max_deliver;
    opts.sweep_after = Duration::from_millis(j.nats_sweep_after_ms);
    queue.with_nats(opts).await.with_context(|| {
        format!(
            "cannot dispatch jobs through NATS at {}",
            tenfold_config::mask_password(nats.expose_secret())
        )
    })
}

/// The blob directory uploads and renditions go to.
pub(crate) async fn open_blobs(config: &Config) -> anyhow::Result<Arc<tenfold_blobs::DirBlobs>> {
    let blobs = tenfold_blobs::DirBlobs::open(&config.media.dir)
        .await
        .with_context(|| {
            format!(
                "cannot open the media directory {}",
                config.media.dir.display()
            )
        })?;
    Ok(Arc::new(blobs))
}

/// A queue or kind name: 1-64 of a-z, 0-9, '.', '_', '-'.
fn name(what: &str, s: &str) -> anyhow::Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(UsageError(format!(
            "{what} {s:?} must be 1 to 64 of a-z, 0-9, '.', '_' and '-'"
        ))
        .into())
    }
}

pub(crate) struct WorkerArgs {
    pub(crate) queues: Vec<String>,
    pub(crate) concurrency: u16,
    pub(crate) lease_ms: u64,
    pub(crate) grace_ms: u64,
    pub(crate) exit_on_stdin_eof: bool,
}

pub(crate) async fn worker(config: Config, a: WorkerArgs) -> anyhow::Result<()> {
    for q in &a.queues {
        name("queue", q)?;
    }
    // The catalog for imports (opened once, migrating if configured), then the queue in the same database.
    let store = crate::commands::open_store(&config, config.database.auto_migrate).await?;
    let queue = Arc::new(connect_queue(&config).await?);
    let sqlite = config.database.url.expose_secret().starts_with("sqlite:");
    let mut opts = tenfold_jobs::WorkerOptions::new(
        &format!("worker-{}", std::process::id()),
        &a.queues.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    opts.concurrency = usize::from(a.concurrency);
    opts.lease = Duration::from_millis(a.lease_ms);
    opts.grace = Duration::from_millis(a.grace_ms);
    // PostgreSQL wakes idle workers by NOTIFY (the poll only covers a lost one); SQLite has no
    // notifications across processes, so idle workers poll often (an indexed, empty-result query).
    // With NATS, the outbox relay wakes idle workers after it publishes.
    opts.poll = if sqlite && config.jobs.nats_url.is_none() {
        Duration::from_millis(100)
    } else {
        Duration::from_secs(1)
    };
    let blobs = open_blobs(&config).await?;
    // Video jobs need ffmpeg: a worker without it leaves them to workers that have it.
    let video = tenfold_jobs::video::VideoRenditions::detect(blobs.clone()).await;
    if video.is_none() {
        tracing::warn!("ffmpeg/ffprobe not found: this worker leaves video jobs to others");
    }
    let registry = tenfold_jobs::builtin::registry()
        .register("mark", tenfold_jobs::builtin::Mark::new(blobs.clone()))
        .register(
            "image",
            tenfold_jobs::media::ImageRenditions::new(blobs.clone()),
        )
        .register(
            "import",
            tenfold_jobs::imports::ImportProducts::new(blobs, store.clone()),
        );
    let registry = match video {
        Some(v) => registry.register("video", v),
        None => registry,
    };
    let signal = crate::commands::shutdown_signal();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} ready: queues {}, kinds {}",
        opts.name,
        a.queues.join(","),
        registry.kinds().join(",")
    )?;
    out.flush()?;
    drop(out);
    tracing::info!(worker = %opts.name, concurrency = opts.concurrency, "working");
    let stop = async move {
        if a.exit_on_stdin_eof {
            tokio::select! {
                _ = signal => {},
                _ = crate::commands::stdin_closed() => {},
            }
        } else {
            signal.await
        }
    };
    let report = tenfold_jobs::Worker::new(queue, registry, opts)
        .run(stop)
        .await
        .context("the worker stopped on an error")?;
    tracing::info!(
        done = report.done,
        failed = report.failed,
        released = report.released,
        "worker stopped"
    );
    store.close().await;
    Ok(())
}

pub(crate) async fn jobs(config: Config, action: JobsAction) -> anyhow::Result<()> {
    match action {
        JobsAction::Enqueue {
            queue,
            kind,
            args,
            count,
            priority,
            max_attempts,
            idempotency_key,
        } => {
            name("queue", &queue)?;
            name("kind", &kind)?;
            let args: serde_json::Value = serde_json::from_str(&args)
                .map_err(|e| UsageError(format!("--args is not JSON: {e}")))?;
            let q = open_queue(&config).await?;
            let mut new = NewJob::new(&queue, &kind, args);
            new.priority = priority;
            new.max_attempts = max_attempts;
            new.idempotency_key = idempotency_key;
            let (mut first, mut last, mut created) = (None, 0, 0);
            for _ in 0..count {
                let (job, new_one) = q.enqueue(&new).await?;
                first.get_or_insert(job.id);
                last = job.id;
                created += u32::from(new_one);
            }
            // NATS: publish the outbox before this process (and its relay) exits.
            q.flush_outbox().await?;
            match first {
                Some(f) if f == last => println!(
                    "job {f} {}",
                    if created == 0 {
                        "(exists: same idempotency key)"
                    } else {
                        "enqueued"
                    }
                ),
                Some(f) => println!("{created} jobs enqueued (ids {f} to {last})"),
                None => {}
            }
        }
        JobsAction::Stats => {
            let q = open_queue(&config).await?;
            println!(
                "{:<16} {:>8} {:>9} {:>8} {:>8} {:>6} {:>7} {:>11}",
                "queue", "ready", "scheduled", "running", "done", "dead", "failed", "oldest (ms)"
            );
            for s in q.stats().await? {
                println!(
                    "{:<16} {:>8} {:>9} {:>8} {:>8} {:>6} {:>7} {:>11}",
                    s.queue,
                    s.ready,
                    s.scheduled,
                    s.running,
                    s.done,
                    s.dead,
                    s.failed,
                    s.oldest_ready_ms
                );
            }
        }
        JobsAction::RetryDead { queue } => {
            let q = open_queue(&config).await?;
            let n = q.retry_dead(queue.as_deref()).await?;
            q.flush_outbox().await?;
            println!("{n} dead jobs put back in their queue");
        }
        JobsAction::Show { id } => {
            let q = open_queue(&config).await?;
            let job = q
                .get(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("there is no job {id}"))?;
            println!("{}", serde_json::to_string_pretty(&job)?);
        }
        JobsAction::Cancel { id } => {
            let q = open_queue(&config).await?;
            let job = q
                .cancel(id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("there is no job {id}"))?;
            println!("job {id} is {}", serde_json::to_value(job.state)?);
        }
    }
    Ok(())
}
