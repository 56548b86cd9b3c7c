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
    Overview {
        /// Show each figure beside the previous window of the same length, and its change
        #[arg(long)]
        compare: bool,
        #[command(flatten)]
        common: Common,
    },
    /// One point per hour or local day, gaps filled with zeros (default 7 days)
    Trends {
        /// Points per hour or per day (in --tz)
        #[arg(long, value_enum, default_value_t = Interval::Hourly)]
        interval: Interval,
        #[command(flatten)]
        common: Common,
    },
    /// One user's generations, recent activity and failures (default 30 days)
    User {
        /// The user's UUID
        #[arg(value_name = "USER_ID", value_parser = parse_user_id)]
        user_id: uuid::Uuid,
        #[command(flatten)]
        common: Common,
    },
    /// One row per model checkpoint (default 30 days)
    Models(Common),
    /// Failures by error type and the failure rate per day (default 7 days)
    Failures(Common),
    /// Average load per hour of day, busiest first (default 30 days)
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
}

/// The longest window `report html` draws: its hourly charts have a
/// point per hour.
const HTML_DAYS_MAX: u32 = 400;

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
    let mut client = db::connect_current(settings.database()?)?;
    let report = build(&mut client, &args.report, &window)?;
    let mut stdout = std::io::stdout().lock();
    match &args.report {
        Which::Html { output, .. } => {
            let renderer = render::html::HtmlRenderer { tz: window.tz };
            match output {
                Some(path) => crate::output::write_atomically(path, |out| {
                    renderer.render(report.as_ref(), out)
                })?,
                None => renderer.render(report.as_ref(), &mut stdout)?,
            }
        }
        Which::Overview { common, .. }
        | Which::Trends { common, .. }
        | Which::Failures(common)
        | Which::User { common, .. }
        | Which::PeakHours { common, .. }
        | Which::Models(common) => {
            let renderer = render::renderer(
                common.format,
                render::CsvChoice {
                    section: common.section.clone(),
                    raw: common.csv_raw,
                },
                window.tz,
            );
            renderer.render(report.as_ref(), &mut stdout)?;
        }
    }
    Ok(Exit::Success)
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

/// Fetches a report's parts and builds it.
fn build(
    client: &mut postgres::Client,
    which: &Which,
    window: &Window,
) -> anyhow::Result<Box<dyn Report>> {
    Ok(match which {
        Which::Overview { compare, .. } => {
            let mut current = overview_of(client, window)?;
            if *compare {
                current.previous = Some(Box::new(overview_of(client, &window.previous())?));
            }
            Box::new(current)
        }
        Which::Trends { interval, .. } => {
            let parts = reports::hours(client, window)?;
            Box::new(match interval {
                Interval::Hourly => trends::hourly(window, &parts),
                Interval::Daily => {
                    trends::daily(window, &parts, &reports::users_by_day(client, window)?)
                }
            })
        }
        Which::User { user_id, .. } => {
            let horizon = crate::db::retention::horizon(client)?;
            let sources = user::sources(window, horizon, &reports::queued_in(client, window)?);
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
            let legacy = reports::legacy_hours(&reports::hours(client, window)?);
            Box::new(models::build(
                window,
                reports::model_parts(client, window)?,
                legacy,
            ))
        }
        Which::Failures(_) => {
            let hours = reports::hours(client, window)?;
            Box::new(failures::build(
                window,
                &hours,
                reports::failure_parts(client, window)?,
            ))
        }
        Which::PeakHours { by, sort, .. } => Box::new(peak::build(
            window,
            by.is_some(),
            *sort,
            &reports::hours(client, window)?,
        )),
        Which::Html { failure_limit, .. } => {
            let hours = reports::hours(client, window)?;
            Box::new(Dashboard {
                overview: overview::build(window, &hours, reports::users_in_lists(client, window)?),
                trends: trends::hourly(window, &hours),
                failures: failures::build(window, &hours, reports::failure_parts(client, window)?),
                peak: peak::build(window, true, peak::Sort::Hour, &hours),
                models: models::build(
                    window,
                    reports::model_parts(client, window)?,
                    reports::legacy_hours(&hours),
                ),
                failure_limit_pct: *failure_limit,
            })
        }
    })
}

pub fn overview_of(
    client: &mut postgres::Client,
    window: &Window,
) -> anyhow::Result<overview::Overview> {
    let parts = reports::hours(client, window)?;
    Ok(overview::build(
        window,
        &parts,
        reports::users_in_lists(client, window)?,
    ))
}
