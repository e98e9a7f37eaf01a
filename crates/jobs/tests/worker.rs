//! The worker runtime on every engine, dispatching by the database and through NATS JetStream: runs jobs to completion, retries and dead-letters failures
//! (panics included), stops cancelled jobs, releases unfinished jobs on shutdown.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tenfold_jobs::{builtin, Handler, JobCtx, JobError, Worker, WorkerOptions};
use tenfold_store::queue::{Backoff, JobQueue, JobState, NewJob};
use tenfold_test_support::{engines, Engine, TestDb, TestNats};

/// Every engine, each also with NATS (a stream of its own) when `TENFOLD_TEST_NATS_URL` is set.
fn backends() -> Vec<(Engine, Option<TestNats>)> {
    let mut v = Vec::new();
    for engine in engines() {
        v.push((engine, None));
        if let Some(n) = TestNats::new() {
            v.push((engine, Some(n)));
        }
    }
    v
}

async fn queue(db: &TestDb, nats: &Option<TestNats>) -> Arc<JobQueue> {
    db.store().await;
    let q = JobQueue::connect(&db.url, Duration::from_secs(15))
        .await
        .unwrap()
        .with_backoff(Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(50),
        });
    Arc::new(match nats {
        Some(n) => q.with_nats(n.opts.clone()).await.unwrap(),
        None => q,
    })
}

fn opts() -> WorkerOptions {
    let mut o = WorkerOptions::new("test-worker", &["media"]);
    o.concurrency = 8;
    o.poll = Duration::from_millis(20);
    o.lease = Duration::from_millis(600);
    o.grace = Duration::from_millis(200);
    o
}

/// Waits (bounded) until every job of `ids` satisfies `done`.
async fn until(q: &JobQueue, ids: &[i64], done: impl Fn(JobState) -> bool) {
    for _ in 0..400 {
        let mut all = true;
        for &id in ids {
            if !done(q.get(id).await.unwrap().unwrap().state) {
                all = false;
                break;
            }
        }
        if all {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("jobs did not reach the expected state in 10 s");
}

/// Fails (retryably) the first `fail_first` attempts of every job, panics when args say so, and
/// refuses bad input permanently.
struct Flaky {
    fail_first: u32,
    runs: AtomicU32,
}

#[async_trait::async_trait]
impl Handler for Flaky {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
        self.runs.fetch_add(1, Ordering::Relaxed);
        ctx.progress(50);
        if ctx.job.args["bad"] == json!(true) {
            return Err(JobError::Permanent("the input is not an image".into()));
        }
        if ctx.job.args["panic"] == json!(true) {
            panic!("boom");
        }
        if ctx.job.attempts <= self.fail_first {
            return Err(JobError::Retry(format!(
                "attempt {} failed",
                ctx.job.attempts
            )));
        }
        Ok(json!({"attempt": ctx.job.attempts}))
    }
}

#[tokio::test]
async fn a_worker_runs_jobs_to_the_end_retrying_and_dead_lettering_failures() {
    for (engine, nats) in backends() {
        let engine = (engine, nats.is_some());
        let db = TestDb::new(engine.0).await;
        let q = queue(&db, &nats).await;
        let mut ids = Vec::new();
        for i in 0..200 {
            ids.push(
                q.enqueue(&NewJob::new("media", "noop", json!({"n": i})))
                    .await
                    .unwrap()
                    .0
                    .id,
            );
        }
        let flaky = |args| {
            let mut j = NewJob::new("media", "flaky", args);
            j.max_attempts = 3;
            j
        };
        let retried = q.enqueue(&flaky(json!({}))).await.unwrap().0.id;
        let bad = q.enqueue(&flaky(json!({"bad": true}))).await.unwrap().0.id;
        let panics = q
            .enqueue(&flaky(json!({"panic": true})))
            .await
            .unwrap()
            .0
            .id;
        let other_queue = q
            .enqueue(&NewJob::new("import", "noop", json!({})))
            .await
            .unwrap()
            .0
            .id;
        let registry = builtin::registry().register(
            "flaky",
            Flaky {
                fail_first: 1,
                runs: AtomicU32::new(0),
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(Worker::new(q.clone(), registry, opts()).run(async {
            let _ = stopped.await;
        }));
        until(&q, &ids, |s| s == JobState::Done).await;
        until(&q, &[retried, bad, panics], JobState::is_finished).await;
        let r = q.get(retried).await.unwrap().unwrap();
        assert_eq!((r.state, r.attempts), (JobState::Done, 2), "{engine:?}");
        assert_eq!(r.result, Some(json!({"attempt": 2})));
        let b = q.get(bad).await.unwrap().unwrap();
        assert_eq!((b.state, b.attempts), (JobState::Failed, 1));
        assert_eq!(b.last_error.as_deref(), Some("the input is not an image"));
        let p = q.get(panics).await.unwrap().unwrap();
        assert_eq!((p.state, p.attempts), (JobState::Dead, 3));
        assert!(p.last_error.unwrap().contains("panicked: boom"));
        // A queue the worker does not serve is left alone.
        assert_eq!(
            q.get(other_queue).await.unwrap().unwrap().state,
            JobState::Queued
        );
        stop.send(()).unwrap();
        let report = worker.await.unwrap().unwrap();
        assert_eq!(report.done, 201);
        assert_eq!(report.released, 0);
    }
}

#[tokio::test]
async fn shutdown_releases_unfinished_jobs_and_cancel_stops_a_running_one() {
    for (engine, nats) in backends() {
        let engine = (engine, nats.is_some());
        let db = TestDb::new(engine.0).await;
        let q = queue(&db, &nats).await;
        let long = q
            .enqueue(&NewJob::new("media", "noop", json!({"sleep_ms": 30_000})))
            .await
            .unwrap()
            .0
            .id;
        let doomed = q
            .enqueue(&NewJob::new("media", "noop", json!({"sleep_ms": 30_000})))
            .await
            .unwrap()
            .0
            .id;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let worker = tokio::spawn(
            Worker::new(q.clone(), builtin::registry(), opts()).run(async {
                let _ = stopped.await;
            }),
        );
        until(&q, &[long, doomed], |s| s == JobState::Running).await;
        q.cancel(doomed).await.unwrap();
        // The worker sees the cancellation at its next heartbeat (a third of the lease) and drops it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        stop.send(()).unwrap();
        let report = worker.await.unwrap().unwrap();
        assert_eq!(report.released, 1, "{engine:?}: {report:?}");
        assert_eq!(report.abandoned, 1, "{engine:?}: {report:?}");
        let j = q.get(long).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.attempts),
            (JobState::Queued, 0),
            "released unrun"
        );
        assert_eq!(
            q.get(doomed).await.unwrap().unwrap().state,
            JobState::Cancelled
        );
    }
}

/// Counts runs per job id; sleeps `sleep_ms` from the args.
struct Counting(Arc<std::sync::Mutex<std::collections::HashMap<i64, u32>>>);

#[async_trait::async_trait]
impl Handler for Counting {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
        *self.0.lock().unwrap().entry(ctx.job.id).or_default() += 1;
        let ms = ctx.job.args["sleep_ms"].as_u64().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(json!(null))
    }
}

