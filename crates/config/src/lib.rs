//! Typed, layered configuration.
//!
//! Role: one `Config` for every role of the binary, read from (highest first) command-line flags,
//! `TENFOLD_*` environment variables, a `tenfold.toml` file and built-in defaults.
//!
//! Invariant: a `Config` that `load` returns is valid (addresses parse, limits are sane, the database URL
//! names a supported engine); secrets are `SecretString`s and only ever print masked.
//! Entry points: [`Config::load`], [`Config::to_masked_toml`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Why the configuration could not be used; the binary exits 64 with this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or a value has the wrong type.
    #[error("invalid configuration: {0}")]
    Source(String),
    /// A value parsed but makes no sense.
    #[error("invalid configuration: {field}: {message}")]
    Invalid {
        /// Dotted key of the value, e.g. `http.body_limit_bytes`.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP service settings.
    pub http: HttpConfig,
    /// Database settings.
    pub database: DatabaseConfig,
    /// Logging settings.
    pub log: LogConfig,
    /// Load balancer settings (`tenfold lb`).
    pub lb: LbConfig,
    /// Cache settings.
    pub cache: CacheConfig,
    /// Uploaded media and their renditions.
    pub media: MediaConfig,
    /// The job queue's dispatch.
    pub jobs: JobsConfig,
}

/// How jobs reach workers: by the database itself (the default), or by NATS JetStream with a
/// transactional outbox in the database. Every app instance and worker must agree.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// `nats://host:4222`: dispatch through this NATS server's JetStream. Unset: the database's own
    /// claims (SKIP LOCKED on PostgreSQL).
    #[serde(serialize_with = "mask_opt_url")]
    pub nats_url: Option<SecretString>,
    /// The JetStream stream (created with work-queue retention if missing).
    pub nats_stream: String,
    /// Subjects are `{prefix}.{queue}.{kind}.{band}`.
    pub nats_subject_prefix: String,
    /// Deliveries of one message before the server drops it (the sweeper publishes its job again).
    pub nats_max_deliver: i64,
    /// A job queued and due this long whose subject has no message is published again, in ms.
    pub nats_sweep_after_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            nats_url: None,
            nats_stream: "TENFOLD_JOBS".into(),
            nats_subject_prefix: "tenfold.jobs".into(),
            nats_max_deliver: 100,
            nats_sweep_after_ms: 300_000,
        }
    }
}

/// Where uploads and renditions are kept, and how large an upload may be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// The blob directory (relative paths are under the working directory). App instances and workers
    /// must share it.
    pub dir: PathBuf,
    /// The largest upload, in MiB.
    pub max_upload_mib: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            dir: PathBuf::from("data/blobs"),
            max_upload_mib: 100,
        }
    }
}

/// Settings of the cache (in-process L1, optional Redis L2) and of HTTP caching.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache reads at all (false: every read goes to the database; the benchmark baseline).
    pub enabled: bool,
    /// L1 capacity in MiB of cached bodies.
    pub capacity_mib: u64,
    /// How long a product stays fresh, in milliseconds.
    pub ttl_ms: u64,
    /// How long a list page stays fresh, in milliseconds (writes invalidate pages at once anyway).
    pub list_ttl_ms: u64,
    /// How long a stale value is still served while one refresh runs, in milliseconds.
    pub stale_while_revalidate_ms: u64,
    /// After that, a value is kept this long more and served only when the database cannot be read
    /// (stale-if-error), in milliseconds.
    pub stale_if_error_ms: u64,
    /// How long an unknown id is remembered, in milliseconds.
    pub negative_ttl_ms: u64,
    /// `redis://host:port[/db]`: the shared L2 and the invalidation channel. Unset: L1 alone, with the
    /// database's own change feed (SQLite table, PostgreSQL LISTEN/NOTIFY) for invalidations.
    #[serde(serialize_with = "mask_opt_url")]
    pub redis_url: Option<SecretString>,
    /// Deadline of each Redis command, in milliseconds; slower means "Redis is down" for this read.
    pub redis_timeout_ms: u64,
    /// Prefix of every Redis key and channel tenfold uses (deployments sharing a Redis differ here).
    pub redis_prefix: String,
    /// `Cache-Control: max-age` of catalog reads, in seconds.
    pub http_max_age_s: u32,
    /// `Cache-Control: stale-while-revalidate` of catalog reads, in seconds.
    pub http_stale_while_revalidate_s: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            capacity_mib: 128,
            ttl_ms: 600_000,
            list_ttl_ms: 600_000,
            stale_while_revalidate_ms: 60_000,
            stale_if_error_ms: 3_600_000,
            negative_ttl_ms: 5_000,
            redis_url: None,
            redis_timeout_ms: 50,
            redis_prefix: "tenfold:".into(),
            http_max_age_s: 5,
            http_stale_while_revalidate_s: 30,
        }
    }
}

