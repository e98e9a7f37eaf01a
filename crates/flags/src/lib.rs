//! Role: the feature flags and kill switches of the graceful-degradation factor. [`Flags`] answers "is
//! this feature on for this client?" from an in-memory snapshot, in nanoseconds and without I/O; a
//! refresher task reads the flag table's change number every `interval` (100 ms by default: a change
//! reaches every instance within about that) and reloads the flags when it moved.
//!
//! Invariants: every evaluation has a default (a flag nobody set is at its [`Flag::default`]); when the
//! flag table cannot be read, the last snapshot that could be read keeps serving (last-known-good; at
//! start, the defaults), and [`Flags::is_stale`] says so; a percentage rollout is sticky: a client's
//! bucket is a fixed hash of the flag's name and the client's key, so raising the percentage only adds
//! clients and a client does not flip between requests or instances.
//!
//! Entry points: [`Flags::start`], [`Flags::defaults`], [`Flags::is_on`], the flags in [`KNOWN`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tenfold_store::flags::{FlagRecord, FlagTable};

/// A flag the code evaluates: its name and the value it has when nobody set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag {
    /// The name in the table, the CLI and the admin API.
    pub name: &'static str,
    /// Its value when it is not set.
    pub default: bool,
    /// The feature, in words ("text search is turned off").
    pub feature: &'static str,
    /// What it switches.
    pub what: &'static str,
}

/// Text search (`GET /api/products?q=`): degradable.
pub const SEARCH: Flag = Flag {
    name: "search",
    feature: "text search",
    default: true,
    what: "text search: GET /api/products?q= (off: 503 with Retry-After)",
};
/// List pages beyond the first (`cursor=`): degradable.
pub const DEEP_PAGES: Flag = Flag {
    name: "deep_pages",
    feature: "paging beyond the first page",
    default: true,
    what: "list pages beyond the first: GET /api/products?cursor= (off: 503 with Retry-After)",
};
/// Image and video renditions made on upload: non-essential work.
pub const RENDITIONS: Flag = Flag {
    name: "renditions",
    feature: "making renditions",
    default: true,
    what: "renditions on upload (off: the upload is stored and its job waits 15 minutes)",
};
/// CSV bulk imports: sheddable.
pub const IMPORTS: Flag = Flag {
    name: "imports",
    feature: "bulk import",
    default: true,
    what: "bulk imports: POST /api/imports (off: 503 with Retry-After)",
};
/// Read-only maintenance mode: writes are refused, reads keep working.
pub const READ_ONLY: Flag = Flag {
    name: "read_only",
    feature: "writing",
    default: false,
    what: "maintenance: every write answers 503 with Retry-After; reads keep working; flags stay writable",
};

/// The storefront's enhancements (live search suggestions, infinite scroll): every page works without.
pub const ENHANCEMENTS: Flag = Flag {
    name: "enhancements",
    feature: "storefront enhancements",
    default: true,
    what: "the storefront's script: live search suggestions, infinite scroll (off: plain pages, no script sent)",
};

/// Every flag the code evaluates.
pub const KNOWN: &[Flag] = &[
    SEARCH,
    DEEP_PAGES,
    RENDITIONS,
    IMPORTS,
    READ_ONLY,
    ENHANCEMENTS,
];

/// The known flag named `name`.
pub fn known(name: &str) -> Option<Flag> {
    KNOWN.iter().copied().find(|f| f.name == name)
}

/// A client's bucket (0-99) for a flag: FNV-1a over the flag's name, a zero byte and the client's key,
/// finished with SplitMix64's mixer. Pinned by a test: changing it would move clients across a rollout.
pub fn bucket(flag: &str, client: &str) -> u8 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in flag.bytes().chain([0]).chain(client.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    (h % 100) as u8
}

struct Snapshot {
    /// The table's change number this snapshot is as of (-1: never read).
    version: i64,
    flags: HashMap<String, FlagRecord>,
}

/// The flags of one instance.
pub struct Flags {
    snapshot: ArcSwap<Snapshot>,
    stale: AtomicBool,
    /// Flags the degradation ladder has turned off on this instance (whatever the table says).
    auto_off: ArcSwap<Vec<&'static str>>,
}

impl Flags {
    /// Every flag at its default, never refreshed (no flag table).
    pub fn defaults() -> Arc<Flags> {
        Arc::new(Flags {
            snapshot: ArcSwap::from_pointee(Snapshot {
                version: -1,
                flags: HashMap::new(),
            }),
            stale: AtomicBool::new(false),
            auto_off: ArcSwap::from_pointee(Vec::new()),
        })
    }

