//! What only the NATS JetStream backend has: the transactional outbox (a rolled-back enqueue publishes
//! nothing; a scheduled job stays in the outbox until it is due) and the sweeper that publishes again a
//! queued job whose message was lost. The semantics shared with the other backends are in queue.rs.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use serde_json::json;
use tenfold_store::queue::{JobQueue, NewJob, NewMedia};
use tenfold_test_support::{engines, nats_url, TestDb, TestNats};

const LEASE: Duration = Duration::from_secs(30);

async fn setup(db: &TestDb, nats: &TestNats) -> JobQueue {
    db.store().await; // migrates
    JobQueue::connect(&db.url, Duration::from_secs(15))
        .await
        .unwrap()
        .with_nats(nats.opts.clone())
        .await
        .unwrap()
}

/// Messages in the test's stream.
async fn messages(nats: &TestNats) -> u64 {
    let js = async_nats::jetstream::new(async_nats::connect(nats.opts.url.as_str()).await.unwrap());
    let mut s = js.get_stream(&nats.opts.stream).await.unwrap();
    s.info().await.unwrap().state.messages
}

async fn claim_within(q: &JobQueue, limit: Duration) -> Vec<tenfold_store::queue::Lease> {
    let t = Instant::now();
    loop {
        let got = q
            .claim(&["media".into()], &["noop".into()], "w", 10, LEASE)
            .await
            .unwrap();
        if !got.is_empty() || t.elapsed() > limit {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_rolled_back_enqueue_publishes_nothing_and_scheduled_jobs_wait_in_the_outbox() {
    if nats_url().is_none() {
        return;
    }
    for engine in engines() {
        let nats = TestNats::new().unwrap();
        let db = TestDb::new(engine).await;
        let q = setup(&db, &nats).await;
        let mut keyed = NewJob::new("media", "noop", json!({}));
        keyed.idempotency_key = Some("upload-7".into());
        let first = q.enqueue(&keyed).await.unwrap().0;
        // The media row and its job are one transaction: the job's key is taken, so neither is kept,
        // and no outbox row either.
        let media = NewMedia {
            blob_key: "originals/x.jpg".into(),
            media_type: "jpeg".into(),
            size: 10,
        };
        assert!(q.enqueue_media(1, &media, &keyed).await.is_err());
        q.flush_outbox().await.unwrap();
        assert_eq!(
            messages(&nats).await,
            1,
            "{engine:?}: only the committed job"
        );
        let got = claim_within(&q, Duration::from_secs(5)).await;
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].job.id, first.id);
        assert!(q.complete(&got[0], &json!(null)).await.unwrap());

        // A job for later is not in the stream before its time, and is claimable once it is due.
        let mut later = NewJob::new("media", "noop", json!({}));
        let due = chrono::Utc::now().timestamp_millis() + 1_500;
        later.run_at_ms = Some(due);
        let later = q.enqueue(&later).await.unwrap().0;
        q.flush_outbox().await.unwrap();
        assert_eq!(
            messages(&nats).await,
            0,
            "{engine:?}: acked, and the scheduled one waits"
        );
        let got = claim_within(&q, Duration::from_secs(10)).await;
        assert_eq!(got.len(), 1, "{engine:?}: the scheduled job came when due");
        assert_eq!(got[0].job.id, later.id);
        assert!(chrono::Utc::now().timestamp_millis() >= due);
    }
}

#[tokio::test]
async fn a_queued_job_whose_message_was_lost_is_published_again() {
    if nats_url().is_none() {
        return;
    }
    for engine in engines() {
        let mut nats = TestNats::new().unwrap();
        nats.opts.sweep_after = Duration::from_secs(1);
        let db = TestDb::new(engine).await;
        let q = setup(&db, &nats).await;
        let job = q
            .enqueue(&NewJob::new("media", "noop", json!({})))
            .await
            .unwrap()
            .0;
        q.flush_outbox().await.unwrap();
        assert_eq!(messages(&nats).await, 1);
        // The message is lost (here: the stream is purged).
        let js =
            async_nats::jetstream::new(async_nats::connect(nats.opts.url.as_str()).await.unwrap());
        js.get_stream(&nats.opts.stream)
            .await
            .unwrap()
            .purge()
            .await
            .unwrap();
        assert_eq!(messages(&nats).await, 0);
        // The sweeper finds the job queued with no message on its subject and publishes it again —
        // once: while the message is there, it does not add another.
        let got = {
            let t = Instant::now();
            while messages(&nats).await == 0 {
                assert!(
                    t.elapsed() < Duration::from_secs(15),
                    "{engine:?}: not swept"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            assert_eq!(messages(&nats).await, 1, "{engine:?}: swept once");
            claim_within(&q, Duration::from_secs(5)).await
        };
        assert_eq!(got.len(), 1, "{engine:?}");
        assert_eq!(got[0].job.id, job.id);
    }
}
