//! Uploads: streamed into blob storage, typed from their bytes, answered 202 with a job before any
//! processing; a worker makes the renditions (which exist, decode and are served with immutable caching);
//! bad files end their job failed with a clear reason, bad requests get the right 4xx.

use std::io::Cursor;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tenfold_jobs::{builtin, media::ImageRenditions, Worker, WorkerOptions};
use tenfold_test_support::{
    engines, spawn_app_with_blobs, spawn_app_with_jobs, TestDb, TEST_API_KEY, TEST_MAX_UPLOAD,
};

use crate::helpers::{job_state, lamp, problem, until_finished};

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A PNG whose header claims 100,000 × 100,000 pixels (a decompression bomb), with a valid CRC.
fn bomb() -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend(100_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut chunk = |body: &[u8]| {
        out.extend(((body.len() - 4) as u32).to_be_bytes());
        out.extend(body);
        out.extend(crc32(body).to_be_bytes());
    };
    chunk(&ihdr);
    // The start of a zlib stream: the decoder reaches the pixels only after the size was judged.
    chunk(b"IDATx\x9c");
    chunk(b"IEND");
    out
}

async fn upload(base: &str, product: i64, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/api/products/{product}/media"))
        .bearer_auth(TEST_API_KEY)
        .header("content-type", "application/octet-stream")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn an_upload_is_accepted_at_once_and_a_worker_makes_renditions_that_decode() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let base = j.app.base.clone();
        let product = lamp(&j.app).await;

        // No worker runs yet: the answer cannot wait for processing.
        let original = png(1200, 900);
        let r = upload(&base, product, original.clone()).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{engine:?}");
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["content_type"], "image/png");
        assert_eq!(v["size"], original.len());
        assert_eq!(v["job"]["state"], "queued");
        let job = v["job"]["id"].as_i64().unwrap();
        assert_eq!(location, format!("/api/jobs/{job}"));
        // The same bytes again: the same original, a new job.
        let again: Value = upload(&base, product, original.clone())
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(again["original"], v["original"]);

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut opts = WorkerOptions::new("media-worker", &["media"]);
        opts.poll = Duration::from_millis(20);
        let worker = tokio::spawn(
            Worker::new(
                j.queue.clone(),
                builtin::registry().register("image", ImageRenditions::new(j.blobs.clone())),
                opts,
            )
            .run(async {
                let _ = stopped.await;
            }),
        );
        let done = until_finished(&base, job).await;
        assert_eq!(done["state"], "done", "{engine:?}: {done}");
        assert_eq!(done["progress"], 100);
        let renditions = done["result"]["renditions"].as_array().unwrap();
        assert_eq!(renditions.len(), 4);
        let http = reqwest::Client::new();
        for r in renditions {
            let url = format!("{base}{}", r["url"].as_str().unwrap());
            let resp = http.get(&url).send().await.unwrap();
            assert_eq!(resp.status(), 200, "{url}");
            assert!(resp.headers()["cache-control"]
                .to_str()
                .unwrap()
                .contains("immutable"));
            let bytes = resp.bytes().await.unwrap();
            let img = image::load_from_memory(&bytes).unwrap();
            let side = if r["name"] == "thumb" { 200 } else { 800 };
            assert_eq!(img.width().max(img.height()), side, "{r}");
            assert_eq!(
                (img.width(), img.height()),
                (
                    r["width"].as_u64().unwrap() as u32,
                    r["height"].as_u64().unwrap() as u32
                )
            );
        }
        let orig = http
            .get(format!("{base}{}", v["original"].as_str().unwrap()))
            .send()
            .await
            .unwrap();
        assert_eq!(orig.bytes().await.unwrap().to_vec(), original);

        // The storefront's product page offers the renditions (recorded with the media row, so they
        // outlive the job): a <picture> with WebP and JPEG srcsets, its size set, its alt text the name.
        // Both uploads of the same bytes share one original, so the page shows two pictures.
        let page = http
            .get(format!("{base}/products/{product}"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let thumb = renditions
            .iter()
            .find(|r| r["name"] == "thumb" && r["format"] == "webp")
            .unwrap()["url"]
            .as_str()
            .unwrap();
        let medium = thumb.replace("-thumb.", "-medium.");
        assert!(
            page.contains(&format!("srcset=\"{thumb} 200w, {medium} 800w\"")),
            "{engine:?}: {page}"
        );
        assert!(page.contains("type=\"image/webp\""));
        assert!(page.contains("width=\"800\" height=\"600\""), "{page}");
        assert!(page.contains("alt=\"Product LAMP-1\""), "{page}");
        assert!(
            page.contains("loading=\"eager\""),
            "the first picture loads at once"
        );
        let small = http
            .get(format!("{base}/products/{product}"))
            .header("save-data", "on")
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            small.contains(&format!("srcset=\"{thumb} 200w\"")) && !small.contains(&medium),
            "Save-Data: only the smallest: {small}"
        );

        // Bad files: accepted (their type is right), then failed with a reason, not retried.
        let mut truncated = png(300, 300);
        truncated.truncate(truncated.len() / 2);
        for (bytes, why) in [
            (truncated, "corrupt or truncated"),
            (bomb(), "more than the 50000000 allowed"),
        ] {
            let r = upload(&base, product, bytes).await;
            assert_eq!(r.status(), StatusCode::ACCEPTED);
            let id = r.json::<Value>().await.unwrap()["job"]["id"]
                .as_i64()
                .unwrap();
            let end = until_finished(&base, id).await;
            assert_eq!(end["state"], "failed", "{end}");
            assert_eq!(end["attempts"], 1);
            assert!(end["last_error"].as_str().unwrap().contains(why), "{end}");
        }
        stop.send(()).unwrap();
        worker.await.unwrap().unwrap();
        j.app.stop().await;
    }
}

