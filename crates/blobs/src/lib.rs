//! Role: blob storage for uploaded media and their renditions. The embedded default is a directory
//! ([`DirBlobs`]); the [`BlobWriter`] / [`Blobs`] seam is what an S3-compatible store would implement
//! (a multipart upload behind the writer, objects by key).
//!
//! Invariants: a blob becomes visible under its key only when complete (written to a temporary file,
//! then renamed); keys of originals are content-derived (`originals/<sha256>.<ext>`), so storing the
//! same bytes twice stores them once; an upload's type is decided from its bytes, never its name.
//!
//! Storage can fail or stall (a full disk, a read-only remount, a hung network mount): every operation
//! has a deadline and goes through a circuit breaker, one for writes and one for reads (a full disk
//! still serves its files). An open breaker refuses at once with [`BlobError::Unavailable`], so an
//! upload is refused before its body is read instead of after; one probe at a time finds out when
//! storage works again.
//!
//! Entry points: [`DirBlobs::open`], [`DirBlobs::writer`], [`BlobWriter::write`], [`BlobWriter::commit`],
//! [`DirBlobs::put_atomic`], [`DirBlobs::read`], [`sniff`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tenfold_overload::{Breaker, BreakerOptions};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

/// What an upload is, from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaType {
    /// JPEG.
    Jpeg,
    /// PNG.
    Png,
    /// WebP.
    Webp,
    /// GIF.
    Gif,
    /// MP4 / QuickTime (ISO base media).
    Mp4,
    /// WebM / Matroska.
    Webm,
}

impl MediaType {
    /// Whether it is a still image (else a video).
    pub fn is_image(self) -> bool {
        matches!(
            self,
            MediaType::Jpeg | MediaType::Png | MediaType::Webp | MediaType::Gif
        )
    }

    /// The file extension used in keys.
    pub fn ext(self) -> &'static str {
        match self {
            MediaType::Jpeg => "jpg",
            MediaType::Png => "png",
            MediaType::Webp => "webp",
            MediaType::Gif => "gif",
            MediaType::Mp4 => "mp4",
            MediaType::Webm => "webm",
        }
    }

    /// Its MIME type.
    pub fn mime(self) -> &'static str {
        match self {
            MediaType::Jpeg => "image/jpeg",
            MediaType::Png => "image/png",
            MediaType::Webp => "image/webp",
            MediaType::Gif => "image/gif",
            MediaType::Mp4 => "video/mp4",
            MediaType::Webm => "video/webm",
        }
    }
}

/// The type of a file from its first bytes (at least 12 are needed), if it is one we take.
pub fn sniff(head: &[u8]) -> Option<MediaType> {
    let at = |off: usize, sig: &[u8]| {
        head.len() >= off + sig.len() && &head[off..off + sig.len()] == sig
    };
    if at(0, &[0xFF, 0xD8, 0xFF]) {
        Some(MediaType::Jpeg)
    } else if at(0, b"\x89PNG\r\n\x1a\n") {
        Some(MediaType::Png)
    } else if at(0, b"RIFF") && at(8, b"WEBP") {
        Some(MediaType::Webp)
    } else if at(0, b"GIF87a") || at(0, b"GIF89a") {
        Some(MediaType::Gif)
    } else if at(4, b"ftyp") {
        Some(MediaType::Mp4)
    } else if at(0, &[0x1A, 0x45, 0xDF, 0xA3]) {
        Some(MediaType::Webm)
    } else {
        None
    }
}

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Larger than the limit.
    #[error("the upload is larger than {0} bytes")]
    TooLarge(u64),
    /// Not a type we take (judged from the bytes).
    #[error("the upload is not an image (JPEG, PNG, WebP, GIF) or a video (MP4, WebM)")]
    UnknownType,
    /// Empty.
    #[error("the upload is empty")]
    Empty,
    /// The disk failed (or overran the deadline).
    #[error("blob storage failed: {0}")]
    Io(#[from] std::io::Error),
    /// Storage has been failing: its breaker refuses calls for a while.
    #[error("blob storage is failing; retry in {} ms", retry_after.as_millis())]
    Unavailable {
        /// When the next probe may go.
        retry_after: Duration,
    },
}

