//! `tenfold up`, `tenfold scale` and `tenfold restart`: wiring of the store, the balancer and the supervisor.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tenfold_config::Config;
use tenfold_up::{Supervisor, UpOptions};

use crate::cli::AdminTarget;
use crate::commands::{balancer_listeners, open_store, serve_balancer};

/// Where `tenfold up` leaves its addresses and tokens for `tenfold scale` and `tenfold restart`.
const STATE_FILE: &str = "data/up.json";

#[derive(Serialize, Deserialize)]
struct UpState {
    url: String,
    admin: String,
    admin_token: String,
    pid: u32,
}

fn secret() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The scaling flags of `tenfold up`.
pub(crate) struct Scaling {
    pub(crate) instances: u16,
    pub(crate) min: Option<u16>,
    pub(crate) max: Option<u16>,
    pub(crate) up_above: f64,
    pub(crate) down_below: f64,
    pub(crate) cooldown_ms: u64,
    pub(crate) workers: u16,
    pub(crate) min_workers: u16,
    pub(crate) max_workers: u16,
    pub(crate) worker_concurrency: u16,
}

pub(crate) async fn run(
    mut config: Config,
    scaling: Scaling,
    seed_products: u64,
) -> anyhow::Result<()> {
    if !(scaling.down_below >= 0.0 && scaling.up_above > scaling.down_below) {
        return Err(crate::UsageError(
            "--scale-up-above must be greater than --scale-down-below (>= 0)".into(),
        )
        .into());
    }
    // Migrate and seed once, before any instance starts, so instances never race on the schema.
    let store = open_store(&config, true).await?;
    if store.count_products().await? == 0 && seed_products > 0 {
        let report = tenfold_seed::seed(&store, seed_products, 1, true).await?;
        println!(
            "seeded a demo catalog of {} products",
            report.products_total
        );
    }
    store.close().await;

    let api_key = config
        .http
        .api_key
        .clone()
        .unwrap_or_else(|| SecretString::from(secret()));
    let admin_token = config
        .lb
        .admin_token
        .clone()
        .unwrap_or_else(|| SecretString::from(secret()));
    let mut env = vec![
        (
            "TENFOLD_DATABASE_URL".to_owned(),
            config.database.url.expose_secret().to_owned(),
        ),
        (
            "TENFOLD_API_KEY".to_owned(),
            api_key.expose_secret().to_owned(),
        ),
        (
            "TENFOLD_DATABASE__AUTO_MIGRATE".to_owned(),
            "false".to_owned(),
        ),
        ("TENFOLD_LOG_LEVEL".to_owned(), config.log.level.clone()),
        (
            "TENFOLD_LOG_FORMAT".to_owned(),
            format!("{:?}", config.log.format).to_lowercase(),
        ),
    ];
    // Replicas, shards and cache settings given as flags to `up` reach the instances too.
    if !config.database.shard_urls.is_empty() {
        env.push((
            "TENFOLD_DATABASE__SHARD_URLS".to_owned(),
            config.database.order_shard_urls().join(","),
        ));
    }
    if !config.database.replica_urls.is_empty() {
        let urls: Vec<&str> = config
            .database
            .replica_urls
            .iter()
            .map(|u| u.expose_secret())
            .collect();
        env.push(("TENFOLD_DATABASE__REPLICA_URLS".to_owned(), urls.join(",")));
        env.push((
            "TENFOLD_DATABASE__MAX_REPLICA_LAG_MS".to_owned(),
            config.database.max_replica_lag_ms.to_string(),
        ));
    }
    env.push((
        "TENFOLD_CACHE__ENABLED".to_owned(),
        config.cache.enabled.to_string(),
    ));
    if let Some(u) = &config.cache.redis_url {
        env.push((
            "TENFOLD_CACHE__REDIS_URL".to_owned(),
            u.expose_secret().to_owned(),
        ));
    }
    if let Some(c) = std::env::var_os("TENFOLD_CONFIG") {
        env.push((
            "TENFOLD_CONFIG".to_owned(),
            c.to_string_lossy().into_owned(),
        ));
    }
    // The balancer only sends traffic to instances whose database is reachable.
    config.lb.health.path = "/readyz".into();
    config.lb.backends.clear();
    let signal = crate::commands::shutdown_signal();
    let lb = tenfold_lb::Lb::new(&config.lb).map_err(|e| anyhow::anyhow!(e))?;
    let listener = balancer_listeners(config.lb.listen)?;
    let admin_listener = tokio::net::TcpListener::bind(config.lb.admin_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen on {} for the admin API",
                config.lb.admin_listen
            )
        })?;
    let (url, admin) = (
        format!("http://{}", listener[0].local_addr()?),
        format!("http://{}", admin_listener.local_addr()?),
    );

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let n = usize::from(scaling.instances);
    let opts = UpOptions {
        exe: std::env::current_exe().context("cannot find the tenfold executable")?,
        instances: n,
        min: scaling.min.map(usize::from).unwrap_or(2.min(n)),
        max: scaling
            .max
            .map(usize::from)
            .unwrap_or((cpus * 2).max(4))
            .max(n),
        env: env.clone(),
        scale_up_above: scaling.up_above,
        scale_down_below: scaling.down_below,
        sample_every: Duration::from_millis(250.min(scaling.cooldown_ms.max(50)))
            .max(Duration::from_millis(50)),
        cooldown: Duration::from_millis(scaling.cooldown_ms),
        start_timeout: Duration::from_secs(30),
        stop_grace: Duration::from_millis(config.http.shutdown_grace_ms + 2_000),
    };
    let sup = Supervisor::start(lb.clone(), opts).await?;
    let workers = if scaling.max_workers > 0 {
        Some(
            tenfold_up::WorkerPool::start(tenfold_up::WorkerPoolOptions {
                exe: std::env::current_exe().context("cannot find the tenfold executable")?,
                env: env.clone(),
                database_url: config.database.url.expose_secret().to_owned(),
                queues: vec!["media".into(), "import".into()],
                concurrency: scaling.worker_concurrency,
                workers: usize::from(scaling.workers),
                min: usize::from(scaling.min_workers),
                max: usize::from(scaling.max_workers),
                up_backlog_per_worker: 2.0 * f64::from(scaling.worker_concurrency),
                up_oldest: Duration::from_secs(2),
                down_after: 5,
                sample_every: Duration::from_secs(1),
                cooldown: Duration::from_millis(scaling.cooldown_ms.min(5_000)),
                stop_grace: Duration::from_secs(12),
            })
            .await
            .context("cannot start the background workers")?,
        )
    } else {
        None
    };
    let state = UpState {
        url: url.clone(),
        admin: admin.clone(),
        admin_token: admin_token.expose_secret().to_owned(),
        pid: std::process::id(),
    };
    write_state(&state)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "tenfold is up: {url} ({n} app instances, {} background workers, autoscaling)",
            scaling.workers
        )?;
        writeln!(out, "admin API:     {admin}")?;
        writeln!(out, "admin token:   {}", admin_token.expose_secret())?;
        writeln!(out, "api key:       {}", api_key.expose_secret())?;
        writeln!(out, "try: curl {url}/api/products/1   |   tenfold scale app=4   |   Ctrl-C stops everything")?;
        out.flush()?;
    }

    let admin_router = lb.admin_router_with(admin_token, sup.admin_routes());
    let served = serve_balancer(&lb, listener, Some((admin_listener, admin_router)), signal).await;
    // Whatever ended the balancer, the instances are drained and stopped.
    sup.shutdown().await;
    if let Some(w) = &workers {
        w.shutdown().await;
    }
    let _ = std::fs::remove_file(STATE_FILE);
    tracing::info!("stopped");
    served
}

