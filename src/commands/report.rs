//! `genalytics report …`: overview, trends, user, models, failures and
//! peak-hours, as tables for people, CSV/JSON for machines or HTML; and
//! `report html`, all of them on one page. Flags →
//! fetch the window's parts → build the typed report → render it; the
//! arithmetic lives in `report/`, the layouts in `render/`.

use chrono::{DateTime, Utc};

use crate::config::Settings;
use crate::db::{self, reports};
use crate::error::{Exit, UsageError};
use crate::render::{self, Format, Renderer, Report};
use crate::report::dashboard::Dashboard;
use crate::report::fresh::Fresh;
use crate::report::trends::{self, Interval};
use crate::report::{Window, failures, models, overview, peak, user};
use crate::timearg::parse_instant;

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    #[command(subcommand)]
    pub report: Which,
}

const EXAMPLES: &str = "Examples:
  genalytics report overview --days 7 --compare
  genalytics report trends --interval daily --days 30 --tz Europe/Berlin
  genalytics report user 6f1c2a9e-3b7d-4e1a-9c55-0d2b8f4a7e11 --format json
  genalytics report models --format csv > models.csv
  genalytics report failures --days 1
  genalytics report peak-hours --by weekday
  genalytics report html --days 7 --failure-limit 5 -o report.html";

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// Totals, success rate, durations and users over the window (default 7 days)
    ///
    /// Requests, completions by outcome, the success rate, average and p50/p95/p99
    /// durations, distinct users, images and the busiest hours' load over the window, with a
    /// sparkline of requests per hour on a terminal; --compare sets each figure beside the
    /// previous window of the same length.
    Overview {
        /// Show each figure beside the previous window of the same length, and its change
        #[arg(long)]
        compare: bool,
        #[command(flatten)]
        common: Common,
    },
    /// One point per hour or local day, gaps filled with zeros (default 7 days)
    ///
    /// Each hour's (or, with --interval daily, each local day's) requests, outcomes, success
    /// rate, durations and users, oldest first, hours without events as zeros, so that a
    /// dip shows; a bar of requests per row on a terminal.
    Trends {
        /// Points per hour or per day (in --tz)
        #[arg(long, value_enum, default_value_t = Interval::Hourly)]
        interval: Interval,
        #[command(flatten)]
        common: Common,
    },
    /// One user's generations, recent activity and failures (default 30 days)
    ///
    /// One user's requests, outcomes, durations (exact while they have few enough
    /// completions), first and last generation, the 20 newest completions and their
    /// failures by error type — for a support ticket about one user.
    User {
        /// The user's UUID
        #[arg(value_name = "USER_ID", value_parser = parse_user_id)]
        user_id: uuid::Uuid,
        #[command(flatten)]
        common: Common,
    },
    /// One row per model checkpoint (default 30 days)
    ///
    /// Each model's completions, outcomes, success rate, average and p50/p95 durations and
    /// when it was last used, busiest first — which model is slow or failing.
    Models(Common),
    /// Failures by error type and the failure rate per day (default 7 days)
    ///
    /// Each error type's failures, users affected, average duration and a few sample
    /// messages, then the failure rate of each local day — what is failing and since when.
    Failures(Common),
    /// Average load per hour of day, busiest first (default 30 days)
    ///
    /// For each hour of the day (in --tz), the average requests and users per hour, the
    /// queue length and p95 duration over the window's hours — when to add capacity;
    /// --by weekday splits each hour by weekday.
    PeakHours {
        /// Split each hour of day by weekday (a heatmap in a table)
        #[arg(long, value_enum)]
        by: Option<By>,
        /// Busiest slots first, or in hour order
        #[arg(long, value_enum, default_value_t = peak::Sort::Busiest)]
        sort: peak::Sort,
        #[command(flatten)]
        common: Common,
    },
    /// One self-contained HTML page: overview, hourly charts, failure rate per day, the
    /// weekday × hour heatmap, models and error types (default 7 days)
    Html {
        #[command(flatten)]
        window: WindowArgs,
        /// Draw this failure rate (percent) as a limit on the daily chart
        #[arg(long, value_name = "PCT", value_parser = crate::timearg::parse_percent)]
        failure_limit: Option<f64>,
        /// Write the page to this file (atomically) instead of stdout
        #[arg(short, long, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Weekday,
}