/// One backend of the load balancer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendSpec {
    /// `host:port` of an HTTP/1.1 server.
    pub addr: SocketAddr,
    /// Relative share of requests for weighted algorithms (1-1000).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl std::str::FromStr for BackendSpec {
    type Err = String;

    /// `ADDR` or `ADDR=WEIGHT`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, weight) = match s.split_once('=') {
            Some((a, w)) => (
                a,
                w.parse::<u32>()
                    .map_err(|_| format!("\"{w}\" is not a weight (1-1000)"))?,
            ),
            None => (s, 1),
        };
        let addr = addr
            .parse()
            .map_err(|_| format!("\"{addr}\" is not a socket address such as 127.0.0.1:9000"))?;
        Ok(BackendSpec { addr, weight })
    }
}

/// Active health checks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthCheckConfig {
    /// Path requested; any 2xx or 3xx answer passes.
    pub path: String,
    /// Time between checks, in milliseconds.
    pub interval_ms: u64,
    /// A check slower than this fails, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive passes that bring a backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig {
            path: "/healthz".into(),
            interval_ms: 1000,
            timeout_ms: 500,
            rise: 2,
            fall: 2,
        }
    }
}

/// Passive outlier ejection and slow start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierConfig {
    /// Consecutive connect errors or 5xx answers that eject a backend.
    pub consecutive_failures: u32,
    /// First ejection time in milliseconds; the n-th ejection lasts n times this.
    pub base_ejection_ms: u64,
    /// Longest ejection, in milliseconds.
    pub max_ejection_ms: u64,
    /// At most this percentage of backends is ejected at once.
    pub max_ejected_percent: u32,
    /// A new or recovered backend ramps from 10% to full weight over this many milliseconds.
    pub slow_start_ms: u64,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            consecutive_failures: 5,
            base_ejection_ms: 5_000,
            max_ejection_ms: 60_000,
            max_ejected_percent: 50,
            slow_start_ms: 10_000,
        }
    }
}

/// Settings of the load balancer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbConfig {
    /// Address the balancer listens on.
    pub listen: SocketAddr,
    /// Address of the admin API (list, add, remove, re-weight and drain backends; metrics).
    pub admin_listen: SocketAddr,
    /// Bearer token the admin API requires; the admin API is off when unset.
    #[serde(serialize_with = "mask_opt")]
    pub admin_token: Option<SecretString>,
    /// `round-robin`, `weighted-round-robin`, `least-connections`, `consistent-hash`, `hash-header:NAME`
    /// or `p2c-ewma`.
    pub algorithm: String,
    /// The backends (re-read on SIGHUP).
    pub backends: Vec<BackendSpec>,
    /// TCP connect timeout to a backend, in milliseconds.
    pub connect_timeout_ms: u64,
    /// How long a backend may take to send its response headers, in milliseconds.
    pub response_timeout_ms: u64,
    /// Idle pooled backend connections older than this are closed, in milliseconds.
    pub pool_idle_timeout_ms: u64,
    /// Idle connections kept per backend (like nginx's upstream `keepalive`); more may be open while busy.
    pub pool_max_idle: usize,
    /// Deadline for a client to send its request headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// An idle keep-alive client connection is closed after this long, in milliseconds.
    pub client_idle_timeout_ms: u64,
    /// Largest total size of a request's headers (431 above), in bytes.
    pub header_limit_bytes: usize,
    /// Largest request body (413 above), in bytes.
    pub body_limit_bytes: u64,
    /// Retries per request, to a different backend, for requests safe to repeat.
    pub max_retries: u32,
    /// Retries may add at most this percentage of extra load.
    pub retry_budget_percent: u32,
    /// Removing a backend waits this long for its in-flight requests, in milliseconds.
    pub drain_timeout_ms: u64,
    /// On shutdown, in-flight requests get this long, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Active health checks.
    pub health: HealthCheckConfig,
    /// Passive outlier ejection and slow start.
    pub outlier: OutlierConfig,
}

