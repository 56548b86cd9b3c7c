//! One user's report: counts, success rate and durations over the window,
//! the last 20 completions, failures by error type.
//!
//! Whole hours come from the per-user hourly rollups, so the report costs
//! the same for a user with a million events as for one with ten; the
//! window's partial edge hours and hours not yet rolled up come from raw
//! events. Percentiles are exact (from raw events) while the window holds
//! at most a threshold of the user's successful completions and all its
//! raw events are there; above that they come from merged histograms.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::window::Window;
use crate::render::{Cell, Layout, Report, Section};
use crate::rollup::UserRollup;

/// Most successful completions whose durations are read one by one for
/// exact percentiles; `GENALYTICS_USER_EXACT_MAX` changes it.
pub const EXACT_MAX: i64 = 100_000;

/// Where each part of a window comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sources {
    /// Hours read whole from the per-user rollups: those inside the window
    /// and rolled up, and every hour before the raw horizon (whose raw
    /// events are gone, so its rollup is all there is).
    pub rolled: Vec<DateTime<Utc>>,
    /// Of those, the hours before the horizon that late events came to:
    /// their late events are read beside the rollups until merged in.
    pub late: Vec<DateTime<Utc>>,
    /// Ranges read from raw events: the window's partial edge hours and
    /// hours waiting for their rollup, adjacent ones joined.
    pub raw: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Every raw event of the window is there (no hour before the horizon).
    pub raw_complete: bool,
}

/// Splits the window between rollups and raw events, given the raw
/// horizon and the hours queued for their rollup.
pub fn sources(
    window: &Window,
    horizon: Option<DateTime<Utc>>,
    queued: &BTreeSet<DateTime<Utc>>,
) -> Sources {
    let mut out = Sources {
        rolled: Vec::new(),
        late: Vec::new(),
        raw: Vec::new(),
        raw_complete: true,
    };
    let hour = TimeDelta::hours(1);
    for start in crate::hour::starts(crate::hour::floor(window.start), window.end) {
        let end = start + hour;
        if horizon.is_some_and(|horizon| start < horizon) {
            out.rolled.push(start);
            if queued.contains(&start) {
                out.late.push(start);
            }
            out.raw_complete = false;
        } else if start >= window.start && end <= window.end && !queued.contains(&start) {
            out.rolled.push(start);
        } else {
            let range = (start.max(window.start), end.min(window.end));
            match out.raw.last_mut() {
                Some(last) if last.1 == range.0 => last.1 = range.1,
                _ => out.raw.push(range),
            }
        }
    }
    out
}