fn write_state(state: &UpState) -> anyhow::Result<()> {
    let path = PathBuf::from(STATE_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(&serde_json::to_vec_pretty(state)?)?;
    Ok(())
}

/// The admin URL and token: flags and TENFOLD_ADMIN_TOKEN first, else the state file of a local `tenfold up`.
fn target(admin: &AdminTarget) -> anyhow::Result<(String, String)> {
    let state: Option<UpState> = std::fs::read(STATE_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let url = admin
        .url
        .clone()
        .or_else(|| state.as_ref().map(|s| s.admin.clone()))
        .context("no running `tenfold up` found here (no data/up.json); pass --admin URL")?;
    let token = std::env::var("TENFOLD_ADMIN_TOKEN")
        .ok()
        .or_else(|| state.map(|s| s.admin_token))
        .context("no admin token: set TENFOLD_ADMIN_TOKEN")?;
    Ok((url.trim_end_matches('/').to_owned(), token))
}

async fn admin_post(
    admin: &AdminTarget,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let (url, token) = target(admin)?;
    let resp = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(300))
        .build()?
        .post(format!("{url}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("cannot reach the admin API at {url}"))?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("{}", body["detail"].as_str().unwrap_or(status.as_str()));
    }
    Ok(body)
}

pub(crate) async fn scale(spec: &str, admin: AdminTarget) -> anyhow::Result<()> {
    let n = spec
        .strip_prefix("app=")
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| (1..=64).contains(n))
        .ok_or_else(|| {
            crate::UsageError(format!(
                "expected app=N with N from 1 to 64, got \"{spec}\""
            ))
        })?;
    let fleet = admin_post(&admin, "/scale", serde_json::json!({ "app": n })).await?;
    println!(
        "app instances: {}",
        fleet["instances"].as_array().map(|a| a.len()).unwrap_or(0)
    );
    Ok(())
}

pub(crate) async fn restart(admin: AdminTarget) -> anyhow::Result<()> {
    let fleet = admin_post(&admin, "/restart", serde_json::json!({})).await?;
    println!(
        "restarted; app instances: {}",
        fleet["instances"].as_array().map(|a| a.len()).unwrap_or(0)
    );
    Ok(())
}
