//! The command line: the global flags and the list of subcommands as clap
//! parses them (each subcommand's own flags live with the command, in
//! `commands::<name>::Args`), the settings built from them (`settings`),
//! and the dispatch to the commands. What is about the command line
//! itself lives here too: completions, man pages and the demo. Doc
//! comments here are `--help` text, written for a terminal rather than
//! rustdoc.
#![allow(clippy::doc_markdown)]

use clap::{ArgAction, Args, Parser, Subcommand};

pub mod completions;
pub mod demo;
mod manpages;
mod settings;

use crate::commands::{
    aggregate, check, migrate, prune, rejected, report, simulate, status, transfer,
};
use crate::config::Settings;
use crate::error::{Exit, UsageError};

pub use settings::settings;

#[derive(Debug, Parser)]
#[command(
    name = "genalytics",
    version,
    about = "Drain image-generation events from Redis into PostgreSQL exactly once, roll them up by hour, and report on them.",
    long_version = long_version(),
    propagate_version = true,
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(flatten, next_help_heading = "Global options")]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// `--version`: the release, the commit it was built from and the TLS
/// library it speaks through — what a bug report needs.
fn long_version() -> String {
    format!(
        "{}\ncommit {}\nTLS: native-tls on {} (PostgreSQL and Redis)",
        env!("CARGO_PKG_VERSION"),
        env!("GENALYTICS_COMMIT"),
        openssl::version::version()
    )
}

const EXAMPLES: &str = "Examples:
  genalytics demo
  genalytics migrate
  genalytics transfer && genalytics aggregate
  genalytics report overview --days 7
  genalytics status";

/// Flags every subcommand accepts, before or after its name.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// PostgreSQL connection URL, e.g. postgres://user:pass@host:5432/db?sslmode=require
    #[arg(
        long,
        env = "DATABASE_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: Option<String>,

    /// Redis connection URL (rediss:// for TLS)
    #[arg(
        long,
        env = "REDIS_URL",
        global = true,
        hide_env_values = true,
        value_name = "URL",
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,

    /// Redis is a cluster: REDIS_URL may name several seed nodes, comma-separated
    #[arg(
        long,
        env = "GENALYTICS_REDIS_CLUSTER",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new(),
        action = ArgAction::SetTrue
    )]
    pub redis_cluster: bool,

    /// Namespace of the stream key: {ns}:generation_events:stream
    #[arg(
        long,
        env = "GENALYTICS_REDIS_NS",
        global = true,
        hide_env_values = true,
        value_name = "NS",
        default_value = "genonaut"
    )]
    pub redis_ns: String,

    /// Full stream key, overriding the one built from --redis-ns, taken literally (*, ? and [ are part of the key); transfer takes it more than once
    #[arg(long, global = true, value_name = "KEY")]
    pub stream: Vec<String>,

    /// For transfer: every stream whose key matches this Redis glob (e.g. 'genonaut:generation_events:stream:*'); more than once allowed
    #[arg(long, global = true, value_name = "GLOB")]
    pub stream_pattern: Vec<String>,

    /// How long raw events are kept (prune's --older-than): day partitions are made only for days inside it and a week ahead; events outside go to the default partition
    #[arg(
        long,
        env = "GENALYTICS_RAW_RETENTION",
        global = true,
        value_name = "DURATION",
        default_value = "90d",
        value_parser = crate::timearg::parse_span
    )]
    pub raw_retention: chrono::TimeDelta,

    /// Log more to stderr (-v progress, -vv debugging)
    #[arg(short, long, action = ArgAction::Count, global = true)]
    pub verbose: u8,

    /// Print only errors
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Log lines on stderr as text, or as JSON objects (with a timestamp) for log shippers
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline on throwaway local servers: simulate, transfer, aggregate, report
    Demo(demo::Args),
    /// Create or upgrade the PostgreSQL schema (also adopts the original service's tables)
    Migrate(migrate::Args),
    /// Drain the Redis stream into generation_events, exactly once
    Transfer(transfer::Args),
    /// Roll events up by UTC hour (every hour with new events, or the hours given)
    Aggregate(aggregate::Args),
    /// Print a report: overview, trends, user, models, failures, peak-hours
    Report(report::Args),
    /// Is data flowing? Stream, transfer lag, rollup backlog, table sizes
    Status(status::Args),
    /// Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)
    Check(check::Args),
    /// Delete raw events (and dead letters) older than a cutoff; rollups are kept
    Prune(prune::Args),
    /// Dead letters: list them, show one as received, replay them after a fix, purge them
    Rejected(rejected::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions(completions::Args),
    /// Write realistic synthetic traffic into the stream, exactly as the service's producer does
    Simulate(simulate::Args),
}

