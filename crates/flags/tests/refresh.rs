//! Flags follow the table: a change reaches a running `Flags` within its refresh interval (on each
//! engine), and with the table's database down the last flags read keep serving, marked stale, until
//! it is back.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use tenfold_flags::{Flags, IMPORTS, READ_ONLY, SEARCH};
use tenfold_store::flags::FlagTable;
use tenfold_test_support::{engines, Engine, PgCluster, TestDb};

const REFRESH: Duration = Duration::from_millis(20);

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.elapsed()
}

#[tokio::test]
async fn changes_reach_the_flags_and_unset_flags_fall_back_to_their_defaults() {
    for engine in engines() {
        let db = TestDb::new(engine).await;
        db.store().await; // migrates
        let table = FlagTable::connect(&db.url, Duration::from_secs(5))
            .await
            .unwrap();
        let flags = Flags::start(table.clone(), REFRESH).await;
        assert!(flags.is_on(&SEARCH, None) && !flags.is_on(&READ_ONLY, None));
        assert_eq!(flags.version(), 0, "{engine:?}: read at start");

        table
            .set("search", false, None, Some("load test"))
            .await
            .unwrap();
        let took = wait_for("search off", || !flags.is_on(&SEARCH, Some("c1"))).await;
        eprintln!("{engine:?}: a change reached the flags in {took:?}");
        table.set("imports", true, Some(50), None).await.unwrap();
        wait_for("imports at 50%", || flags.version() == 2).await;
        let on = (0..2000)
            .filter(|i| flags.is_on(&IMPORTS, Some(&format!("client-{i}"))))
            .count();
        assert!(
            (850..=1150).contains(&on),
            "{engine:?}: {on} of 2000 at 50%"
        );
        // Unset: back to the default (a removal moves the change number too).
        assert!(table.remove("search").await.unwrap());
        assert!(!table.remove("search").await.unwrap());
        wait_for("search back on", || flags.is_on(&SEARCH, None)).await;
        assert!(!flags.is_stale());
    }
}

#[tokio::test]
async fn with_the_flag_database_down_the_last_flags_read_keep_serving() {
    if !engines().contains(&Engine::Postgres) {
        return;
    }
    let cluster = PgCluster::start(0, 0, 0);
    let store = tenfold_store::connect(&tenfold_store::ConnectOptions::new(&cluster.primary))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let table = FlagTable::connect(&cluster.primary, Duration::from_millis(500))
        .await
        .unwrap();
    table.set("read_only", true, None, None).await.unwrap();
    table.set("search", false, None, None).await.unwrap();
    let flags = Flags::start(table.clone(), REFRESH).await;
    assert!(flags.is_on(&READ_ONLY, None) && !flags.is_on(&SEARCH, None));

    cluster.kill("primary");
    wait_for("stale", || flags.is_stale()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(flags.is_stale());
    assert!(
        flags.is_on(&READ_ONLY, None) && !flags.is_on(&SEARCH, None),
        "the last flags read hold while the table is unreachable"
    );

    cluster.restart_stopped();
    wait_for("fresh again", || !flags.is_stale()).await;
    let t = FlagTable::connect(&cluster.primary, Duration::from_secs(5))
        .await
        .unwrap();
    t.set("read_only", false, None, None).await.unwrap();
    wait_for("read_only off after recovery", || {
        !flags.is_on(&READ_ONLY, None)
    })
    .await;
    drop(store);
}