/// Flags every report takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    #[command(flatten)]
    pub window: WindowArgs,

    /// Output format
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// With --format csv: which table of a report with several
    #[arg(long, value_name = "NAME")]
    pub section: Option<String>,

    /// With --format csv: text exactly as stored, even where a spreadsheet
    /// would run it as a formula (by default such cells get a leading ')
    #[arg(long)]
    pub csv_raw: bool,

    /// Run the report again every INTERVAL (default 5s; --watch=10s) until Ctrl-C: redrawn in
    /// place on a terminal, one report after another in a pipe
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "5s",
          require_equals = true, value_parser = parse_watch)]
    pub watch: Option<std::time::Duration>,
}

/// The window of a report: every report takes these.
#[derive(Debug, clap::Args)]
pub struct WindowArgs {
    /// Length of the window in days, ending at --until
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: Option<u32>,

    /// End of the window (exclusive); default now. Fix it for reproducible reports
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,

    /// IANA time zone for days, hours of day and shown times, e.g. Europe/Berlin
    #[arg(long, default_value = "UTC", value_parser = parse_zone, value_name = "ZONE")]
    pub tz: chrono_tz::Tz,

    /// Read hourly rollups alone: leave out events of hours not rolled up yet (by default
    /// they are counted from the stored events)
    #[arg(long)]
    pub materialized_only: bool,
}

/// The longest window `report html` draws: its hourly charts have a
/// point per hour.
const HTML_DAYS_MAX: u32 = 400;

/// A `--watch` interval: a duration of at least 100 ms.
fn parse_watch(text: &str) -> Result<std::time::Duration, String> {
    let span = crate::timearg::parse_span(text)?;
    span.to_std()
        .ok()
        .filter(|span| *span >= std::time::Duration::from_millis(100))
        .ok_or_else(|| {
            format!(
                "--watch {} is shorter than 100ms",
                crate::text::quoted(text)
            )
        })
}

fn parse_user_id(text: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text.trim())
        .map_err(|_| format!("{} is not a UUID", crate::text::quoted(text)))
}

pub fn parse_zone(text: &str) -> Result<chrono_tz::Tz, String> {
    text.parse().map_err(|_| {
        format!(
            "{} is not an IANA time zone such as UTC or Europe/Berlin",
            crate::text::quoted(text)
        )
    })
}

impl Args {
    /// The window's flags, and the report's default length in days.
    fn window_args(&self) -> (&WindowArgs, u32) {
        match &self.report {
            Which::Overview { common, .. }
            | Which::Trends { common, .. }
            | Which::Failures(common) => (&common.window, 7),
            Which::User { common, .. }
            | Which::PeakHours { common, .. }
            | Which::Models(common) => (&common.window, 30),
            Which::Html { window, .. } => (window, 7),
        }
    }

    /// The window the flags ask for, ending `now` unless `--until` says.
    pub fn window(&self, now: DateTime<Utc>) -> Window {
        let (flags, default_days) = self.window_args();
        Window::in_zone(
            flags.days.unwrap_or(default_days),
            flags.until.unwrap_or(now),
            flags.tz,
        )
    }

    pub fn until(&self) -> Option<DateTime<Utc>> {
        self.window_args().0.until
    }
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let window = args.window(Utc::now());
    if matches!(args.report, Which::Html { .. }) && window.days > HTML_DAYS_MAX {
        return Err(UsageError(format!(
            "report html draws at most {HTML_DAYS_MAX} days (a point per hour); use --days {HTML_DAYS_MAX} or less"
        ))
        .into());
    }
    let materialized_only = args.window_args().0.materialized_only;
    let mut client = db::connect_current(settings.database()?)?;
    // No JIT: a report's statements run in milliseconds, and compiling one
    // that reads raw hours (large estimated costs on a big table) takes
    // longer than running it.
    client.batch_execute("SET jit = off")?;
    let common = match &args.report {
        Which::Html { output, .. } => {
            let report = build(&mut client, &args.report, &window, materialized_only)?;
            let renderer = render::html::HtmlRenderer { tz: window.tz };
            match output {
                Some(path) => {
                    crate::output::write_atomically(path, |out| renderer.render(&report, out))?;
                }
                None => renderer.render(&report, &mut std::io::stdout().lock())?,
            }
            return Ok(Exit::Success);
        }
        Which::Overview { common, .. }
        | Which::Trends { common, .. }
        | Which::Failures(common)
        | Which::User { common, .. }
        | Which::PeakHours { common, .. }
        | Which::Models(common) => common,
    };
    let renderer = render::renderer(
        common.format,
        render::CsvChoice {
            section: common.section.clone(),
            raw: common.csv_raw,
        },
        window.tz,
        settings.color,
    );
    match common.watch {
        None => {
            let report = build(&mut client, &args.report, &window, materialized_only)?;
            renderer.render(&report, &mut std::io::stdout().lock())?;
        }
        Some(interval) => watch(
            &mut client,
            args,
            renderer.as_ref(),
            interval,
            common.format == render::Format::Json,
        )?,
    }
    Ok(Exit::Success)
}

