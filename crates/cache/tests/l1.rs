//! The in-process tier: single-flight, versions and tombstones, stale-while-revalidate, XFetch, negative
//! caching, page generations and the invalidation bus (over an in-process feed).

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tenfold_cache::{Cache, Change, ChangeFeed, Key, Message, Settings, Source, Value};

mod common;
use common::{eventually, present, until_reloaded, LocalBus, Row};

fn cache() -> Cache {
    Cache::new(Settings {
        xfetch_beta: 0.0,
        ..Settings::default()
    })
}

#[tokio::test]
async fn a_second_read_is_a_hit() {
    let c = cache();
    let row = Row::new(3, 0);
    let (v, s) = c.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    assert_eq!((v, s), (present(3), Source::Loaded));
    let (v, s) = c.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    assert_eq!((v, s), (present(3), Source::Hit));
    assert_eq!(row.loads(), 1);
}

#[tokio::test]
async fn concurrent_misses_share_one_load() {
    let c = cache();
    let row = Row::new(7, 30);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let c = c.clone();
        let l = row.loader();
        tasks.push(tokio::spawn(async move {
            c.get_or_load(Key::Product(42), l).await.unwrap().0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), present(7));
    }
    assert_eq!(
        row.loads(),
        1,
        "1,000 concurrent misses must cause one load"
    );
}

