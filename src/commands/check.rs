//! `genalytics check`: thresholds turned into an exit code for cron mail
//! and monitoring agents — 0 when all hold, 3 when any is breached (one
//! line per breach), 1 when it could not check; with `--nagios`, the
//! Monitoring Plugins protocol (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
//!
//! Only the thresholds given are checked. Failure rate and p95 come from
//! the window's raw events (exact); a window without completions breaches
//! neither. Lag is the age of the oldest entry not yet transferred; stale
//! hours are complete hours whose events are not (all) rolled up.

use std::io::Write;

use chrono::{TimeDelta, Utc};

use super::status::waiting;
use crate::config::Settings;
use crate::db::streams;
use crate::db::{self, health, migrations};
use crate::error::{Exit, UsageError};
use crate::monitoring::{self, Figure, Level, Limits, Unit};
use crate::output::{SummaryFormat, duration};
use crate::report::failure_rate;
use crate::stream::identity::Identity;
use crate::timearg::{format_span, parse_span};

#[derive(Debug, clap::Args)]
#[command(after_help = EXAMPLES)]
pub struct Args {
    /// Window of the failure-rate and p95 checks, in hours (default 1)
    #[arg(long, value_name = "N", conflicts_with = "days",
          value_parser = clap::value_parser!(u32).range(1..=876_000))]
    pub hours: Option<u32>,

    /// Window of the failure-rate and p95 checks, in days
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: Option<u32>,

    /// Breach (critical) when failed / completions exceeds this percentage
    #[arg(long, visible_alias = "crit-failure-rate", value_name = "PCT", value_parser = crate::timearg::parse_percent)]
    pub max_failure_rate: Option<f64>,

    /// Breach (critical) when the p95 of successful durations exceeds this (e.g. 1500ms, 90s, 2m)
    #[arg(long, visible_alias = "crit-p95", value_name = "DURATION", value_parser = parse_span)]
    pub max_p95: Option<TimeDelta>,

    /// Breach (critical) when the oldest entry not yet transferred is older than this
    #[arg(long, visible_alias = "crit-lag", value_name = "DURATION", value_parser = parse_span)]
    pub max_lag: Option<TimeDelta>,

    /// Breach (critical) when more complete hours than this await their rollup
    #[arg(long, visible_alias = "crit-stale-hours", value_name = "N")]
    pub max_stale_hours: Option<u32>,

    /// Warning (not a breach) when the failure rate exceeds this percentage
    #[arg(long, value_name = "PCT", value_parser = crate::timearg::parse_percent)]
    pub warn_failure_rate: Option<f64>,

    /// Warning when the p95 duration exceeds this
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub warn_p95: Option<TimeDelta>,

    /// Warning when the oldest entry not yet transferred is older than this
    #[arg(long, value_name = "DURATION", value_parser = parse_span)]
    pub warn_lag: Option<TimeDelta>,

    /// Warning when more complete hours than this await their rollup
    #[arg(long, value_name = "N")]
    pub warn_stale_hours: Option<u32>,

    #[command(flatten)]
    pub grace: super::status::StaleGrace,

    /// Speak the Monitoring Plugins protocol (Nagios, Icinga, Naemon): one
    /// status line with performance data; exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN
    #[arg(long, conflicts_with = "format")]
    pub nagios: bool,

    /// Output format (exit codes stay 0 and 3)
    #[arg(long, value_enum, default_value_t = SummaryFormat::Text)]
    pub format: SummaryFormat,

    /// Give up after this long (a server that accepts and never answers, a
    /// lock): UNKNOWN with --nagios, else exit 1; 0 waits forever
    #[arg(short, long, default_value = "30s", value_name = "DURATION", value_parser = parse_span)]
    pub timeout: TimeDelta,
}

const EXAMPLES: &str = "Examples:
  genalytics check --max-lag 10m --max-stale-hours 2
  genalytics check --hours 6 --max-failure-rate 5 --max-p95 90s
  genalytics check --nagios --warn-lag 5m --crit-lag 30m --warn-failure-rate 5";

