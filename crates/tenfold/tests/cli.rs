//! The real binary, as a user runs it: exit codes, the printed address, graceful shutdown.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
#![allow(clippy::disallowed_methods)] // these tests drive real processes from plain threads

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tenfold_test_support::{Engine, TestDb, TEST_API_KEY};

const BIN: &str = env!("CARGO_BIN_EXE_tenfold");

fn tenfold(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(dir)
        .env_remove("TENFOLD_API_KEY")
        .env_remove("TENFOLD_DATABASE_URL")
        .env_remove("TENFOLD_CONFIG");
    c
}

/// Starts `tenfold app` on port 0 and returns the child and the address it printed.
fn start_app(dir: &std::path::Path, db_url: &str) -> (Child, String) {
    let mut child = tenfold(dir)
        .args(["app", "--listen", "127.0.0.1:0", "--database-url", db_url])
        .env("TENFOLD_API_KEY", TEST_API_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tenfold app");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read address");
    let addr = line.trim().to_owned();
    assert!(
        addr.parse::<std::net::SocketAddr>().is_ok(),
        "first stdout line is the bound address: {line:?}"
    );
    (child, addr)
}

fn http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn sigterm(child: &Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("process did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, addr) = start_app(dir.path(), "sqlite://data/tenfold.db");
    assert!(
        dir.path().join("data/tenfold.db").exists(),
        "the SQLite file is created under ./data"
    );
    assert!(http(
        &addr,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .starts_with("HTTP/1.1 200"));

    // A write is in flight: headers and half the body sent when SIGTERM arrives.
    let body = r#"{"slug":"in-flight","name":"In flight"}"#;
    let (first, rest) = body.split_at(10);
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(
        s,
        "POST /api/categories HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TEST_API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{first}",
        body.len()
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    sigterm(&child);
    std::thread::sleep(Duration::from_millis(300));
    // New connections are refused once shutdown began...
    assert!(
        TcpStream::connect(&addr).is_err()
            || http(&addr, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").is_empty()
    );
    // ...but the in-flight request completes.
    s.write_all(rest.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    assert!(out.starts_with("HTTP/1.1 201"), "{out}");
    let status = wait_exit(&mut child, Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn bad_configuration_exits_64_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[http]\nlisten_addr = \"x\"\n").unwrap();
    type Case<'a> = (Vec<&'a str>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        (vec!["app", "--listen", "nope"], vec![], "--listen"),
        (
            vec!["app"],
            vec![("TENFOLD_HTTP__BODY_LIMIT_BYTES", "1")],
            "http.body_limit_bytes",
        ),
        (
            vec!["app", "--database-url", "mysql://root@localhost/x"],
            vec![],
            "not supported yet",
        ),
        (
            vec!["config", "--config", "bad.toml"],
            vec![],
            "listen_addr",
        ),
        (
            vec!["config", "--config", "missing.toml"],
            vec![],
            "does not exist",
        ),
        (
            vec!["app"],
            vec![("TENFOLD_API_KEY", "short")],
            "at least 16",
        ),
        (vec!["frobnicate"], vec![], "frobnicate"),
    ];
    for (args, env, expect) in cases {
        let out = tenfold(dir.path())
            .args(&args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(expect), "{args:?}: {err}");
    }
}

#[test]
fn config_shows_layers_and_masks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("tenfold.toml"),
        "[http]\nbody_limit_bytes = 4096\n",
    )
    .unwrap();
    let out = tenfold(dir.path())
        .args([
            "config",
            "--database-url",
            "postgres://app:s3cret-pw@db.internal/catalog",
        ])
        .env("TENFOLD_API_KEY", "super-secret-api-key-1")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("body_limit_bytes = 4096"), "{text}");
    assert!(
        text.contains("db.internal/catalog") && text.contains("********"),
        "{text}"
    );
    assert!(
        !text.contains("s3cret-pw") && !text.contains("super-secret-api-key-1"),
        "{text}"
    );
}

#[test]
fn seed_twice_adds_nothing_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let run = || {
        tenfold(dir.path())
            .args(["seed", "--products", "1500", "--seed", "5"])
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("seeded 1500 new products"));
    let second = run();
    assert!(
        String::from_utf8_lossy(&second.stdout).contains("seeded 0 new products"),
        "{}",
        String::from_utf8_lossy(&second.stdout)
    );
    let m = tenfold(dir.path()).arg("migrate").output().unwrap();
    assert!(m.status.success());
}