#[tokio::test]
async fn a_load_that_read_before_a_write_is_not_cached_after_it() {
    let c = cache();
    let row = Row::new(1, 50);
    // A read starts and reads version 1; while its answer is in flight the row is written.
    let reader = {
        let c = c.clone();
        let l = row.loader();
        tokio::spawn(async move { c.get_or_load(Key::Product(5), l).await.unwrap().0 })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    row.set(2);
    c.invalidate(Change {
        products: vec![(5, Some(2))],
        ..Change::default()
    })
    .await;
    // The reader saw the row before the write: it may return version 1 ...
    assert_eq!(reader.await.unwrap(), present(1));
    // ... but nobody reads version 1 after the invalidation returned.
    let (v, _) = c.get_or_load(Key::Product(5), row.loader()).await.unwrap();
    assert_eq!(v, present(2));
}

#[tokio::test]
async fn an_older_version_never_replaces_a_newer_one() {
    let c = cache();
    c.invalidate(Change {
        products: vec![(9, Some(5))],
        ..Change::default()
    })
    .await;
    // A straggling load of version 4 (read before the write) is answered but not cached.
    let old = Row::new(4, 0);
    let (v, _) = c.get_or_load(Key::Product(9), old.loader()).await.unwrap();
    assert_eq!(v, present(4));
    let new = Row::new(5, 0);
    let (v, s) = c.get_or_load(Key::Product(9), new.loader()).await.unwrap();
    assert_eq!((v, s), (present(5), Source::Loaded));
    let (v, s) = c.get_or_load(Key::Product(9), old.loader()).await.unwrap();
    assert_eq!((v, s), (present(5), Source::Hit));
}

#[tokio::test]
async fn unknown_ids_are_remembered_until_created() {
    let c = cache();
    let row = Row::new(0, 0);
    for _ in 0..100 {
        let (v, _) = c.get_or_load(Key::Product(77), row.loader()).await.unwrap();
        assert_eq!(v, Value::Absent);
    }
    assert_eq!(
        row.loads(),
        1,
        "a flood of one unknown id reaches the database once"
    );
    row.set(1);
    c.invalidate(Change {
        products: vec![(77, Some(1))],
        ..Change::default()
    })
    .await;
    let (v, _) = c.get_or_load(Key::Product(77), row.loader()).await.unwrap();
    assert_eq!(v, present(1));
}

#[tokio::test]
async fn a_deleted_product_reads_as_absent() {
    // Unknown ids are remembered only briefly: the delete must outlast that.
    let c = Cache::new(Settings {
        negative_ttl: Duration::from_millis(20),
        xfetch_beta: 0.0,
        ..Settings::default()
    });
    let row = Row::new(3, 0);
    c.get_or_load(Key::Product(8), row.loader()).await.unwrap();
    row.set(0);
    c.invalidate(Change {
        products: vec![(8, None)],
        ..Change::default()
    })
    .await;
    let (v, _) = c.get_or_load(Key::Product(8), row.loader()).await.unwrap();
    assert_eq!(v, Value::Absent);
    // Later (past the negative TTL), a straggler that read the row before the delete cannot bring it
    // back: the delete is still known, and answers without a load.
    tokio::time::sleep(Duration::from_millis(60)).await;
    let straggler = Row::new(3, 0);
    let (v, s) = c
        .get_or_load(Key::Product(8), straggler.loader())
        .await
        .unwrap();
    assert_eq!((v, s), (Value::Absent, Source::Hit));
    assert_eq!(straggler.loads(), 0);
    let (v, _) = c.get_or_load(Key::Product(8), row.loader()).await.unwrap();
    assert_eq!(v, Value::Absent);
}

#[tokio::test]
async fn an_absent_load_never_hides_a_row_that_exists() {
    let c = cache();
    let row = Row::new(2, 0);
    c.get_or_load(Key::Product(4), row.loader()).await.unwrap();
    c.invalidate(Change {
        products: vec![(4, Some(3))],
        ..Change::default()
    })
    .await;
    // A load that read before the row was created says "absent": answered, not cached.
    let early = Row::new(0, 0);
    assert_eq!(
        c.get_or_load(Key::Product(4), early.loader())
            .await
            .unwrap()
            .0,
        Value::Absent
    );
    row.set(3);
    assert_eq!(
        c.get_or_load(Key::Product(4), row.loader())
            .await
            .unwrap()
            .0,
        present(3)
    );
}

#[tokio::test]
async fn a_heartbeat_reveals_a_lost_last_message() {
    let (tx, _) = tokio::sync::broadcast::channel(64);
    let bus: Arc<dyn ChangeFeed> = Arc::new(LocalBus::new(tx));
    let b = cache();
    let _g = b.start_bus(vec![bus.clone()]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let row = Row::new(1, 0);
    b.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    let send = |seq, heartbeat| {
        let bus = bus.clone();
        async move {
            let m = Message {
                origin: 42,
                seq,
                change: Change::default(),
                heartbeat,
            };
            bus.publish(&serde_json::to_string(&m).unwrap())
                .await
                .unwrap();
        }
    };
    send(1, false).await;
    send(1, true).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, s) = b.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    assert_eq!(s, Source::Hit, "a heartbeat that matches is no loss");
    // Message 2 never arrives; the heartbeat says the sender is at 2.
    send(2, true).await;
    until_reloaded(&b, Key::Product(1), &row).await;
}

#[tokio::test]
async fn stale_values_are_served_while_one_refresh_runs() {
    let c = Cache::new(Settings {
        ttl: Duration::from_millis(30),
        jitter: 0.0,
        xfetch_beta: 0.0,
        stale_while_revalidate: Duration::from_secs(30),
        ..Settings::default()
    });
    let row = Row::new(1, 40);
    c.get_or_load(Key::Product(3), row.loader()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    row.set(2);
    for _ in 0..50 {
        let (v, s) = c.get_or_load(Key::Product(3), row.loader()).await.unwrap();
        assert_eq!(
            (v, s),
            (present(1), Source::Stale),
            "served at once, not waiting for the load"
        );
    }
    eventually(Duration::from_secs(5), "the refresh", || {
        let c = c.clone();
        let row = row.clone();
        async move {
            c.get_or_load(Key::Product(3), row.loader())
                .await
                .unwrap()
                .0
                == present(2)
        }
    })
    .await;
    assert_eq!(row.loads(), 2, "one refresh for all the stale reads");
}

#[tokio::test]
async fn past_its_window_a_value_is_served_only_when_loading_fails() {
    let c = Cache::new(Settings {
        ttl: Duration::from_millis(20),
        jitter: 0.0,
        xfetch_beta: 0.0,
        stale_while_revalidate: Duration::ZERO,
        stale_if_error: Duration::from_millis(400),
        ..Settings::default()
    });
    let row = Row::new(1, 0);
    c.get_or_load(Key::Product(5), row.loader()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(40)).await;
    let down = || async { Err::<Value, String>("the database is unreachable".into()) };
    // Stale and the database is down: the old value, marked as such.
    let (v, s) = c.get_or_load(Key::Product(5), down).await.unwrap();
    assert_eq!((v, s), (present(1), Source::StaleIfError));
    // The database is back: a fresh load, not the stale value.
    row.set(2);
    let (v, s) = c.get_or_load(Key::Product(5), row.loader()).await.unwrap();
    assert_eq!((v, s), (present(2), Source::Loaded));
    // Past the stale-if-error window too, an error is an error.
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(c.get_or_load(Key::Product(5), down).await.is_err());
    // Something never cached has nothing to fall back on.
    assert!(c.get_or_load(Key::Product(6), down).await.is_err());
}

#[tokio::test]
async fn xfetch_refreshes_a_hot_key_before_it_expires() {
    let c = Cache::new(Settings {
        ttl: Duration::from_millis(300),
        jitter: 0.0,
        xfetch_beta: 1.0,
        stale_while_revalidate: Duration::ZERO,
        ..Settings::default()
    });
    // A slow load (100 ms) makes early refresh likely in the last stretch before expiry.
    let row = Row::new(1, 100);
    c.get_or_load(Key::Product(4), row.loader()).await.unwrap();
    let deadline = Instant::now() + Duration::from_millis(290);
    while Instant::now() < deadline {
        let (_, s) = c.get_or_load(Key::Product(4), row.loader()).await.unwrap();
        assert_eq!(s, Source::Hit);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(
        row.loads() >= 2,
        "a hot key was refreshed before it expired"
    );
}

#[tokio::test]
async fn page_keys_move_with_their_tags() {
    let c = cache();
    let k1 = c.page_key("category:books", "limit=20");
    assert_eq!(k1, c.page_key("category:books", "limit=20"));
    c.invalidate(Change {
        tags: vec!["category:books".into()],
        ..Change::default()
    })
    .await;
    let k2 = c.page_key("category:books", "limit=20");
    assert_ne!(k1, k2);
    assert_eq!(
        c.page_key("all", "limit=20"),
        c.page_key("all", "limit=20"),
        "other tags keep their keys"
    );
    let all = c.page_key("all", "limit=20");
    c.invalidate(Change {
        all_lists: true,
        ..Change::default()
    })
    .await;
    assert_ne!(all, c.page_key("all", "limit=20"));
}

#[tokio::test]
async fn a_page_key_taken_before_a_write_is_not_cached() {
    let c = cache();
    let k = c.page_key("all", "");
    c.flush("test").await;
    let row = Row::new(1, 0);
    c.get_or_load(k.clone(), row.loader()).await.unwrap();
    c.get_or_load(k, row.loader()).await.unwrap();
    assert_eq!(row.loads(), 2, "a key from before a flush is never cached");
}

#[tokio::test]
async fn disabled_loads_every_time() {
    let c = Cache::disabled();
    let row = Row::new(1, 0);
    for _ in 0..3 {
        let (_, s) = c.get_or_load(Key::Product(1), row.loader()).await.unwrap();
        assert_eq!(s, Source::Bypass);
    }
    assert_eq!(row.loads(), 3);
}

#[tokio::test]
async fn loader_errors_reach_the_caller_and_are_not_cached() {
    let c = cache();
    let failing = || async { Err::<Value, String>("database down".into()) };
    let e = c.get_or_load(Key::Product(1), failing).await.unwrap_err();
    assert_eq!(e, "database down");
    let row = Row::new(2, 0);
    let (v, _) = c.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    assert_eq!(v, present(2));
}

#[tokio::test]
async fn invalidations_reach_other_instances_and_gaps_flush() {
    let (tx, _) = tokio::sync::broadcast::channel(64);
    let bus: Arc<dyn ChangeFeed> = Arc::new(LocalBus::new(tx.clone()));
    let a = cache();
    let b = cache();
    let _ga = a.start_bus(vec![bus.clone()]);
    let _gb = b.start_bus(vec![bus.clone()]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let row = Row::new(1, 0);
    b.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    row.set(2);
    a.invalidate(Change {
        products: vec![(1, Some(2))],
        ..Change::default()
    })
    .await;
    eventually(Duration::from_secs(5), "B sees version 2", || {
        let b = b.clone();
        let row = row.clone();
        async move {
            b.get_or_load(Key::Product(1), row.loader())
                .await
                .unwrap()
                .0
                == present(2)
        }
    })
    .await;

    // A message from another origin that skips a number: B cannot know what it missed, so it flushes.
    b.get_or_load(Key::Product(2), row.loader()).await.unwrap();
    assert!(b.entry_count().await >= 1);
    for seq in [1, 3] {
        let m = Message {
            origin: 99,
            seq,
            change: Change::default(),
            heartbeat: false,
        };
        bus.publish(&serde_json::to_string(&m).unwrap())
            .await
            .unwrap();
    }
    // B flushed: its next read of product 2 goes to the database again.
    until_reloaded(&b, Key::Product(2), &row).await;
}

#[test]
fn messages_are_compact_json() {
    let m = Message {
        origin: 1,
        seq: 2,
        change: Change {
            products: vec![(5, Some(3)), (6, None)],
            tags: vec!["all".into()],
            all_lists: false,
        },
        heartbeat: false,
    };
    let s = serde_json::to_string(&m).unwrap();
    assert_eq!(s, r#"{"o":1,"s":2,"p":[[5,3],[6,null]],"t":["all"]}"#);
    assert_eq!(serde_json::from_str::<Message>(&s).unwrap(), m);
}

#[tokio::test]
async fn a_reconnect_is_no_loss_while_another_feed_stayed_up_and_tombstones_survive_a_flush() {
    let one = Arc::new(LocalBus::new(tokio::sync::broadcast::channel(64).0));
    let two = Arc::new(LocalBus::new(tokio::sync::broadcast::channel(64).0));
    let b = cache();
    let _g = b.start_bus(vec![one.clone(), two.clone()]);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let row = Row::new(1, 0);
    b.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    // Feed two (subscribed after feed one) reconnects; feed one was up all along: nothing was missed,
    // no flush.
    two.lose();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, s) = b.get_or_load(Key::Product(1), row.loader()).await.unwrap();
    assert_eq!(
        s,
        Source::Hit,
        "a reconnect covered by another feed flushed L1"
    );

    // A write B knows of (a tombstone for version 5), then feed one reconnects, and feed two has not
    // been up since before feed one's previous subscription: B flushes, but the tombstone stays, so a
    // straggler's version 4 is still refused.
    b.invalidate(Change {
        products: vec![(2, Some(5))],
        ..Change::default()
    })
    .await;
    one.lose();
    until_reloaded(&b, Key::Product(1), &row).await;
    let straggler = Row::new(4, 0);
    b.get_or_load(Key::Product(2), straggler.loader())
        .await
        .unwrap();
    let (v, s) = b
        .get_or_load(Key::Product(2), straggler.loader())
        .await
        .unwrap();
    assert_eq!(
        (v, s),
        (present(4), Source::Loaded),
        "version 4 was cached over the tombstone of 5"
    );
}
