//! What each command does: wiring of the library crates, nothing more.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tenfold_config::{Config, LogConfig, LogFormat};
use tenfold_store::{ConnectOptions, Store};

use crate::cli::Command;

pub(crate) fn init_logging(log: &LogConfig) {
    // Libraries' chatter (the NATS client's connection events, PostgreSQL's "already exists" notices
    // from idempotent DDL) stays out of the log unless the level names them.
    let mut level = log.level.clone();
    for quiet in ["async_nats=warn", "sqlx::postgres::notice=warn"] {
        let target = quiet.split('=').next().unwrap_or(quiet);
        if !level.contains(target) {
            level.push(',');
            level.push_str(quiet);
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}

pub(crate) async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Store> {
    let db = &config.database;
    let opts = ConnectOptions {
        url: db.url.expose_secret().to_owned(),
        max_connections: db.max_connections,
        acquire_timeout: Duration::from_millis(db.acquire_timeout_ms),
        replica_urls: db
            .replica_urls
            .iter()
            .map(|u| u.expose_secret().to_owned())
            .collect(),
        max_replica_lag: Duration::from_millis(db.max_replica_lag_ms),
    };
    let shown = tenfold_config::mask_password(&opts.url);
    let store = tenfold_store::connect(&opts)
        .await
        .with_context(|| format!("cannot open the database {shown}"))?;
    if migrate {
        store
            .migrate()
            .await
            .with_context(|| format!("cannot migrate the database {shown}"))?;
    }
    Ok(store)
}

/// Opens the order shards the configuration names, placing buckets by the catalog's stored map.
async fn open_order_shards(
    config: &Config,
    store: &Store,
) -> anyhow::Result<tenfold_store::OrderShards> {
    tenfold_store::OrderShards::connect(
        store.clone(),
        &config.database.order_shard_urls(),
        Duration::from_millis(config.database.acquire_timeout_ms),
    )
    .await
    .context("cannot open the order shards")
}

async fn shards_command(
    config: &Config,
    store: &Store,
    shards: &tenfold_store::OrderShards,
    action: crate::cli::ShardsAction,
) -> anyhow::Result<()> {
    use tenfold_store::shards::{bucket_of, Bucket};
    match action {
        crate::cli::ShardsAction::Status => {
            let urls = config.database.order_shard_urls();
            let map = shards.map();
            let buckets = map.buckets_per_shard();
            let orders = shards.counts().await?;
            println!(
                "shard map version {}: {} buckets over {} shards",
                map.version(),
                tenfold_store::shards::BUCKETS,
                map.shards()
            );
            println!("{:>5}  {:>7}  {:>9}  url", "shard", "buckets", "orders");
            for (i, url) in urls.iter().enumerate() {
                println!(
                    "{i:>5}  {:>7}  {:>9}  {}",
                    buckets.get(i).copied().unwrap_or(0),
                    orders.get(i).copied().unwrap_or(0),
                    tenfold_config::mask_password(url)
                );
            }
            let moves = store.shard_moves().await?;
            if moves.is_empty() {
                println!("moves in progress: none");
            } else {
                println!("moves in progress (run the same `tenfold shards move` again to finish one whose mover stopped):");
                for m in moves {
                    println!(
                        "  bucket {} from shard {} to shard {}, since {}",
                        m.bucket.get(),
                        m.from,
                        m.to,
                        m.started_at
                    );
                }
            }
        }
        crate::cli::ShardsAction::Move { bucket, to } => {
            let b = Bucket::new(bucket).ok_or_else(|| {
                crate::UsageError(format!("--bucket must be 0 to 1023 (got {bucket})"))
            })?;
            let r = shards
                .move_bucket(b, to)
                .await
                .with_context(|| format!("cannot move bucket {bucket} to shard {to}"))?;
            if r.from == r.to && !r.resumed {
                println!(
                    "bucket {} is already on shard {} ({} orders); nothing to do",
                    bucket, r.to, r.orders
                );
            } else {
                println!(
                    "moved bucket {} from shard {} to shard {}{}: copied {} orders in {} rounds, \
                     writes fenced for {} ms, {} orders verified (sha256 {}), shard map version {}",
                    bucket,
                    r.from,
                    r.to,
                    if r.resumed { " (resumed)" } else { "" },
                    r.copied,
                    r.rounds,
                    r.fenced_for.as_millis(),
                    r.orders,
                    r.checksum,
                    r.map_version
                );
            }
        }
        crate::cli::ShardsAction::Bucket { customer } => {
            let b = bucket_of(customer);
            println!(
                "customer {customer}: bucket {}, on shard {}",
                b.get(),
                shards.map().shard_of(b)
            );
        }
    }
    Ok(())
}

pub(crate) async fn run(
    command: Command,
    config: Config,
    reload: impl Fn() -> anyhow::Result<Config> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    match command {
        Command::Lb { .. } => run_lb(config, reload).await,
        Command::Config { .. } => {
            print!("{}", config.to_masked_toml());
            Ok(())
        }
        Command::Migrate => {
            let store = open_store(&config, true).await?;
            let r = store.readiness().await?;
            println!("migrations applied: {:?}", r.applied);
            store.close().await;
            Ok(())
        }
        Command::Seed { products, seed } => {
            let store = open_store(&config, true).await?;
            let started = std::time::Instant::now();
            let report = tenfold_seed::seed(&store, products, seed, true).await?;
            if report.products_added > 0 || report.categories_added > 0 {
                // Running instances drop their list pages and category counts (new products they had
                // remembered as unknown expire within the negative TTL).
                let change = tenfold_cache::Change {
                    tags: vec!["categories".into()],
                    all_lists: true,
                    ..Default::default()
                };
                if let Err(e) = tenfold_cache::announce(store.change_feed().as_ref(), change).await
                {
                    tracing::warn!(error = %e, "could not tell running instances about the new products");
                }
            }
            store.close().await;
            println!(
                "seeded {} new products and {} new categories in {:.1}s; the catalog has {} products",
                report.products_added,
                report.categories_added,
                started.elapsed().as_secs_f64(),
                report.products_total
            );
            Ok(())
        }
        Command::Up {
            instances,
            min,
            max,
            seed_products,
            scale_up_above,
            scale_down_below,
            cooldown_ms,
            workers,
            min_workers,
            max_workers,
            worker_concurrency,
            ..
        } => {
            let scaling = crate::up::Scaling {
                instances,
                min,
                max,
                up_above: scale_up_above,
                down_below: scale_down_below,
                cooldown_ms,
                workers,
                min_workers: min_workers.unwrap_or(workers.min(1)),
                max_workers: max_workers.max(workers),
                worker_concurrency,
            };
            crate::up::run(config, scaling, seed_products).await
        }
        Command::Scale { spec, admin } => crate::up::scale(&spec, admin).await,
        Command::Restart { admin } => crate::up::restart(admin).await,
        Command::Worker {
            queues,
            concurrency,
            lease_ms,
            grace_ms,
            exit_on_stdin_eof,
        } => {
            crate::jobs::worker(
                config,
                crate::jobs::WorkerArgs {
                    queues,
                    concurrency,
                    lease_ms,
                    grace_ms,
                    exit_on_stdin_eof,
                },
            )
            .await
        }
        Command::Jobs { action } => crate::jobs::jobs(config, action).await,
        Command::Flags { action } => crate::flags::flags(config, action).await,
        Command::Shards { action } => {
            let store = open_store(&config, true).await?;
            let shards = open_order_shards(&config, &store).await?;
            let r = shards_command(&config, &store, &shards, action).await;
            shards.close().await;
            store.close().await;
            r
        }
        Command::App {
            exit_on_stdin_eof, ..
        } => {
            let store = open_store(&config, config.database.auto_migrate).await?;
            let listener = tokio::net::TcpListener::bind(config.http.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.http.listen))?;
            let addr = listener.local_addr()?;
            let signal = shutdown_signal();
            // One machine-readable line on stdout: the address bound. Logs go to stderr.
            let mut out = std::io::stdout().lock();
            writeln!(out, "{addr}")?;
            out.flush()?;
            drop(out);
            tracing::info!(%addr, database = %tenfold_config::mask_password(config.database.url.expose_secret()), "serving");
            let app =
                tenfold_app::App::with_cache(store.clone(), config.http.clone(), &config.cache);
            let shards = open_order_shards(&config, &store).await?;
            app.set_order_shards(std::sync::Arc::new(shards));
            app.set_job_queue(std::sync::Arc::new(
                crate::jobs::connect_queue(&config).await?,
            ));
            let blobs = crate::jobs::open_blobs(&config).await?;
            app.set_media(blobs, config.media.max_upload_mib * 1024 * 1024);
            let (flags, table) = crate::flags::start_flags(&config).await?;
            app.set_flags(flags, table);
            let stop = async move {
                if exit_on_stdin_eof {
                    tokio::select! {
                        _ = signal => {},
                        _ = stdin_closed() => tracing::info!("supervisor gone (stdin closed): shutting down"),
                    }
                } else {
                    signal.await
                }
            };
            app.serve(listener, stop).await?;
            store.close().await;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

async fn run_lb(
    config: Config,
    reload: impl Fn() -> anyhow::Result<Config> + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let signal = shutdown_signal();
    let lb = tenfold_lb::Lb::new(&config.lb).map_err(|e| anyhow::anyhow!(e))?;
    let listener = balancer_listeners(config.lb.listen)?;
    let addr = listener[0].local_addr()?;
    let admin = match &config.lb.admin_token {
        Some(token) => {
            let l = tokio::net::TcpListener::bind(config.lb.admin_listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {} for the admin API",
                        config.lb.admin_listen
                    )
                })?;
            Some((l, lb.admin_router(token.clone())))
        }
        None => {
            tracing::warn!("admin API off: set TENFOLD_ADMIN_TOKEN to manage backends at runtime");
            None
        }
    };
    // SIGHUP re-reads the configuration and applies its backend list.
    #[cfg(unix)]
    {
        let lb = lb.clone();
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                match reload() {
                    Ok(c) => match lb.set_backends(&c.lb.backends).await {
                        Ok(()) => {
                            tracing::info!(backends = c.lb.backends.len(), "configuration reloaded")
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "reload failed; keeping the current backends")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "reload failed; keeping the current backends")
                    }
                }
            }
        });
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{addr}")?;
        if let Some((l, _)) = &admin {
            writeln!(out, "{}", l.local_addr()?)?;
        }
        out.flush()?;
    }
    tracing::info!(%addr, algorithm = %config.lb.algorithm, backends = config.lb.backends.len(), "balancing");
    serve_balancer(&lb, listener, admin, signal).await?;
    tracing::info!("stopped");
    Ok(())
}

