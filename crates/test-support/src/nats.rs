//! A throwaway JetStream stream on the NATS server `TENFOLD_TEST_NATS_URL` names.

use tenfold_store::queue::NatsOptions;

/// The NATS server tests may use, if `TENFOLD_TEST_NATS_URL` is set.
pub fn nats_url() -> Option<String> {
    std::env::var("TENFOLD_TEST_NATS_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A stream and subject prefix of its own for one test; the stream (and its consumers) is deleted
/// when this value is dropped.
pub struct TestNats {
    /// Options naming the test's own stream and subjects.
    pub opts: NatsOptions,
}

impl TestNats {
    /// A fresh stream name and subject prefix on `TENFOLD_TEST_NATS_URL`; `None` when it is unset.
    pub fn new() -> Option<TestNats> {
        let url = nats_url()?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut opts = NatsOptions::new(&url);
        opts.stream = format!("TEST_{}", &id[..12]);
        opts.subject_prefix = format!("test{}.jobs", &id[..12]);
        Some(TestNats { opts })
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        let (url, stream) = (self.opts.url.clone(), self.opts.stream.clone());
        // Drop may run inside a runtime: delete on a thread of its own, with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(c) = async_nats::connect(url.as_str()).await {
                    let _ = async_nats::jetstream::new(c).delete_stream(&stream).await;
                }
            });
        })
        .join();
    }
}
