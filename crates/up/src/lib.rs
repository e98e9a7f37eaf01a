//! The local supervisor and autoscaler behind `tenfold up`.
//!
//! Role: run N copies of `tenfold app` as child processes on free loopback ports behind an in-process
//! load balancer; restart crashed ones with backoff; scale between a minimum and a maximum on the
//! balancer's in-flight load with hysteresis and cooldown; replace every instance one at a time on a
//! rolling restart; and stop everything on shutdown.
//!
//! Invariant: an instance receives traffic only after its `/readyz` answered 200, and leaves the
//! balancer (drained: no new requests, in-flight ones finish) before it is told to stop. Children exit
//! when the supervisor dies: each watches its stdin, a pipe only the supervisor holds.
//!
//! Entry points: [`Supervisor::start`], [`Supervisor::scale_to`], [`Supervisor::rolling_restart`],
//! [`Supervisor::shutdown`], [`Supervisor::admin_routes`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tenfold_config::BackendSpec;
use tenfold_lb::Lb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, Mutex};

mod workers;
pub use workers::{WorkerPool, WorkerPoolOptions};

/// How the supervisor runs instances and scales them.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// The `tenfold` executable to run as `tenfold app`.
    pub exe: PathBuf,
    /// Instances at start.
    pub instances: usize,
    /// Fewest instances the autoscaler keeps.
    pub min: usize,
    /// Most instances the autoscaler starts.
    pub max: usize,
    /// Environment for every instance (database URL, API key, log settings).
    pub env: Vec<(String, String)>,
    /// Scale up when the smoothed in-flight requests per instance exceed this.
    pub scale_up_above: f64,
    /// Scale down when it stays below this.
    pub scale_down_below: f64,
    /// How often the autoscaler samples the load.
    pub sample_every: Duration,
    /// No scaling decision within this long of the previous one.
    pub cooldown: Duration,
    /// An instance must be ready within this long of its start.
    pub start_timeout: Duration,
    /// A stopping instance gets this long before it is killed.
    pub stop_grace: Duration,
}

/// One running instance, as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InstanceInfo {
    /// Supervisor-assigned id (grows with every start).
    pub id: u64,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its process id.
    pub pid: u32,
    /// Seconds since it started.
    pub uptime_s: f64,
}

/// `GET /instances`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fleet {
    /// Instances wanted now.
    pub target: usize,
    /// Autoscaler bounds.
    pub min: usize,
    /// Autoscaler bounds.
    pub max: usize,
    /// Restarts after crashes so far.
    pub crash_restarts: u64,
    /// Smoothed in-flight requests per instance (the autoscaler's signal).
    pub load_per_instance: f64,
    /// Running instances.
    pub instances: Vec<InstanceInfo>,
}

struct Instance {
    id: u64,
    addr: SocketAddr,
    pid: u32,
    started: Instant,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<()>>,
    _stdin: ChildStdin,
}

enum Event {
    Exited { id: u64, status: String },
}

struct Inner {
    lb: Lb,
    opts: UpOptions,
    instances: Mutex<Vec<Instance>>,
    /// Serializes scaling, restarts and reconciliation.
    ops: Mutex<()>,
    target: AtomicUsize,
    min: AtomicUsize,
    max: AtomicUsize,
    next_id: AtomicU64,
    crash_restarts: AtomicU64,
    crash_streak: AtomicU32,
    shutting_down: AtomicBool,
    /// The autoscaler's smoothed signal, as f64 bits.
    load: AtomicU64,
    events: mpsc::Sender<Event>,
}

/// The supervisor. Cheap to clone.
#[derive(Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