    /// Loads the flags from `table` (the defaults if it cannot be read now) and keeps them fresh:
    /// every `interval` the change number is read, and the flags reloaded when it moved. The refresher
    /// stops when the returned value is dropped.
    pub async fn start(table: FlagTable, interval: Duration) -> Arc<Flags> {
        let flags = Flags::defaults();
        flags.refresh(&table).await;
        let weak: Weak<Flags> = Arc::downgrade(&flags);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(flags) = weak.upgrade() else { return };
                flags.refresh(&table).await;
            }
        });
        flags
    }

    /// One refresh: reload if the change number moved; on an error keep what is there and say stale.
    async fn refresh(&self, table: &FlagTable) {
        let current = self.snapshot.load().version;
        let result = match table.version().await {
            Ok(v) if v == current => Ok(false),
            Ok(_) => table.list().await.map(|(version, list)| {
                self.snapshot.store(Arc::new(Snapshot {
                    version,
                    flags: list.into_iter().map(|f| (f.name.clone(), f)).collect(),
                }));
                true
            }),
            Err(e) => Err(e),
        };
        match result {
            Ok(reloaded) => {
                if self.stale.swap(false, Ordering::Relaxed) {
                    tracing::info!("the flag table is readable again");
                }
                if reloaded {
                    let s = self.snapshot.load();
                    tracing::info!(
                        version = s.version,
                        flags = s.flags.len(),
                        "feature flags reloaded"
                    );
                    metrics::gauge!("flags_version").set(s.version as f64);
                    for f in KNOWN {
                        metrics::gauge!("flag_on", "flag" => f.name).set(if self.is_on(f, None) {
                            1.0
                        } else {
                            0.0
                        });
                    }
                }
                metrics::gauge!("flags_stale").set(0.0);
            }
            Err(e) => {
                if !self.stale.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "cannot read the flag table; serving the last flags read");
                }
                metrics::gauge!("flags_stale").set(1.0);
            }
        }
    }

    /// Whether `flag` is on for `client` (a stable key: a customer id, an API client, an address).
    /// Unset: its default. Set off: off. Set on: on, or for a percentage rollout, on when the client's
    /// [`bucket`] is below the percentage (without a client key: only at 100%).
    pub fn is_on(&self, flag: &Flag, client: Option<&str>) -> bool {
        if self.is_auto_off(flag) {
            return false;
        }
        let s = self.snapshot.load();
        match s.flags.get(flag.name) {
            None => flag.default,
            Some(r) if !r.enabled => false,
            Some(r) => match r.percent {
                None | Some(100..) => true,
                Some(0) => false,
                Some(p) => client.is_some_and(|c| bucket(flag.name, c) < p),
            },
        }
    }

    /// Turns `flags` off on this instance, whatever the table says, and every other flag back to the
    /// table's value (the degradation ladder's lever).
    pub fn set_auto_off(&self, flags: &[Flag]) {
        self.auto_off
            .store(Arc::new(flags.iter().map(|f| f.name).collect()));
        for f in KNOWN {
            metrics::gauge!("flag_auto_off", "flag" => f.name).set(if flags.contains(f) {
                1.0
            } else {
                0.0
            });
        }
    }

    /// Whether the degradation ladder has turned `flag` off here.
    pub fn is_auto_off(&self, flag: &Flag) -> bool {
        self.auto_off.load().contains(&flag.name)
    }

    /// The flags as set in the table (unset ones are at their default), as of [`Flags::version`].
    pub fn set_flags(&self) -> Vec<FlagRecord> {
        let mut v: Vec<FlagRecord> = self.snapshot.load().flags.values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// The change number of the flags served (-1 before the table was first read).
    pub fn version(&self) -> i64 {
        self.snapshot.load().version
    }

    /// True while the flag table cannot be read (the last flags read keep serving).
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_pinned_and_spread() {
        // Pinned: these must not change between releases (clients would move across rollouts).
        let pinned: Vec<u8> = ["a", "b", "c", "customer:1"]
            .iter()
            .map(|c| bucket("search", c))
            .collect();
        assert_eq!(pinned, vec![83, 7, 52, 87]);
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[usize::from(bucket("search", &format!("client-{i}")) / 10)] += 1;
        }
        for c in counts {
            assert!((850..=1150).contains(&c), "uneven buckets: {counts:?}");
        }
        // Another flag puts the same client elsewhere (rollouts are independent).
        let same = (0..1000)
            .filter(|i| {
                let c = format!("client-{i}");
                bucket("search", &c) == bucket("imports", &c)
            })
            .count();
        assert!(same < 50, "{same}");
    }

    #[test]
    fn evaluation_follows_the_record() {
        let f = Flags::defaults();
        assert!(f.is_on(&SEARCH, None));
        assert!(!f.is_on(&READ_ONLY, None));
        let set = |enabled, percent| {
            f.snapshot.store(Arc::new(Snapshot {
                version: 1,
                flags: [(
                    "search".to_owned(),
                    FlagRecord {
                        name: "search".into(),
                        enabled,
                        percent,
                        note: None,
                        updated_ms: 0,
                    },
                )]
                .into(),
            }))
        };
        set(false, None);
        assert!(!f.is_on(&SEARCH, Some("x")));
        set(true, Some(0));
        assert!(!f.is_on(&SEARCH, Some("x")));
        set(true, Some(30));
        let on = (0..10_000)
            .filter(|i| f.is_on(&SEARCH, Some(&format!("c{i}"))))
            .count();
        assert!((2_800..=3_200).contains(&on), "{on}");
        assert!(!f.is_on(&SEARCH, None), "no key: only at 100%");
        // Sticky: the clients on at 30% are still on at 60%.
        let at30: Vec<bool> = (0..500)
            .map(|i| f.is_on(&SEARCH, Some(&format!("c{i}"))))
            .collect();
        set(true, Some(60));
        for (i, was) in at30.iter().enumerate() {
            if *was {
                assert!(f.is_on(&SEARCH, Some(&format!("c{i}"))));
            }
        }
        set(true, None);
        assert!(f.is_on(&SEARCH, None));
        // The ladder's override beats the table, and lifts.
        f.set_auto_off(&[SEARCH]);
        assert!(!f.is_on(&SEARCH, None) && f.is_auto_off(&SEARCH));
        assert!(f.is_on(&IMPORTS, None));
        f.set_auto_off(&[]);
        assert!(f.is_on(&SEARCH, None));
    }
}