impl Default for LbConfig {
    fn default() -> Self {
        LbConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token: None,
            algorithm: "round-robin".into(),
            backends: Vec::new(),
            connect_timeout_ms: 1_000,
            response_timeout_ms: 30_000,
            pool_idle_timeout_ms: 50_000,
            pool_max_idle: 64,
            header_read_timeout_ms: 5_000,
            client_idle_timeout_ms: 60_000,
            header_limit_bytes: 16 * 1024,
            body_limit_bytes: 1024 * 1024 * 1024 * 4,
            max_retries: 2,
            retry_budget_percent: 20,
            drain_timeout_ms: 30_000,
            shutdown_grace_ms: 10_000,
            health: HealthCheckConfig::default(),
            outlier: OutlierConfig::default(),
        }
    }
}

/// Settings of the HTTP service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Bearer key that write requests must carry; writes are refused when unset.
    #[serde(serialize_with = "mask_opt")]
    pub api_key: Option<SecretString>,
    /// Largest request body accepted, in bytes.
    pub body_limit_bytes: usize,
    /// Largest total size of a request's headers, in bytes.
    pub header_limit_bytes: usize,
    /// Deadline for handling one request, in milliseconds.
    pub request_timeout_ms: u64,
    /// Deadline for a client to send a request's headers, in milliseconds.
    pub header_read_timeout_ms: u64,
    /// On shutdown, in-flight requests get this long to finish, in milliseconds.
    pub shutdown_grace_ms: u64,
    /// Responses smaller than this are not compressed, in bytes.
    pub compression_min_bytes: u16,
    /// Shed load: an adaptive concurrency limit (Gradient2) refuses the least critical requests first
    /// with 503 and Retry-After, before reading their bodies.
    pub load_shedding: bool,
    /// The concurrency limit at start.
    pub concurrency_limit_initial: u32,
    /// The concurrency limit never falls below this.
    pub concurrency_limit_min: u32,
    /// Nor rises above this.
    pub concurrency_limit_max: u32,
    /// Requests per second each client (`X-Client-Key`, else its forwarded address) may send; 0 turns
    /// rate limiting off. Shared across instances through Redis when `cache.redis_url` is set.
    pub rate_limit_per_s: f64,
    /// How many requests a client may send at once before the rate applies.
    pub rate_limit_burst: u32,
    /// The degradation ladder: while the instance sheds, turn degradable features off a step at a
    /// time (deep pages; then search; then imports and renditions), and back on when it is calm.
    pub degradation: bool,
    /// Shedding this long climbs a step, in milliseconds.
    pub degrade_after_ms: u64,
    /// Calm this long climbs down a step, in milliseconds.
    pub recover_after_ms: u64,
}

/// Settings of the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (the embedded default) or `postgres://user:pass@host/db`.
    #[serde(serialize_with = "mask_url")]
    pub url: SecretString,
    /// Connections in the pool; 0 sizes it to the machine.
    pub max_connections: u32,
    /// Run pending migrations at start-up.
    pub auto_migrate: bool,
    /// How long a request waits for a pooled connection, in milliseconds.
    pub acquire_timeout_ms: u64,
    /// Streaming replicas of the PostgreSQL primary; reads go to them (`--replica-url`, repeatable, or a
    /// comma-separated `TENFOLD_REPLICA_URLS`).
    #[serde(serialize_with = "mask_urls", deserialize_with = "urls_or_csv")]
    pub replica_urls: Vec<SecretString>,
    /// A replica further behind the primary than this gets no reads, in milliseconds.
    pub max_replica_lag_ms: u64,
    /// Databases holding orders, one per shard (`--shard-url`, repeatable, or a comma-separated
    /// `TENFOLD_SHARD_URLS`). Empty: one shard, `orders-0.db` beside a SQLite catalog, or the PostgreSQL
    /// primary itself.
    #[serde(serialize_with = "mask_urls", deserialize_with = "urls_or_csv")]
    pub shard_urls: Vec<SecretString>,
}

