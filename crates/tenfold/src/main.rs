//! `tenfold`: parses the command line, loads the configuration, starts logging and dispatches.

mod cli;
mod commands;
mod flags;
mod jobs;
mod up;

use std::process::ExitCode;

use clap::Parser;

/// Exit code for bad configuration or usage (sysexits EX_USAGE/EX_CONFIG family).
const EXIT_CONFIG: u8 = 64;

/// A command-line mistake found after parsing (exits 64 like other usage errors).
#[derive(Debug)]
pub(crate) struct UsageError(pub(crate) String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let msg = e.to_string();
            let first = msg
                .lines()
                .next()
                .unwrap_or("invalid command line")
                .trim_start_matches("error: ");
            eprintln!("tenfold: {first} (see tenfold --help)");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let config = match cli.load_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tenfold: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    commands::init_logging(&config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tenfold: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let again = cli.clone();
    let reload = move || again.load_config().map_err(anyhow::Error::from);
    match runtime.block_on(commands::run(cli.command, config, reload)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<UsageError>() => {
            eprintln!("tenfold: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(e) => {
            eprintln!("tenfold: {e:#}");
            ExitCode::FAILURE
        }
    }
}