/// Runs the report every `interval` until Ctrl-C (or SIGTERM), each time
/// over a window ending now unless `--until` fixed it. On a terminal it
/// draws on the alternate screen (the shell's screen comes back after),
/// each run over the last in place — cursor home, every line cleared as it
/// is written, the rest cleared after, as many lines as the terminal has —
/// so nothing flickers or scrolls; in a pipe each is printed after the
/// last, JSON as one object per line.
fn watch(
    client: &mut postgres::Client,
    args: &Args,
    renderer: &dyn Renderer,
    interval: std::time::Duration,
    json: bool,
) -> anyhow::Result<()> {
    use std::io::{IsTerminal, Write};
    let stop = crate::interrupt::install()?;
    let terminal = std::io::stdout().is_terminal();
    let materialized_only = args.window_args().0.materialized_only;
    let json_lines = json && !terminal;
    let _screen = terminal.then(AlternateScreen::enter).transpose()?;
    let mut first = true;
    loop {
        let window = args.window(Utc::now());
        let report = build(client, &args.report, &window, materialized_only)?;
        let mut page = Vec::new();
        renderer.render(&report, &mut page)?;
        let mut out = std::io::stdout().lock();
        if terminal {
            out.write_all(if first { b"\x1b[2J\x1b[H" } else { b"\x1b[H" })?;
            let rows = terminal_size::terminal_size().map_or(usize::MAX, |(_, h)| usize::from(h.0));
            let lines: Vec<&[u8]> = page.split(|&byte| byte == b'\n').collect();
            let lines = &lines[..lines.len() - usize::from(lines.last() == Some(&&b""[..]))];
            let shown = lines.len().min(rows.saturating_sub(1));
            for line in &lines[..shown] {
                out.write_all(b"\x1b[K")?;
                out.write_all(line)?;
                out.write_all(b"\r\n")?;
            }
            if shown < lines.len() {
                write!(
                    out,
                    "\x1b[K… {} more lines: a taller terminal, or a shorter --days",
                    lines.len() - shown
                )?;
            }
            out.write_all(b"\x1b[J")?;
        } else if json_lines {
            // One report per line: what a program reading the pipe splits on.
            let report: serde_json::Value = serde_json::from_slice(&page)?;
            writeln!(out, "{report}")?;
        } else {
            if !first {
                writeln!(out)?;
            }
            out.write_all(&page)?;
        }
        out.flush()?;
        drop(out);
        first = false;
        if !crate::retry::sleep_unless_stopped(interval, &stop) {
            return Ok(());
        }
    }
}

/// How many successful completions the user report reads one by one for
/// exact percentiles: `GENALYTICS_USER_EXACT_MAX`, or the default.
fn exact_max() -> anyhow::Result<i64> {
    match std::env::var("GENALYTICS_USER_EXACT_MAX") {
        Err(_) => Ok(user::EXACT_MAX),
        Ok(text) => text
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| {
                UsageError(format!(
                    "GENALYTICS_USER_EXACT_MAX must be a whole number of completions, not {}",
                    crate::text::quoted(&text)
                ))
                .into()
            }),
    }
}

/// Fetches a report's parts and builds it, with how many hours of its
/// window were read from raw events.
fn build(
    client: &mut postgres::Client,
    which: &Which,
    window: &Window,
    materialized_only: bool,
) -> anyhow::Result<Fresh> {
    // One snapshot for all of a report's statements: its figures agree
    // with each other whatever commits meanwhile (a rollup, a prune).
    client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")?;
    match build_in_snapshot(client, which, window, materialized_only) {
        Ok(fresh) => {
            client.batch_execute("COMMIT")?;
            Ok(fresh)
        }
        Err(err) => {
            // The connection may be gone: the first error is the one to say.
            let _ = client.batch_execute("ROLLBACK");
            Err(err)
        }
    }
}

