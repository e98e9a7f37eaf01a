//! Handlers every worker has.

use std::time::Duration;

use crate::{Handler, JobCtx, JobError};

/// `noop`: does nothing, after `sleep_ms` (0 to 60,000) if given. For benchmarks and failure tests.
pub struct Noop;

#[async_trait::async_trait]
impl Handler for Noop {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
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
        Ok(serde_json::Value::Null)
    }
}

/// The built-in handlers, registered.
pub fn registry() -> crate::Registry {
    crate::Registry::new().register("noop", Noop)
}
