//! `tenfold up` as a user runs it: real processes on loopback, failures injected under load.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // reads /proc from plain test code

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tenfold");

struct Up {
    child: Child,
    url: String,
    admin: String,
    token: String,
    dir: tempfile::TempDir,
}

impl Drop for Up {
    /// A test that ends, or fails, with the supervisor still running stops it as a user would: SIGTERM,
    /// which drains and stops its instances; SIGKILL if it has not exited 10 s later.
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        sigterm(&self.child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_up() -> Up {
    start_up_with(&["--instances", "3"])
}

fn start_up_with(extra: &[&str]) -> Up {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--seed-products",
            "300",
        ])
        .args(extra)
        .env_remove("TENFOLD_API_KEY")
        .env_remove("TENFOLD_ADMIN_TOKEN")
        .env_remove("TENFOLD_DATABASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut admin, mut token) = (String::new(), String::new(), String::new());
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("tenfold is up: ") {
            url = rest.split_whitespace().next().unwrap().to_owned();
        } else if let Some(rest) = line.strip_prefix("admin API:") {
            admin = rest.trim().to_owned();
        } else if let Some(rest) = line.strip_prefix("admin token:") {
            token = rest.trim().to_owned();
        } else if line.starts_with("try:") {
            break;
        }
    }
    assert!(
        url.starts_with("http://") && admin.starts_with("http://") && token.len() >= 16,
        "{url} {admin}"
    );
    // Keep draining stdout so the supervisor never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    Up {
        child,
        url,
        admin,
        token,
        dir,
    }
}

/// GETs a path of the admin API with the token.
async fn admin_get(up: &Up, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", up.admin))
        .bearer_auth(&up.token)
        .send()
        .await
        .unwrap()
}

async fn fleet(up: &Up) -> Value {
    admin_get(up, "/instances").await.json().await.unwrap()
}

fn pids(f: &Value) -> Vec<u64> {
    f["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pid"].as_u64().unwrap())
        .collect()
}

async fn wait_for_instances(up: &Up, n: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = fleet(up).await;
        if f["instances"].as_array().unwrap().len() == n {
            return f;
        }
        assert!(
            Instant::now() < deadline,
            "fleet never reached {n} instances: {f}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// GET loops against the balancer until `stop`; returns (ok, failures).
fn load(url: String, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    load_with(url, stop, 4)
}

fn load_with(
    url: String,
    stop: Arc<AtomicBool>,
    workers: usize,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for w in 0..workers {
            let (url, stop) = (url.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let c = reqwest::Client::builder().no_proxy().build().unwrap();
                let (mut ok, mut bad) = (0, Vec::new());
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    i = i % 300 + 1;
                    match c.get(format!("{url}/api/products/{i}")).send().await {
                        Ok(r) if r.status() == 200 => ok += 1,
                        Ok(r) => bad.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => bad.push(e.to_string()),
                    }
                }
                (ok, bad)
            }));
        }
        let mut total = (0, Vec::new());
        for t in tasks {
            let (ok, bad) = t.await.unwrap();
            total.0 += ok;
            total.1.extend(bad);
        }
        total
    })
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

