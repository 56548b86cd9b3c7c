//! genalytics: drains image-generation events from a Redis Stream into
//! PostgreSQL exactly once, rolls them up by hour and reports on them.
//!
//! The binary is a thin shell around [`run`], so the integration tests and
//! the benchmarks drive exactly the code an operator runs.

pub mod cli;
pub mod commands;
pub mod config;
pub mod db;
pub mod error;
pub mod event;
pub mod histogram;
pub mod hour;
pub mod interrupt;
pub mod monitoring;
pub mod output;
pub mod render;
pub mod report;
pub mod retry;
pub mod rollup;
pub mod service;
pub mod stream;
pub mod text;
pub mod throwaway;
pub mod timearg;
pub mod tls;
pub mod traffic;

use std::io;

pub use error::{Exit, UsageError};

/// Runs one parsed command line.
pub fn run(cli: cli::Cli) -> anyhow::Result<Exit> {
    init_logging(cli.global.verbose, cli.global.quiet);
    let settings = config::Settings::from_args(&cli.global)?;
    commands::run(cli.command, &settings)
}

/// Prints an error the way every command reports failure and picks its exit
/// code: usage mistakes exit 2, a closed stdout (`… | head`) is success, all
/// else exits 1. The whole cause chain goes to stderr on one line.
pub fn report_error(err: &anyhow::Error) -> Exit {
    if is_broken_pipe(err) {
        return Exit::Success;
    }
    eprintln!("genalytics: {}", crate::error::one_line(err));
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
    let first = message.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    println!(
        "GENALYTICS UNKNOWN - {}",
        crate::text::escape_controls(first).replace('|', "/")
    );
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

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => tracing::Level::ERROR,
        (false, 0) => tracing::Level::WARN,
        (false, 1) => tracing::Level::INFO,
        (false, _) => tracing::Level::DEBUG,
    };
    // A second initialisation (tests calling run twice) is harmless.
    let _ = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(io::stderr)
        .with_target(false)
        .with_ansi(
            io::IsTerminal::is_terminal(&io::stderr()) && std::env::var_os("NO_COLOR").is_none(),
        )
        .without_time()
        .try_init();
}
