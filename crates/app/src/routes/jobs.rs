//! `/api/jobs/{id}` (a job's state, progress, attempts, last error and result), its server-sent events,
//! and `/api/admin/jobs` (depth and oldest-job age per queue). API key required: jobs are started by
//! admin actions (uploads, imports).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde::Serialize;
use tenfold_store::queue::{Job, JobQueue, QueueStats};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{CustomerIdPath, Writer};
use crate::App;

/// How often an events stream looks at its job.
const EVENT_POLL: Duration = Duration::from_millis(250);
/// The longest an events stream stays open.
const EVENT_LIFETIME: Duration = Duration::from_secs(600);

/// A job, as its status page shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobView {
    /// Its id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// What it does.
    pub kind: String,
    /// `queued`, `running`, `done`, `failed`, `dead` or `cancelled`.
    pub state: String,
    /// 0-100.
    pub progress: u8,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Why the last attempt failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// What it produced (links to its results, when done).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<serde_json::Value>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
    /// This job's events (server-sent).
    pub events: String,
}

impl From<Job> for JobView {
    fn from(j: Job) -> Self {
        JobView {
            events: format!("/api/jobs/{}/events", j.id),
            id: j.id,
            queue: j.queue,
            kind: j.kind,
            state: serde_json::to_value(j.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            progress: j.progress,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            last_error: j.last_error,
            result: j.result,
            created_ms: j.created_ms,
            finished_ms: j.finished_ms,
        }
    }
}

pub(crate) fn queue(app: &App) -> ApiResult<&JobQueue> {
    app.inner
        .jobs
        .get()
        .map(|q| q.as_ref())
        .ok_or_else(|| ApiError::Unavailable {
            detail: "the job queue is not available on this instance".into(),
            retry_after: Duration::from_secs(5),
        })
}

async fn job(app: &App, id: i64) -> ApiResult<Job> {
    queue(app)?
        .get(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("there is no job {id}")))
}

/// A job's state, progress, attempts, last error and result.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}",
    tag = "jobs",
    params(("id" = i64, Path, description = "Job id", minimum = 1)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 400, description = "Malformed id", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn get_job(
    State(app): State<App>,
    _w: Writer,
    CustomerIdPath(id): CustomerIdPath,
) -> ApiResult<Json<JobView>> {
    Ok(Json(job(&app, id).await?.into()))
}

/// Server-sent events: the job (as `GET /api/jobs/{id}` shows it) each time its state or progress
/// changes, first at once; the stream ends when the job finishes.
#[utoipa::path(
    get,
    path = "/api/jobs/{id}/events",
    tag = "jobs",
    params(("id" = i64, Path, description = "Job id", minimum = 1)),
    security(("api_key" = [])),
    responses(
        (status = 200, description = "`event: job` with the job as JSON, on every change", content_type = "text/event-stream"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such job", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn job_events(
    State(app): State<App>,
    _w: Writer,
    CustomerIdPath(id): CustomerIdPath,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = job(&app, id).await?;
    let stream = futures::stream::unfold(
        (
            app,
            Some(first),
            None::<(String, u8)>,
            tokio::time::Instant::now(),
        ),
        move |(app, mut next, mut last, started)| async move {
            loop {
                let j = match next.take() {
                    Some(j) => j,
                    None => {
                        if last.as_ref().is_some_and(|(s, _)| is_final(s))
                            || started.elapsed() > EVENT_LIFETIME
                        {
                            return None;
                        }
                        tokio::time::sleep(EVENT_POLL).await;
                        match queue(&app).ok()?.get(id).await {
                            Ok(Some(j)) => j,
                            // Gone (pruned) or the database is away: end the stream; clients reconnect.
                            _ => return None,
                        }
                    }
                };
                let view = JobView::from(j);
                let key = (view.state.clone(), view.progress);
                if last.as_ref() != Some(&key) {
                    last = Some(key);
                    let ev = Event::default()
                        .event("job")
                        .json_data(&view)
                        .unwrap_or_else(|_| Event::default().event("job"));
                    return Some((Ok(ev), (app, None, last, started)));
                }
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn is_final(state: &str) -> bool {
    matches!(state, "done" | "failed" | "dead" | "cancelled")
}

/// Per queue: jobs ready, scheduled, running, done, dead and failed, and the oldest due job's age.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuesView {
    /// One entry per queue that has jobs.
    #[schema(value_type = Vec<Object>)]
    pub queues: Vec<QueueStats>,
}

/// Queue depth and age, per queue.
#[utoipa::path(
    get,
    path = "/api/admin/jobs",
    tag = "jobs",
    security(("api_key" = [])),
    responses(
        (status = 200, description = "Per queue", body = QueuesView),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn queue_stats(State(app): State<App>, _w: Writer) -> ApiResult<Json<QueuesView>> {
    Ok(Json(QueuesView {
        queues: queue(&app)?.stats().await?,
    }))
}

/// Publishes queue depth and age as gauges (for /metrics), every few seconds.
pub(crate) async fn publish_gauges(q: std::sync::Arc<JobQueue>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        match q.active_stats().await {
            Ok(stats) => {
                for s in stats {
                    let g = |name: &'static str, v: f64| {
                        metrics::gauge!(name, "queue" => s.queue.clone()).set(v);
                    };
                    g("job_queue_ready", s.ready as f64);
                    g("job_queue_scheduled", s.scheduled as f64);
                    g("job_queue_running", s.running as f64);
                    g("job_queue_dead", s.dead as f64);
                    g(
                        "job_queue_oldest_ready_seconds",
                        s.oldest_ready_ms as f64 / 1000.0,
                    );
                }
            }
            Err(e) => tracing::debug!(error = %e, "could not read queue stats"),
        }
    }
}
