//! A private PostgreSQL cluster (primary, streaming replicas, shard servers) on free loopback ports,
//! started with the project's `scripts/pg-cluster.sh` and destroyed when dropped.

use std::process::Command;

/// A running cluster.
pub struct PgCluster {
    dir: String,
    /// URL of the primary's `tenfold` database.
    pub primary: String,
    /// URLs of the replicas' `tenfold` database, replica 1 first.
    pub replicas: Vec<String>,
    /// URLs of the shard servers' `tenfold` database.
    pub shards: Vec<String>,
}

fn script() -> String {
    format!("{}/../../scripts/pg-cluster.sh", env!("CARGO_MANIFEST_DIR"))
}

impl PgCluster {
    /// Starts a primary, `replicas` replicas (replica 1 replaying `delay_ms` late) and `shards` shard
    /// servers.
    pub fn start(replicas: usize, shards: usize, delay_ms: u64) -> PgCluster {
        let dir = format!("/tmp/tenfold-test-pgc-{}", uuid::Uuid::new_v4().simple());
        let out = Command::new("bash")
            .args([
                &script(),
                "start",
                "--dir",
                &dir,
                "--port",
                "auto",
                "--replicas",
                &replicas.to_string(),
                "--shards",
                &shards.to_string(),
                "--delay-ms",
                &delay_ms.to_string(),
            ])
            .output()
            .expect("run scripts/pg-cluster.sh");
        assert!(
            out.status.success(),
            "pg-cluster.sh start failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout).into_owned();
        let get = |k: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or_default()
                .to_owned()
        };
        let list = |v: String| -> Vec<String> {
            v.split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        };
        PgCluster {
            primary: get("TENFOLD_DATABASE_URL"),
            replicas: list(get("TENFOLD_REPLICA_URLS")),
            shards: list(get("TENFOLD_SHARD_URLS")),
            dir,
        }
    }

    fn run(&self, args: &[&str]) {
        let out = Command::new("bash")
            .arg(script())
            .args(args)
            .args(["--dir", &self.dir])
            .output()
            .expect("run scripts/pg-cluster.sh");
        assert!(
            out.status.success(),
            "pg-cluster.sh {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops one server at once (`replica2`, `shard1`...), as a crash would.
    pub fn kill(&self, server: &str) {
        self.run(&["kill", server]);
    }

    /// Starts every stopped server again.
    pub fn restart_stopped(&self) {
        let (r, s) = (
            self.replicas.len().to_string(),
            self.shards.len().to_string(),
        );
        self.run(&["start", "--replicas", &r, "--shards", &s]);
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .args(["destroy", "--dir", &self.dir])
            .output();
    }
}