#[tokio::test]
async fn up_survives_kill_scale_and_rolling_restart_without_failed_requests() {
    let mut up = start_up();
    let first = wait_for_instances(&up, 3).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(up.url.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;

    // kill -9 one instance: it is replaced, and no client request fails.
    let victim = pids(&first)[1];
    assert!(Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let f = fleet(&up).await;
        let p = pids(&f);
        if p.len() == 3 && !p.contains(&victim) {
            assert_eq!(f["crash_restarts"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no replacement for the killed instance: {f}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Scale down (drains first) and up again, through the CLI.
    for n in ["2", "3"] {
        let out = Command::new(BIN)
            .current_dir(up.dir.path())
            .args(["scale", &format!("app={n}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_for_instances(&up, n.parse().unwrap()).await;
    }

    // Rolling restart: every instance replaced, one at a time.
    let before = pids(&fleet(&up).await);
    let out = Command::new(BIN)
        .current_dir(up.dir.path())
        .arg("restart")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = pids(&wait_for_instances(&up, 3).await);
    assert!(
        after.iter().all(|p| !before.contains(p)),
        "{before:?} -> {after:?}"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = running.await.unwrap();
    assert!(
        failed.is_empty(),
        "{ok} ok, {} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 200, "{ok}");

    // SIGTERM: everything stops, nothing is left running, the state file is gone.
    let children = pids(&fleet(&up).await);
    nix_term(&up);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = up.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "tenfold up did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.code(), Some(0));
    for p in children {
        assert!(!alive(p), "instance {p} outlived tenfold up");
    }
    assert!(!up.dir.path().join("data/up.json").exists());
}

#[tokio::test]
async fn instances_exit_when_the_supervisor_is_killed() {
    let mut up = start_up();
    let f = wait_for_instances(&up, 3).await;
    up.child.kill().unwrap(); // SIGKILL: no chance to clean up
    let _ = up.child.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in pids(&f) {
        while alive(p) {
            assert!(
                Instant::now() < deadline,
                "instance {p} outlived its supervisor"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_autoscaler_follows_the_load_and_says_why() {
    let up = start_up_with(&[
        "--instances",
        "1",
        "--min",
        "1",
        "--max",
        "2",
        "--scale-up-above",
        "1",
        "--scale-down-below",
        "0.2",
        "--cooldown-ms",
        "300",
    ]);
    wait_for_instances(&up, 1).await;
    let stop = Arc::new(AtomicBool::new(false));
    let running = load_with(up.url.clone(), stop.clone(), 24);
    let grown = wait_for_instances(&up, 2).await;
    assert_eq!(grown["target"], 2);
    stop.store(true, Ordering::SeqCst);
    let (_, failed) = running.await.unwrap();
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    // Idle again: back to the minimum.
    wait_for_instances(&up, 1).await;
    let m = admin_get(&up, "/metrics").await.text().await.unwrap();
    for dir in ["up", "down"] {
        assert!(
            m.contains(&format!(
                "up_scale_events_total{{direction=\"{dir}\",reason=\"autoscale\"}}"
            )),
            "{m}"
        );
    }
    assert!(m.contains("up_load_per_instance"), "{m}");
}

/// `tenfold worker` children of the supervisor.
fn worker_pids(up: &Up) -> Vec<u32> {
    let me = up.child.id();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == Some(me) && String::from_utf8_lossy(&cmd).contains("worker") {
            out.push(pid);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_workers_scale_with_the_queue_and_run_every_job() {
    let mut up = start_up_with(&[
        "--instances",
        "1",
        "--workers",
        "1",
        "--min-workers",
        "1",
        "--max-workers",
        "3",
        "--worker-concurrency",
        "2",
        "--cooldown-ms",
        "300",
    ]);
    wait_for_instances(&up, 1).await;
    let db = format!("sqlite://{}/data/tenfold.db", up.dir.path().display());
    let deadline = Instant::now() + Duration::from_secs(20);
    while worker_pids(&up).len() != 1 {
        assert!(Instant::now() < deadline, "one worker at start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let jobs = 120;
    let out = Command::new(BIN)
        .args([
            "jobs",
            "enqueue",
            "--database-url",
            &db,
            "--queue",
            "media",
            "--kind",
            "noop",
        ])
        .args([
            "--args",
            r#"{"sleep_ms": 200}"#,
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
    // A backlog of 120 jobs of 200 ms for one worker of 2: the pool grows.
    let deadline = Instant::now() + Duration::from_secs(30);
    while worker_pids(&up).len() < 2 {
        assert!(Instant::now() < deadline, "workers did not scale up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let s = Command::new(BIN)
            .args(["jobs", "stats", "--database-url", &db])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&s.stdout).into_owned();
        let done = text
            .lines()
            .find(|l| l.starts_with("media"))
            .and_then(|l| l.split_whitespace().nth(4))
            .and_then(|d| d.parse::<u64>().ok())
            .unwrap_or(0);
        if done == jobs {
            break;
        }
        assert!(Instant::now() < deadline, "jobs not done: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Idle again: back to the minimum.
    let deadline = Instant::now() + Duration::from_secs(60);
    while worker_pids(&up).len() > 1 {
        assert!(Instant::now() < deadline, "workers did not scale down");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pids = worker_pids(&up);
    nix_term(&up);
    let status = up.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    for p in pids {
        assert!(!alive(u64::from(p)), "worker {p} outlived tenfold up");
    }
}

fn nix_term(up: &Up) {
    assert!(sigterm(&up.child));
}

/// Sends SIGTERM to `child`; whether `kill` succeeded.
fn sigterm(child: &Child) -> bool {
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success())
}