/// Seconds of a span, as the limits of a figure in seconds.
fn seconds(span: Option<TimeDelta>) -> Option<f64> {
    span.map(|span| span.num_milliseconds() as f64 / 1_000.0)
}

pub fn run(args: &Args, settings: &Settings) -> anyhow::Result<Exit> {
    give_up_after(args.timeout, args.nagios);
    if args.nagios {
        // An error is UNKNOWN (exit 3): main reports it so in plugin mode.
        let (figures, _) = figures(args, settings)?;
        print!("{}", monitoring::plugin_output(&figures));
        return Ok(Exit::Plugin(monitoring::worst(&figures).plugin_code()));
    }
    let (figures, server) = figures(args, settings)?;
    let level = monitoring::worst(&figures);
    let mut out = std::io::stdout().lock();
    if args.format == SummaryFormat::Json {
        let report = serde_json::json!({ "status": level, "checks": figures, "database": server });
        writeln!(out, "{report}")?;
    } else if level == Level::Ok {
        if !settings.quiet {
            let fine: Vec<&str> = figures.iter().map(|f| f.text.as_str()).collect();
            writeln!(out, "ok: {} (read on {server})", fine.join("; "))?;
        }
    } else {
        for figure in &figures {
            match figure.level {
                Level::Critical => writeln!(out, "BREACH: {}", figure.text)?,
                Level::Warning => writeln!(out, "WARNING: {}", figure.text)?,
                Level::Ok => {}
            }
        }
    }
    Ok(if level == Level::Critical {
        Exit::Breach
    } else {
        Exit::Success
    })
}

/// Ends the process once `timeout` has passed, as a plugin's alarm does:
/// connecting and every query may wait on a server that never answers, and
/// a check that hangs tells a monitoring system nothing. Nothing is written
/// by a check, so nothing is left half done.
fn give_up_after(timeout: TimeDelta, plugin: bool) {
    let Ok(wait) = timeout.to_std() else {
        return;
    };
    if wait.is_zero() {
        return;
    }
    std::thread::spawn(move || {
        std::thread::sleep(wait);
        let message = format!(
            "no answer within {} (a server that accepts and never answers, or a lock); --timeout changes the limit",
            format_span(timeout)
        );
        let code = if plugin {
            crate::error::report_plugin_error(&message)
        } else {
            crate::error::report_error(&anyhow::anyhow!("check gave up: {message}"))
        };
        let _ = std::io::stdout().flush();
        std::process::exit(i32::from(code.code()));
    });
}

