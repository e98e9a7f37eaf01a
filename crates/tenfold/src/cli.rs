//! The command line, as clap definitions.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tenfold_config::{BackendSpec, Config, ConfigError, LogFormat, Overrides};

/// tenfold: a product-catalog web service stack built to scale tenfold and beyond.
#[derive(Debug, Clone, Parser)]
#[command(name = "tenfold", version, about, propagate_version = true)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Flags every command takes; they override the environment and the configuration file.
#[derive(Debug, Clone, Args)]
pub(crate) struct Global {
    /// Configuration file (default: ./tenfold.toml if it exists).
    #[arg(long, global = true, env = "TENFOLD_CONFIG", value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Database URL: sqlite://path (default sqlite://data/tenfold.db) or postgres://user@host/db.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) database_url: Option<String>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    pub(crate) log_format: Option<LogFormatArg>,
    /// Log filter, e.g. info or tenfold_app::access=debug,info.
    #[arg(long, global = true, value_name = "FILTER")]
    pub(crate) log_level: Option<String>,
    /// Redis URL for the shared L2 cache and cross-instance invalidation, e.g. redis://127.0.0.1:6379.
    #[arg(long, global = true, value_name = "URL")]
    pub(crate) redis_url: Option<String>,
    /// Turn caching off (every read goes to the database).
    #[arg(long, global = true)]
    pub(crate) no_cache: bool,
    /// A streaming replica of the PostgreSQL primary for reads (repeat for several).
    #[arg(long = "replica-url", global = true, value_name = "URL")]
    pub(crate) replica_urls: Vec<String>,
    /// A database holding a shard of the orders (repeat for several; the order matters).
    #[arg(long = "shard-url", global = true, value_name = "URL")]
    pub(crate) shard_urls: Vec<String>,
}

/// What `tenfold shards` does.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum ShardsAction {
    /// The shard map's version, buckets and orders per shard, and moves in progress.
    Status,
    /// Move one bucket's orders to another shard while orders keep coming: copy, catch up, fence writes
    /// briefly, verify by checksum, switch the map. Running it again resumes a move that died.
    Move {
        /// The bucket, 0 to 1023 (a customer's bucket is shown by `tenfold shards bucket --customer ID`).
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..1024))]
        bucket: u16,
        /// The shard to move it to, numbered as the `--shard-url`s are given (from 0).
        #[arg(long)]
        to: u16,
    },
    /// The bucket of a customer and the shard that holds it.
    Bucket {
        /// The customer id.
        #[arg(long)]
        customer: i64,
    },
}

/// What `tenfold jobs` does.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum JobsAction {
    /// Enqueue jobs (the same one `--count` times; with `--idempotency-key`, once).
    Enqueue {
        /// The queue.
        #[arg(long)]
        queue: String,
        /// The job's kind (a worker runs the kinds it has handlers for; `noop` is built in).
        #[arg(long)]
        kind: String,
        /// The job's input, as JSON.
        #[arg(long, default_value = "{}")]
        args: String,
        /// How many.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
        /// Higher runs first.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Attempts before the job is dead-lettered.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
        max_attempts: u32,
        /// Makes the enqueue idempotent: the same key again returns the first job.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// Depth, running, dead and failed jobs, and the oldest due job's age, per queue.
    Stats,
    /// Put dead-lettered jobs back in their queue (all queues unless `--queue`).
    RetryDead {
        /// Only this queue.
        #[arg(long)]
        queue: Option<String>,
    },
    /// One job, as JSON.
    Show {
        /// The job id.
        id: i64,
    },
    /// Cancel a job that has not finished.
    Cancel {
        /// The job id.
        id: i64,
    },
}

