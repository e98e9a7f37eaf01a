//! The job queue's semantics on every engine: idempotent enqueue, priorities and run-at, leases with
//! fencing, retries with backoff, dead letters, cancellation, release, stats, pruning, wake-ups.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tenfold_store::queue::{Backoff, Beat, Failure, JobQueue, JobState, NewJob};
use tenfold_test_support::{engines, nats_url, Engine, TestDb, TestNats};

const LEASE: Duration = Duration::from_secs(30);

fn all() -> Vec<String> {
    vec!["media".into(), "import".into()]
}

fn kinds() -> Vec<String> {
    vec!["image".into(), "video".into(), "noop".into()]
}

/// A database engine, with dispatch by NATS JetStream or by the database itself.
#[derive(Debug, Clone, Copy)]
struct Backend {
    engine: Engine,
    nats: bool,
}

/// Every engine, each also with NATS when `TENFOLD_TEST_NATS_URL` is set.
fn backends() -> Vec<Backend> {
    let mut v = Vec::new();
    for engine in engines() {
        v.push(Backend {
            engine,
            nats: false,
        });
        if nats_url().is_some() {
            v.push(Backend { engine, nats: true });
        }
    }
    v
}

/// Claims one job that is due now or about to be given back: the database backend has it at the first
/// try; NATS redelivers a message whose ack wait or nak delay ended on the server's own timer, so its
/// claim is retried for up to 3 s (a job that never comes back still fails the test).
async fn claim_one(q: &JobQueue, worker: &str, lease: Duration) -> tenfold_store::queue::Lease {
    let t = std::time::Instant::now();
    loop {
        let mut got = q.claim(&all(), &kinds(), worker, 1, lease).await.unwrap();
        if !got.is_empty() {
            return got.remove(0);
        }
        assert!(t.elapsed() < Duration::from_secs(3), "no job came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn queue(db: &TestDb, b: Backend) -> (JobQueue, Option<TestNats>) {
    db.store().await; // migrates
    let q = JobQueue::connect(&db.url, Duration::from_secs(15))
        .await
        .unwrap()
        .with_backoff(Backoff {
            base: Duration::from_millis(40),
            cap: Duration::from_millis(200),
        });
    if !b.nats {
        return (q, None);
    }
    let nats = TestNats::new().unwrap();
    (q.with_nats(nats.opts.clone()).await.unwrap(), Some(nats))
}

#[tokio::test]
async fn enqueue_is_idempotent_by_key_and_claims_follow_priority_and_run_at() {
    for engine in backends() {
        let db = TestDb::new(engine.engine).await;
        let (q, _nats) = queue(&db, engine).await;
        let mut keyed = NewJob::new("media", "image", json!({"path": "a.jpg"}));
        keyed.idempotency_key = Some("upload-1".into());
        let (first, created) = q.enqueue(&keyed).await.unwrap();
        assert!(created);
        assert_eq!(first.state, JobState::Queued);
        keyed.args = json!({"path": "other.jpg"});
        let (again, created) = q.enqueue(&keyed).await.unwrap();
        assert!(!created, "{engine:?}");
        assert_eq!(again.id, first.id);
        assert_eq!(again.args, json!({"path": "a.jpg"}));

        let mut urgent = NewJob::new("media", "image", json!(1));
        urgent.priority = 5;
        let urgent = q.enqueue(&urgent).await.unwrap().0;
        let mut later = NewJob::new("media", "image", json!(2));
        later.run_at_ms = Some(chrono::Utc::now().timestamp_millis() + 60_000);
        let later = q.enqueue(&later).await.unwrap().0;
        let video = q
            .enqueue(&NewJob::new("media", "video", json!(3)))
            .await
            .unwrap()
            .0;
        // NATS: the outbox is published (workers are woken by the relay; tests wait for it).
        q.flush_outbox().await.unwrap();
        // A worker without a video handler leaves video jobs alone.
        let got = q
            .claim(&all(), &["image".into()], "w1", 10, LEASE)
            .await
            .unwrap();
        let ids: Vec<i64> = got.iter().map(|l| l.job.id).collect();
        assert_eq!(ids, vec![urgent.id, first.id], "{engine:?}");
        assert!(got
            .iter()
            .all(|l| l.job.state == JobState::Running && l.job.attempts == 1));
        assert_eq!(
            q.get(later.id).await.unwrap().unwrap().state,
            JobState::Queued
        );
        assert_eq!(
            q.get(video.id).await.unwrap().unwrap().state,
            JobState::Queued
        );

        let stats = q.stats().await.unwrap();
        assert_eq!(stats.len(), 1);
        let s = &stats[0];
        assert_eq!(
            (s.queue.as_str(), s.ready, s.scheduled, s.running, s.dead),
            ("media", 1, 1, 2, 0)
        );
    }
}

#[tokio::test]
async fn a_lost_lease_cannot_complete_and_the_next_claim_does() {
    for engine in backends() {
        let db = TestDb::new(engine.engine).await;
        let (q, _nats) = queue(&db, engine).await;
        let job = q
            .enqueue(&NewJob::new("media", "noop", json!({})))
            .await
            .unwrap()
            .0;
        q.flush_outbox().await.unwrap();
        let slow = q
            .claim(&all(), &kinds(), "slow", 1, Duration::from_millis(100))
            .await
            .unwrap()
            .remove(0);
        // The lease expires; a claim reaps expired leases at most once a second per process.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        // The next claim reaps it and takes the job with a newer token.
        let fast = claim_one(&q, "fast", LEASE).await;
        assert_eq!(fast.job.id, job.id);
        assert_eq!(fast.job.attempts, 2);
        assert!(fast.token > slow.token);
        assert_eq!(
            q.heartbeat(&slow, LEASE, Some(50)).await.unwrap(),
            Beat::Lost
        );
        assert!(
            !q.complete(&slow, &json!("slow")).await.unwrap(),
            "{engine:?}"
        );
        assert!(!q.fail(&slow, "x", Failure::Retryable).await.unwrap());
        assert_eq!(
            q.heartbeat(&fast, LEASE, Some(50)).await.unwrap(),
            Beat::Renewed
        );
        assert_eq!(q.get(job.id).await.unwrap().unwrap().progress, 50);
        // Completions batched in one statement: only the lease that holds the job counts.
        assert_eq!(
            q.complete_many(&[(&slow, &json!("slow")), (&fast, &json!("fast"))])
                .await
                .unwrap(),
            vec![job.id],
            "{engine:?}"
        );
        let done = q.get(job.id).await.unwrap().unwrap();
        assert_eq!(done.state, JobState::Done);
        assert_eq!(done.result, Some(json!("fast")));
        assert!(done.last_error.unwrap().contains("stopped heartbeating"));
        // Done jobs are counted on request, not by the cheap stats that gauges and autoscalers poll.
        assert_eq!(q.stats().await.unwrap()[0].done, 1);
        assert_eq!(q.active_stats().await.unwrap().len(), 0);
        // Finished jobs are pruned after their retention, not before.
        assert_eq!(q.prune(Duration::from_secs(3600)).await.unwrap(), 0);
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(q.prune(Duration::ZERO).await.unwrap(), 1);
        assert!(q.get(job.id).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn failures_back_off_then_dead_letter_and_dead_jobs_can_be_retried() {
    for engine in backends() {
        let db = TestDb::new(engine.engine).await;
        let (q, _nats) = queue(&db, engine).await;
        let mut new = NewJob::new("import", "noop", json!({}));
        new.max_attempts = 2;
        let job = q.enqueue(&new).await.unwrap().0;
        q.flush_outbox().await.unwrap();
        let l = q
            .claim(&all(), &kinds(), "w", 1, LEASE)
            .await
            .unwrap()
            .remove(0);
        assert!(q
            .fail(&l, "timeout talking to S3", Failure::Retryable)
            .await
            .unwrap());
        let j = q.get(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Queued);
        let wait = j.run_at_ms - j.updated_ms;
        assert!(
            (20..=40).contains(&wait),
            "backoff after attempt 1: {wait} ms"
        );
        // Not claimable during its backoff: a claim that got it must have run after the backoff ended
        // (on a loaded machine the 20-40 ms can pass before the claim runs).
        let claimed = q.claim(&all(), &kinds(), "w", 1, LEASE).await.unwrap();
        let after = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!(
            claimed.is_empty() || after >= j.run_at_ms,
            "claimed {} ms before its backoff ended",
            j.run_at_ms - after
        );
        if let Some(l) = claimed.into_iter().next() {
            // Put back as it was, so the rest of the test runs the same way.
            q.release(&l).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        let l = claim_one(&q, "w", LEASE).await;
        assert_eq!(l.job.attempts, 2);
        assert!(q
            .fail(&l, "timeout again", Failure::Retryable)
            .await
            .unwrap());
        let j = q.get(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Dead, "{engine:?}");
        assert!(j.last_error.as_deref().unwrap().contains("dead-lettered"));
        assert_eq!(q.stats().await.unwrap()[0].dead, 1);
        assert_eq!(q.retry_dead(Some("import")).await.unwrap(), 1);
        q.flush_outbox().await.unwrap();
        let l = claim_one(&q, "w", LEASE).await;
        assert_eq!(l.job.attempts, 1);
        // A permanent failure (bad input) ends the job at once.
        assert!(q
            .fail(&l, "not an image", Failure::Permanent)
            .await
            .unwrap());
        let j = q.get(job.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Failed);
        assert_eq!(j.last_error.as_deref(), Some("not an image"));
        assert_eq!(q.retry_dead(None).await.unwrap(), 0);
    }
}

#[tokio::test]
async fn release_does_not_count_an_attempt_and_cancel_stops_queued_and_running_jobs() {
    for engine in backends() {
        let db = TestDb::new(engine.engine).await;
        let (q, _nats) = queue(&db, engine).await;
        let a = q
            .enqueue(&NewJob::new("media", "noop", json!("a")))
            .await
            .unwrap()
            .0;
        q.flush_outbox().await.unwrap();
        let l = q
            .claim(&all(), &kinds(), "w", 1, LEASE)
            .await
            .unwrap()
            .remove(0);
        assert!(q.release(&l).await.unwrap());
        let j = q.get(a.id).await.unwrap().unwrap();
        assert_eq!((j.state, j.attempts), (JobState::Queued, 0));
        assert!(
            !q.complete(&l, &json!(null)).await.unwrap(),
            "released: fenced"
        );

        let l = claim_one(&q, "w", LEASE).await;
        let c = q.cancel(a.id).await.unwrap().unwrap();
        assert_eq!(c.state, JobState::Cancelled);
        assert_eq!(
            q.heartbeat(&l, LEASE, None).await.unwrap(),
            Beat::Cancelled,
            "{engine:?}"
        );
        assert!(!q.complete(&l, &json!(null)).await.unwrap());
        let b = q
            .enqueue(&NewJob::new("media", "noop", json!("b")))
            .await
            .unwrap()
            .0;
        assert_eq!(
            q.cancel(b.id).await.unwrap().unwrap().state,
            JobState::Cancelled
        );
        assert!(q
            .claim(&all(), &kinds(), "w", 10, LEASE)
            .await
            .unwrap()
            .is_empty());
        assert!(q.cancel(999_999).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn concurrent_claimers_take_each_job_once() {
    for engine in backends() {
        let db = TestDb::new(engine.engine).await;
        let (q, _nats) = queue(&db, engine).await;
        let q = Arc::new(q);
        for i in 0..400 {
            q.enqueue(&NewJob::new("media", "noop", json!(i)))
                .await
                .unwrap();
        }
        q.flush_outbox().await.unwrap();
        let mut tasks = Vec::new();
        for w in 0..4 {
            let q = q.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let got = q
                        .claim(&all(), &kinds(), &format!("w{w}"), 16, LEASE)
                        .await
                        .unwrap();
                    if got.is_empty() {
                        return mine;
                    }
                    for l in got {
                        assert!(q.complete(&l, &json!(w)).await.unwrap());
                        mine.push(l.job.id);
                    }
                }
            }));
        }
        let mut seen = HashSet::new();
        for t in tasks {
            for id in t.await.unwrap() {
                assert!(seen.insert(id), "{engine:?}: job {id} claimed twice");
            }
        }
        assert_eq!(seen.len(), 400);
    }
}

#[tokio::test]
async fn a_waiting_worker_wakes_on_an_enqueue() {
    for engine in backends() {
        let db = TestDb::new(engine.engine).await;
        let (q, _nats) = queue(&db, engine).await;
        let q = Arc::new(q);
        // PostgreSQL wakes by notification, well before this long poll; SQLite polls (so a short poll).
        // NATS: the relay wakes workers after it publishes.
        let poll = if db.url.starts_with("sqlite:") && !engine.nats {
            Duration::from_millis(50)
        } else {
            Duration::from_secs(20)
        };
        let mut waker = q.waker(poll).await.unwrap();
        let q2 = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            q2.enqueue(&NewJob::new("media", "noop", json!({})))
                .await
                .unwrap();
        });
        let t = std::time::Instant::now();
        waker.wait().await;
        if poll > Duration::from_secs(1) {
            // Woken by the notification, not by the poll.
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{engine:?}: {:?}",
                t.elapsed()
            );
            assert!(!q
                .claim(&all(), &kinds(), "w", 1, LEASE)
                .await
                .unwrap()
                .is_empty());
        }
    }
}
