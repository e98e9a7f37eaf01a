//! Media jobs: an uploaded image becomes a thumbnail and a medium rendition, each as JPEG and WebP.
//! Decoding and encoding run on the blocking pool, never on the async runtime.

use std::io::Cursor;
use std::sync::Arc;

use image::{DynamicImage, ImageFormat, ImageReader, Limits};
use serde_json::json;
use tenfold_blobs::DirBlobs;

use crate::{Handler, JobCtx, JobError};

/// The most pixels an image may have (a decompression-bomb guard): 50 megapixels.
pub const MAX_PIXELS: u64 = 50_000_000;

/// The renditions made of every image: (name, longest side in pixels).
pub const RENDITIONS: [(&str, u32); 2] = [("thumb", 200), ("medium", 800)];

/// `image`: renditions of an uploaded image. Args: `{"key": "originals/<sha256>.<ext>"}`.
pub struct ImageRenditions {
    blobs: Arc<DirBlobs>,
}

impl ImageRenditions {
    /// The handler over a blob store.
    pub fn new(blobs: Arc<DirBlobs>) -> ImageRenditions {
        ImageRenditions { blobs }
    }
}

fn stem(key: &str) -> Option<&str> {
    let name = key.strip_prefix("originals/")?;
    let stem = name.split('.').next()?;
    (stem.len() == 64 && stem.bytes().all(|b| b.is_ascii_hexdigit())).then_some(stem)
}

#[async_trait::async_trait]
impl Handler for ImageRenditions {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
        let key = ctx.job.args["key"]
            .as_str()
            .ok_or_else(|| JobError::Permanent("the job names no original (args.key)".into()))?;
        let stem = stem(key)
            .ok_or_else(|| JobError::Permanent(format!("{key:?} is not an original's key")))?
            .to_owned();
        let bytes = self
            .blobs
            .read(key)
            .await
            .map_err(|e| JobError::Retry(format!("cannot read {key}: {e}")))?;
        ctx.progress(10);
        // Decode and encode off the async runtime.
        let made = tokio::task::spawn_blocking(move || render(&bytes))
            .await
            .map_err(|e| JobError::Retry(format!("the rendering task failed: {e}")))??;
        ctx.progress(80);
        let mut out = Vec::new();
        for r in made {
            let name = format!("renditions/{stem}-{}.{}", r.name, r.ext);
            self.blobs
                .put_atomic(&name, &r.bytes)
                .await
                .map_err(|e| JobError::Retry(format!("cannot write {name}: {e}")))?;
            out.push(json!({
                "name": r.name,
                "format": r.ext,
                "width": r.width,
                "height": r.height,
                "bytes": r.bytes.len(),
                "url": format!("/media/{name}"),
            }));
        }
        // Recorded with the media row, so that product pages can offer them after the job is pruned.
        let out = serde_json::Value::Array(out);
        ctx.queue()
            .record_renditions(key, &out)
            .await
            .map_err(|e| JobError::Retry(format!("cannot record the renditions: {e}")))?;
        Ok(json!({ "renditions": out }))
    }
}

struct Made {
    name: &'static str,
    ext: &'static str,
    width: u32,
    height: u32,
    bytes: Vec<u8>,
}

fn render(bytes: &[u8]) -> Result<Vec<Made>, JobError> {
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| JobError::Permanent(format!("cannot read the image: {e}")))?;
    let (w, h) = reader
        .into_dimensions()
        .map_err(|e| JobError::Permanent(format!("the image is corrupt or truncated: {e}")))?;
    if u64::from(w) * u64::from(h) > MAX_PIXELS {
        return Err(JobError::Permanent(format!(
            "the image is {w}×{h} pixels, more than the {MAX_PIXELS} allowed"
        )));
    }
    reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| JobError::Permanent(format!("cannot read the image: {e}")))?;
    let mut limits = Limits::default();
    limits.max_image_width = Some(w);
    limits.max_image_height = Some(h);
    limits.max_alloc = Some(MAX_PIXELS * 4 + (64 << 20));
    reader.limits(limits);
    let img = reader
        .decode()
        .map_err(|e| JobError::Permanent(format!("the image is corrupt or truncated: {e}")))?;
    let mut out = Vec::new();
    for (name, side) in RENDITIONS {
        let small = if img.width().max(img.height()) > side {
            img.thumbnail(side, side)
        } else {
            img.clone()
        };
        let rgb = DynamicImage::ImageRgb8(small.to_rgb8());
        for (ext, fmt, src) in [
            ("jpg", ImageFormat::Jpeg, &rgb),
            (
                "webp",
                ImageFormat::WebP,
                &DynamicImage::ImageRgba8(small.to_rgba8()),
            ),
        ] {
            let mut buf = Cursor::new(Vec::new());
            src.write_to(&mut buf, fmt)
                .map_err(|e| JobError::Retry(format!("cannot encode {name}.{ext}: {e}")))?;
            out.push(Made {
                name,
                ext,
                width: small.width(),
                height: small.height(),
                bytes: buf.into_inner(),
            });
        }
    }
    Ok(out)
}