impl Supervisor {
    /// Starts `opts.instances` instances behind `lb`, then supervises and autoscales them until
    /// [`Supervisor::shutdown`].
    pub async fn start(lb: Lb, opts: UpOptions) -> anyhow::Result<Supervisor> {
        let (tx, rx) = mpsc::channel(64);
        let n = opts.instances.clamp(1, 64);
        let sup = Supervisor {
            inner: Arc::new(Inner {
                lb,
                min: AtomicUsize::new(opts.min.clamp(1, n)),
                max: AtomicUsize::new(opts.max.max(n)),
                opts,
                instances: Mutex::new(Vec::new()),
                ops: Mutex::new(()),
                target: AtomicUsize::new(n),
                next_id: AtomicU64::new(1),
                crash_restarts: AtomicU64::new(0),
                crash_streak: AtomicU32::new(0),
                shutting_down: AtomicBool::new(false),
                load: AtomicU64::new(0f64.to_bits()),
                events: tx,
            }),
        };
        {
            let _g = sup.inner.ops.lock().await;
            let started = join_all((0..n).map(|_| sup.spawn_instance())).await;
            for s in started {
                let inst = s?;
                sup.inner.instances.lock().await.push(inst);
            }
        }
        sup.publish_gauges().await;
        tokio::spawn(sup.clone().control_loop(rx));
        tokio::spawn(sup.clone().autoscale_loop());
        Ok(sup)
    }

