//! The command line: the global flags and the list of subcommands as clap
//! parses them (each subcommand's own flags live with the command, in
//! `commands::<name>::Args`), the settings built from them (`settings`),
//! and the dispatch to the commands. What is about the command line
//! itself lives here too: completions, man pages and the demo. Doc
//! comments here are `--help` text, written for a terminal rather than
//! rustdoc.
#![allow(clippy::doc_markdown)]

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

pub mod completions;
pub mod demo;
mod file;
mod manpages;
mod settings;

use crate::commands::config::{Shown, Sources};
use crate::commands::{
    aggregate, check, config, migrate, prune, rejected, report, simulate, status, transfer,
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

    /// Where each setting came from (see `genalytics config`).
    #[arg(skip)]
    pub sources: Sources,
}

impl Cli {
    /// Parses a command line with the config files' settings as the
    /// defaults clap falls back on (see `file`): a flag beats a variable,
    /// which beats a file, which beats the built-in default.
    pub fn parse_with_files(args: Vec<OsString>) -> Result<Cli, clap::Error> {
        let refused = |err: UsageError| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{}\n", err.0))
        };
        let env = |name: &str| std::env::var_os(name);
        let mut sources = Sources::default();
        let mut entries = Vec::new();
        for (path, required) in file::files(&args, &env) {
            if let Some(found) =
                file::read(&path, required, &mut sources.warnings).map_err(refused)?
            {
                sources.files.push(path);
                entries.extend(found);
            }
        }
        let pristine = Cli::command();
        // The order `--help` lists the options in (a file's setting moves
        // its option to the end of the command's list).
        let order: Vec<clap::Id> = pristine
            .get_arguments()
            .map(|arg| arg.get_id().clone())
            .collect();
        let mut command = globals_listed_once(file::apply(pristine, &entries).map_err(refused)?);
        let matches = command.try_get_matches_from_mut(args)?;
        let mut cli = Cli::from_arg_matches(&matches).map_err(|err| err.format(&mut command))?;
        sources.settings = shown(&command, &matches, &entries, &order);
        cli.sources = sources;
        Ok(cli)
    }
}

/// The global options in `genalytics --help` only: each command's help
/// lists its own options and points there (they are still accepted
/// before or after its name; man pages have a GLOBAL OPTIONS section).
/// Each command gets hidden copies of them, which clap then does not
/// propagate over; their values still reach the top, as a global's do.
fn globals_listed_once(command: clap::Command) -> clap::Command {
    let globals: Vec<clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .cloned()
        .collect();
    command.mut_subcommands(|sub| hidden_globals(sub, &globals))
}

fn hidden_globals(command: clap::Command, globals: &[clap::Arg]) -> clap::Command {
    let after = command
        .get_after_help()
        .map(|text| format!("{text}\n\n"))
        .unwrap_or_default();
    globals
        .iter()
        .fold(command, |command, global| command.arg(global.clone().hide(true)))
        .after_help(format!(
            "{after}Global options (--database-url, --redis-url, --config, -v, -q, …): genalytics --help"
        ))
        .mut_subcommands(|sub| hidden_globals(sub, globals))
}

