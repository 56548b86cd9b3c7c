//! genalytics: drains image-generation events from a Redis Stream into
//! PostgreSQL exactly once, rolls them up by hour and reports on them.
//!
//! The binary is a thin shell around [`run`], so the integration tests and
//! the benchmarks drive exactly the code an operator runs.

mod cli;
mod commands;
mod config;
mod db;
mod error;
mod event;
mod histogram;
mod hour;
mod ingest;
mod interrupt;
mod monitoring;
mod output;
mod pg_service;
mod render;
mod report;
mod retry;
mod rollup;
mod service;
mod stream;
mod text;
pub mod throwaway;
mod timearg;
mod tls;
mod traffic;

pub use cli::Cli;
pub use error::{Exit, one_line, plugin_mode, report_error, report_plugin_error};

/// What the integration tests and the benchmarks reach besides the command
/// line: servers to run against, the schema's migrations, and the pure
/// pieces whose results they check independently.
pub mod testing {
    pub use crate::cli::completions::generated_files;
    pub use crate::config::DatabaseUrl;
    pub use crate::db::connect;
    pub use crate::db::migrations::{MIGRATIONS, apply_through};
    pub use crate::db::replication::standbys_behind;
    pub use crate::db::rollup::refresh as refresh_partial;
    pub use crate::histogram::{Histogram, KEY_SQL, key};
    pub use crate::hour::floor as hour_floor;
}

use std::io;

/// Runs one parsed command line.
pub fn run(cli: cli::Cli) -> anyhow::Result<Exit> {
    init_logging(&cli.global);
    for warning in &cli.sources.warnings {
        tracing::warn!("{warning}");
    }
    let settings = cli::settings(&cli.global)?;
    cli::dispatch(cli.command, &settings, &cli.sources)
}

/// Logs go to stderr: at the level -v/-q ask for, or as `RUST_LOG`
/// filters them (tracing's syntax, e.g. `genalytics=debug`), as text for
/// people or as JSON lines for log shippers.
fn init_logging(global: &cli::GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let level = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|spec| !spec.trim().is_empty());
    let (filter, refused) = match spec.as_deref().map(EnvFilter::try_new) {
        Some(Ok(filter)) => (filter, None),
        Some(Err(err)) => (EnvFilter::new(level), Some(err)),
        None => (EnvFilter::new(level), None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    error::log_as_json(global.log_format == cli::LogFormat::Json);
    // A second initialisation (tests calling run twice) is harmless.
    let _ = match global.log_format {
        cli::LogFormat::Json => builder.json().with_current_span(false).try_init(),
        cli::LogFormat::Text => builder
            .with_target(false)
            .with_ansi(
                io::IsTerminal::is_terminal(&io::stderr())
                    && std::env::var_os("NO_COLOR").is_none(),
            )
            .without_time()
            .try_init(),
    };
    if let Some(err) = refused {
        tracing::warn!("RUST_LOG ignored ({err}); logging at the level -v/-q ask for");
    }
}
