//! `tenfold-loadgen`: the benchmarks' load tools (bench/overload.sh).
//!
//! - `open`: open-loop load at a fixed rate, whatever the answers: each request is sent on its tick and
//!   nobody waits for anybody (so an overloaded server cannot slow the load down, as closed-loop tools
//!   let it), as two classes (critical and other, the other marked with `X-Criticality`); per class it
//!   reports what was sent, served, shed (503) and failed, goodput and latency percentiles.
//! - `closed`: N connections back to back, to find a server's capacity.
//! - `delay-proxy`: a TCP proxy that holds every chunk the upstream sends for the number of milliseconds
//!   written in a file (re-read every 100 ms), to inject database latency and take it away again.
//!
//! URL templates: `{id}` becomes a random id in 1..=`--ids`, `{rand}` a random number (a cache miss).
//! Loopback only: the targets are the caller's, and every run is bounded by `--duration`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use rand::Rng;

#[derive(Parser)]
#[command(
    name = "tenfold-loadgen",
    about = "Benchmark load tools (open-loop load, capacity probe, latency proxy)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Open-loop load in two classes; prints one JSON object.
    Open {
        /// Critical requests' URL template.
        #[arg(long)]
        critical: String,
        /// The other requests' URL template.
        #[arg(long)]
        other: String,
        /// The other requests' class (sent as X-Criticality).
        #[arg(long, default_value = "degradable")]
        other_class: String,
        /// Requests per second, both classes together.
        #[arg(long)]
        rate: f64,
        /// The critical share of them (0-1).
        #[arg(long, default_value_t = 0.3)]
        critical_share: f64,
        /// Seconds to send for.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// A request not answered within this many seconds counts as failed.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// `{id}` ranges over 1..=ids.
        #[arg(long, default_value_t = 1000)]
        ids: u64,
    },
    /// Closed-loop: `concurrency` connections back to back; prints one JSON object.
    Closed {
        /// URL template.
        #[arg(long)]
        url: String,
        /// Another URL template, mixed in (the rest of the requests).
        #[arg(long)]
        other: Option<String>,
        /// The share of requests to `url` when `other` is given (0-1).
        #[arg(long, default_value_t = 1.0)]
        share: f64,
        /// Connections.
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// `{id}` ranges over 1..=ids.
        #[arg(long, default_value_t = 1000)]
        ids: u64,
    },
    /// A latency-injecting TCP proxy; prints the address it listens on.
    DelayProxy {
        /// Where to listen (loopback).
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Where to forward.
        #[arg(long)]
        upstream: String,
        /// A file holding the delay in milliseconds (missing or unreadable: 0).
        #[arg(long)]
        delay_file: std::path::PathBuf,
    },
}

fn fill(template: &str, ids: u64) -> String {
    let mut rng = rand::rng();
    template
        .replace("{id}", &rng.random_range(1..=ids.max(1)).to_string())
        .replace("{rand}", &rng.random::<u64>().to_string())
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    shed: AtomicU64,
    failed: AtomicU64,
    /// Latencies of served requests, in µs.
    latencies: Mutex<Vec<u32>>,
}

impl Tally {
    fn report(&self, seconds: f64) -> serde_json::Value {
        let mut l = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        l.sort_unstable();
        let pct = |p: f64| -> f64 {
            if l.is_empty() {
                return 0.0;
            }
            let i = ((p * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1;
            f64::from(l[i]) / 1000.0
        };
        let ok = self.ok.load(Ordering::Relaxed);
        serde_json::json!({
            "sent": self.sent.load(Ordering::Relaxed),
            "ok": ok,
            "shed": self.shed.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "goodput_rps": ok as f64 / seconds,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
        })
    }
}

fn client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .no_proxy()
        .timeout(timeout)
        .pool_max_idle_per_host(4096)
        .http1_only()
        .build()?)
}