/// Measures every figure a limit was given for and judges it; and the
/// server it read (`host:port (primary)`): on a standby, the figures are
/// as fresh as its replay.
fn figures(args: &Args, settings: &Settings) -> anyhow::Result<(Vec<Figure>, String)> {
    let rate_limits = Limits {
        warn: args.warn_failure_rate,
        crit: args.max_failure_rate,
    };
    let p95_limits = Limits {
        warn: seconds(args.warn_p95),
        crit: seconds(args.max_p95),
    };
    let lag_limits = Limits {
        warn: seconds(args.warn_lag),
        crit: seconds(args.max_lag),
    };
    let stale_limits = Limits {
        warn: args.warn_stale_hours.map(f64::from),
        crit: args.max_stale_hours.map(f64::from),
    };
    let given = Limits::any;
    if ![rate_limits, p95_limits, lag_limits, stale_limits]
        .into_iter()
        .any(given)
    {
        return Err(UsageError(
            "nothing to check: give --max-failure-rate, --max-p95, --max-lag or --max-stale-hours \
             (or their --warn-* and --crit-* forms)"
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
    let (mut client, server) = db::connect_to(database)?;
    migrations::ensure_current(&mut client)?;
    let server = format!(
        "{server} ({})",
        if db::replication::role(&mut client)?.standby {
            "standby"
        } else {
            "primary"
        }
    );
    let now = Utc::now();
    let mut figures = Vec::new();

    if given(rate_limits) || given(p95_limits) {
        let health = health::window_health(&mut client, now - span, now)?;
        figures.extend(health_figures(&health, &window, rate_limits, p95_limits));
    }
    if given(lag_limits) {
        figures.push(lag(settings, &mut client, lag_limits, now)?);
    }
    if given(stale_limits) {
        let stale = health::rollup_backlog(&mut client, args.grace.stale_grace)?.stale;
        figures.push(
            Figure::new(
                "stale_hours",
                Unit::Count,
                Some(stale as f64),
                format!(
                    "{} waited for {} rollup longer than {}",
                    crate::output::counted(stale.unsigned_abs(), "complete hour"),
                    if stale == 1 { "its" } else { "their" },
                    format_span(args.grace.stale_grace)
                ),
            )
            .judged(stale_limits),
        );
    }
    Ok((figures, server))
}

/// The failure rate and p95 over the window, each judged if it has limits.
fn health_figures(
    health: &health::WindowHealth,
    window: &str,
    rate_limits: Limits,
    p95_limits: Limits,
) -> Vec<Figure> {
    let mut figures = Vec::new();
    let completions = health.successful + health.failed;
    if rate_limits.any() {
        let rate = failure_rate(health.failed, completions);
        let text = match rate {
            Some(rate) => format!(
                "failure rate {rate:.2} % ({} of {completions} completions) {window}",
                health.failed
            ),
            None => format!("failure rate: no completions {window}"),
        };
        figures.push(Figure::new("failure_rate", Unit::Percent, rate, text).judged(rate_limits));
    }
    if p95_limits.any() {
        let text = match health.p95_ms {
            Some(p95) => format!("p95 duration {} {window}", duration(p95)),
            None => format!("p95 duration: no successful completions {window}"),
        };
        figures.push(
            Figure::new(
                "p95",
                Unit::Seconds,
                health.p95_ms.map(|ms| ms / 1_000.0),
                text,
            )
            .judged(p95_limits),
        );
    }
    figures
}

/// The age of the oldest entry not yet transferred, judged. A stream
/// replaced below the position is critical whatever its age: transfer
/// will not read it alone.
fn lag(
    settings: &Settings,
    client: &mut postgres::Client,
    limits: Limits,
    now: chrono::DateTime<Utc>,
) -> anyhow::Result<Figure> {
    let key = settings.stream_key.as_str();
    let state = streams::state(client, key)?;
    let waiting = waiting::waiting(settings, client, state.as_ref())?;
    if !waiting.info.exists {
        // Nothing waits, but a mistyped --stream or --redis-ns looks the
        // same: never plainly OK.
        let text = crate::stream::verdict::missing(key);
        return Ok(Figure::new("lag", Unit::Seconds, None, text)
            .judged(limits)
            .at_least(Level::Warning));
    }
    if let Identity::ResetBelow { length, .. } = waiting.verdict {
        let text = format!(
            "the stream {key} was replaced below the stored position {}: {} entries wait that \
             transfer will not read without --new-stream",
            waiting.position.id,
            crate::output::thousands(length)
        );
        return Ok(Figure::new("lag", Unit::Seconds, None, text)
            .judged(limits)
            .at_least(Level::Critical));
    }
    let (age, text) = match (waiting.oldest_at, waiting.backlog.entries) {
        (Some(oldest), _) => {
            let age = TimeDelta::seconds((now - oldest).num_seconds().max(0));
            (
                age.num_seconds() as f64,
                format!("oldest untransferred entry is {} old", format_span(age)),
            )
        }
        (None, 0) => (0.0, "nothing waits for transfer".to_string()),
        // IDs past any real time: how long they wait cannot be told.
        (None, entries) => {
            return Ok(Figure::new(
                "lag",
                Unit::Seconds,
                None,
                format!("{entries} entries wait whose IDs carry no time"),
            )
            .judged(limits)
            .at_least(Level::Warning));
        }
    };
    Ok(Figure::new("lag", Unit::Seconds, Some(age), text).judged(limits))
}