impl DatabaseConfig {
    /// The order shards' URLs: `shard_urls`, or by default one shard: `orders-0.db` in the directory of a
    /// SQLite catalog, or the PostgreSQL catalog database itself.
    pub fn order_shard_urls(&self) -> Vec<String> {
        if !self.shard_urls.is_empty() {
            return self
                .shard_urls
                .iter()
                .map(|u| u.expose_secret().to_owned())
                .collect();
        }
        let url = self.url.expose_secret();
        match url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            Some(rest) => {
                let path = rest.split('?').next().unwrap_or(rest);
                if path.is_empty() || path.contains(":memory:") {
                    return vec!["sqlite::memory:".to_owned()];
                }
                let dir = Path::new(path).parent().unwrap_or(Path::new(""));
                vec![format!("sqlite://{}", dir.join("orders-0.db").display())]
            }
            None => vec![url.to_owned()],
        }
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Settings of logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `tenfold_app=debug,info`.
    pub level: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            body_limit_bytes: 1024 * 1024,
            header_limit_bytes: 16 * 1024,
            request_timeout_ms: 10_000,
            header_read_timeout_ms: 5_000,
            shutdown_grace_ms: 10_000,
            compression_min_bytes: 512,
            load_shedding: true,
            concurrency_limit_initial: 100,
            concurrency_limit_min: 8,
            concurrency_limit_max: 1_000,
            rate_limit_per_s: 0.0,
            rate_limit_burst: 20,
            degradation: true,
            degrade_after_ms: 1_000,
            recover_after_ms: 10_000,
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: SecretString::from("sqlite://data/tenfold.db"),
            max_connections: 0,
            auto_migrate: true,
            acquire_timeout_ms: 3_000,
            replica_urls: Vec::new(),
            max_replica_lag_ms: 1_000,
            shard_urls: Vec::new(),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Values given on the command line; `None` leaves the lower layers' value.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<SocketAddr>,
    /// `--database-url`.
    pub database_url: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
    /// `--log-level`.
    pub log_level: Option<String>,
    /// `tenfold lb --listen`.
    pub lb_listen: Option<SocketAddr>,
    /// `tenfold lb --admin-listen`.
    pub lb_admin_listen: Option<SocketAddr>,
    /// `tenfold lb --algorithm`.
    pub lb_algorithm: Option<String>,
    /// `tenfold lb --backend` (replaces the configured list when given).
    pub lb_backends: Option<Vec<BackendSpec>>,
    /// `--redis-url`.
    pub redis_url: Option<String>,
    /// `--no-cache` (Some(false)).
    pub cache_enabled: Option<bool>,
    /// `--replica-url` (replaces the configured list when given).
    pub replica_urls: Option<Vec<String>>,
    /// `--shard-url` (replaces the configured list when given).
    pub shard_urls: Option<Vec<String>>,
}

/// Short environment names for the settings people set most; any key can also be set as
/// `TENFOLD_<SECTION>__<KEY>` (e.g. `TENFOLD_HTTP__BODY_LIMIT_BYTES`).
const ENV_ALIASES: &[(&str, &str)] = &[
    ("database_url", "database.url"),
    ("api_key", "http.api_key"),
    ("listen", "http.listen"),
    ("log_format", "log.format"),
    ("log_level", "log.level"),
    ("admin_token", "lb.admin_token"),
    ("redis_url", "cache.redis_url"),
    ("replica_urls", "database.replica_urls"),
    ("shard_urls", "database.shard_urls"),
    ("nats_url", "jobs.nats_url"),
];