/// Every global setting with its value and where it came from, then the
/// commands' settings the files hold.
fn shown(
    command: &clap::Command,
    matches: &clap::ArgMatches,
    entries: &[file::Entry],
    order: &[clap::Id],
) -> Vec<Shown> {
    use clap::parser::ValueSource;
    let mut shown = Vec::new();
    let mut globals: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.is_global_set())
        .collect();
    globals.sort_by_key(|arg| order.iter().position(|id| id == arg.get_id()));
    for arg in globals {
        let Some(long) = arg.get_long() else { continue };
        let name = long.replace('-', "_");
        let id = arg.get_id().as_str();
        let value = matches.get_raw(id).map(|values| {
            values
                .map(|v| v.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(", ")
        });
        let from = match matches.value_source(id) {
            Some(ValueSource::CommandLine) => format!("flag --{long}"),
            Some(ValueSource::EnvVariable) => format!(
                "variable {}",
                arg.get_env()
                    .map_or_else(String::new, |env| env.to_string_lossy().into_owned())
            ),
            Some(ValueSource::DefaultValue) => entries
                .iter()
                .rev()
                .find(|entry| entry.command.is_empty() && entry.key == name)
                .map_or_else(|| "default".to_string(), file::Entry::place),
            _ => String::new(),
        };
        shown.push(Shown { name, value, from });
    }
    shown.extend(
        entries
            .iter()
            .filter(|entry| !entry.command.is_empty())
            .map(|entry| Shown {
                name: entry.name(),
                value: Some(entry.values.join(", ")),
                from: entry.place(),
            }),
    );
    shown
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
    /// Config file (TOML: the long options with underscores, a [table] per command); default /etc/genalytics/genalytics.toml, then ~/.config/genalytics/genalytics.toml
    #[arg(long, env = "GENALYTICS_CONFIG", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

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

    /// Redis is watched by Sentinel: REDIS_URL names the sentinels (comma-separated) and NAME the master they monitor
    #[arg(
        long,
        env = "GENALYTICS_REDIS_SENTINEL",
        global = true,
        value_name = "NAME"
    )]
    pub redis_sentinel: Option<String>,

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

    /// Styled tables (bold headers): auto on a terminal unless NO_COLOR is set
    #[arg(long, global = true, value_enum, default_value_t = crate::config::Color::Auto, value_name = "WHEN")]
    pub color: crate::config::Color,

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
    ///
    /// Starts a PostgreSQL and a Redis of its own on free local ports in temporary
    /// directories, writes a day of realistic traffic, transfers it, rolls it up and prints
    /// the reports, then stops the servers and deletes their files (--keep leaves them
    /// running and says how to reach them). Run it first, to see what genalytics does; it
    /// never touches a server you run.
    Demo(demo::Args),
    /// Create or upgrade the PostgreSQL schema (also adopts the original service's tables)
    ///
    /// Applies the schema's migrations that the database does not have yet, each in its own
    /// transaction with its checksum recorded; on the original service's database it adopts
    /// its tables without losing a row. Run it once after installing and after each upgrade,
    /// before the other commands (they refuse a database whose schema is behind). Two runs
    /// at once apply each migration once.
    Migrate(migrate::Args),
    /// Drain the Redis stream into generation_events, exactly once
    ///
    /// Reads the stream's new entries in batches and stores each batch, its dead letters and
    /// the stream position in one PostgreSQL transaction, so that a crash at any moment
    /// stores every entry exactly once; then trims what is stored and older than --keep.
    /// Run it from cron or a timer every minute, or once with --follow as a service (with
    /// --aggregate it also keeps the hourly rollups current). It changes generation_events,
    /// the dead letters, the stream position, and the stream (the trim).
    Transfer(transfer::Args),
    /// Roll events up by UTC hour (every hour with new events, or the hours given)
    ///
    /// Computes the hourly rollups the reports read — counts, durations, percentiles, users,
    /// per model, per error type, per user — for every complete hour that received events
    /// since it was last rolled up, and the current hour so far; --hour and --from/--to
    /// recompute given hours. Run it a few minutes past every hour from cron (not needed
    /// with transfer --follow --aggregate). It changes only the rollup tables; events stay.
    Aggregate(aggregate::Args),
    /// Print a report: overview, trends, user, models, failures, peak-hours
    ///
    /// Reads the hourly rollups, and the events stored for hours not rolled up yet, and prints
    /// a report over a window of whole hours as a table for people, CSV or JSON for machines,
    /// or one HTML page. Run it whenever you need to know; --watch keeps it on screen. It
    /// changes nothing and works on a hot standby.
    Report(report::Args),
    /// Is data flowing? Stream, transfer lag, rollup backlog, table sizes
    ///
    /// Looks at the stream, the stored events, the rollup queue and the database server and
    /// says whether data is flowing, with a warning for each thing that is not as it should
    /// be; --format openmetrics writes gauges for Prometheus. Run it by hand, or every minute
    /// for a metrics file. It changes nothing.
    Status(status::Args),
    /// Alerting: exit 3 when a threshold is breached (failure rate, p95, lag, stale rollups)
    ///
    /// Compares the recent failure rate, p95 duration, transfer lag and the age of the
    /// rollups with thresholds and exits 0 (fine), 3 (breached) or 1 (cannot tell), with one
    /// line that says why; with --nagios it is a Monitoring Plugin (0 OK, 1 WARNING,
    /// 2 CRITICAL, 3 UNKNOWN). Run it from cron or your monitoring system. It changes
    /// nothing.
    Check(check::Args),
    /// Delete raw events (and dead letters) older than a cutoff; rollups are kept
    ///
    /// Rolls up what is not rolled up yet, then deletes raw events and dead letters older
    /// than --older-than, a day partition at a time where it can; the hourly rollups are
    /// kept for ever, so reports over old windows stay exact. Run it daily. It deletes rows
    /// for good: --dry-run says what it would delete.
    Prune(prune::Args),
    /// Dead letters: list them, show one as received, replay them after a fix, purge them
    ///
    /// A stream entry that cannot be stored as an event (a field missing, a value out of
    /// range, a giant entry) is kept as a dead letter with the reason, instead of stopping
    /// the pipeline. These commands let you see them, replay them once the producer or
    /// genalytics is fixed (each stored exactly once), and delete them.
    Rejected(rejected::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    ///
    /// Writes the completion script for your shell to standard output, e.g.
    /// `genalytics completions bash > ~/.local/share/bash-completion/completions/genalytics`.
    /// The Debian package installs them already. It changes nothing.
    Completions(completions::Args),
    /// Show every setting, its value (passwords masked) and where it came from
    ///
    /// Prints the global options and each command's options set in a config file, with
    /// their values (passwords masked) and where each came from: a flag, an environment
    /// variable, a config file and line, or the default. Precedence: flag, then variable,
    /// then file, then default. Run it when a setting is not what you expect. It connects to
    /// nothing and changes nothing.
    Config(config::Args),
    /// Write realistic synthetic traffic into the stream, exactly as the service's producer does
    ///
    /// Writes requests, completions and cancellations with the service's field layout and a
    /// realistic daily rhythm, users, models and failures, into the stream a transfer reads.
    /// Run it against a test stream to try genalytics or to load-test it; it only adds
    /// entries to the stream.
    Simulate(simulate::Args),
}

/// Runs one subcommand with the settings built from the global flags.
pub fn dispatch(command: Command, settings: &Settings, sources: &Sources) -> anyhow::Result<Exit> {
    if settings.several_streams()
        && !matches!(
            command,
            Command::Transfer(_) | Command::Completions(_) | Command::Config(_)
        )
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
        Command::Config(args) => config::run(&args, sources, settings),
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