/// How blob storage is guarded.
#[derive(Debug, Clone, Copy)]
pub struct BlobOptions {
    /// The deadline of one storage operation (a create, a chunk written, a sync, a rename, a read).
    pub op_timeout: Duration,
    /// The breakers' thresholds.
    pub breaker: BreakerOptions,
}

impl Default for BlobOptions {
    fn default() -> Self {
        BlobOptions {
            op_timeout: Duration::from_secs(10),
            breaker: BreakerOptions::default(),
        }
    }
}

/// The deadline and the breakers every operation goes through.
#[derive(Debug)]
struct Guard {
    op_timeout: Duration,
    writes: Breaker,
    reads: Breaker,
}

/// Which breaker an operation reports to, and whether it may start while that one is open.
#[derive(Clone, Copy)]
enum Op {
    /// Starts a write: refused while the write breaker is open (one probe at a time).
    StartWrite,
    /// Continues a write that already started: never refused, but its outcome counts.
    Write,
    /// A read: refused while the read breaker is open; a missing file is an answer, not a failure.
    Read,
}

impl Guard {
    async fn call<T>(
        &self,
        op: Op,
        fut: impl Future<Output = std::io::Result<T>>,
    ) -> Result<T, BlobError> {
        let breaker = match op {
            Op::Read => &self.reads,
            Op::StartWrite | Op::Write => &self.writes,
        };
        if !matches!(op, Op::Write) && !breaker.allow() {
            return Err(BlobError::Unavailable {
                retry_after: breaker.retry_after(),
            });
        }
        match tokio::time::timeout(self.op_timeout, fut).await {
            Ok(Ok(v)) => {
                breaker.success();
                Ok(v)
            }
            Ok(Err(e)) if matches!(op, Op::Read) && e.kind() == std::io::ErrorKind::NotFound => {
                breaker.success();
                Err(e.into())
            }
            Ok(Err(e)) => {
                breaker.failure();
                Err(e.into())
            }
            Err(_) => {
                breaker.failure();
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "a storage operation took over {} ms",
                        self.op_timeout.as_millis()
                    ),
                )
                .into())
            }
        }
    }
}

/// Blobs in a directory: `originals/`, `renditions/`, and `tmp/` for writes in progress.
#[derive(Debug, Clone)]
pub struct DirBlobs {
    root: PathBuf,
    guard: Arc<Guard>,
}

/// A stored original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// `originals/<sha256>.<ext>`.
    pub key: String,
    /// Its SHA-256, hex.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    /// Its type, from its bytes.
    pub media_type: MediaType,
}

impl DirBlobs {
    /// Blobs under `root` (created if missing), with the default deadline and breakers.
    pub async fn open(root: impl Into<PathBuf>) -> Result<DirBlobs, BlobError> {
        DirBlobs::open_with(root, BlobOptions::default()).await
    }

    /// Blobs under `root` with these guards.
    pub async fn open_with(
        root: impl Into<PathBuf>,
        opts: BlobOptions,
    ) -> Result<DirBlobs, BlobError> {
        let root = root.into();
        for d in ["originals", "renditions", "imports", "tmp"] {
            tokio::fs::create_dir_all(root.join(d)).await?;
        }
        Ok(DirBlobs {
            root,
            guard: Arc::new(Guard {
                op_timeout: opts.op_timeout,
                writes: Breaker::with_options("blob_writes", opts.breaker),
                reads: Breaker::with_options("blob_reads", opts.breaker),
            }),
        })
    }

    /// True while writes are refused (the write breaker is open).
    pub fn writes_failing(&self) -> bool {
        self.guard.writes.is_open()
    }

    /// True while reads are refused (the read breaker is open).
    pub fn reads_failing(&self) -> bool {
        self.guard.reads.is_open()
    }

    /// Runs a read of storage that happens elsewhere (a file server over [`DirBlobs::root`]) through
    /// the read breaker: `Err` when the breaker refuses it, else `report(failed)` records its outcome.
    pub fn begin_read(&self) -> Result<ReadTicket, BlobError> {
        if self.guard.reads.allow() {
            Ok(ReadTicket {
                guard: self.guard.clone(),
            })
        } else {
            Err(BlobError::Unavailable {
                retry_after: self.guard.reads.retry_after(),
            })
        }
    }