impl Config {
    /// Loads the configuration: `overrides` > `TENFOLD_*` environment > the TOML file > defaults.
    ///
    /// `file` is the path given with `--config`; without one, `./tenfold.toml` is read if it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::figment(file, overrides)?
            .extract::<Config>()
            .map_err(|e| {
                let e = e
                    .into_iter()
                    .next()
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                ConfigError::Source(e.split_whitespace().collect::<Vec<_>>().join(" "))
            })?
            .validated()
    }

    fn figment(file: Option<&Path>, o: &Overrides) -> Result<Figment, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(path) if !path.exists() => {
                return Err(ConfigError::Source(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            Some(path) => fig = fig.merge(Toml::file_exact(path)),
            None => fig = fig.merge(Toml::file(PathBuf::from("tenfold.toml"))),
        }
        // Only aliases and SECTION__KEY names are configuration; other TENFOLD_* variables (the test
        // suite's TENFOLD_TEST_POSTGRES_URL, say) belong to someone else and are left alone.
        let env = Env::prefixed("TENFOLD_")
            .filter(|key| {
                let k = key.as_str().to_ascii_lowercase();
                k.contains("__") || ENV_ALIASES.iter().any(|(alias, _)| *alias == k)
            })
            .map(|key| {
                let k = key.as_str().to_ascii_lowercase();
                match ENV_ALIASES.iter().find(|(alias, _)| *alias == k) {
                    Some((_, path)) => (*path).into(),
                    None => k.replace("__", ".").into(),
                }
            });
        fig = fig.merge(env);
        if let Some(v) = o.listen {
            fig = fig.merge(Serialized::default("http.listen", v));
        }
        if let Some(v) = &o.database_url {
            fig = fig.merge(Serialized::default("database.url", v));
        }
        if let Some(v) = o.log_format {
            fig = fig.merge(Serialized::default("log.format", v));
        }
        if let Some(v) = &o.log_level {
            fig = fig.merge(Serialized::default("log.level", v));
        }
        if let Some(v) = o.lb_listen {
            fig = fig.merge(Serialized::default("lb.listen", v));
        }
        if let Some(v) = o.lb_admin_listen {
            fig = fig.merge(Serialized::default("lb.admin_listen", v));
        }
        if let Some(v) = &o.lb_algorithm {
            fig = fig.merge(Serialized::default("lb.algorithm", v));
        }
        if let Some(v) = &o.lb_backends {
            fig = fig.merge(Serialized::default("lb.backends", v));
        }
        if let Some(v) = &o.redis_url {
            fig = fig.merge(Serialized::default("cache.redis_url", v));
        }
        if let Some(v) = o.cache_enabled {
            fig = fig.merge(Serialized::default("cache.enabled", v));
        }
        if let Some(v) = &o.replica_urls {
            fig = fig.merge(Serialized::default("database.replica_urls", v));
        }
        if let Some(v) = &o.shard_urls {
            fig = fig.merge(Serialized::default("database.shard_urls", v));
        }
        Ok(fig)
    }

    fn validated(self) -> Result<Config, ConfigError> {
        let invalid = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.into(),
            })
        };
        if !(1..=10_240).contains(&self.media.max_upload_mib) {
            return invalid("media.max_upload_mib", "must be between 1 and 10240");
        }
        let h = &self.http;
        if !(1024..=1024 * 1024 * 1024).contains(&h.body_limit_bytes) {
            return invalid("http.body_limit_bytes", "must be between 1 KiB and 1 GiB");
        }
        if !(1024..=1024 * 1024).contains(&h.header_limit_bytes) {
            return invalid("http.header_limit_bytes", "must be between 1 KiB and 1 MiB");
        }
        for (field, v) in [
            ("http.request_timeout_ms", h.request_timeout_ms),
            ("http.header_read_timeout_ms", h.header_read_timeout_ms),
            (
                "database.acquire_timeout_ms",
                self.database.acquire_timeout_ms,
            ),
        ] {
            if !(1..=3_600_000).contains(&v) {
                return invalid(field, "must be between 1 ms and one hour");
            }
        }
        if h.shutdown_grace_ms > 3_600_000 {
            return invalid("http.shutdown_grace_ms", "must be at most one hour");
        }
        if let Some(key) = &h.api_key {
            if key.expose_secret().len() < 16 {
                return invalid("http.api_key", "must be at least 16 characters");
            }
        }
        if self.database.max_connections > 1000 {
            return invalid(
                "database.max_connections",
                "must be at most 1000 (0 sizes the pool to the machine)",
            );
        }
        if let Err(m) = DatabaseKind::of(self.database.url.expose_secret()) {
            return invalid("database.url", &m);
        }
        if !self.database.replica_urls.is_empty() {
            let primary = DatabaseKind::of(self.database.url.expose_secret());
            if !matches!(primary, Ok(DatabaseKind::Postgres)) {
                return invalid(
                    "database.replica_urls",
                    "replicas need a PostgreSQL primary (database.url = postgres://...)",
                );
            }
            for u in &self.database.replica_urls {
                if !matches!(
                    DatabaseKind::of(u.expose_secret()),
                    Ok(DatabaseKind::Postgres)
                ) {
                    return invalid(
                        "database.replica_urls",
                        "each replica must be a postgres:// URL",
                    );
                }
            }
        }
        for u in &self.database.shard_urls {
            if DatabaseKind::of(u.expose_secret()).is_err() {
                return invalid(
                    "database.shard_urls",
                    "each shard must be a sqlite:// or postgres:// URL",
                );
            }
        }
        if self.database.shard_urls.len() > usize::from(u16::MAX) {
            return invalid("database.shard_urls", "too many shards");
        }
        if !(1..=3_600_000).contains(&self.database.max_replica_lag_ms) {
            return invalid(
                "database.max_replica_lag_ms",
                "must be between 1 ms and one hour",
            );
        }
        let c = &self.cache;
        if !(1..=65_536).contains(&c.capacity_mib) {
            return invalid("cache.capacity_mib", "must be between 1 and 65536");
        }
        for (field, v) in [
            ("cache.ttl_ms", c.ttl_ms),
            ("cache.list_ttl_ms", c.list_ttl_ms),
            ("cache.negative_ttl_ms", c.negative_ttl_ms),
            ("cache.redis_timeout_ms", c.redis_timeout_ms),
        ] {
            if !(1..=86_400_000).contains(&v) {
                return invalid(field, "must be between 1 ms and one day");
            }
        }
        if c.stale_if_error_ms > 7 * 86_400_000 {
            return invalid("cache.stale_if_error_ms", "must be at most a week");
        }
        if c.stale_while_revalidate_ms > 86_400_000 {
            return invalid("cache.stale_while_revalidate_ms", "must be at most one day");
        }
        if let Some(u) = &c.redis_url {
            let u = u.expose_secret();
            if !(u.starts_with("redis://") || u.starts_with("rediss://")) {
                return invalid(
                    "cache.redis_url",
                    "must be a redis:// or rediss:// URL such as redis://127.0.0.1:6379",
                );
            }
        }
        let h = &self.http;
        if !(1..=100_000).contains(&h.concurrency_limit_min)
            || h.concurrency_limit_min > h.concurrency_limit_initial
            || h.concurrency_limit_initial > h.concurrency_limit_max
            || h.concurrency_limit_max > 100_000
        {
            return invalid(
                "http.concurrency_limit_initial",
                "the concurrency limits must satisfy 1 <= min <= initial <= max <= 100000",
            );
        }
        if !(h.rate_limit_per_s.is_finite() && (0.0..=1e6).contains(&h.rate_limit_per_s)) {
            return invalid(
                "http.rate_limit_per_s",
                "must be between 0 (off) and 1000000",
            );
        }
        if !(1..=1_000_000).contains(&h.rate_limit_burst) {
            return invalid("http.rate_limit_burst", "must be between 1 and 1000000");
        }
        for (field, v) in [
            ("http.degrade_after_ms", h.degrade_after_ms),
            ("http.recover_after_ms", h.recover_after_ms),
        ] {
            if !(100..=3_600_000).contains(&v) {
                return invalid(field, "must be between 100 ms and one hour");
            }
        }
        let j = &self.jobs;
        if let Some(u) = &j.nats_url {
            let u = u.expose_secret();
            if !(u.starts_with("nats://") || u.starts_with("tls://")) {
                return invalid(
                    "jobs.nats_url",
                    "must be a nats:// or tls:// URL such as nats://127.0.0.1:4222",
                );
            }
        }
        let name_ok = |n: &str, extra: &[u8]| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b) || extra.contains(&b))
        };
        if !name_ok(&j.nats_stream, b"") {
            return invalid(
                "jobs.nats_stream",
                "must be 1 to 64 of A-Z, a-z, 0-9, '_' and '-'",
            );
        }
        if !name_ok(&j.nats_subject_prefix, b".")
            || j.nats_subject_prefix.starts_with('.')
            || j.nats_subject_prefix.ends_with('.')
            || j.nats_subject_prefix.contains("..")
        {
            return invalid(
                "jobs.nats_subject_prefix",
                "must be dot-separated tokens of A-Z, a-z, 0-9, '_' and '-', such as tenfold.jobs",
            );
        }
        if !(1..=10_000).contains(&j.nats_max_deliver) {
            return invalid("jobs.nats_max_deliver", "must be between 1 and 10000");
        }
        if !(1_000..=86_400_000).contains(&j.nats_sweep_after_ms) {
            return invalid(
                "jobs.nats_sweep_after_ms",
                "must be between 1000 ms and one day",
            );
        }
        let lb = &self.lb;
        for (field, v) in [
            ("lb.connect_timeout_ms", lb.connect_timeout_ms),
            ("lb.response_timeout_ms", lb.response_timeout_ms),
            ("lb.pool_idle_timeout_ms", lb.pool_idle_timeout_ms),
            ("lb.header_read_timeout_ms", lb.header_read_timeout_ms),
            ("lb.client_idle_timeout_ms", lb.client_idle_timeout_ms),
            ("lb.drain_timeout_ms", lb.drain_timeout_ms),
            ("lb.health.interval_ms", lb.health.interval_ms),
            ("lb.health.timeout_ms", lb.health.timeout_ms),
        ] {
            if !(1..=3_600_000).contains(&v) {
                return invalid(field, "must be between 1 ms and one hour");
            }
        }
        if !(1024..=1024 * 1024).contains(&lb.header_limit_bytes) {
            return invalid("lb.header_limit_bytes", "must be between 1 KiB and 1 MiB");
        }
        if lb.backends.iter().any(|b| !(1..=1000).contains(&b.weight)) {
            return invalid("lb.backends", "weights must be between 1 and 1000");
        }
        if lb.retry_budget_percent > 100 || lb.outlier.max_ejected_percent > 100 {
            return invalid(
                "lb.retry_budget_percent",
                "percentages must be between 0 and 100",
            );
        }
        if lb.health.rise == 0 || lb.health.fall == 0 {
            return invalid("lb.health", "rise and fall must be at least 1");
        }
        if !lb.health.path.starts_with('/') {
            return invalid("lb.health.path", "must start with /");
        }
        if let Some(t) = &lb.admin_token {
            if t.expose_secret().len() < 16 {
                return invalid("lb.admin_token", "must be at least 16 characters");
            }
        }
        if tracing_filter_ok(&self.log.level).is_err() {
            return invalid(
                "log.level",
                "is not a valid filter (try \"info\" or \"tenfold_app=debug,info\")",
            );
        }
        Ok(self)
    }

    /// The effective configuration as TOML, with secrets and URL passwords masked.
    pub fn to_masked_toml(&self) -> String {
        toml::to_string_pretty(self)
            .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
    }
}