    /// Starts one `tenfold app`, waits until it is ready, and adds it to the balancer.
    async fn spawn_instance(&self) -> anyhow::Result<Instance> {
        let o = &self.inner.opts;
        let mut child = Command::new(&o.exe)
            .args(["app", "--listen", "127.0.0.1:0", "--exit-on-stdin-eof"])
            .envs(o.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", o.exe.display()))?;
        let pid = child.id().unwrap_or(0);
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        let ready = async {
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).await?;
            let addr: SocketAddr = line
                .trim()
                .parse()
                .with_context(|| format!("instance printed {line:?} instead of its address"))?;
            while !ready(addr).await {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            anyhow::Ok(addr)
        };
        let addr = match tokio::time::timeout(o.start_timeout, ready).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                let _ = child.kill().await;
                return Err(e);
            }
            Err(_) => {
                let _ = child.kill().await;
                anyhow::bail!(
                    "instance (pid {pid}) was not ready within {} ms",
                    o.start_timeout.as_millis()
                );
            }
        };
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        tokio::spawn(monitor(
            id,
            child,
            stop_rx,
            done_tx,
            self.inner.events.clone(),
            o.stop_grace,
        ));
        self.inner
            .lb
            .add_backend(&BackendSpec { addr, weight: 1 })
            .map_err(|e| anyhow::anyhow!(e))?;
        tracing::info!(id, %addr, pid, "instance ready and in rotation");
        Ok(Instance {
            id,
            addr,
            pid,
            started: Instant::now(),
            stop: Some(stop_tx),
            done: Some(done_rx),
            _stdin: stdin,
        })
    }

    /// Drains an instance out of the balancer, then stops it (SIGTERM, then SIGKILL after the grace).
    async fn stop_instance(&self, mut inst: Instance) {
        if let Err(e) = self.inner.lb.remove_backend(inst.addr).await {
            tracing::debug!(error = %e, "instance was not in the balancer");
        }
        if let Some(s) = inst.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = inst.done.take() {
            let _ = d.await;
        }
        tracing::info!(id = inst.id, addr = %inst.addr, "instance stopped");
    }

    /// Brings the number of running instances to the target (call with the ops lock held).
    async fn reconcile(&self) {
        loop {
            if self.inner.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            let running = self.inner.instances.lock().await.len();
            let target = self.inner.target.load(Ordering::Relaxed);
            if running < target {
                match self.spawn_instance().await {
                    Ok(inst) => self.inner.instances.lock().await.push(inst),
                    Err(e) => {
                        let k = self
                            .inner
                            .crash_streak
                            .fetch_add(1, Ordering::Relaxed)
                            .min(7);
                        let wait = Duration::from_millis(100 << k).min(Duration::from_secs(10));
                        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "instance failed to start");
                        tokio::time::sleep(wait).await;
                    }
                }
            } else if running > target {
                let newest = self.inner.instances.lock().await.pop();
                if let Some(inst) = newest {
                    self.stop_instance(inst).await;
                }
            } else {
                break;
            }
        }
        self.publish_gauges().await;
    }

    /// Sets the number of instances (widening the autoscaler's bounds to include it) and waits until it holds.
    pub async fn scale_to(&self, n: usize, reason: &str) -> usize {
        let n = n.clamp(1, 64);
        let _g = self.inner.ops.lock().await;
        let before = self.inner.target.swap(n, Ordering::Relaxed);
        self.inner.min.fetch_min(n, Ordering::Relaxed);
        self.inner.max.fetch_max(n, Ordering::Relaxed);
        if before != n {
            let dir = if n > before { "up" } else { "down" };
            tracing::info!(from = before, to = n, reason, "scaling");
            metrics::counter!("up_scale_events_total", "direction" => dir, "reason" => "manual")
                .increment(1);
        }
        self.reconcile().await;
        n
    }

    /// Replaces every instance, one at a time: start the new one, then drain and stop an old one.
    pub async fn rolling_restart(&self) -> anyhow::Result<usize> {
        let _g = self.inner.ops.lock().await;
        let old: Vec<u64> = self
            .inner
            .instances
            .lock()
            .await
            .iter()
            .map(|i| i.id)
            .collect();
        for id in &old {
            let fresh = self.spawn_instance().await?;
            let retired = {
                let mut v = self.inner.instances.lock().await;
                v.push(fresh);
                v.iter().position(|i| i.id == *id).map(|p| v.remove(p))
            };
            if let Some(r) = retired {
                self.stop_instance(r).await;
            }
        }
        tracing::info!(replaced = old.len(), "rolling restart done");
        Ok(old.len())
    }

    /// Stops the autoscaler and every instance (drained first).
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::Relaxed);
        let _g = self.inner.ops.lock().await;
        let all: Vec<Instance> = self.inner.instances.lock().await.drain(..).collect();
        join_all(all.into_iter().map(|i| self.stop_instance(i))).await;
    }

    /// The fleet as the admin API shows it.
    pub async fn fleet(&self) -> Fleet {
        let inner = &self.inner;
        Fleet {
            target: inner.target.load(Ordering::Relaxed),
            min: inner.min.load(Ordering::Relaxed),
            max: inner.max.load(Ordering::Relaxed),
            crash_restarts: inner.crash_restarts.load(Ordering::Relaxed),
            load_per_instance: f64::from_bits(inner.load.load(Ordering::Relaxed)),
            instances: inner
                .instances
                .lock()
                .await
                .iter()
                .map(|i| InstanceInfo {
                    id: i.id,
                    addr: i.addr,
                    pid: i.pid,
                    uptime_s: i.started.elapsed().as_secs_f64(),
                })
                .collect(),
        }
    }

    async fn publish_gauges(&self) {
        metrics::gauge!("up_instances").set(self.inner.instances.lock().await.len() as f64);
        metrics::gauge!("up_target_instances")
            .set(self.inner.target.load(Ordering::Relaxed) as f64);
    }

    /// Handles crashes: take the instance out, wait a backoff, start a replacement.
    async fn control_loop(self, mut rx: mpsc::Receiver<Event>) {
        while let Some(Event::Exited { id, status }) = rx.recv().await {
            if self.inner.shutting_down.load(Ordering::Relaxed) {
                continue;
            }
            let crashed = {
                let mut v = self.inner.instances.lock().await;
                v.iter().position(|i| i.id == id).map(|p| v.remove(p))
            };
            let Some(inst) = crashed else { continue };
            tracing::warn!(id, addr = %inst.addr, %status, "instance exited unexpectedly; replacing it");
            metrics::counter!("up_crash_restarts_total").increment(1);
            self.inner.crash_restarts.fetch_add(1, Ordering::Relaxed);
            let _ = self.inner.lb.remove_backend(inst.addr).await;
            // Crash loops back off: 100 ms doubling to 10 s; an instance that lived 30 s resets the streak.
            let k = if inst.started.elapsed() > Duration::from_secs(30) {
                self.inner.crash_streak.store(1, Ordering::Relaxed);
                0
            } else {
                self.inner
                    .crash_streak
                    .fetch_add(1, Ordering::Relaxed)
                    .min(7)
            };
            tokio::time::sleep(Duration::from_millis(100 << k).min(Duration::from_secs(10))).await;
            let _g = self.inner.ops.lock().await;
            self.reconcile().await;
        }
    }

    /// Samples in-flight requests per instance, smooths them, and scales with hysteresis and cooldown.
    async fn autoscale_loop(self) {
        let o = self.inner.opts.clone();
        let mut tick = tokio::time::interval(o.sample_every);
        let mut smoothed = 0.0f64;
        let mut last_change = Instant::now();
        loop {
            tick.tick().await;
            if self.inner.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            let running = self.inner.instances.lock().await.len().max(1);
            let per = self.inner.lb.in_flight() as f64 / running as f64;
            smoothed = 0.7 * smoothed + 0.3 * per;
            self.inner.load.store(smoothed.to_bits(), Ordering::Relaxed);
            metrics::gauge!("up_load_per_instance").set(smoothed);
            if last_change.elapsed() < o.cooldown {
                continue;
            }
            let target = self.inner.target.load(Ordering::Relaxed);
            let (min, max) = (
                self.inner.min.load(Ordering::Relaxed),
                self.inner.max.load(Ordering::Relaxed),
            );
            let next = if smoothed > o.scale_up_above && target < max {
                Some((
                    target + 1,
                    "up",
                    format!(
                        "in-flight per instance {smoothed:.2} > {}",
                        o.scale_up_above
                    ),
                ))
            } else if smoothed < o.scale_down_below && target > min {
                Some((
                    target - 1,
                    "down",
                    format!(
                        "in-flight per instance {smoothed:.2} < {}",
                        o.scale_down_below
                    ),
                ))
            } else {
                None
            };
            if let Some((n, dir, why)) = next {
                tracing::info!(from = target, to = n, reason = %why, "autoscale");
                metrics::counter!("up_scale_events_total", "direction" => dir, "reason" => "autoscale").increment(1);
                let _g = self.inner.ops.lock().await;
                self.inner.target.store(n, Ordering::Relaxed);
                self.reconcile().await;
                last_change = Instant::now();
            }
        }
    }

    /// Admin routes: `GET /instances`, `POST /scale {"app": N}`, `POST /restart`.
    pub fn admin_routes(&self) -> Router {
        Router::new()
            .route(
                "/instances",
                get(|State(s): State<Supervisor>| async move { Json(s.fleet().await) }),
            )
            .route("/scale", post(scale_handler))
            .route("/restart", post(restart_handler))
            .with_state(self.clone())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleRequest {
    app: usize,
}

fn problem(status: StatusCode, detail: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = tenfold_http::problem_body(
        status.as_u16(),
        "/problems/invalid",
        "Invalid request",
        detail,
        None,
    );
    (status, [("content-type", tenfold_http::PROBLEM_JSON)], body).into_response()
}

async fn scale_handler(
    State(s): State<Supervisor>,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    match serde_json::from_slice::<ScaleRequest>(&body) {
        Ok(r) if (1..=64).contains(&r.app) => {
            s.scale_to(r.app, "admin API").await;
            Json(s.fleet().await).into_response()
        }
        Ok(_) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "app must be between 1 and 64 instances",
        ),
        Err(e) => problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("expected {{\"app\": N}}: {e}"),
        ),
    }
}

async fn restart_handler(State(s): State<Supervisor>) -> axum::response::Response {
    use axum::response::IntoResponse;
    match s.rolling_restart().await {
        Ok(_) => Json(s.fleet().await).into_response(),
        Err(e) => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("rolling restart stopped: {e:#}"),
        ),
    }
}

/// Owns the child: reports an unexpected exit, or stops it on request (SIGTERM, then SIGKILL).
async fn monitor(
    id: u64,
    mut child: Child,
    stop: oneshot::Receiver<()>,
    done: oneshot::Sender<()>,
    events: mpsc::Sender<Event>,
    grace: Duration,
) {
    tokio::select! {
        status = child.wait() => {
            let status = status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            let _ = events.send(Event::Exited { id, status }).await;
        }
        _ = stop => {
            if let Some(pid) = child.id() {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
            }
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                tracing::warn!(id, "instance did not stop within the grace period; killing it");
                let _ = child.kill().await;
            }
        }
    }
    let _ = done.send(());
}

/// `GET /readyz` answered 200.
async fn ready(addr: SocketAddr) -> bool {
    let Ok(Ok(mut s)) =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await
    else {
        return false;
    };
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    matches!(tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut head)).await, Ok(Ok(_)) if &head[9..12] == b"200")
}
