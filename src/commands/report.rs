//! `genalytics report …`: overview, trends, user, models, failures and
//! peak-hours, as tables for people or CSV/JSON for machines.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::config::Settings;
use crate::db::{self, migrations, reports};
use crate::error::{Exit, UsageError};
use crate::output::{ReportFormat, csv, table};
use crate::report::{
    FailureDay, FailuresReport, Interval, ModelsReport, Overview, PeakHours, Totals, TrendPoint,
    Trends, Window, failure_rate, peak_hours,
};
use crate::timearg::parse_instant;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub report: Which,
}

#[derive(Debug, clap::Subcommand)]
pub enum Which {
    /// Totals, success rate, durations and users over the window (default 7 days)
    Overview(Common),
    /// One point per hour or UTC day, gaps filled with zeros (default 7 days)
    Trends {
        /// Points per hour or per UTC day
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
    /// Failures by error type and the daily failure rate (default 7 days)
    Failures(Common),
    /// Average load per hour of day, busiest first (default 30 days)
    PeakHours {
        /// IANA time zone for the hours of day, e.g. Europe/Berlin
        #[arg(long, default_value = "UTC", value_parser = parse_zone)]
        tz: chrono_tz::Tz,
        /// Split each hour of day by weekday
        #[arg(long, value_enum)]
        by: Option<By>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum By {
    Weekday,
}

/// Flags every report takes.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Length of the window in days, ending at --until
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: Option<u32>,

    /// End of the window (exclusive); default now. Fix it for reproducible reports
    #[arg(long, value_name = "TIME", value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,

    /// Output format
    #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
    pub format: ReportFormat,

    /// With --format csv: which table of a report with several
    #[arg(long, value_name = "NAME")]
    pub section: Option<String>,
}

fn parse_user_id(text: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text.trim()).map_err(|_| format!("'{text}' is not a UUID"))
}

fn parse_zone(text: &str) -> Result<chrono_tz::Tz, String> {
    text.parse()
        .map_err(|_| format!("'{text}' is not an IANA time zone such as UTC or Europe/Berlin"))
}

/// What a report prints, once computed.
struct Rendered {
    heading: String,
    json: Value,
    /// CSV sections, the default first.
    sections: &'static [&'static str],
    tables: Vec<(Option<&'static str>, comfy_table::Table)>,
}

impl Args {
    /// The flags every report takes, and the report's default window in days.
    pub fn common(&self) -> (&Common, u32) {
        match &self.report {
            Which::Overview(c) | Which::Failures(c) => (c, 7),
            Which::Trends { common, .. } => (common, 7),
            Which::User { common, .. } | Which::PeakHours { common, .. } => (common, 30),
            Which::Models(c) => (c, 30),
        }
    }

    pub fn until(&self) -> Option<DateTime<Utc>> {
        self.common().0.until
    }
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    let (common, default_days) = args.common();
    let window = Window::new(
        common.days.unwrap_or(default_days),
        common.until.unwrap_or_else(Utc::now),
    );
    let database = settings.database()?;
    let mut client = db::connect(database)?;
    migrations::ensure_current(&mut client)?;
    let rendered = match &args.report {
        Which::Overview(_) => overview(&mut client, &window)?,
        Which::Trends { interval, .. } => trends(&mut client, &window, *interval)?,
        Which::User { user_id, .. } => user(&mut client, &window, *user_id)?,
        Which::Models(_) => models(&mut client, &window)?,
        Which::Failures(_) => failures(&mut client, &window)?,
        Which::PeakHours { tz, by, .. } => peak(&mut client, &window, *tz, by.is_some())?,
    };
    print(&rendered, common)?;
    Ok(Exit::Success)
}

fn print(rendered: &Rendered, common: &Common) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match common.format {
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &rendered.json)?;
            writeln!(out)?;
        }
        ReportFormat::Csv => {
            let section = match &common.section {
                Some(name) if rendered.sections.contains(&name.as_str()) => name.as_str(),
                Some(name) => {
                    return Err(UsageError(format!(
                        "this report has no section '{name}'; its sections are: {}",
                        rendered.sections.join(", ")
                    ))
                    .into());
                }
                None => rendered.sections[0],
            };
            csv::write(&mut out, &rendered.json, section)?;
        }
        ReportFormat::Table => {
            writeln!(out, "{}", rendered.heading)?;
            for (title, table) in &rendered.tables {
                if let Some(title) = title {
                    writeln!(out, "\n{title}")?;
                }
                writeln!(out, "{table}")?;
            }
        }
    }
    Ok(())
}

fn heading(what: &str, window: &Window) -> String {
    format!(
        "{what}, last {} day{}: {} → {} UTC",
        window.days,
        if window.days == 1 { "" } else { "s" },
        window.start.format("%Y-%m-%d %H:%M"),
        window.end.format("%Y-%m-%d %H:%M")
    )
}