fn tracing_filter_ok(level: &str) -> Result<(), ()> {
    // A light check that catches typos; the binary builds the real filter.
    let ok = !level.trim().is_empty()
        && level.split(',').all(|d| {
            !d.is_empty()
                && d.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_=:.-[]{}\"".contains(c))
        });
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

/// The database engines tenfold speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseKind {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

impl DatabaseKind {
    /// Which engine a URL names, or why it names none we support.
    pub fn of(url: &str) -> Result<DatabaseKind, String> {
        let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or("");
        match scheme {
            "sqlite" => Ok(DatabaseKind::Sqlite),
            "postgres" | "postgresql" => Ok(DatabaseKind::Postgres),
            "mysql" | "mariadb" => {
                Err("MySQL/MariaDB is not supported yet; use sqlite:// or postgres://".into())
            }
            _ => Err(format!(
                "\"{scheme}\" is not a supported database; use sqlite://path or postgres://host/db"
            )),
        }
    }
}

fn mask_opt<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(_) => s.serialize_str("********"),
        None => s.serialize_none(),
    }
}

fn mask_opt_url<S: serde::Serializer>(v: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(u) => s.serialize_str(&mask_password(u.expose_secret())),
        None => s.serialize_none(),
    }
}

fn mask_urls<S: serde::Serializer>(v: &[SecretString], s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = s.serialize_seq(Some(v.len()))?;
    for u in v {
        seq.serialize_element(&mask_password(u.expose_secret()))?;
    }
    seq.end()
}

