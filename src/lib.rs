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
pub use error::{Exit, one_line};

/// What the integration tests and the benchmarks reach besides the command
/// line: servers to run against, the schema's migrations, and the pure
/// pieces whose results they check independently.
pub mod testing {
    pub use crate::cli::completions::generated_files;
    pub use crate::config::DatabaseUrl;
    pub use crate::db::connect;
    pub use crate::db::migrations::{MIGRATIONS, apply_through};
    pub use crate::histogram::{Histogram, KEY_SQL, key};
    pub use crate::hour::floor as hour_floor;
}

use std::io;

use error::UsageError;

/// Runs one parsed command line.
pub fn run(cli: cli::Cli) -> anyhow::Result<Exit> {
    init_logging(&cli.global);
    let settings = cli::settings(&cli.global)?;
    cli::dispatch(cli.command, &settings)
}

/// Prints an error the way every command reports failure and picks its exit
/// code: usage mistakes exit 2, a closed stdout (`… | head`) is success, all
/// else exits 1. The whole cause chain goes to stderr on one line, control
/// characters escaped.
pub fn report_error(err: &anyhow::Error) -> Exit {
    if is_broken_pipe(err) {
        return Exit::Success;
    }
    // Data (a stream key, a server's message) may hold control characters:
    // escaped, the error stays one line and cannot move a terminal's cursor.
    let line = crate::text::escape_controls(&crate::error::one_line(err)).into_owned();
    if LOG_JSON.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::error!("{line}");
    } else {
        eprintln!("genalytics: {line}");
    }
    if err.downcast_ref::<UsageError>().is_some() {
        Exit::Usage
    } else {
        Exit::Failure
    }
}

/// Whether the command line asks for the Monitoring Plugins protocol, in
/// which whatever stops the run (a wrong flag included) is UNKNOWN, exit 3.
pub fn plugin_mode(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--nagios")
}

/// Reports what stopped a plugin run as the Monitoring Plugins expect: one
/// status line on stdout, exit 3.
pub fn report_plugin_error(message: &str) -> Exit {
    println!("{}", monitoring::unknown_line(message));
    Exit::Plugin(3)
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        let io_kind = cause
            .downcast_ref::<io::Error>()
            .map(io::Error::kind)
            // serde_json keeps the io::Error to itself, but tells its kind.
            .or_else(|| {
                cause
                    .downcast_ref::<serde_json::Error>()
                    .and_then(serde_json::Error::io_error_kind)
            });
        io_kind == Some(io::ErrorKind::BrokenPipe)
    })
}

/// Whether stderr carries JSON lines (`--log-format json`): the final error
/// is one of them then.
static LOG_JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
    LOG_JSON.store(
        global.log_format == cli::LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
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