    /// The bytes of a stored blob.
    pub async fn read(&self, key: &str) -> Result<Vec<u8>, BlobError> {
        self.guard
            .call(Op::Read, tokio::fs::read(self.root.join(key)))
            .await
    }

    /// The file of a key (keys are ours: `originals/...` or `renditions/...`, never client input).
    pub fn path(&self, key: &str) -> PathBuf {
        self.root.join(key)
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Starts storing an original of at most `limit` bytes.
    pub async fn writer(&self, limit: u64) -> Result<BlobWriter, BlobError> {
        self.writer_in(limit, None).await
    }

    /// Starts storing a file of another kind (an import) of at most `limit` bytes, kept as
    /// `imports/<sha256>.<ext>`; its type is not judged.
    pub async fn import_writer(&self, limit: u64, ext: &str) -> Result<BlobWriter, BlobError> {
        self.writer_in(limit, Some(ext.to_owned())).await
    }

    async fn writer_in(
        &self,
        limit: u64,
        import_ext: Option<String>,
    ) -> Result<BlobWriter, BlobError> {
        let tmp = self
            .root
            .join("tmp")
            .join(format!("upload-{:032x}", rand::random::<u128>()));
        let file = self
            .guard
            .call(Op::StartWrite, tokio::fs::File::create(&tmp))
            .await?;
        Ok(BlobWriter {
            root: self.root.clone(),
            guard: self.guard.clone(),
            tmp: Some(tmp),
            file: Some(tokio::io::BufWriter::with_capacity(256 * 1024, file)),
            hash: Sha256::new(),
            head: Vec::with_capacity(16),
            size: 0,
            limit,
            import_ext,
        })
    }

    /// Writes `bytes` under `key` atomically (a temporary file renamed into place): a reader sees the
    /// whole blob or none. Writing the same key again replaces it with the same bytes (keys are
    /// content-derived), so a job that runs twice has the effect of once.
    pub async fn put_atomic(&self, key: &str, bytes: &[u8]) -> Result<(), BlobError> {
        let tmp = self.temp_path("put");
        let write = async {
            let mut f = tokio::fs::File::create(&tmp).await?;
            f.write_all(bytes).await?;
            f.sync_all().await
        };
        if let Err(e) = self.guard.call(Op::StartWrite, write).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        self.adopt(&tmp, key).await
    }

    /// A fresh path under `tmp/` for a file that another program writes (ffmpeg); give it to
    /// [`DirBlobs::adopt`] when it is complete.
    pub fn temp_path(&self, name_ext: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{:032x}-{name_ext}", rand::random::<u128>()))
    }

    /// Moves a complete file from [`DirBlobs::temp_path`] to `key` (a rename: readers see all of it or
    /// none; the same key again replaces it).
    pub async fn adopt(&self, tmp: &Path, key: &str) -> Result<(), BlobError> {
        let dest = self.root.join(key);
        let place = async {
            if let Some(dir) = dest.parent() {
                tokio::fs::create_dir_all(dir).await?;
            }
            tokio::fs::rename(tmp, &dest).await
        };
        self.guard.call(Op::Write, place).await
    }
}

/// A read that [`DirBlobs::begin_read`] let through; report how it went.
#[must_use = "report the read's outcome"]
pub struct ReadTicket {
    guard: Arc<Guard>,
}

impl ReadTicket {
    /// The read is over: `failed` when storage failed it (a missing file is not a failure).
    pub fn report(self, failed: bool) {
        if failed {
            self.guard.reads.failure();
        } else {
            self.guard.reads.success();
        }
    }
}

/// An original being stored: written to a temporary file while hashed and sniffed.
pub struct BlobWriter {
    root: PathBuf,
    guard: Arc<Guard>,
    tmp: Option<PathBuf>,
    file: Option<tokio::io::BufWriter<tokio::fs::File>>,
    hash: Sha256,
    head: Vec<u8>,
    size: u64,
    limit: u64,
    /// `Some(ext)`: an import, stored untyped under `imports/`.
    import_ext: Option<String>,
}

/// A stored import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredImport {
    /// `imports/<sha256>.<ext>`.
    pub key: String,
    /// Bytes.
    pub size: u64,
}