/// What `tenfold flags` does.
#[derive(Debug, Clone, Subcommand)]
pub(crate) enum FlagsAction {
    /// Every known flag (set, or at its default) and any other set flag.
    List,
    /// Turn a flag on (for everyone, or `--percent` of clients) or off; every instance follows within
    /// about 100 ms.
    Set {
        /// The flag (`tenfold flags list` shows the known ones).
        name: String,
        /// On.
        #[arg(long, conflicts_with = "off", required_unless_present = "off")]
        on: bool,
        /// Off.
        #[arg(long)]
        off: bool,
        /// With --on: only for this share of clients (sticky per client).
        #[arg(long, requires = "on", value_parser = clap::value_parser!(u8).range(0..=100))]
        percent: Option<u8>,
        /// Why (shown by `list`).
        #[arg(long)]
        note: Option<String>,
    },
    /// Unset a flag: its default applies again.
    Unset {
        /// The flag.
        name: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub(crate) enum Command {
    /// Run one stateless catalog service instance; prints the address it bound on stdout.
    App {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Shut down gracefully when stdin closes (set by `tenfold up`, whose death closes the pipe).
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
    },
    /// Run the whole system on this machine: a load balancer in front of several app instances, seeded,
    /// supervised and autoscaled. Ctrl-C stops everything.
    Up {
        /// Address of the load balancer.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Address of the admin API.
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
        /// App instances at start.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
        instances: u16,
        /// Fewest instances the autoscaler keeps (default: 2, or fewer when starting with fewer).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        min: Option<u16>,
        /// Most instances the autoscaler starts (default: twice the CPU count, at least 4).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
        max: Option<u16>,
        /// Seed this many demo products into an empty database.
        #[arg(long, default_value_t = 10_000)]
        seed_products: u64,
        /// Scale up when smoothed in-flight requests per instance exceed this.
        #[arg(long, default_value_t = 4.0)]
        scale_up_above: f64,
        /// Scale down when they fall below this.
        #[arg(long, default_value_t = 0.5)]
        scale_down_below: f64,
        /// At most one scaling decision per this many milliseconds.
        #[arg(long, default_value_t = 10_000)]
        cooldown_ms: u64,
        /// Background workers at start (`tenfold worker` processes; 0 runs none).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=64))]
        workers: u16,
        /// Fewest workers the autoscaler keeps.
        #[arg(long, value_parser = clap::value_parser!(u16).range(0..=64))]
        min_workers: Option<u16>,
        /// Most workers the autoscaler starts (on queue depth and oldest-job age).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(0..=64))]
        max_workers: u16,
        /// Jobs at once per worker.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
        worker_concurrency: u16,
    },
    /// Set the number of app instances of a running `tenfold up`: `tenfold scale app=N`.
    Scale {
        /// `app=N`.
        #[arg(value_name = "app=N")]
        spec: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Replace every app instance of a running `tenfold up`, one at a time.
    Restart {
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Run a background worker: claims jobs of its queues and runs them; prints one line when ready.
    Worker {
        /// Queues to serve, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "media,import")]
        queues: Vec<String>,
        /// Jobs at once.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=1024))]
        concurrency: u16,
        /// A job's lease, renewed by heartbeats; a worker that dies loses its jobs after this long.
        #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
        lease_ms: u64,
        /// On shutdown, how long running jobs may finish before they are released.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
        grace_ms: u64,
        /// Shut down gracefully when stdin closes (set by a supervisor).
        #[arg(long, hide = true)]
        exit_on_stdin_eof: bool,
    },
    /// The job queue: `enqueue`, `stats`, `retry-dead`, `show`, `cancel`.
    Jobs {
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Feature flags and kill switches: `list`, `set NAME --on|--off [--percent N]`, `unset NAME`.
    Flags {
        #[command(subcommand)]
        action: FlagsAction,
    },
    /// Order shards: `status` (buckets and orders per shard), `move` (a bucket, online), `bucket` (of a customer).
    Shards {
        #[command(subcommand)]
        action: ShardsAction,
    },
    /// Fill the database with a deterministic demo catalog (safe to run twice).
    Seed {
        /// Number of products.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(0..=100_000_000))]
        products: u64,
        /// Random seed: the same seed gives the same catalog.
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Run the load balancer in front of HTTP/1.1 backends; prints its address (and the admin API's) on stdout.
    Lb {
        /// Address to listen on (port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// A backend, `ADDR` or `ADDR=WEIGHT`; repeat for more (replaces the configured list).
        #[arg(long = "backend", value_name = "ADDR[=WEIGHT]")]
        backends: Vec<BackendSpec>,
        /// round-robin, weighted-round-robin, least-connections, consistent-hash, hash-header:NAME, p2c-ewma.
        #[arg(long, value_name = "NAME")]
        algorithm: Option<String>,
        /// Address of the admin API (needs TENFOLD_ADMIN_TOKEN).
        #[arg(long, value_name = "ADDR")]
        admin_listen: Option<SocketAddr>,
    },
    /// Apply pending database migrations.
    Migrate,
    /// Print the effective configuration (secrets masked).
    Config {
        /// Address to listen on, as `app` would take it.
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
}

/// Where the admin API of a running `tenfold up` is (default: read from ./data/up.json).
#[derive(Debug, Clone, Args)]
pub(crate) struct AdminTarget {
    /// Admin API base URL, e.g. http://127.0.0.1:8081.
    #[arg(long = "admin", value_name = "URL")]
    pub(crate) url: Option<String>,
}

impl Cli {
    /// Loads the layered configuration with this command line's flags on top.
    pub(crate) fn load_config(&self) -> Result<Config, ConfigError> {
        let listen = match &self.command {
            Command::App { listen, .. } | Command::Config { listen } => *listen,
            _ => None,
        };
        let (lb_listen, lb_admin_listen, lb_algorithm, lb_backends) = match &self.command {
            Command::Lb {
                listen,
                backends,
                algorithm,
                admin_listen,
            } => (
                *listen,
                *admin_listen,
                algorithm.clone(),
                (!backends.is_empty()).then(|| backends.clone()),
            ),
            Command::Up {
                listen,
                admin_listen,
                ..
            } => (*listen, *admin_listen, None, None),
            _ => (None, None, None, None),
        };
        let overrides = Overrides {
            lb_listen,
            lb_admin_listen,
            lb_algorithm,
            lb_backends,
            listen,
            database_url: self.global.database_url.clone(),
            log_format: self.global.log_format.map(|f| match f {
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
            }),
            log_level: self.global.log_level.clone(),
            redis_url: self.global.redis_url.clone(),
            cache_enabled: self.global.no_cache.then_some(false),
            replica_urls: (!self.global.replica_urls.is_empty())
                .then(|| self.global.replica_urls.clone()),
            shard_urls: (!self.global.shard_urls.is_empty())
                .then(|| self.global.shard_urls.clone()),
        };
        Config::load(self.global.config.as_deref(), &overrides)
    }
}