/// Runs one subcommand with the settings built from the global flags.
pub fn dispatch(command: Command, settings: &Settings) -> anyhow::Result<Exit> {
    if settings.several_streams()
        && !matches!(command, Command::Transfer(_) | Command::Completions(_))
    {
        return Err(UsageError(
            "--stream more than once, or --stream-pattern, is for transfer; give this command one stream key"
                .into(),
        )
        .into());
    }
    match command {
        Command::Aggregate(args) => aggregate::run(&args, settings),
        Command::Check(args) => check::run(&args, settings),
        Command::Completions(args) => completions::run(&args),
        Command::Demo(args) => demo::run(&args, settings),
        Command::Migrate(args) => migrate::run(&args, settings),
        Command::Prune(args) => prune::run(&args, settings),
        Command::Rejected(args) => rejected::run(&args, settings),
        Command::Report(args) => report::run(&args, settings),
        Command::Simulate(args) => simulate::run(&args, settings),
        Command::Status(args) => status::run(&args, settings),
        Command::Transfer(args) => transfer::run(&args, settings),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every flag that takes a time, with the rest of a valid command line.
    const TIME_FLAGS: &[(&[&str], &str)] = &[
        (&["report", "overview"], "--until"),
        (&["report", "trends", "--interval", "daily"], "--until"),
        (
            &["report", "peak-hours", "--tz", "Pacific/Chatham"],
            "--until",
        ),
        (&["report", "html", "--tz", "Asia/Kathmandu"], "--until"),
        (&["aggregate"], "--hour"),
        (&["aggregate", "--to", "2026-01-01"], "--from"),
        (&["aggregate", "--from", "1950-01-01"], "--to"),
        (&["simulate"], "--end"),
    ];

    fn times() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,30}",
            (-300_000i64..300_000, 0u32..14, 0u32..33, 0u32..26, 0u32..61)
                .prop_map(|(y, mo, d, h, mi)| format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:00")),
            (1800i32..10_100, 0u32..25).prop_map(|(y, h)| format!("{y}-12-31T{h:02}")),
            (-300_000i64..300_000).prop_map(|y| format!("{y}-01-02T00:00:00Z")),
        ]
    }

    proptest! {
        /// No value of any time flag panics: it is a usage error, or it
        /// parses into a time whose windows and hours all exist.
        #[test]
        fn no_time_flag_value_panics(which in 0..TIME_FLAGS.len(), value in times(), days in 1u32..=36_500) {
            let (command, flag) = TIME_FLAGS[which];
            let mut line = vec!["genalytics".to_string()];
            line.extend(command.iter().map(|s| (*s).to_string()));
            line.push(format!("{flag}={value}"));
            let Ok(cli) = Cli::try_parse_from(&line) else {
                return Ok(());
            };
            let at = match cli.command {
                Command::Report(args) => args.until(),
                Command::Aggregate(args) => args.hour.or(args.from).or(args.to),
                Command::Simulate(args) => args.end,
                _ => None,
            };
            if let Some(at) = at {
                let window = crate::report::Window::new(days.min(400), at);
                prop_assert!(window.start <= window.end);
                prop_assert!(window.hours().len() <= 400 * 24 + 1);
                let _ = window.days();
                prop_assert_eq!(crate::hour::floor(at).timestamp() % 3_600, 0);
                let _ = crate::hour::count(crate::hour::floor(at), at + chrono::TimeDelta::days(i64::from(days)));
            }
        }
    }
}
