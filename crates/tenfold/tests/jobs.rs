//! `tenfold worker` processes killed with SIGKILL at random while they work through a queue: no job is
//! lost, none is wrongly dead-lettered, every job ends done once — on each backend. CI runs 1,500 jobs;
//! `TENFOLD_SOAK=1` runs the full 10,000.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // drives real processes

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tenfold_store::queue::JobQueue;
use tenfold_test_support::{engines, TestDb};

const BIN: &str = env!("CARGO_BIN_EXE_tenfold");

fn tenfold(db: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env_remove("TENFOLD_DATABASE_URL")
        .env_remove("TENFOLD_CONFIG")
        .env("RUST_LOG", "warn")
        .args(["--database-url", db]);
    c
}

fn start_worker(db: &str) -> Child {
    tenfold(db)
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
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let out = tenfold(&db.url)
            .args([
                "jobs",
                "enqueue",
                "--queue",
                "media",
                "--kind",
                "noop",
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

        let mut workers: Vec<Child> = (0..3).map(|_| start_worker(&db.url)).collect();
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
                "{engine:?}: not finished: {s:?}"
            );
            // Kill one worker at random (a cheap LCG is random enough here) and start a replacement.
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let victim = (n >> 33) as usize % workers.len();
            workers[victim].kill().unwrap(); // SIGKILL
            workers[victim].wait().unwrap();
            workers[victim] = start_worker(&db.url);
            kills += 1;
        };
        for mut w in workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        eprintln!("{engine:?}: {jobs} jobs, {kills} workers killed, {stats:?}");
        assert_eq!(stats.dead, 0, "{engine:?}: none wrongly dead-lettered");
        assert_eq!(stats.failed, 0);
        assert_eq!(stats.done, jobs as i64, "{engine:?}: every job done");
        assert!(kills >= 3, "the test killed workers mid-run ({kills})");
        // Kills interrupted running jobs, which ran again after their leases expired.
        let mut rerun = 0;
        for id in 1..=jobs as i64 {
            if let Some(j) = q.get(id).await.unwrap() {
                if j.attempts > 1 {
                    rerun += 1;
                }
            }
        }
        eprintln!("{engine:?}: {rerun} jobs ran more than once (their worker was killed)");
        assert!(rerun > 0, "{engine:?}: no kill hit a running job");
    }
}