fn json(value: &impl Serialize) -> anyhow::Result<Value> {
    Ok(serde_json::to_value(value)?)
}

fn items(value: &Value, field: &str) -> Vec<Value> {
    value
        .get(field)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn overview(client: &mut postgres::Client, window: &Window) -> anyhow::Result<Rendered> {
    let hours = reports::hours(client, window)?;
    let mut totals = Totals::default();
    for hour in &hours {
        totals.add(&hour.figures.totals);
    }
    let [p50, p95, p99] = totals.percentiles();
    let report = Overview {
        lookback_days: window.days,
        window_start: window.start,
        window_end: window.end,
        total_requests: totals.requests,
        successful_generations: totals.successful,
        failed_generations: totals.failed,
        cancelled_generations: totals.cancelled,
        success_rate_pct: totals.success_rate(),
        avg_duration_ms: totals.avg_duration_ms(),
        p50_duration_ms: p50,
        p95_duration_ms: p95,
        p99_duration_ms: p99,
        unique_users: reports::unique_users(client, window)?,
        total_images_generated: totals.images,
        hours_with_data: hours.len() as i64,
        latest_data_timestamp: hours.last().map(|h| h.figures.hour),
    };
    let json = json(&report)?;
    let figures = table::figures(
        json.as_object().expect("an object"),
        &[
            ("total_requests", "requests"),
            ("successful_generations", "successful"),
            ("failed_generations", "failed"),
            ("cancelled_generations", "cancelled"),
            ("success_rate_pct", "success rate"),
            ("avg_duration_ms", "average duration"),
            ("p50_duration_ms", "p50 duration"),
            ("p95_duration_ms", "p95 duration"),
            ("p99_duration_ms", "p99 duration"),
            ("unique_users", "users"),
            ("total_images_generated", "images"),
            ("hours_with_data", "hours with data"),
            ("latest_data_timestamp", "latest data"),
        ],
    );
    Ok(Rendered {
        heading: heading("Overview", window),
        json,
        sections: &[csv::SUMMARY],
        tables: vec![(None, figures)],
    })
}

fn trends(
    client: &mut postgres::Client,
    window: &Window,
    interval: Interval,
) -> anyhow::Result<Rendered> {
    let hours = reports::hours(client, window)?;
    let data_points: Vec<TrendPoint> = match interval {
        Interval::Hourly => {
            let by_hour: BTreeMap<DateTime<Utc>, &reports::HourRow> =
                hours.iter().map(|h| (h.figures.hour, h)).collect();
            window
                .hours()
                .into_iter()
                .map(|at| match by_hour.get(&at) {
                    Some(row) => TrendPoint::new(
                        at,
                        &row.figures.totals,
                        row.figures.unique_users,
                        Some(row.exact),
                    ),
                    None => TrendPoint::new(at, &Totals::default(), 0, None),
                })
                .collect()
        }
        Interval::Daily => {
            let mut by_day: BTreeMap<chrono::NaiveDate, Totals> = BTreeMap::new();
            for hour in &hours {
                by_day
                    .entry(hour.figures.hour.date_naive())
                    .or_default()
                    .add(&hour.figures.totals);
            }
            let users = reports::unique_users_by_day(client, window)?;
            window
                .days()
                .into_iter()
                .map(|day| {
                    let at = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
                    let totals = by_day.remove(&day).unwrap_or_default();
                    TrendPoint::new(at, &totals, users.get(&day).copied().unwrap_or(0), None)
                })
                .collect()
        }
    };
    let report = Trends {
        interval,
        lookback_days: window.days,
        data_points,
    };
    let json = json(&report)?;
    let table = table::rows(
        &items(&json, "data_points"),
        &[
            ("timestamp", "time"),
            ("total_requests", "requests"),
            ("successful_generations", "ok"),
            ("failed_generations", "failed"),
            ("cancelled_generations", "cancelled"),
            ("success_rate_pct", "success"),
            ("avg_duration_ms", "avg"),
            ("p95_duration_ms", "p95"),
            ("unique_users", "users"),
        ],
        Some("total_requests"),
    );
    let what = match interval {
        Interval::Hourly => "Hourly trends",
        Interval::Daily => "Daily trends",
    };
    Ok(Rendered {
        heading: heading(what, window),
        json,
        sections: &["data_points"],
        tables: vec![(None, table)],
    })
}

fn user(
    client: &mut postgres::Client,
    window: &Window,
    user_id: uuid::Uuid,
) -> anyhow::Result<Rendered> {
    let report = reports::user(client, window, user_id)?;
    let json = json(&report)?;
    let summary = table::figures(
        json.as_object().expect("an object"),
        &[
            ("total_requests", "requests"),
            ("successful_generations", "successful"),
            ("failed_generations", "failed"),
            ("cancelled_generations", "cancelled"),
            ("success_rate_pct", "success rate"),
            ("avg_duration_ms", "average duration"),
            ("p50_duration_ms", "p50 duration"),
            ("p95_duration_ms", "p95 duration"),
            ("first_generation_at", "first seen"),
            ("last_generation_at", "last seen"),
        ],
    );
    let recent = table::rows(
        &items(&json, "recent_activity"),
        &[
            ("timestamp", "time"),
            ("success", "outcome"),
            ("duration_ms", "duration"),
            ("error_type", "error"),
            ("generation_type", "type"),
            ("model_checkpoint", "model"),
        ],
        None,
    );
    let failures = table::rows(
        &items(&json, "failure_breakdown"),
        &[("error_type", "error"), ("count", "failures")],
        None,
    );
    Ok(Rendered {
        heading: heading(&format!("User {user_id}"), window),
        json,
        sections: &[csv::SUMMARY, "recent_activity", "failure_breakdown"],
        tables: vec![
            (None, summary),
            (Some("Recent completions"), recent),
            (Some("Failures by error type"), failures),
        ],
    })
}

fn models(client: &mut postgres::Client, window: &Window) -> anyhow::Result<Rendered> {
    let report = ModelsReport {
        lookback_days: window.days,
        models: reports::models(client, window)?,
    };
    let json = json(&report)?;
    let table = table::rows(
        &items(&json, "models"),
        &[
            ("model_checkpoint", "model"),
            ("total_generations", "completions"),
            ("successful_generations", "ok"),
            ("failed_generations", "failed"),
            ("success_rate_pct", "success"),
            ("avg_duration_ms", "avg"),
            ("p50_duration_ms", "p50"),
            ("p95_duration_ms", "p95"),
            ("last_used_at", "last used"),
        ],
        None,
    );
    Ok(Rendered {
        heading: heading("Models", window),
        json,
        sections: &["models"],
        tables: vec![(None, table)],
    })
}

fn failures(client: &mut postgres::Client, window: &Window) -> anyhow::Result<Rendered> {
    let hours = reports::hours(client, window)?;
    let mut by_day: BTreeMap<chrono::NaiveDate, (i64, i64)> = BTreeMap::new();
    for hour in &hours {
        let totals = &hour.figures.totals;
        let day = by_day.entry(hour.figures.hour.date_naive()).or_default();
        day.0 += totals.successful + totals.failed;
        day.1 += totals.failed;
    }
    let failure_trends = window
        .days()
        .into_iter()
        .map(|date| {
            let (completions, failed) = by_day.get(&date).copied().unwrap_or_default();
            FailureDay {
                date,
                total_completions: completions,
                failures: failed,
                failure_rate_pct: failure_rate(failed, completions),
            }
        })
        .collect();
    let report = FailuresReport {
        lookback_days: window.days,
        error_types: reports::error_types(client, window)?,
        failure_trends,
    };
    let json = json(&report)?;
    let types = table::rows(
        &items(&json, "error_types"),
        &[
            ("error_type", "error"),
            ("count", "failures"),
            ("affected_users", "users"),
            ("avg_duration_ms", "avg duration"),
            ("sample_messages", "messages"),
        ],
        None,
    );
    let trend = table::rows(
        &items(&json, "failure_trends"),
        &[
            ("date", "day"),
            ("total_completions", "completions"),
            ("failures", "failures"),
            ("failure_rate_pct", "rate"),
        ],
        Some("failure_rate_pct"),
    );
    Ok(Rendered {
        heading: heading("Failures", window),
        json,
        sections: &["error_types", "failure_trends"],
        tables: vec![(Some("By error type"), types), (Some("By day"), trend)],
    })
}

fn peak(
    client: &mut postgres::Client,
    window: &Window,
    tz: chrono_tz::Tz,
    by_weekday: bool,
) -> anyhow::Result<Rendered> {
    let figures: Vec<_> = reports::hours(client, window)?
        .into_iter()
        .map(|h| h.figures)
        .collect();
    let report = PeakHours {
        lookback_days: window.days,
        tz: tz.name().to_string(),
        peak_hours: peak_hours(window, tz, by_weekday, &figures),
    };
    let json = json(&report)?;
    let mut columns = vec![
        ("hour_of_day", "hour"),
        ("avg_requests", "requests/h"),
        ("avg_unique_users", "users/h"),
        ("avg_queue_length", "queue"),
        ("max_queue_length", "max queue"),
        ("p95_duration_ms", "p95"),
        ("hours_with_data", "hours"),
    ];
    if by_weekday {
        columns.insert(0, ("weekday", "day"));
    }
    let table = table::rows(&items(&json, "peak_hours"), &columns, Some("avg_requests"));
    Ok(Rendered {
        heading: heading(&format!("Peak hours ({})", tz.name()), window),
        json,
        sections: &["peak_hours"],
        tables: vec![(None, table)],
    })
}
