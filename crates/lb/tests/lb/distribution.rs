use std::collections::HashMap;
use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn round_robin_is_exact() {
    let bs = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let lb = TestLb::start(config("round-robin"), &[&bs[0], &bs[1], &bs[2]]).await;
    let c = client();
    for _ in 0..300 {
        who(&c, &lb.url("/x")).await;
    }
    assert_eq!(
        bs.iter().map(|b| b.hits()).collect::<Vec<_>>(),
        [100, 100, 100]
    );
}

#[tokio::test]
async fn weights_hold_within_one_percent_over_ten_thousand_requests() {
    let bs = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
    ];
    let mut cfg = config("weighted-round-robin");
    cfg.backends = vec![bs[0].spec(1), bs[1].spec(2), bs[2].spec(7)];
    let lb = TestLb::start_with(cfg).await;
    // Ten concurrent clients, 1,000 requests each.
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let url = lb.url("/x");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..1_000 {
                who(&c, &url).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: usize = bs.iter().map(|b| b.hits()).sum();
    assert_eq!(total, 10_000);
    for (b, share) in bs.iter().zip([0.1, 0.2, 0.7]) {
        let got = b.hits() as f64 / total as f64;
        assert!((got - share).abs() <= 0.01, "{}: {got} vs {share}", b.name);
    }
}

#[tokio::test]
async fn least_connections_avoids_a_slow_backend() {
    let slow = TestBackend::start("slow").await;
    let fast = TestBackend::start("fast").await;
    slow.set(Behavior {
        delay: Duration::from_millis(200),
        ..Default::default()
    });
    let lb = TestLb::start(config("least-connections"), &[&slow, &fast]).await;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let url = lb.url("/x");
        tasks.push(tokio::spawn(async move {
            let c = client();
            for _ in 0..50 {
                who(&c, &url).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(
        slow.hits() * 10 < fast.hits(),
        "slow {} fast {}",
        slow.hits(),
        fast.hits()
    );
}

#[tokio::test]
async fn p2c_ewma_steers_away_from_a_slow_backend() {
    let slow = TestBackend::start("slow").await;
    let fast = TestBackend::start("fast").await;
    slow.set(Behavior {
        delay: Duration::from_millis(50),
        ..Default::default()
    });
    let lb = TestLb::start(config("p2c-ewma"), &[&slow, &fast]).await;
    let c = client();
    for _ in 0..200 {
        who(&c, &lb.url("/x")).await;
    }
    assert!(
        slow.hits() < 20,
        "slow {} fast {}",
        slow.hits(),
        fast.hits()
    );
}

#[tokio::test]
async fn consistent_hashing_is_stable_and_moves_only_the_leavers_keys() {
    let bs = [
        TestBackend::start("a").await,
        TestBackend::start("b").await,
        TestBackend::start("c").await,
        TestBackend::start("d").await,
    ];
    let lb = TestLb::start(
        config("hash-header:x-user"),
        &[&bs[0], &bs[1], &bs[2], &bs[3]],
    )
    .await;
    let c = client();
    let owner = |user: usize| {
        let c = c.clone();
        let url = lb.url("/x");
        async move {
            let r = c
                .get(&url)
                .header("x-user", format!("user-{user}"))
                .send()
                .await
                .unwrap();
            r.headers()["x-backend"].to_str().unwrap().to_owned()
        }
    };
    let mut before = HashMap::new();
    for u in 0..400 {
        before.insert(u, owner(u).await);
    }
    for u in 0..400 {
        assert_eq!(
            owner(u).await,
            before[&u],
            "the same key goes to the same backend"
        );
    }
    let per: HashMap<&String, usize> = before.values().fold(HashMap::new(), |mut m, b| {
        *m.entry(b).or_default() += 1;
        m
    });
    assert!(
        per.values().all(|&n| n > 50),
        "keys spread over every backend: {per:?}"
    );
    lb.lb.remove_backend(bs[3].addr).await.unwrap();
    let mut moved = 0;
    for u in 0..400 {
        let now = owner(u).await;
        assert_ne!(now, "d");
        if before[&u] != "d" && now != before[&u] {
            moved += 1;
        }
    }
    assert!(moved <= 8, "{moved} keys of the remaining backends moved");
}