impl BlobWriter {
    /// Appends a chunk; fails (and the upload is dropped) past the limit, or when the first bytes are
    /// not a type we take.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), BlobError> {
        self.size += chunk.len() as u64;
        if self.size > self.limit {
            return Err(BlobError::TooLarge(self.limit));
        }
        if self.head.len() < 16 && self.import_ext.is_none() {
            let take = (16 - self.head.len()).min(chunk.len());
            self.head.extend_from_slice(&chunk[..take]);
            if self.head.len() >= 12 && sniff(&self.head).is_none() {
                return Err(BlobError::UnknownType);
            }
        }
        self.hash.update(chunk);
        if let Some(f) = self.file.as_mut() {
            self.guard.call(Op::Write, f.write_all(chunk)).await?;
        }
        Ok(())
    }

    /// Finishes: the blob appears under its content-derived key (once, however often it is uploaded).
    pub async fn commit(mut self) -> Result<Stored, BlobError> {
        if self.size == 0 {
            return Err(BlobError::Empty);
        }
        let media_type = sniff(&self.head).ok_or(BlobError::UnknownType)?;
        let sha256 = self.finish().await?;
        let key = format!("originals/{sha256}.{}", media_type.ext());
        self.place(&key).await?;
        Ok(Stored {
            key,
            sha256,
            size: self.size,
            media_type,
        })
    }

    /// Finishes an import (see [`DirBlobs::import_writer`]).
    pub async fn commit_import(mut self) -> Result<StoredImport, BlobError> {
        if self.size == 0 {
            return Err(BlobError::Empty);
        }
        let ext = self.import_ext.clone().unwrap_or_else(|| "bin".into());
        let sha256 = self.finish().await?;
        let key = format!("imports/{sha256}.{ext}");
        self.place(&key).await?;
        Ok(StoredImport {
            key,
            size: self.size,
        })
    }

    async fn finish(&mut self) -> Result<String, BlobError> {
        let mut f = self.file.take().ok_or(BlobError::Empty)?;
        let sync = async {
            f.flush().await?;
            f.get_ref().sync_all().await
        };
        self.guard.call(Op::Write, sync).await?;
        drop(f);
        Ok(std::mem::take(&mut self.hash)
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect())
    }

    async fn place(&mut self, key: &str) -> Result<(), BlobError> {
        let tmp = self.tmp.take().ok_or(BlobError::Empty)?;
        let placed = self
            .guard
            .call(Op::Write, tokio::fs::rename(&tmp, self.root.join(key)))
            .await;
        if placed.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        placed
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        // An upload that failed or was abandoned leaves nothing behind.
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn types_come_from_the_bytes() {
        assert_eq!(
            sniff(&[0xFF, 0xD8, 0xFF, 0xE0, 0, 0, 0, 0, 0, 0, 0, 0]),
            Some(MediaType::Jpeg)
        );
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\0"), Some(MediaType::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), Some(MediaType::Webp));
        assert_eq!(sniff(b"\0\0\0\x18ftypmp42"), Some(MediaType::Mp4));
        assert_eq!(sniff(b"<html><body>"), None);
        assert_eq!(sniff(b"GIF89a\0\0\0\0\0\0"), Some(MediaType::Gif));
    }

    #[tokio::test]
    async fn an_upload_is_stored_once_under_its_hash_and_a_failed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = DirBlobs::open(dir.path()).await.unwrap();
        let png = b"\x89PNG\r\n\x1a\n0123456789";
        let mut w = blobs.writer(1000).await.unwrap();
        w.write(&png[..5]).await.unwrap();
        w.write(&png[5..]).await.unwrap();
        let a = w.commit().await.unwrap();
        assert_eq!(a.media_type, MediaType::Png);
        assert_eq!(a.size, png.len() as u64);
        assert!(a.key.starts_with("originals/") && a.key.ends_with(".png"));
        let mut w = blobs.writer(1000).await.unwrap();
        w.write(png).await.unwrap();
        assert_eq!(w.commit().await.unwrap().key, a.key);
        assert_eq!(std::fs::read(blobs.path(&a.key)).unwrap(), png);

        let mut w = blobs.writer(8).await.unwrap();
        assert!(matches!(w.write(png).await, Err(BlobError::TooLarge(8))));
        drop(w);
        let mut w = blobs.writer(1000).await.unwrap();
        assert!(matches!(
            w.write(b"hello, world!").await,
            Err(BlobError::UnknownType)
        ));
        drop(w);
        assert_eq!(
            std::fs::read_dir(dir.path().join("tmp")).unwrap().count(),
            0
        );
        assert!(matches!(
            blobs.writer(10).await.unwrap().commit().await,
            Err(BlobError::Empty)
        ));
    }

    fn quick() -> BlobOptions {
        BlobOptions {
            op_timeout: Duration::from_secs(2),
            breaker: BreakerOptions {
                trip_after: 3,
                min_open: Duration::from_millis(100),
                max_open: Duration::from_millis(400),
                probe_timeout: Duration::from_secs(1),
            },
        }
    }

    async fn store(blobs: &DirBlobs, bytes: &[u8]) -> Result<Stored, BlobError> {
        let mut w = blobs.writer(1000).await?;
        w.write(bytes).await?;
        w.commit().await
    }

    #[tokio::test]
    async fn failing_storage_opens_the_write_breaker_and_a_probe_closes_it() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = DirBlobs::open_with(dir.path(), quick()).await.unwrap();
        let png = b"\x89PNG\r\n\x1a\n0123456789";
        let stored = store(&blobs, png).await.unwrap();

        // The volume loses its temporary directory: every write fails.
        let tmp = dir.path().join("tmp");
        std::fs::rename(&tmp, dir.path().join("tmp-away")).unwrap();
        for _ in 0..3 {
            assert!(matches!(store(&blobs, png).await, Err(BlobError::Io(_))));
        }
        assert!(blobs.writes_failing(), "three failures open the breaker");
        // Open: refused at once, without touching storage.
        match store(&blobs, png).await {
            Err(BlobError::Unavailable { retry_after }) => {
                assert!(retry_after <= Duration::from_millis(100))
            }
            other => panic!("expected a fast refusal, got {other:?}"),
        }
        // Reads are another breaker: the stored blob is still served.
        assert!(!blobs.reads_failing());
        assert_eq!(blobs.read(&stored.key).await.unwrap(), png);
        assert!(matches!(
            blobs.read("originals/none.png").await,
            Err(BlobError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound
        ));
        assert!(!blobs.reads_failing(), "a missing file is an answer");

        // After the open period a probe goes to storage; it still fails, so the breaker reopens.
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(matches!(store(&blobs, png).await, Err(BlobError::Io(_))));
        assert!(matches!(
            store(&blobs, png).await,
            Err(BlobError::Unavailable { .. })
        ));

        // Storage is back: the next probe succeeds and closes the breaker.
        std::fs::rename(dir.path().join("tmp-away"), &tmp).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        loop {
            match store(&blobs, png).await {
                Ok(s) => {
                    assert_eq!(s.key, stored.key);
                    break;
                }
                Err(BlobError::Unavailable { .. }) => {}
                Err(e) => panic!("storage is back, yet {e}"),
            }
            assert!(tokio::time::Instant::now() < deadline, "never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!blobs.writes_failing());
        let mark = blobs.put_atomic("marks/1", b"x").await;
        assert!(mark.is_ok(), "{mark:?}");
    }

    #[tokio::test]
    async fn failing_reads_open_the_read_breaker_without_touching_writes() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = DirBlobs::open_with(dir.path(), quick()).await.unwrap();
        // A key that storage cannot read (a directory stands where the file should be).
        std::fs::create_dir_all(dir.path().join("originals/broken.png")).unwrap();
        for _ in 0..3 {
            assert!(matches!(
                blobs.read("originals/broken.png").await,
                Err(BlobError::Io(_))
            ));
        }
        assert!(blobs.reads_failing());
        assert!(matches!(
            blobs.read("originals/broken.png").await,
            Err(BlobError::Unavailable { .. })
        ));
        assert!(
            blobs.begin_read().is_err(),
            "the file server is refused too"
        );
        assert!(!blobs.writes_failing());
        store(&blobs, b"\x89PNG\r\n\x1a\n0123456789").await.unwrap();
        // The probe succeeds (another file reads fine) and closes it.
        tokio::time::sleep(Duration::from_millis(120)).await;
        let t = blobs.begin_read().unwrap();
        t.report(false);
        assert!(!blobs.reads_failing());
    }
}
