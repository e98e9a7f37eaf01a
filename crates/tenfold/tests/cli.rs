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
