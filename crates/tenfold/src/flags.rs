//! `tenfold flags` and the flags of `tenfold app`: wiring of the flag table (tenfold-store) and its
//! evaluation (tenfold-flags).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use tenfold_config::Config;
use tenfold_store::flags::FlagTable;

use crate::cli::FlagsAction;
use crate::UsageError;

/// How often an instance reads the flag table's change number (a change reaches it within this).
const REFRESH: Duration = Duration::from_millis(100);

async fn connect_table(config: &Config) -> anyhow::Result<FlagTable> {
    let url = config.database.url.expose_secret();
    FlagTable::connect(
        url,
        Duration::from_millis(config.database.acquire_timeout_ms),
    )
    .await
    .with_context(|| {
        format!(
            "cannot open the flag table on {}",
            tenfold_config::mask_password(url)
        )
    })
}

/// An instance's flags, refreshed every 100 ms, and the table the admin routes write to.
pub(crate) async fn start_flags(
    config: &Config,
) -> anyhow::Result<(Arc<tenfold_flags::Flags>, Arc<FlagTable>)> {
    let table = connect_table(config).await?;
    let flags = tenfold_flags::Flags::start(table.clone(), REFRESH).await;
    Ok((flags, Arc::new(table)))
}

pub(crate) async fn flags(config: Config, action: FlagsAction) -> anyhow::Result<()> {
    // The table comes with the catalog's migrations.
    let store = crate::commands::open_store(&config, config.database.auto_migrate).await?;
    store.close().await;
    let table = connect_table(&config).await?;
    match action {
        FlagsAction::List => {
            let (version, set) = table.list().await?;
            let row = |name: &str, on: bool, percent: Option<u8>, source: &str, what: &str| {
                let percent = percent.map_or("-".into(), |p| p.to_string());
                println!("{name:<16} {on:<5} {percent:>7}  {source:<8} {what}");
            };
            println!(
                "{:<16} {:<5} {:>7}  {:<8} note / what",
                "flag", "on", "percent", "source"
            );
            for k in tenfold_flags::KNOWN {
                match set.iter().find(|r| r.name == k.name) {
                    Some(r) => row(
                        &r.name,
                        r.enabled,
                        r.percent,
                        "set",
                        r.note.as_deref().unwrap_or(k.what),
                    ),
                    None => row(k.name, k.default, None, "default", k.what),
                }
            }
            // Rows of flags this version does not evaluate (set by a newer one, or by hand).
            for r in set
                .iter()
                .filter(|r| tenfold_flags::known(&r.name).is_none())
            {
                row(
                    &r.name,
                    r.enabled,
                    r.percent,
                    "set",
                    r.note.as_deref().unwrap_or(""),
                );
            }
            println!("(change number {version})");
        }
        FlagsAction::Set {
            name,
            on,
            off: _,
            percent,
            note,
        } => {
            if !tenfold_app::valid_flag_name(&name) {
                return Err(UsageError(format!(
                    "flag {name:?} must be 1 to 64 of a-z, 0-9, '_', '-' and '.'"
                ))
                .into());
            }
            if note.as_ref().is_some_and(|n| n.chars().count() > 200) {
                return Err(UsageError("--note must be at most 200 characters".into()).into());
            }
            if tenfold_flags::known(&name).is_none() {
                eprintln!("note: {name:?} is not a flag this version evaluates (tenfold flags list shows those)");
            }
            let r = table.set(&name, on, percent, note.as_deref()).await?;
            match (r.enabled, r.percent) {
                (false, _) => println!("{} is off", r.name),
                (true, Some(p)) => println!("{} is on for {p}% of clients", r.name),
                (true, None) => println!("{} is on", r.name),
            }
        }
        FlagsAction::Unset { name } => {
            if table.remove(&name).await? {
                println!("{name} is unset: its default applies");
            } else {
                return Err(anyhow::anyhow!("the flag {name:?} is not set"));
            }
        }
    }
    Ok(())
}
