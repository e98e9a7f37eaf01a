//! `POST /api/products/{id}/media`: an upload streamed into blob storage, its type judged from its
//! bytes, recorded with its processing job in one transaction, answered 202 with the job at once; and
//! `/media/...`: the originals and renditions, served from the blob directory with immutable caching
//! (their names are content-derived).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Serialize;
use tenfold_blobs::{BlobError, DirBlobs};
use tenfold_store::queue::{NewJob, NewMedia};
use utoipa::ToSchema;

use crate::error::{ApiError, ApiResult, Problem};
use crate::extract::{ProductIdPath, Writer};
use crate::routes::jobs::JobView;
use crate::App;

/// Where uploads go and how large they may be.
pub(crate) struct Media {
    pub(crate) blobs: Arc<DirBlobs>,
    pub(crate) max_upload: u64,
}

/// An accepted upload.
#[derive(Debug, Serialize, ToSchema)]
pub struct UploadAccepted {
    /// The media record.
    pub media_id: i64,
    /// The product.
    pub product_id: i64,
    /// `image/jpeg`, `video/mp4`... (from the bytes).
    pub content_type: String,
    /// Bytes received.
    pub size: u64,
    /// The original, as stored.
    pub original: String,
    /// The processing job (poll it, or follow its events).
    pub job: JobView,
}

fn media(app: &App) -> ApiResult<&Media> {
    app.inner.media.get().ok_or_else(|| ApiError::Unavailable {
        detail: "media uploads are not available on this instance".into(),
        retry_after: Duration::from_secs(5),
    })
}

fn blob_error(e: BlobError) -> ApiError {
    match e {
        BlobError::TooLarge(n) => ApiError::PayloadTooLarge(n as usize),
        BlobError::UnknownType => ApiError::UnsupportedMediaType(e.to_string()),
        BlobError::Empty => ApiError::BadRequest(e.to_string()),
        BlobError::Io(io) => ApiError::Unavailable {
            detail: format!("blob storage failed: {io}"),
            retry_after: Duration::from_secs(5),
        },
        BlobError::Unavailable { retry_after } => ApiError::Unavailable {
            detail:
                "blob storage has been failing; its breaker refuses uploads until a probe succeeds"
                    .into(),
            retry_after: retry_after.max(Duration::from_secs(1)),
        },
    }
}

/// Serves `/media/...` files through the blob read breaker: refused at once (503) while reads of
/// storage keep failing; a file server error counts as a failure, anything else (a 404 too) as an answer.
pub(crate) async fn guard_reads(
    State(blobs): State<Arc<DirBlobs>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let ticket = match blobs.begin_read() {
        Ok(t) => t,
        Err(e) => return blob_error(e).into_response(),
    };
    let resp = next.run(req).await;
    ticket.report(resp.status().is_server_error());
    resp
}

/// A declared length over the limit is refused before a byte is read.
fn refuse_declared_over(headers: &axum::http::HeaderMap, limit: u64) -> ApiResult<()> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::PayloadTooLarge(limit as usize));
    }
    Ok(())
}

/// Streams a request body into a blob writer (which enforces the limit and, for media, the type).
async fn stream_into<S, E>(mut stream: S, w: &mut tenfold_blobs::BlobWriter) -> ApiResult<()>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    while let Some(chunk) = stream.next().await {
        let chunk =
            chunk.map_err(|e| ApiError::BadRequest(format!("the upload broke off: {e}")))?;
        w.write(&chunk).await.map_err(blob_error)?;
    }
    Ok(())
}

/// Upload an image (JPEG, PNG, WebP, GIF) or a video (MP4, WebM) for a product; processing runs in the
/// background.
#[utoipa::path(
    post,
    path = "/api/products/{id}/media",
    tag = "products",
    params(("id" = i64, Path, description = "Product id", minimum = 1)),
    request_body(content = Vec<u8>, description = "The file's bytes (the type is judged from them)", content_type = "application/octet-stream"),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Stored; processing queued", body = UploadAccepted, headers(("Location" = String, description = "URL of the processing job"))),
        (status = 400, description = "Empty or broken upload", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not an image or video we take", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn upload_media(
    State(app): State<App>,
    _w: Writer,
    ProductIdPath(id): ProductIdPath,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    refuse_declared_over(&headers, media(&app)?.max_upload)?;
    let (media_id, stored, job) = store_media(
        &app,
        id,
        crate::routes::flags::client_key(&headers),
        body.into_data_stream(),
    )
    .await?;
    let location = HeaderValue::from_str(&format!("/api/jobs/{}", job.id)).ok();
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(UploadAccepted {
            media_id,
            product_id: id.get(),
            content_type: stored.media_type.mime().to_owned(),
            size: stored.size,
            original: format!("/media/{}", stored.key),
            job: job.into(),
        }),
    )
        .into_response();
    if let Some(l) = location {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    Ok(resp)
}

