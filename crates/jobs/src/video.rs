//! `video`: H.264 MP4 renditions (480p and 720p, never upscaled) and a poster frame of an uploaded video,
//! made with ffmpeg (the Debian package). A worker registers this handler only where ffmpeg and ffprobe
//! run, so a worker without them leaves video jobs to workers that have them instead of failing them.

use std::process::Stdio;
use std::sync::Arc;

use serde_json::json;
use tenfold_blobs::DirBlobs;
use tokio::process::Command;

use crate::{Handler, JobCtx, JobError};

/// The renditions: (name, height).
pub const RENDITIONS: [(&str, u32); 2] = [("480p", 480), ("720p", 720)];

/// The `video` handler.
pub struct VideoRenditions {
    blobs: Arc<DirBlobs>,
}

impl VideoRenditions {
    /// The handler, if ffmpeg and ffprobe run on this machine.
    pub async fn detect(blobs: Arc<DirBlobs>) -> Option<VideoRenditions> {
        for tool in ["ffmpeg", "ffprobe"] {
            let ok = Command::new(tool)
                .arg("-version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if !ok {
                return None;
            }
        }
        Some(VideoRenditions { blobs })
    }
}

/// Runs a tool to the end (killed if the job is dropped: cancelled, or its lease lost); its stderr's last
/// lines on failure.
async fn run(tool: &str, args: &[&str]) -> Result<Vec<u8>, String> {
    let out = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(3).collect();
        Err(tail.into_iter().rev().collect::<Vec<_>>().join(" / "))
    }
}

impl VideoRenditions {
    /// Runs ffmpeg with `args` and a temporary output file (its type from `ext`), then puts that file
    /// under `key`; on failure the temporary file is removed and the job fails permanently (`what`
    /// says which step).
    async fn ffmpeg_to(
        &self,
        args: &[&str],
        ext: &str,
        key: &str,
        what: &str,
    ) -> Result<(), JobError> {
        let t = self.blobs.temp_path(&format!("video.{ext}"));
        let t_s = t.to_string_lossy().into_owned();
        let mut all = vec!["-nostdin", "-y", "-v", "error"];
        all.extend_from_slice(args);
        all.push(&t_s);
        if let Err(e) = run("ffmpeg", &all).await {
            let _ = tokio::fs::remove_file(&t).await;
            return Err(JobError::Permanent(format!("cannot {what}: {e}")));
        }
        self.blobs
            .adopt(&t, key)
            .await
            .map_err(|e| JobError::Retry(format!("cannot write {key}: {e}")))
    }
}

#[async_trait::async_trait]
impl Handler for VideoRenditions {
    async fn run(&self, ctx: &JobCtx) -> Result<serde_json::Value, JobError> {
        let key = ctx.job.args["key"]
            .as_str()
            .filter(|k| k.starts_with("originals/") && !k.contains(".."))
            .ok_or_else(|| JobError::Permanent("the job names no original (args.key)".into()))?;
        let stem = key
            .trim_start_matches("originals/")
            .split('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let input = self.blobs.path(key);
        let input_s = input.to_string_lossy().into_owned();
        let probe = run(
            "ffprobe",
            &[
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height:format=duration",
                "-of",
                "json",
                &input_s,
            ],
        )
        .await
        .map_err(|e| JobError::Permanent(format!("not a playable video: {e}")))?;
        let info: serde_json::Value = serde_json::from_slice(&probe)
            .map_err(|e| JobError::Permanent(format!("not a playable video: {e}")))?;
        let height = info["streams"][0]["height"].as_u64().ok_or_else(|| {
            JobError::Permanent("not a playable video: it has no video stream".into())
        })? as u32;
        let duration: f64 = info["format"]["duration"]
            .as_str()
            .and_then(|d| d.parse().ok())
            .unwrap_or(0.0);
        let mut out = Vec::new();
        let steps = RENDITIONS.len() + 1;
        for (i, (name, target)) in RENDITIONS.into_iter().enumerate() {
            let h = target.min(height - height % 2).max(2);
            let dest = format!("renditions/{stem}-{name}.mp4");
            let scale = format!("scale=-2:{h}");
            let args = [
                "-i",
                &input_s,
                "-vf",
                &scale,
                "-c:v",
                "libx264",
                "-preset",
                "veryfast",
                "-crf",
                "26",
                "-pix_fmt",
                "yuv420p",
                "-c:a",
                "aac",
                "-b:a",
                "96k",
                "-movflags",
                "+faststart",
            ];
            self.ffmpeg_to(&args, "mp4", &dest, &format!("transcode to {name}"))
                .await?;
            out.push(json!({"name": name, "format": "mp4", "height": h, "url": format!("/media/{dest}")}));
            ctx.progress(((i + 1) * 100 / steps) as u8);
        }
        let at = format!("{:.2}", (duration / 2.0).min(1.0));
        let dest = format!("renditions/{stem}-poster.jpg");
        let args = ["-ss", &at, "-i", &input_s, "-frames:v", "1", "-q:v", "3"];
        self.ffmpeg_to(&args, "jpg", &dest, "take a poster frame")
            .await?;
        out.push(json!({"name": "poster", "format": "jpg", "url": format!("/media/{dest}")}));
        Ok(json!({ "renditions": out, "duration_s": duration, "source_height": height }))
    }
}
