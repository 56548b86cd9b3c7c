//! `genalytics check`: thresholds turned into an exit code for cron mail
//! and monitoring agents — 0 when all hold, 3 when any is breached (one
//! line per breach), 1 when it could not check.
//!
//! Only the thresholds given are checked. Failure rate and p95 come from
//! the window's raw events (exact); a window without completions breaches
//! neither. Lag is the age of the oldest entry not yet transferred; stale
//! hours are complete hours whose events are not (all) rolled up.

use std::io::Write;

use chrono::{TimeDelta, Utc};

use crate::config::Settings;
use crate::db::streams::{self, TransferState};
use crate::db::{self, health, migrations};
use crate::error::{Exit, UsageError};
use crate::output::duration;
use crate::report::failure_rate;
use crate::stream::identity::{self, Identity};
use crate::stream::{self, reader};
use crate::timearg::{format_span, parse_span};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Window of the failure-rate and p95 checks, in hours (default 1)
    #[arg(long, value_name = "N", conflicts_with = "days",
          value_parser = clap::value_parser!(u32).range(1..=876_000))]
    pub hours: Option<u32>,

    /// Window of the failure-rate and p95 checks, in days
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: Option<u32>,

    /// Breach when failed / completions exceeds this percentage
    #[arg(long, value_name = "PCT", value_parser = parse_percent)]
    pub max_failure_rate: Option<f64>,

    /// Breach when the p95 of successful durations exceeds this (e.g. 1500ms, 90s, 2m)
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub max_p95: Option<TimeDelta>,

    /// Breach when the oldest entry not yet transferred is older than this
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub max_lag: Option<TimeDelta>,

    /// Breach when more complete hours than this await their rollup
    #[arg(long, value_name = "N")]
    pub max_stale_hours: Option<u32>,
}

fn parse_percent(text: &str) -> Result<f64, String> {
    match text.trim().trim_end_matches('%').parse::<f64>() {
        Ok(pct) if (0.0..=100.0).contains(&pct) => Ok(pct),
        _ => Err(format!("'{text}' is not a percentage between 0 and 100")),
    }
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    if args.max_failure_rate.is_none()
        && args.max_p95.is_none()
        && args.max_lag.is_none()
        && args.max_stale_hours.is_none()
    {
        return Err(UsageError(
            "nothing to check: give --max-failure-rate, --max-p95, --max-lag or --max-stale-hours"
                .into(),
        )
        .into());
    }
    let span = match (args.hours, args.days) {
        (_, Some(days)) => TimeDelta::days(i64::from(days)),
        (Some(hours), None) => TimeDelta::hours(i64::from(hours)),
        (None, None) => TimeDelta::hours(1),
    };
    let window = format!("over the last {}", format_span(span));
    let database = settings.database()?;
    let mut client = db::connect(database)?;
    migrations::ensure_current(&mut client)?;
    let now = Utc::now();
    let mut breaches = Vec::new();
    let mut fine = Vec::new();

    if args.max_failure_rate.is_some() || args.max_p95.is_some() {
        let figures = health::window_health(&mut client, now - span, now)?;
        let completions = figures.successful + figures.failed;
        if let (Some(max), Some(rate)) = (
            args.max_failure_rate,
            failure_rate(figures.failed, completions),
        ) {
            let line = format!(
                "failure rate {rate:.2} % ({} of {completions} completions) {window}",
                figures.failed
            );
            judge(
                rate > max,
                line,
                &format!("exceeds {max} %"),
                &mut breaches,
                &mut fine,
            );
        }
        if let (Some(max), Some(p95)) = (args.max_p95, figures.p95_ms) {
            let line = format!("p95 duration {} {window}", duration(p95));
            let limit = format!("exceeds {}", format_span(max));
            judge(
                p95 > max.num_milliseconds() as f64,
                line,
                &limit,
                &mut breaches,
                &mut fine,
            );
        }
        if completions == 0 {
            fine.push(format!("no completions {window}"));
        }
    }
    if let Some(max) = args.max_lag {
        match lag(settings, &mut client, max, now)? {
            (true, line) => breaches.push(line),
            (false, line) => fine.push(line),
        }
    }
    if let Some(max) = args.max_stale_hours {
        let stale = health::rollup_backlog(&mut client)?.stale;
        let line = format!("{stale} complete hours await their rollup");
        judge(
            stale > i64::from(max),
            line,
            &format!("more than {max}"),
            &mut breaches,
            &mut fine,
        );
    }

    let mut out = std::io::stdout().lock();
    if breaches.is_empty() {
        if !settings.quiet {
            writeln!(out, "ok: {}", fine.join("; "))?;
        }
        return Ok(Exit::Success);
    }
    for breach in &breaches {
        writeln!(out, "BREACH: {breach}")?;
    }
    Ok(Exit::Breach)
}

/// Files a figure as a breach (with the limit it broke) or as fine.
fn judge(
    over_limit: bool,
    line: String,
    limit: &str,
    breaches: &mut Vec<String>,
    fine: &mut Vec<String>,
) {
    if over_limit {
        breaches.push(format!("{line}: {limit}"));
    } else {
        fine.push(line);
    }
}

/// The age of the oldest entry not yet transferred against `max`: whether
/// it breaches, and the line saying so. A stream replaced below the
/// position breaches whatever its age: transfer will not read it alone.
fn lag(
    settings: &Settings,
    client: &mut postgres::Client,
    max: TimeDelta,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<(bool, String)> {
    let key = settings.stream_key.as_str();
    let state = streams::state(client, key)?;
    let position = state
        .as_ref()
        .map(TransferState::position)
        .unwrap_or_default();
    let stream_ref = state.as_ref().map_or(0, |state| state.stream_ref);
    let mut con = stream::connect(&settings.redis)?;
    let mut store = streams::Stored {
        client,
        stream_key: key,
        stream_ref,
    };
    let verdict = identity::inspect(&mut con, key, position, &mut store)?.verdict;
    if let Identity::ResetBelow { length, .. } = verdict {
        return Ok((
            true,
            format!(
                "the stream {key} was replaced below the stored position {}: {length} entries wait that \
                 transfer will not read without --new-stream",
                position.id
            ),
        ));
    }
    Ok(match reader::first_after(&mut con, key, position.id)? {
        Some(oldest) => {
            let age = now - oldest.time().unwrap_or(now);
            let line = format!(
                "oldest untransferred entry is {} old",
                format_span(TimeDelta::seconds(age.num_seconds().max(0)))
            );
            if age > max {
                (true, format!("{line}: more than {}", format_span(max)))
            } else {
                (false, line)
            }
        }
        None => (false, "nothing waits for transfer".to_string()),
    })
}
