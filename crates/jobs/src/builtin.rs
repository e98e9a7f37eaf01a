//! Handlers every worker has.

use std::sync::Arc;
use std::time::Duration;

use tenfold_blobs::DirBlobs;

use crate::{Handler, JobCtx, JobError};

/// Sleeps for the `sleep_ms` of a job's args (0 to 60,000; none when absent).
async fn pause(ctx: &JobCtx) -> Result<(), JobError> {
    let ms = match ctx.job.args.get("sleep_ms") {
        None => 0,
        Some(v) => v
            .as_u64()
            .filter(|&ms| ms <= 60_000)
            .ok_or_else(|| JobError::Permanent("sleep_ms must be 0 to 60000".into()))?,
    };
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    Ok(())
}

/// `noop`: does nothing, after `sleep_ms` (0 to 60,000) if given. For benchmarks and failure tests.
pub struct Noop;

#[async_trait::async_trait]
impl Handler for Noop {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
        pause(ctx).await?;
        Ok(serde_json::Value::Null)
    }
}

/// `mark`: after `sleep_ms` like `noop`, leaves an effect the way the real handlers do: the blob
/// `marks/<job id>`, written atomically under a name the job determines, so running twice has the
/// effect of running once. Failure tests count the marks against the jobs done.
pub struct Mark {
    blobs: Arc<DirBlobs>,
}

impl Mark {
    /// Marks under `blobs`.
    pub fn new(blobs: Arc<DirBlobs>) -> Mark {
        Mark { blobs }
    }
}

#[async_trait::async_trait]
impl Handler for Mark {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
        pause(ctx).await?;
        let key = format!("marks/{}", ctx.job.id);
        self.blobs
            .put_atomic(&key, ctx.job.id.to_string().as_bytes())
            .await
            .map_err(|e| JobError::Retry(format!("cannot write {key}: {e}")))?;
        Ok(serde_json::json!({ "mark": key }))
    }
}

/// The built-in handlers that need nothing, registered.
pub fn registry() -> crate::Registry {
    crate::Registry::new().register("noop", Noop)
}