#[tokio::test]
async fn bad_uploads_get_clear_4xx_answers_and_leave_no_blob() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let j = spawn_app_with_jobs(&db).await;
    let base = j.app.base.clone();
    let product = lamp(&j.app).await;
    let r = upload(
        &base,
        product,
        b"<html><body>not an image</body></html>".to_vec(),
    )
    .await;
    let p = problem(r, StatusCode::UNSUPPORTED_MEDIA_TYPE).await;
    assert!(
        p["detail"].as_str().unwrap().contains("not an image"),
        "{p}"
    );
    problem(
        upload(&base, product, Vec::new()).await,
        StatusCode::BAD_REQUEST,
    )
    .await;
    let mut big = png(16, 16);
    big.resize(TEST_MAX_UPLOAD as usize + 1, 0);
    problem(
        upload(&base, product, big).await,
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    problem(
        upload(&base, 999_999, png(8, 8)).await,
        StatusCode::NOT_FOUND,
    )
    .await;
    let r = reqwest::Client::new()
        .post(format!("{base}/api/products/{product}/media"))
        .body(png(8, 8))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    problem(
        reqwest::get(format!("{base}/media/renditions/nothing.webp"))
            .await
            .unwrap(),
        StatusCode::NOT_FOUND,
    )
    .await;
    assert_eq!(
        std::fs::read_dir(j.blobs.root().join("tmp"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(
        std::fs::read_dir(j.blobs.root().join("originals"))
            .unwrap()
            .count(),
        0
    );
    assert!(
        j.queue.stats().await.unwrap().is_empty(),
        "no job for a refused upload"
    );
    j.app.stop().await;
}

#[tokio::test]
async fn failing_blob_storage_refuses_uploads_fast_keeps_serving_files_and_recovers() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let opts = tenfold_blobs::BlobOptions {
        op_timeout: Duration::from_secs(2),
        breaker: tenfold_overload::BreakerOptions {
            trip_after: 3,
            min_open: Duration::from_millis(200),
            max_open: Duration::from_millis(800),
            probe_timeout: Duration::from_secs(1),
        },
    };
    let j = spawn_app_with_blobs(&db, opts).await;
    let base = j.app.base.clone();
    let product = lamp(&j.app).await;
    let v: Value = upload(&base, product, png(8, 8))
        .await
        .json()
        .await
        .unwrap();
    let file = format!("{base}{}", v["original"].as_str().unwrap());

    // The storage volume loses its temporary directory: every write fails.
    let tmp = j.blobs.root().join("tmp");
    let away = j.blobs.root().join("tmp-away");
    std::fs::rename(&tmp, &away).unwrap();
    for _ in 0..3 {
        let p = problem(
            upload(&base, product, png(9, 9)).await,
            StatusCode::SERVICE_UNAVAILABLE,
        )
        .await;
        assert!(
            p["detail"]
                .as_str()
                .unwrap()
                .contains("blob storage failed"),
            "{p}"
        );
    }
    // Open: refused at once with a Retry-After, and no job recorded for it.
    let r = upload(&base, product, png(9, 9)).await;
    assert!(r.headers().contains_key("retry-after"));
    let p = problem(r, StatusCode::SERVICE_UNAVAILABLE).await;
    assert!(p["detail"].as_str().unwrap().contains("breaker"), "{p}");
    let metrics = crate::helpers::metrics_text(&j.app).await;
    assert!(
        metrics.contains("breaker_open{target=\"blob_writes\"} 1"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.starts_with("breaker"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Files already stored are still served: reads have their own breaker.
    let r = reqwest::get(&file).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("immutable"));
    // A missing file is a 404 (an answer), and an error is never cached for ever.
    let r = reqwest::get(format!("{base}/media/originals/none.png"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(r
        .headers()
        .get("cache-control")
        .is_none_or(|v| !v.to_str().unwrap().contains("immutable")));

    // Storage comes back: a probe gets through, succeeds, and uploads work again.
    std::fs::rename(&away, &tmp).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = upload(&base, product, png(9, 9)).await;
        if r.status() == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "uploads never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!j.blobs.writes_failing());
    let stats = j.queue.stats().await.unwrap();
    let jobs: i64 = stats.iter().map(|s| s.ready + s.scheduled).sum();
    assert_eq!(
        jobs, 2,
        "one job per accepted upload, none for refused ones: {stats:?}"
    );
    j.app.stop().await;
}

/// A 2-second 320×240 H.264 test video made by ffmpeg (scripts/test.sh installs it).
fn test_video(dir: &std::path::Path) -> Vec<u8> {
    let path = dir.join("source.mp4");
    let ok = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-y", "-v", "error", "-f", "lavfi", "-i", "testsrc=duration=2:size=320x240:rate=10"])
        .args(["-c:v", "libx264", "-pix_fmt", "yuv420p"])
        .arg(&path)
        .status()
        .expect("ffmpeg is needed for the video tests (apt-get install ffmpeg; scripts/test.sh installs it)")
        .success();
    assert!(ok, "ffmpeg made no test video");
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn a_video_gets_h264_renditions_and_a_poster_and_a_worker_without_ffmpeg_leaves_it() {
    let db = TestDb::new(tenfold_test_support::Engine::Sqlite).await;
    let j = spawn_app_with_jobs(&db).await;
    let base = j.app.base.clone();
    let product = lamp(&j.app).await;
    let dir = tempfile::tempdir().unwrap();
    let r = upload(&base, product, test_video(dir.path())).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["content_type"], "video/mp4");
    let job = v["job"]["id"].as_i64().unwrap();
    let mut bogus = b"\0\0\0\x18ftypmp42".to_vec();
    bogus.extend(std::iter::repeat_n(0x5Au8, 4000));
    let bad = upload(&base, product, bogus)
        .await
        .json::<Value>()
        .await
        .unwrap()["job"]["id"]
        .as_i64()
        .unwrap();

    // A worker without the video handler (no ffmpeg) leaves video jobs queued.
    let run_worker = |registry: tenfold_jobs::Registry| {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut opts = WorkerOptions::new("video-worker", &["media"]);
        opts.poll = Duration::from_millis(20);
        let w = Worker::new(j.queue.clone(), registry, opts);
        (
            stop,
            tokio::spawn(async move {
                w.run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap()
            }),
        )
    };
    let (stop, task) =
        run_worker(builtin::registry().register("image", ImageRenditions::new(j.blobs.clone())));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(job_state(&base, job).await["state"], "queued");
    stop.send(()).unwrap();
    task.await.unwrap();

    let video = tenfold_jobs::video::VideoRenditions::detect(j.blobs.clone())
        .await
        .expect("ffmpeg and ffprobe run");
    let (stop, task) = run_worker(builtin::registry().register("video", video));
    let done = until_finished(&base, job).await;
    assert_eq!(done["state"], "done", "{done}");
    let r = done["result"]["renditions"].as_array().unwrap();
    assert_eq!(r.len(), 3, "{done}");
    for rendition in r {
        let url = format!("{base}{}", rendition["url"].as_str().unwrap());
        let bytes = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        let f = dir.path().join("check");
        std::fs::write(&f, &bytes).unwrap();
        let probe = std::process::Command::new("ffprobe")
            .args([
                "-v",
                "error",
                "-show_entries",
                "stream=codec_name,height",
                "-of",
                "csv=p=0",
            ])
            .arg(&f)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&probe.stdout).into_owned();
        if rendition["name"] == "poster" {
            assert!(text.starts_with("mjpeg"), "{text}");
        } else {
            // Never upscaled: the 240-line source stays 240 lines in both renditions.
            assert!(
                text.lines().any(|l| l == "h264,240"),
                "{}: {text}",
                rendition["name"]
            );
        }
    }
    let failed = until_finished(&base, bad).await;
    assert_eq!(failed["state"], "failed", "{failed}");
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("not a playable video"),
        "{failed}"
    );
    stop.send(()).unwrap();
    task.await.unwrap();
    j.app.stop().await;
}