/// The report from the user's rollup over the window (`figures`, rolled-up
/// hours and raw events merged), exact percentiles if they were read,
/// their recent completions, and how many rolled-up hours have no
/// per-user figures.
pub fn build(
    window: &Window,
    user_id: Uuid,
    figures: &UserRollup,
    exact: Option<[Option<i64>; 2]>,
    recent_activity: Vec<Activity>,
    hours_missing: i64,
) -> UserReport {
    let percentiles = exact.unwrap_or_else(|| {
        [0.5, 0.95].map(|q| {
            figures
                .histogram
                .quantile(q)
                .map(crate::histogram::whole_ms)
        })
    });
    let mut failure_breakdown: Vec<ErrorCount> = figures
        .errors
        .iter()
        .map(|(error_type, &count)| ErrorCount {
            error_type: error_type.clone(),
            count,
        })
        .collect();
    // Most first; then by name, the ones without a type last.
    failure_breakdown.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| match (&a.error_type, &b.error_type) {
                (Some(a), Some(b)) => a.cmp(b),
                (a, b) => a.is_none().cmp(&b.is_none()),
            })
    });
    UserReport {
        user_id,
        lookback_days: window.days,
        total_requests: figures.requests,
        successful_generations: figures.successful,
        failed_generations: figures.failed,
        cancelled_generations: figures.cancelled,
        success_rate_pct: super::success_rate(figures.successful, figures.failed),
        avg_duration_ms: crate::histogram::mean(figures.duration_sum, figures.duration_count),
        p50_duration_ms: percentiles[0],
        p95_duration_ms: percentiles[1],
        percentiles_exact: exact.is_some(),
        hours_missing,
        first_generation_at: figures.first_event_at,
        last_generation_at: figures.last_event_at,
        recent_activity,
        failure_breakdown,
        window: *window,
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserReport {
    pub user_id: Uuid,
    pub lookback_days: u32,
    pub total_requests: i64,
    pub successful_generations: i64,
    pub failed_generations: i64,
    pub cancelled_generations: i64,
    pub success_rate_pct: Option<f64>,
    pub avg_duration_ms: Option<i64>,
    pub p50_duration_ms: Option<i64>,
    pub p95_duration_ms: Option<i64>,
    /// The percentiles are exact (false: from merged histograms, ≤ 1 %).
    pub percentiles_exact: bool,
    /// Hours of the window whose rollup has no per-user rows
    /// (`users_rolled_up` is false) and whose raw events are gone: the
    /// figures leave them out.
    pub hours_missing: i64,
    pub first_generation_at: Option<DateTime<Utc>>,
    pub last_generation_at: Option<DateTime<Utc>>,
    pub recent_activity: Vec<Activity>,
    pub failure_breakdown: Vec<ErrorCount>,
    #[serde(skip)]
    pub window: Window,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Activity {
    pub timestamp: DateTime<Utc>,
    pub duration_ms: Option<i64>,
    pub success: Option<bool>,
    pub error_type: Option<String>,
    pub generation_type: Option<String>,
    pub model_checkpoint: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorCount {
    pub error_type: Option<String>,
    pub count: i64,
}

impl Report for UserReport {
    fn is_empty(&self) -> bool {
        self.total_requests == 0
            && self.successful_generations == 0
            && self.failed_generations == 0
            && self.cancelled_generations == 0
    }

    fn heading(&self) -> String {
        super::heading(
            &format!("User {}", self.user_id),
            self.lookback_days,
            self.window.start,
            self.window.end,
            self.window.tz,
        )
    }

    fn sections(&self) -> Vec<Section> {
        vec![
            Section {
                name: "summary",
                title: None,
                layout: Layout::Figures,
                columns: vec![
                    ("user_id", "user"),
                    ("lookback_days", "days"),
                    ("total_requests", "requests"),
                    ("successful_generations", "successful"),
                    ("failed_generations", "failed"),
                    ("cancelled_generations", "cancelled"),
                    ("success_rate_pct", "success rate"),
                    ("avg_duration_ms", "average duration"),
                    ("p50_duration_ms", "p50 duration"),
                    ("p95_duration_ms", "p95 duration"),
                    ("percentiles_exact", "percentiles exact"),
                    ("first_generation_at", "first seen"),
                    ("last_generation_at", "last seen"),
                ],
                rows: vec![vec![
                    Cell::Text(Some(self.user_id.to_string())),
                    Cell::Count(i64::from(self.lookback_days)),
                    Cell::Count(self.total_requests),
                    Cell::Count(self.successful_generations),
                    Cell::Count(self.failed_generations),
                    Cell::Count(self.cancelled_generations),
                    Cell::Percent(self.success_rate_pct),
                    Cell::Duration(self.avg_duration_ms),
                    Cell::Duration(self.p50_duration_ms),
                    Cell::Duration(self.p95_duration_ms),
                    Cell::Flag(self.percentiles_exact),
                    Cell::Time(self.first_generation_at),
                    Cell::Time(self.last_generation_at),
                ]],
                bar: None,
            },
            Section {
                name: "recent_activity",
                title: Some("Recent completions"),
                layout: Layout::Rows,
                columns: vec![
                    ("timestamp", "time"),
                    ("success", "outcome"),
                    ("duration_ms", "duration"),
                    ("error_type", "error"),
                    ("generation_type", "type"),
                    ("model_checkpoint", "model"),
                ],
                rows: self
                    .recent_activity
                    .iter()
                    .map(|a| {
                        vec![
                            Cell::Time(Some(a.timestamp)),
                            Cell::Outcome(a.success),
                            Cell::Duration(a.duration_ms),
                            Cell::Text(a.error_type.clone()),
                            Cell::Text(a.generation_type.clone()),
                            Cell::Text(a.model_checkpoint.clone()),
                        ]
                    })
                    .collect(),
                bar: None,
            },
            Section {
                name: "failure_breakdown",
                title: Some("Failures by error type"),
                layout: Layout::Rows,
                columns: vec![("error_type", "error"), ("count", "failures")],
                rows: self
                    .failure_breakdown
                    .iter()
                    .map(|f| vec![Cell::Text(f.error_type.clone()), Cell::Count(f.count)])
                    .collect(),
                bar: None,
            },
        ]
    }

    /// For people: the summary without the figures the heading says.
    fn table_sections(&self) -> Vec<Section> {
        let mut sections = self.sections();
        let summary = &mut sections[0];
        summary.columns.drain(..2);
        summary.rows[0].drain(..2);
        let flag = summary
            .columns
            .iter()
            .position(|(f, _)| *f == "percentiles_exact");
        if let Some(at) = flag {
            summary.columns.remove(at);
            summary.rows[0].remove(at);
        }
        sections
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if !self.percentiles_exact && self.successful_generations > 0 {
            notes.push(
                "p50 and p95 come from merged hourly histograms (within 1 %): the window holds more \
                 successful completions than are read one by one, or raw events pruned"
                    .to_string(),
            );
        }
        if self.hours_missing > 0 {
            notes.push(format!(
                "the figures leave out {} hour{} rolled up before genalytics kept per-user figures, \
                 whose raw events were pruned",
                self.hours_missing,
                if self.hours_missing == 1 { "" } else { "s" }
            ));
        }
        notes
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timearg::parse_instant;

    fn at(text: &str) -> DateTime<Utc> {
        parse_instant(text).unwrap()
    }

    #[test]
    fn whole_rolled_up_hours_come_from_rollups_and_the_rest_from_raw_events() {
        // One day ending at 10:30: 09:30 → 10:30 the next day.
        let window = Window::new(1, at("2026-11-28T10:30:00Z"));
        let queued: BTreeSet<_> = [at("2026-11-28T03:00:00Z"), at("2026-11-28T04:00:00Z")].into();
        let s = sources(&window, None, &queued);
        assert!(s.raw_complete);
        assert_eq!(
            s.raw,
            [
                (at("2026-11-27T10:30:00Z"), at("2026-11-27T11:00:00Z")),
                (at("2026-11-28T03:00:00Z"), at("2026-11-28T05:00:00Z")),
                (at("2026-11-28T10:00:00Z"), at("2026-11-28T10:30:00Z")),
            ]
        );
        // 11:00 through 09:00, less the two queued hours.
        assert_eq!(s.rolled.len(), 23 - 2);
        assert_eq!(s.rolled.first(), Some(&at("2026-11-27T11:00:00Z")));
        assert_eq!(s.rolled.last(), Some(&at("2026-11-28T09:00:00Z")));
        // Every instant of the window is covered once.
        let raw: i64 = s.raw.iter().map(|(a, b)| (*b - *a).num_minutes()).sum();
        assert_eq!(raw + 60 * s.rolled.len() as i64, 24 * 60);
    }

    #[test]
    fn hours_before_the_raw_horizon_are_read_whole_from_rollups() {
        let window = Window::new(1, at("2026-11-28T10:30:00Z"));
        let horizon = Some(at("2026-11-27T20:00:00Z"));
        // A queued hour before the horizon: its rollup and its late events.
        let queued: BTreeSet<_> = [at("2026-11-27T12:00:00Z")].into();
        let s = sources(&window, horizon, &queued);
        assert_eq!(s.late, [at("2026-11-27T12:00:00Z")]);
        assert!(s.rolled.contains(&at("2026-11-27T12:00:00Z")));
        assert!(!s.raw_complete);
        // The partial first hour too: its raw events are gone.
        assert_eq!(s.rolled.first(), Some(&at("2026-11-27T10:00:00Z")));
        assert_eq!(
            s.raw,
            [(at("2026-11-28T10:00:00Z"), at("2026-11-28T10:30:00Z"))]
        );
        // A window on whole hours needs no raw events at all.
        let window = Window::new(2, at("2026-11-28T10:00:00Z"));
        let s = sources(&window, None, &BTreeSet::new());
        assert!(s.raw.is_empty());
        assert_eq!(s.rolled.len(), 48);
    }

    #[test]
    fn failures_by_error_type_go_most_first_the_untyped_last() {
        let mut figures = UserRollup::default();
        for (error, n) in [(Some("b"), 2), (None, 2), (Some("a"), 2), (Some("c"), 7)] {
            figures.errors.insert(error.map(str::to_string), n);
        }
        let window = Window::new(1, at("2026-11-28T00"));
        let report = build(&window, Uuid::nil(), &figures, None, Vec::new(), 0);
        let order: Vec<_> = report
            .failure_breakdown
            .iter()
            .map(|f| (f.error_type.as_deref(), f.count))
            .collect();
        assert_eq!(
            order,
            [(Some("c"), 7), (Some("a"), 2), (Some("b"), 2), (None, 2)]
        );
    }
}