fn build_in_snapshot(
    client: &mut postgres::Client,
    which: &Which,
    window: &Window,
    materialized_only: bool,
) -> anyhow::Result<Fresh> {
    // The user report reads its own raw hours (its sources).
    let raw = &if matches!(which, Which::User { .. }) {
        reports::Pending::default()
    } else {
        reports::pending(client, window, materialized_only)?
    };
    let mut user_raw_hours = 0;
    let report: Box<dyn Report> = match which {
        Which::Overview { compare, .. } => {
            let mut current = overview_of(client, window, raw)?;
            if *compare {
                let previous = window.previous();
                let previous_raw = reports::pending(client, &previous, materialized_only)?;
                current.previous = Some(Box::new(overview_of(client, &previous, &previous_raw)?));
            }
            Box::new(current)
        }
        Which::Trends { interval, .. } => {
            let parts = reports::hours(client, window, raw)?;
            Box::new(match interval {
                Interval::Hourly => trends::hourly(window, &parts),
                Interval::Daily => {
                    trends::daily(window, &parts, &reports::users_by_day(client, window, raw)?)
                }
            })
        }
        Which::User { user_id, .. } => {
            let horizon = crate::db::retention::horizon(client)?;
            // Hours awaiting their rollup are read from raw events, unless
            // the report is to read rollups alone.
            let queued = if materialized_only {
                std::collections::BTreeSet::new()
            } else {
                reports::queued_in(client, window)?
            };
            user_raw_hours = queued.len();
            let sources = user::sources(window, horizon, &queued);
            let parts = reports::user(client, window, *user_id, &sources, exact_max()?)?;
            Box::new(user::build(
                window,
                *user_id,
                &parts.figures,
                parts.exact,
                parts.recent,
                parts.hours_missing,
            ))
        }
        Which::Models(_) => {
            let legacy = reports::legacy_hours_in(client, window, &raw.raw)?;
            Box::new(models::build(
                window,
                reports::model_parts(client, window, raw)?,
                legacy,
            ))
        }
        Which::Failures(_) => {
            let hours = reports::hours(client, window, raw)?;
            Box::new(failures::build(
                window,
                &hours,
                reports::failure_parts(client, window, raw)?,
            ))
        }
        Which::PeakHours { by, sort, .. } => Box::new(peak::build(
            window,
            by.is_some(),
            *sort,
            &reports::hours(client, window, raw)?,
        )),
        Which::Html { failure_limit, .. } => {
            let (hours, raw_users) = reports::hours_and_raw_users(client, window, raw)?;
            Box::new(Dashboard {
                overview: overview::build(
                    window,
                    &hours,
                    reports::users_in_lists(client, window, raw, &raw_users)?,
                ),
                trends: trends::hourly(window, &hours),
                failures: failures::build(
                    window,
                    &hours,
                    reports::failure_parts(client, window, raw)?,
                ),
                peak: peak::build(window, true, peak::Sort::Hour, &hours),
                models: models::build(
                    window,
                    reports::model_parts(client, window, raw)?,
                    reports::legacy_hours(&hours),
                ),
                failure_limit_pct: *failure_limit,
            })
        }
    };
    Ok(Fresh {
        report,
        raw_hours: raw.len() + user_raw_hours,
    })
}

pub fn overview_of(
    client: &mut postgres::Client,
    window: &Window,
    raw: &reports::Pending,
) -> anyhow::Result<overview::Overview> {
    let (parts, raw_users) = reports::hours_and_raw_users(client, window, raw)?;
    Ok(overview::build(
        window,
        &parts,
        reports::users_in_lists(client, window, raw, &raw_users)?,
    ))
}

/// The terminal's alternate screen while a report is watched; the shell's
/// screen comes back when it ends, however it ends.
struct AlternateScreen;

impl AlternateScreen {
    fn enter() -> std::io::Result<AlternateScreen> {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(b"\x1b[?1049h")?;
        out.flush()?;
        Ok(AlternateScreen)
    }
}

impl Drop for AlternateScreen {
    fn drop(&mut self) {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[?1049l");
        let _ = out.flush();
    }
}