/// Stores an upload of product `id` from `body` and records it with its processing job (the API's
/// upload and the admin page's form).
pub(crate) async fn store_media<S, E>(
    app: &App,
    id: tenfold_catalog::ProductId,
    client: Option<&str>,
    body: S,
) -> ApiResult<(i64, tenfold_blobs::Stored, tenfold_store::queue::Job)>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let m = media(app)?;
    let queue = crate::routes::jobs::queue(app)?;
    if app.store().get_product(id).await?.is_none() {
        return Err(ApiError::NotFound(format!(
            "there is no product {}",
            id.get()
        )));
    }
    let mut w = m.blobs.writer(m.max_upload).await.map_err(blob_error)?;
    stream_into(body, &mut w).await?;
    let stored = w.commit().await.map_err(blob_error)?;
    let kind = if stored.media_type.is_image() {
        "image"
    } else {
        "video"
    };
    let mut job = NewJob::new(
        "media",
        kind,
        serde_json::json!({ "key": stored.key, "product_id": id.get() }),
    );
    job.max_attempts = 5;
    // Non-essential work: with the renditions flag off the original is stored and recorded as usual,
    // and its job waits (workers stay free for other work; it runs later without anyone asking).
    if !app.flags().is_on(&tenfold_flags::RENDITIONS, client) {
        job.run_at_ms = Some(chrono::Utc::now().timestamp_millis() + RENDITIONS_DEFERRED_MS);
    }
    let (media_id, job) = queue
        .enqueue_media(
            id.get(),
            &NewMedia {
                blob_key: stored.key.clone(),
                media_type: stored.media_type.ext().to_owned(),
                size: stored.size,
            },
            &job,
        )
        .await?;
    Ok((media_id, stored, job))
}

/// How long an upload's rendition job waits while the renditions flag is off (15 min).
const RENDITIONS_DEFERRED_MS: i64 = 15 * 60 * 1000;

/// A bulk import of products from CSV (columns `sku`, `name`, `description`, `price_minor`, `currency`,
/// `stock`, `category`); it runs in the background, reporting progress and row errors on its job.
#[utoipa::path(
    post,
    path = "/api/imports",
    tag = "products",
    request_body(content = String, description = "CSV with a header row", content_type = "text/csv"),
    security(("api_key" = [])),
    responses(
        (status = 202, description = "Stored; the import is queued", body = JobView, headers(("Location" = String, description = "URL of the import job"))),
        (status = 400, description = "Empty upload", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No API key", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Too large", body = Problem, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn import_products(
    State(app): State<App>,
    _w: Writer,
    headers: axum::http::HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let m = media(&app)?;
    let queue = crate::routes::jobs::queue(&app)?;
    // Sheddable: refused (before the body is read) while the imports flag is off.
    crate::routes::flags::require(&app, &tenfold_flags::IMPORTS, &headers)?;
    refuse_declared_over(&headers, m.max_upload)?;
    let mut w = m
        .blobs
        .import_writer(m.max_upload, "csv")
        .await
        .map_err(blob_error)?;
    stream_into(body.into_data_stream(), &mut w).await?;
    let stored = w.commit_import().await.map_err(blob_error)?;
    let mut job = NewJob::new(
        "import",
        "import",
        serde_json::json!({ "key": stored.key, "bytes": stored.size }),
    );
    job.max_attempts = 10;
    let (job, _) = queue.enqueue(&job).await?;
    let location = HeaderValue::from_str(&format!("/api/jobs/{}", job.id)).ok();
    let mut resp = (StatusCode::ACCEPTED, Json(JobView::from(job))).into_response();
    if let Some(l) = location {
        resp.headers_mut().insert(header::LOCATION, l);
    }
    Ok(resp)
}
