//! Parse, run, map the outcome to an exit code; nothing else lives here.

use std::process::ExitCode;

use clap::Parser;
use genalytics::cli::Cli;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match genalytics::run(cli) {
        Ok(code) => code.into(),
        Err(err) => genalytics::report_error(&err).into(),
    }
}

/// glibc's allocator spent a fifth of transfer's CPU time in malloc/free
/// (many small strings per stream entry); mimalloc halves that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
