//! `/api/jobs/{id}`, its server-sent events and `/api/admin/jobs`, over the real queue.

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};
use tenfold_store::queue::NewJob;
use tenfold_test_support::{engines, spawn_app_with_jobs, TestDb, TEST_API_KEY};

#[tokio::test]
async fn a_jobs_status_and_events_follow_it_to_the_end() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        let j = spawn_app_with_jobs(&db).await;
        let (app, q) = (j.app, j.queue);
        let http = reqwest::Client::new();
        let job = q
            .enqueue(&NewJob::new("media", "image", json!({"path": "a.jpg"})))
            .await
            .unwrap()
            .0;
        let url = app.url(&format!("/api/jobs/{}", job.id));
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
        let missing = http
            .get(app.url("/api/jobs/999999"))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(missing.status(), 404);
        assert_eq!(
            missing.headers()["content-type"],
            "application/problem+json"
        );
        let v: Value = http
            .get(&url)
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["state"], "queued", "{engine:?}");
        assert_eq!(v["events"], format!("/api/jobs/{}/events", job.id));

        // Events: the job at once, then each change of state or progress, until it finishes.
        let resp = http
            .get(app.url(&format!("/api/jobs/{}/events", job.id)))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let reader = tokio::spawn(async move {
            let mut body = String::new();
            let mut s = resp.bytes_stream();
            while let Ok(Some(chunk)) =
                tokio::time::timeout(Duration::from_secs(10), s.next()).await
            {
                body.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            }
            body
        });
        tokio::time::sleep(Duration::from_millis(400)).await;
        let lease = q
            .claim(
                &["media".into()],
                &["image".into()],
                "w",
                1,
                Duration::from_secs(30),
            )
            .await
            .unwrap()
            .remove(0);
        tokio::time::sleep(Duration::from_millis(400)).await;
        q.heartbeat(&lease, Duration::from_secs(30), Some(60))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(q
            .complete(&lease, &json!({"thumbnail": "/media/x.webp"}))
            .await
            .unwrap());
        let body = reader.await.unwrap();
        let states: Vec<(String, u64)> = body
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| {
                let v: Value = serde_json::from_str(d.trim()).unwrap();
                (
                    v["state"].as_str().unwrap().to_owned(),
                    v["progress"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            states,
            vec![
                ("queued".into(), 0),
                ("running".into(), 0),
                ("running".into(), 60),
                ("done".into(), 100)
            ],
            "{engine:?}: {body}"
        );
        assert!(body.contains("event: job"));
        assert!(body.contains("/media/x.webp"));

        let stats: Value = http
            .get(app.url("/api/admin/jobs"))
            .bearer_auth(TEST_API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stats["queues"][0]["queue"], "media");
        assert_eq!(stats["queues"][0]["done"], 1);
        app.stop().await;
    }
}