#[tokio::test]
async fn app_runs_on_postgres_when_configured() {
    if tenfold_test_support::engines().len() < 2 {
        return; // TENFOLD_TEST_POSTGRES_URL unset: the SQLite tests above cover the binary.
    }
    let db = TestDb::new(Engine::Postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let url = db.url.clone();
    let d = dir.path().to_owned();
    let (mut child, addr) = tokio::task::spawn_blocking(move || start_app(&d, &url))
        .await
        .unwrap();
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["database"], "postgres");
    sigterm(&child);
    let status =
        tokio::task::spawn_blocking(move || wait_exit(&mut child, Duration::from_secs(15)))
            .await
            .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// Starts `tenfold lb` with an admin API; returns the child, its address and the admin address.
fn start_lb(dir: &std::path::Path, args: &[&str]) -> (Child, String, String) {
    let mut child = tenfold(dir)
        .args([
            "lb",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args(args)
        .env("TENFOLD_ADMIN_TOKEN", "admin-token-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tenfold lb");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let (mut lb, mut admin) = (String::new(), String::new());
    out.read_line(&mut lb).unwrap();
    out.read_line(&mut admin).unwrap();
    (child, lb.trim().to_owned(), admin.trim().to_owned())
}

fn admin_backends(admin: &str) -> Vec<String> {
    let resp = http(admin, "GET /backends HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer admin-token-0123456789\r\nConnection: close\r\n\r\n");
    let body = resp.split("\r\n\r\n").nth(1).unwrap_or("");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    v["backends"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| b["addr"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sighup_reloads_the_backend_list() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, addr_a) = start_app(dir.path(), "sqlite://a.db");
    let (mut b, addr_b) = start_app(dir.path(), "sqlite://b.db");
    std::fs::write(
        dir.path().join("tenfold.toml"),
        format!("[lb]\nbackends = [{{ addr = \"{addr_a}\" }}]\n"),
    )
    .unwrap();
    let (mut lb, lb_addr, admin) = start_lb(dir.path(), &[]);
    assert_eq!(admin_backends(&admin), vec![addr_a.clone()]);
    assert!(http(
        &lb_addr,
        "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .starts_with("HTTP/1.1 200"));
    std::fs::write(
        dir.path().join("tenfold.toml"),
        format!("[lb]\nbackends = [{{ addr = \"{addr_b}\", weight = 2 }}]\n"),
    )
    .unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &lb.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while admin_backends(&admin) != [addr_b.clone()] {
        assert!(
            std::time::Instant::now() < deadline,
            "reload did not apply: {:?}",
            admin_backends(&admin)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A broken file on reload keeps the current backends.
    std::fs::write(
        dir.path().join("tenfold.toml"),
        "[lb]\nbackends = \"nope\"\n",
    )
    .unwrap();
    assert!(Command::new("kill")
        .args(["-HUP", &lb.id().to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(admin_backends(&admin), vec![addr_b.clone()]);
    for c in [&lb, &a, &b] {
        sigterm(c);
    }
    for c in [&mut lb, &mut a, &mut b] {
        assert_eq!(wait_exit(c, Duration::from_secs(15)).code(), Some(0));
    }
}

/// A backend that reads request bodies to the end and answers with the byte count.
async fn byte_sink() -> String {
    use futures::StreamExt;
    let app = axum::Router::new()
        .route("/healthz", axum::routing::get(|| async { "ok" }))
        .route(
            "/upload",
            axum::routing::post(|body: axum::body::Body| async move {
                let mut n = 0usize;
                let mut s = body.into_data_stream();
                while let Some(Ok(chunk)) = s.next().await {
                    n += chunk.len();
                }
                n.to_string()
            }),
        )
        .layer(axum::extract::DefaultBodyLimit::disable());
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await });
    addr
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_upload_streams_through_the_balancer_in_constant_memory() {
    // CI sends 256 MiB; `TENFOLD_UPLOAD_MIB=1024 cargo test -p tenfold --test cli large_upload` is the full 1 GiB run.
    let mib: usize = std::env::var("TENFOLD_UPLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let sink = byte_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_owned();
    let (mut lb, lb_addr, _admin) =
        tokio::task::spawn_blocking(move || start_lb(&d, &["--backend", &sink]))
            .await
            .unwrap();
    let before = peak_rss_kib(lb.id());
    let chunks =
        futures::stream::iter((0..mib).map(|_| Ok::<_, std::io::Error>(vec![b'x'; 1 << 20])));
    let r = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(format!("http://{lb_addr}/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.text().await.unwrap(),
        (mib << 20).to_string(),
        "every byte arrived"
    );
    let after = peak_rss_kib(lb.id());
    assert!(
        after < before + 32 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB for a {mib} MiB upload"
    );
    sigterm(&lb);
    let status = tokio::task::spawn_blocking(move || wait_exit(&mut lb, Duration::from_secs(15)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `tenfold seed` into the database of a running instance: the instance's cached category counts and list
/// pages move on at once (the seed announces itself on the change feed).
#[test]
#[allow(clippy::disallowed_methods)] // a plain test thread polls a child process
fn seeding_under_a_running_instance_refreshes_its_cached_lists() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/data/tenfold.db", dir.path().display());
    let seed = |n: &str| {
        let out = tenfold(dir.path())
            .args(["seed", "--products", n, "--database-url", &db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    seed("20");
    let (mut app, addr) = start_app(dir.path(), &db);
    let total = |addr: &str| -> i64 {
        let r = http(
            addr,
            "GET /api/categories HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        );
        let body = r.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["product_count"].as_i64().unwrap())
            .sum()
    };
    assert_eq!(total(&addr), 20);
    assert_eq!(total(&addr), 20, "now cached");
    seed("60");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while total(&addr) != 60 {
        assert!(
            std::time::Instant::now() < deadline,
            "the cached counts never moved"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sigterm(&app);
    wait_exit(&mut app, Duration::from_secs(10));
}

#[test]
fn shards_status_shows_the_stored_map_and_refuses_a_changed_shard_count() {
    let dir = tempfile::tempdir().unwrap();
    let status = |shards: &[&str]| {
        let mut c = tenfold(dir.path());
        c.args(["shards", "status"]);
        for s in shards {
            c.args(["--shard-url", s]);
        }
        c.output().unwrap()
    };
    let two = ["sqlite://data/orders-a.db", "sqlite://data/orders-b.db"];
    let out = status(&two);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1024 buckets over 2 shards"), "{text}");
    assert_eq!(text.matches("  512  ").count(), 2, "{text}");
    // The map is stored: the same answer again, and one shard fewer is refused with a clear line.
    assert!(status(&two).status.success());
    let out = status(&two[..1]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("places buckets on 2 shards"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // A third URL at the end adds an empty shard; buckets move onto it one by one.
    let three = [two[0], two[1], "sqlite://data/orders-c.db"];
    let shards = |args: &[&str]| {
        let mut c = tenfold(dir.path());
        c.arg("shards").args(args);
        for s in three {
            c.args(["--shard-url", s]);
        }
        c.env("RUST_LOG", "off").output().unwrap()
    };
    let out = shards(&["move", "--bucket", "7", "--to", "2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("moved bucket 7 from shard 1 to shard 2"),
        "{text}"
    );
    let out = shards(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("1024 buckets over 3 shards"), "{text}");
    assert!(
        text.contains("  511  ") && text.contains("  512  "),
        "{text}"
    );
    assert!(text.contains("moves in progress: none"), "{text}");
    let out = shards(&["bucket", "--customer", "1"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "customer 1: bucket 193, on shard 1"
    );
    // A shard that does not exist, or a bucket out of range: one line and a non-zero exit.
    for bad in [
        &["move", "--bucket", "7", "--to", "3"][..],
        &["move", "--bucket", "1024", "--to", "0"][..],
    ] {
        let out = shards(bad);
        assert!(!out.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("shard 3") || err.contains("1024"), "{err}");
    }
}