/// A list of URLs, or one string of comma-separated URLs (as an environment variable gives it).
fn urls_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<SecretString>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Urls {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match Urls::deserialize(d)? {
        Urls::List(v) => v,
        Urls::Csv(s) => s
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_owned)
            .collect(),
    }
    .into_iter()
    .map(SecretString::from)
    .collect())
}

fn mask_url<S: serde::Serializer>(v: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&mask_password(v.expose_secret()))
}

/// A URL with its password replaced by `********`, for printing.
pub fn mask_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("********"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment::Jail's closures return figment's own error type
mod tests {
    use super::*;

    fn load_in(jail: &mut figment::Jail, o: &Overrides) -> Result<Config, ConfigError> {
        let _ = jail;
        Config::load(None, o)
    }

    #[test]
    fn layers_apply_in_order() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("tenfold.toml", "[http]\nlisten = \"127.0.0.1:1000\"\nbody_limit_bytes = 2048\n[log]\nlevel = \"debug\"\n")?;
            jail.set_env("TENFOLD_LISTEN", "127.0.0.1:2000");
            jail.set_env("TENFOLD_HTTP__REQUEST_TIMEOUT_MS", "1234");
            let c = load_in(jail, &Overrides::default()).map_err(|e| e.to_string())?;
            assert_eq!(c.http.listen.port(), 2000, "env beats file");
            assert_eq!(c.http.body_limit_bytes, 2048, "file beats default");
            assert_eq!(c.http.request_timeout_ms, 1234, "nested env keys");
            assert_eq!(c.log.level, "debug");
            let o = Overrides {
                listen: Some("127.0.0.1:3000".parse().map_err(|_| "addr")?),
                ..Default::default()
            };
            let c = load_in(jail, &o).map_err(|e| e.to_string())?;
            assert_eq!(c.http.listen.port(), 3000, "flags beat env");
            Ok(())
        });
    }

    #[test]
    fn invalid_values_are_one_line_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENFOLD_HTTP__BODY_LIMIT_BYTES", "10");
            let e = load_in(jail, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("http.body_limit_bytes"), "{e}");
            assert!(!e.contains('\n'));
            jail.clear_env();
            jail.set_env("TENFOLD_DATABASE_URL", "mysql://x");
            let e = load_in(jail, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("not supported yet"), "{e}");
            jail.clear_env();
            jail.create_file("tenfold.toml", "[http]\nlistn = 1\n")?;
            let e = load_in(jail, &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("listn"), "{e}");
            jail.clear_env();
            jail.create_file("tenfold.toml", "")?;
            jail.set_env("TENFOLD_TEST_POSTGRES_URL", "postgres://elsewhere");
            assert!(
                load_in(jail, &Overrides::default()).is_ok(),
                "unrelated TENFOLD_ variables are ignored"
            );
            jail.set_env("TENFOLD_HTTP__LISTN", "1");
            assert!(
                load_in(jail, &Overrides::default()).is_err(),
                "a misspelt SECTION__KEY is an error"
            );
            Ok(())
        });
    }

    #[test]
    fn nats_settings_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENFOLD_NATS_URL", "nats://u:pw@127.0.0.1:4222");
            let c = load_in(jail, &Overrides::default()).map_err(|e| e.to_string())?;
            assert!(c.jobs.nats_url.is_some());
            assert!(!c.to_masked_toml().contains(":pw@"));
            for (k, v, field) in [
                ("TENFOLD_NATS_URL", "http://x", "jobs.nats_url"),
                ("TENFOLD_JOBS__NATS_STREAM", "a.b", "jobs.nats_stream"),
                (
                    "TENFOLD_JOBS__NATS_SUBJECT_PREFIX",
                    "a..b",
                    "jobs.nats_subject_prefix",
                ),
                (
                    "TENFOLD_JOBS__NATS_MAX_DELIVER",
                    "0",
                    "jobs.nats_max_deliver",
                ),
                (
                    "TENFOLD_JOBS__NATS_SWEEP_AFTER_MS",
                    "5",
                    "jobs.nats_sweep_after_ms",
                ),
            ] {
                jail.clear_env();
                jail.set_env(k, v);
                let e = load_in(jail, &Overrides::default())
                    .unwrap_err()
                    .to_string();
                assert!(e.contains(field), "{k}={v}: {e}");
            }
            Ok(())
        });
    }

    #[test]
    fn secrets_are_masked() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENFOLD_API_KEY", "a-very-secret-key-123");
            jail.set_env("TENFOLD_DATABASE_URL", "postgres://u:hunter2@localhost/db");
            let c = load_in(jail, &Overrides::default()).map_err(|e| e.to_string())?;
            let shown = c.to_masked_toml();
            assert!(
                !shown.contains("a-very-secret-key-123") && !shown.contains("hunter2"),
                "{shown}"
            );
            assert!(shown.contains("********"));
            assert_eq!(
                c.http.api_key.as_ref().map(|k| k.expose_secret().len()),
                Some(21)
            );
            Ok(())
        });
    }

    #[test]
    fn replica_urls_come_as_a_list_or_comma_separated_and_need_postgres() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("TENFOLD_DATABASE_URL", "postgres://u@127.0.0.1:5432/db");
            jail.set_env(
                "TENFOLD_REPLICA_URLS",
                "postgres://u:secret@127.0.0.1:5433/db, postgres://u@127.0.0.1:5434/db",
            );
            let c = load_in(jail, &Overrides::default()).expect("valid");
            let urls: Vec<&str> = c
                .database
                .replica_urls
                .iter()
                .map(|u| u.expose_secret())
                .collect();
            assert_eq!(
                urls,
                [
                    "postgres://u:secret@127.0.0.1:5433/db",
                    "postgres://u@127.0.0.1:5434/db"
                ]
            );
            assert!(!c.to_masked_toml().contains("secret"));
            jail.set_env("TENFOLD_DATABASE_URL", "sqlite://x.db");
            let e = load_in(jail, &Overrides::default()).unwrap_err();
            assert!(e.to_string().contains("database.replica_urls"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn order_shards_default_beside_the_catalog() {
        let mut d = DatabaseConfig::default();
        assert_eq!(d.order_shard_urls(), ["sqlite://data/orders-0.db"]);
        d.url = SecretString::from("sqlite:///var/lib/tenfold/catalog.db?mode=rwc");
        assert_eq!(
            d.order_shard_urls(),
            ["sqlite:///var/lib/tenfold/orders-0.db"]
        );
        d.url = SecretString::from("postgres://u@h/db");
        assert_eq!(d.order_shard_urls(), ["postgres://u@h/db"]);
        d.shard_urls = vec![
            SecretString::from("postgres://u@h1/a"),
            SecretString::from("postgres://u@h2/b"),
        ];
        assert_eq!(
            d.order_shard_urls(),
            ["postgres://u@h1/a", "postgres://u@h2/b"]
        );
    }
}