#[allow(clippy::too_many_arguments)]
async fn open(
    critical: String,
    other: String,
    other_class: String,
    rate: f64,
    share: f64,
    duration: Duration,
    timeout: Duration,
    ids: u64,
) -> anyhow::Result<serde_json::Value> {
    anyhow::ensure!(
        rate > 0.0 && rate <= 1e6,
        "--rate must be between 0 and 1000000"
    );
    let http = client(timeout)?;
    let tallies = [Arc::new(Tally::default()), Arc::new(Tally::default())];
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut n: u64 = 0;
    // Each request's send time is fixed by the schedule (start + n × period), not by the answers.
    while start.elapsed() < duration {
        let due = start + period.mul_f64(n as f64);
        tokio::time::sleep_until(due.into()).await;
        n += 1;
        let is_critical = rand::rng().random::<f64>() < share;
        let tally = tallies[usize::from(is_critical)].clone();
        let mut req = http.get(fill(if is_critical { &critical } else { &other }, ids));
        if !is_critical {
            req = req.header("x-criticality", &other_class);
        }
        tally.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let t = Instant::now();
            match req.send().await {
                Ok(r) if r.status().is_success() => {
                    let _ = r.bytes().await;
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                    let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                    if let Ok(mut l) = tally.latencies.lock() {
                        l.push(us);
                    }
                }
                Ok(r) if r.status() == 503 => {
                    tally.shed.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    let sent_for = start.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    Ok(serde_json::json!({
        "offered_rps": rate,
        "seconds": sent_for,
        "critical": tallies[1].report(sent_for),
        "other": tallies[0].report(sent_for),
    }))
}

async fn closed(
    url: String,
    other: Option<String>,
    share: f64,
    concurrency: usize,
    duration: Duration,
    ids: u64,
) -> anyhow::Result<serde_json::Value> {
    let http = client(Duration::from_secs(10))?;
    let tally = Arc::new(Tally::default());
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (http, url, other, tally) = (http.clone(), url.clone(), other.clone(), tally.clone());
        tasks.spawn(async move {
            while start.elapsed() < duration {
                tally.sent.fetch_add(1, Ordering::Relaxed);
                let target = match &other {
                    Some(o) if rand::rng().random::<f64>() >= share => o,
                    _ => &url,
                };
                let t = Instant::now();
                match http.get(fill(target, ids)).send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        let us = t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32;
                        if let Ok(mut l) = tally.latencies.lock() {
                            l.push(us);
                        }
                    }
                    _ => {
                        tally.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    Ok(tally.report(start.elapsed().as_secs_f64()))
}

async fn delay_proxy(
    listen: String,
    upstream: String,
    delay_file: std::path::PathBuf,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    anyhow::ensure!(
        listener.local_addr()?.ip().is_loopback(),
        "the proxy listens on loopback only"
    );
    println!("{}", listener.local_addr()?);
    let delay = Arc::new(AtomicU64::new(0));
    {
        let delay = delay.clone();
        tokio::spawn(async move {
            loop {
                let ms = tokio::fs::read_to_string(&delay_file)
                    .await
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .unwrap_or(0);
                delay.store(ms, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    loop {
        let (client, _) = listener.accept().await?;
        let (upstream, delay) = (upstream.clone(), delay.clone());
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            let up = tokio::spawn(async move { tokio::io::copy(&mut cr, &mut sw).await });
            // Answers are held for the delay: every query the upstream answers is that much slower.
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let n = match sr.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let ms = delay.load(Ordering::Relaxed);
                if ms > 0 {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                if cw.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
            up.abort();
        });
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out = match Cli::parse().cmd {
        Cmd::Open {
            critical,
            other,
            other_class,
            rate,
            critical_share,
            duration,
            timeout,
            ids,
        } => {
            open(
                critical,
                other,
                other_class,
                rate,
                critical_share.clamp(0.0, 1.0),
                Duration::from_secs_f64(duration.clamp(0.1, 3600.0)),
                Duration::from_secs_f64(timeout.clamp(0.1, 600.0)),
                ids,
            )
            .await?
        }
        Cmd::Closed {
            url,
            other,
            share,
            concurrency,
            duration,
            ids,
        } => {
            closed(
                url,
                other,
                share.clamp(0.0, 1.0),
                concurrency,
                Duration::from_secs_f64(duration.clamp(0.1, 3600.0)),
                ids,
            )
            .await?
        }
        Cmd::DelayProxy {
            listen,
            upstream,
            delay_file,
        } => return delay_proxy(listen, upstream, delay_file).await,
    };
    println!("{out}");
    Ok(())
}