/// One SO_REUSEPORT listener per CPU on `addr`, for the balancer's per-core event loops.
pub(crate) fn balancer_listeners(
    addr: std::net::SocketAddr,
) -> anyhow::Result<Vec<std::net::TcpListener>> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    tenfold_http::reuseport_listeners(addr, cpus)
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Serves the balancer and its admin API (if any) until SIGTERM/SIGINT, then drains both.
pub(crate) async fn serve_balancer(
    lb: &tenfold_lb::Lb,
    listeners: Vec<std::net::TcpListener>,
    admin: Option<(tokio::net::TcpListener, axum::Router)>,
    signal: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let admin_task = admin.map(|(l, router)| {
        let stop = stopped();
        tokio::spawn(async move { axum::serve(l, router).with_graceful_shutdown(stop).await })
    });
    let serving = lb.serve_per_core(listeners, stopped());
    tokio::pin!(serving);
    tokio::select! {
        r = &mut serving => r?,
        _ = signal => {
            tracing::info!("stopping: draining in-flight requests");
            let _ = stop_tx.send(true);
            serving.await?;
        }
    }
    let _ = stop_tx.send(true);
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    Ok(())
}

/// Resolves when stdin reaches end of file. The read runs on a plain thread: a blocking read on
/// tokio's stdin would keep the runtime from shutting down afterwards.
pub(crate) async fn stdin_closed() {
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 64];
        let mut stdin = std::io::stdin();
        while matches!(stdin.read(&mut buf), Ok(n) if n > 0) {}
        let _ = tx.send(());
    });
    let _ = rx.await;
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not when the
/// future is first polled: call it before announcing readiness, so that a signal sent right after the
/// announcement drains the process instead of killing it (the default action of an unhandled signal).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let (term, int) = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            async fn next(s: Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            }
            tokio::select! {
                _ = next(term) => {},
                _ = next(int) => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
