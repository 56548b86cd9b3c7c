//! Parse, run, map the outcome to an exit code; nothing else lives here.

use std::process::ExitCode;

use genalytics::Cli;

fn main() -> ExitCode {
    let plugin = genalytics::plugin_mode(std::env::args_os());
    let cli = match Cli::parse_with_files(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(err) if plugin && err.use_stderr() => {
            return genalytics::report_plugin_error(&err.to_string()).into();
        }
        Err(err) => err.exit(),
    };
    match genalytics::run(cli) {
        Ok(code) => code.into(),
        Err(err) if plugin => genalytics::report_plugin_error(&genalytics::one_line(&err)).into(),
        Err(err) => genalytics::report_error(&err).into(),
    }
}

/// mimalloc: transfer allocates many small strings per stream entry,
/// which glibc's allocator serves far more slowly (docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
