//! `tenfold worker` processes killed with SIGKILL at random while they work through a queue: no job is
//! lost, none is wrongly dead-lettered, every job ends done once with its effect applied once — on each
//! backend (SQLite and PostgreSQL, each dispatching by itself and through NATS JetStream). CI runs
//! 1,500 jobs per backend; `TENFOLD_SOAK=1` runs the full 10,000:
//! `TENFOLD_SOAK=1 cargo test -p tenfold --test jobs -- --nocapture`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // drives real processes

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenfold_store::queue::{JobQueue, NatsOptions};
use tenfold_test_support::{engines, TestDb, TestNats};

const BIN: &str = env!("CARGO_BIN_EXE_tenfold");

/// What every process of one run shares: the database, the blob directory and (maybe) the NATS stream.
struct Env<'a> {
    db: &'a str,
    media: &'a std::path::Path,
    nats: Option<&'a NatsOptions>,
}

fn tenfold(e: &Env<'_>) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TENFOLD_DATABASE_URL")
        .env_remove("TENFOLD_CONFIG")
        .env_remove("TENFOLD_NATS_URL")
        .env("RUST_LOG", "warn")
        .env("TENFOLD_MEDIA__DIR", e.media)
        .args(["--database-url", e.db]);
    if let Some(n) = e.nats {
        c.env("TENFOLD_NATS_URL", &n.url)
            .env("TENFOLD_JOBS__NATS_STREAM", &n.stream)
            .env("TENFOLD_JOBS__NATS_SUBJECT_PREFIX", &n.subject_prefix);
    }
    c
}

fn start_worker(e: &Env<'_>) -> Child {
    tenfold(e)
        .args([
            "worker",
            "--queues",
            "media",
            "--concurrency",
            "8",
            "--lease-ms",
            "1000",
            "--grace-ms",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_killed_at_random_lose_no_job_and_dead_letter_none() {
    let jobs: u64 = if std::env::var("TENFOLD_SOAK").is_ok_and(|v| v == "1") {
        10_000
    } else {
        1_500
    };
    let mut backends = Vec::new();
    for engine in engines() {
        backends.push((engine, None));
        if let Some(n) = TestNats::new() {
            backends.push((engine, Some(n)));
        }
    }
    for (engine, nats) in &backends {
        let label = format!("{engine:?}{}", if nats.is_some() { " + NATS" } else { "" });
        let db = TestDb::new(*engine).await;
        let media = tempfile::tempdir().unwrap();
        let env = Env {
            db: &db.url,
            media: media.path(),
            nats: nats.as_ref().map(|n| &n.opts),
        };
        let out = tenfold(&env)
            .args([
                "jobs",
                "enqueue",
                "--queue",
                "media",
                "--kind",
                "mark",
                "--args",
                r#"{"sleep_ms": 15}"#,
                "--count",
                &jobs.to_string(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let q = JobQueue::connect(&db.url, Duration::from_secs(15))
            .await
            .unwrap();

        let mut workers: Vec<Child> = (0..3).map(|_| start_worker(&env)).collect();
        let started = Instant::now();
        let (mut kills, mut n) = (0, 0u64);
        let stats = loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let s = q.stats().await.unwrap().remove(0);
            if s.done + s.dead + s.failed == jobs as i64 {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(240),
                "{label}: not finished: {s:?}"
            );
            // Kill one worker at random (a cheap LCG is random enough here) and start a replacement.
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let victim = (n >> 33) as usize % workers.len();
            workers[victim].kill().unwrap(); // SIGKILL
            workers[victim].wait().unwrap();
            workers[victim] = start_worker(&env);
            kills += 1;
        };
        for mut w in workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        eprintln!("{label}: {jobs} jobs, {kills} workers killed, {stats:?}");
        assert_eq!(stats.dead, 0, "{label}: none wrongly dead-lettered");
        assert_eq!(stats.failed, 0);
        assert_eq!(stats.done, jobs as i64, "{label}: every job done");
        assert!(kills >= 3, "the test killed workers mid-run ({kills})");
        // Kills interrupted running jobs, which ran again after their leases expired.
        let mut rerun = 0;
        for id in 1..=jobs as i64 {
            let j = q.get(id).await.unwrap().unwrap();
            if j.attempts > 1 {
                rerun += 1;
            }
            // Its effect is there, once, whether it ran once or more.
            let mark = std::fs::read_to_string(media.path().join(format!("marks/{id}"))).unwrap();
            assert_eq!(mark, id.to_string(), "{label}: job {id}'s mark");
        }
        let marks = std::fs::read_dir(media.path().join("marks"))
            .unwrap()
            .count();
        assert_eq!(marks, jobs as usize, "{label}: one mark per job, no other");
        eprintln!("{label}: {rerun} jobs ran more than once (their worker was killed)");
        assert!(rerun > 0, "{label}: no kill hit a running job");
    }
}
