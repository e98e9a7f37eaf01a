//! Test helpers shared by every crate's tests.
//!
//! Role: throwaway databases ([`TestDb`]: a SQLite file in a temporary directory, or a fresh PostgreSQL
//! database on `TENFOLD_TEST_POSTGRES_URL` that is dropped afterwards), the service on port 0
//! ([`spawn_app`]), and [`assert_eventually!`] for bounded waits.
//!
//! Invariant: nothing a test creates outlives it; tests never share a database.

mod counting;
mod nats;
mod pg_cluster;
mod pg_cut;
mod process;
mod redis_server;

use std::time::Duration;

use tenfold_store::{connect, ConnectOptions, Store};

pub use counting::CountingStore;
pub use nats::{nats_url, TestNats};
pub use pg_cluster::PgCluster;
pub use pg_cut::AnswerCutter;
pub use process::{run_ok, serve_printing_addr, Served};
pub use redis_server::RedisServer;
pub use tenfold_config::{CacheConfig, HttpConfig};

pub use tenfold_app;

/// A key long enough for the configuration's minimum, used by tests that write.
pub const TEST_API_KEY: &str = "test-api-key-0123456789";

/// The engines a store test should run on: always SQLite, and PostgreSQL when
/// `TENFOLD_TEST_POSTGRES_URL` is set.
pub fn engines() -> Vec<Engine> {
    let mut v = vec![Engine::Sqlite];
    if std::env::var("TENFOLD_TEST_POSTGRES_URL").is_ok_and(|u| !u.is_empty()) {
        v.push(Engine::Postgres);
    }
    v
}

/// Which kind of throwaway database to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A SQLite file in a temporary directory.
    Sqlite,
    /// A new database on the server `TENFOLD_TEST_POSTGRES_URL` names.
    Postgres,
}

/// A throwaway database; dropped (file deleted, or `DROP DATABASE`) when this value is dropped.
pub struct TestDb {
    /// URL to give to the store or to `--database-url`.
    pub url: String,
    engine: Engine,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl TestDb {
    /// Makes an empty database on `engine`.
    pub async fn new(engine: Engine) -> TestDb {
        match engine {
            Engine::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("tenfold.db").display());
                TestDb {
                    url,
                    engine,
                    _dir: Some(dir),
                    pg: None,
                }
            }
            Engine::Postgres => {
                let admin =
                    std::env::var("TENFOLD_TEST_POSTGRES_URL").expect("TENFOLD_TEST_POSTGRES_URL");
                let name = format!("tenfold_test_{}", uuid::Uuid::new_v4().simple());
                let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                    .await
                    .expect("connect to TENFOLD_TEST_POSTGRES_URL");
                sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
                    .await
                    .expect("create test database");
                let mut url = url::Url::parse(&admin).expect("postgres url");
                url.set_path(&name);
                TestDb {
                    url: url.to_string(),
                    engine,
                    _dir: None,
                    pg: Some((admin, name)),
                }
            }
        }
    }

    /// The engine of this database.
    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Opens and migrates a store on this database.
    pub async fn store(&self) -> Store {
        let mut options = ConnectOptions::new(&self.url);
        // Generous: a loaded test machine can be slow to hand out the first connections.
        options.acquire_timeout = Duration::from_secs(15);
        let store = connect(&options).await.expect("connect");
        store.migrate().await.expect("migrate");
        store
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg.take() {
            // Drop runs outside async context; a short-lived thread with its own runtime does the cleanup.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async move {
                    if let Ok(mut conn) =
                        <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await
                    {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = sqlx::Executor::execute(&mut conn, sql.as_str()).await;
                    }
                });
            })
            .join();
        }
    }
}

/// Turns on log output for a test run when `TEST_LOG` is set.
pub fn init_test_log() {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_test_writer()
            .try_init();
    }
}