#[tokio::test]
async fn a_buffered_job_whose_lease_ran_out_is_not_run_twice() {
    for (engine, nats) in backends() {
        let engine = (engine, nats.is_some());
        let db = TestDb::new(engine.0).await;
        let qa = queue(&db, &nats).await;
        let qb = queue(&db, &nats).await; // another process's queue handle (its own reaping clock)
        let long = qa
            .enqueue(&NewJob::new("media", "count", json!({"sleep_ms": 1500})))
            .await
            .unwrap()
            .0
            .id;
        let short = qa
            .enqueue(&NewJob::new("media", "count", json!({})))
            .await
            .unwrap()
            .0
            .id;
        let runs = Arc::new(std::sync::Mutex::new(std::collections::HashMap::new()));
        let mut o = opts();
        o.concurrency = 1;
        o.lease = Duration::from_millis(400);
        let (stop_a, stopped_a) = tokio::sync::oneshot::channel::<()>();
        let (stop_b, stopped_b) = tokio::sync::oneshot::channel::<()>();
        // Worker A claims both (one running, one buffered behind the long job).
        let a = tokio::spawn(
            Worker::new(
                qa.clone(),
                builtin::registry().register("count", Counting(runs.clone())),
                o.clone(),
            )
            .run(async {
                let _ = stopped_a.await;
            }),
        );
        until(&qa, &[long, short], |s| s == JobState::Running).await;
        // Worker B, idle, reaps the buffered job's expired lease and runs it.
        let b = tokio::spawn(
            Worker::new(
                qb.clone(),
                builtin::registry().register("count", Counting(runs.clone())),
                o,
            )
            .run(async {
                let _ = stopped_b.await;
            }),
        );
        until(&qa, &[long, short], |s| s == JobState::Done).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop_a.send(()).unwrap();
        stop_b.send(()).unwrap();
        a.await.unwrap().unwrap();
        b.await.unwrap().unwrap();
        let runs = runs.lock().unwrap().clone();
        assert_eq!(runs.get(&long), Some(&1), "{engine:?}: {runs:?}");
        assert_eq!(
            runs.get(&short),
            Some(&1),
            "{engine:?}: the buffered job ran twice: {runs:?}"
        );
    }
}
