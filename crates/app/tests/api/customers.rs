//! Customer tokens: issued with the API key, accepted by any instance, refused when altered or expired.

use reqwest::StatusCode;
use serde_json::{json, Value};
use tenfold_test_support::{spawn_app, Engine, TestDb};

use crate::helpers::{auth, client};

#[tokio::test]
async fn a_token_issued_by_one_instance_is_accepted_by_another_until_it_expires() {
    let db = TestDb::new(Engine::Sqlite).await;
    let (a, b) = (spawn_app(&db).await, spawn_app(&db).await);
    let issue = |ttl: Value| {
        client()
            .post(a.url("/api/customers/77/tokens"))
            .header("authorization", auth())
            .json(&ttl)
    };
    let r = issue(json!({})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let t: Value = r.json().await.unwrap();
    assert_eq!(t["customer_id"], 77);
    let token = t["token"].as_str().unwrap().to_owned();

    let me = |token: &str| {
        client()
            .get(b.url("/api/customers/me"))
            .header("authorization", format!("Bearer {token}"))
    };
    let r = me(&token).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let who: Value = r.json().await.unwrap();
    assert_eq!(
        (who["customer_id"].clone(), who["expires_at"].clone()),
        (json!(77), t["expires_at"].clone())
    );

    // Altered (another customer's id with this signature), or no token, or not a token: 401.
    let forged = token.replacen("c1.77.", "c1.78.", 1);
    for bad in [forged.as_str(), "c1.77.1.AAAA", "the API key"] {
        let r = me(bad).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{bad}");
        assert_eq!(r.headers()["content-type"], "application/problem+json");
    }
    let r = client()
        .get(b.url("/api/customers/me"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);

    // Issuing needs the API key; lifetimes are bounded.
    let r = client()
        .post(a.url("/api/customers/77/tokens"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = issue(json!({"ttl_s": 0})).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = client()
        .post(a.url("/api/customers/0/tokens"))
        .header("authorization", auth())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);

    // Expired: refused, saying so.
    let r = issue(json!({"ttl_s": 1})).send().await.unwrap();
    let short = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(me(&short).send().await.unwrap().status(), StatusCode::OK);
    tokio::time::sleep(std::time::Duration::from_millis(2_100)).await;
    let r = me(&short).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.text().await.unwrap().contains("expired"));
    a.stop().await;
    b.stop().await;
}