/// Waits until `$cond` is true, checking every 10 ms, for at most `$timeout`; panics with `$msg` otherwise.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $timeout:expr, $($msg:tt)+) => {{
        let deadline = ::std::time::Instant::now() + $timeout;
        loop {
            if $cond {
                break;
            }
            if ::std::time::Instant::now() > deadline {
                panic!($($msg)+);
            }
            ::tokio::time::sleep(::std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// A running in-process service on a random port.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The store the service uses.
    pub store: Store,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestApp {
    /// URL of a path on this service.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Stops the service, letting in-flight requests finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

/// Starts the service in-process on `127.0.0.1:0` over `db` with `settings` (the API key defaults to
/// [`TEST_API_KEY`]).
pub async fn spawn_app_with(db: &TestDb, settings: HttpConfig) -> TestApp {
    let store = db.store().await;
    spawn_app_on(store, settings, &CacheConfig::default()).await
}

/// Starts the service in-process on `127.0.0.1:0` over an open `store` with these HTTP and cache
/// settings (the API key defaults to [`TEST_API_KEY`]).
pub async fn spawn_app_on(store: Store, settings: HttpConfig, cache: &CacheConfig) -> TestApp {
    spawn_app_full(store, settings, cache, None).await
}

/// [`spawn_app_on`] with order shards.
pub async fn spawn_app_full(
    store: Store,
    settings: HttpConfig,
    cache: &CacheConfig,
    shards: Option<std::sync::Arc<tenfold_store::OrderShards>>,
) -> TestApp {
    spawn_app_parts(store, settings, cache, shards, None).await
}

/// The largest upload a [`spawn_app_with_jobs`] service takes.
pub const TEST_MAX_UPLOAD: u64 = 2 * 1024 * 1024;

/// A service with its job queue (on the same database) and media uploads (into `blobs`).
pub struct JobsApp {
    /// The service.
    pub app: TestApp,
    /// Its queue.
    pub queue: std::sync::Arc<tenfold_store::queue::JobQueue>,
    /// Its blob storage (a temporary directory, removed on drop).
    pub blobs: std::sync::Arc<tenfold_blobs::DirBlobs>,
    /// Its flag table (the service refreshes its flags from it every 20 ms).
    pub flags: std::sync::Arc<tenfold_store::flags::FlagTable>,
    _dir: tempfile::TempDir,
}

/// The service over `db` with its job queue, blob storage for uploads (at most [`TEST_MAX_UPLOAD`]),
/// feature flags and one order shard.
pub async fn spawn_app_with_jobs(db: &TestDb) -> JobsApp {
    spawn_app_with_blobs(db, tenfold_blobs::BlobOptions::default()).await
}

/// [`spawn_app_with_jobs`] with blob storage guarded by `opts` (a short deadline, quick breakers).
pub async fn spawn_app_with_blobs(db: &TestDb, opts: tenfold_blobs::BlobOptions) -> JobsApp {
    let store = db.store().await;
    let flags = std::sync::Arc::new(
        tenfold_store::flags::FlagTable::connect(&db.url, Duration::from_secs(15))
            .await
            .expect("open the flag table"),
    );
    let queue = std::sync::Arc::new(
        tenfold_store::queue::JobQueue::connect(&db.url, Duration::from_secs(15))
            .await
            .expect("open the job queue"),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let blobs = std::sync::Arc::new(
        tenfold_blobs::DirBlobs::open_with(dir.path(), opts)
            .await
            .expect("open the blob directory"),
    );
    // Orders too (one SQLite shard in the same directory), so the storefront's cart works.
    let shards = std::sync::Arc::new(
        tenfold_store::OrderShards::connect(
            store.clone(),
            &[format!("sqlite://{}/orders.db", dir.path().display())],
            Duration::from_secs(15),
        )
        .await
        .expect("open the order shard"),
    );
    let app = spawn_app_parts(
        store,
        HttpConfig::default(),
        &CacheConfig::default(),
        Some(shards),
        Some((queue.clone(), blobs.clone(), flags.clone())),
    )
    .await;
    JobsApp {
        app,
        queue,
        blobs,
        flags,
        _dir: dir,
    }
}

async fn spawn_app_parts(
    store: Store,
    mut settings: HttpConfig,
    cache: &CacheConfig,
    shards: Option<std::sync::Arc<tenfold_store::OrderShards>>,
    jobs: Option<(
        std::sync::Arc<tenfold_store::queue::JobQueue>,
        std::sync::Arc<tenfold_blobs::DirBlobs>,
        std::sync::Arc<tenfold_store::flags::FlagTable>,
    )>,
) -> TestApp {
    init_test_log();
    if settings.api_key.is_none() {
        settings.api_key = Some(TEST_API_KEY.to_owned().into());
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let app = tenfold_app::App::with_cache(store.clone(), settings, cache);
    if let Some(s) = shards {
        app.set_order_shards(s);
    }
    if let Some((q, blobs, table)) = jobs {
        app.set_job_queue(q);
        app.set_media(blobs, TEST_MAX_UPLOAD);
        let flags = tenfold_flags::Flags::start((*table).clone(), Duration::from_millis(20)).await;
        app.set_flags(flags, table);
    }
    let task = tokio::spawn(async move {
        let _ = app
            .serve(listener, async move {
                let _ = rx.await;
            })
            .await;
    });
    TestApp {
        base,
        store,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// Starts the service with default settings over `db`.
pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, HttpConfig::default()).await
}
