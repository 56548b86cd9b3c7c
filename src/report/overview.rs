//! The overview: a window's totals, success rate, durations and users —
//! and with `--compare`, each figure beside the previous window of the same
//! length and its change.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::figures::{HourPart, Totals};
use super::window::Window;
use crate::render::{Cell, Layout, Report, Section};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Overview {
    pub lookback_days: u32,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub total_requests: i64,
    pub successful_generations: i64,
    pub failed_generations: i64,
    pub cancelled_generations: i64,
    pub success_rate_pct: Option<f64>,
    pub avg_duration_ms: Option<i64>,
    pub p50_duration_ms: Option<i64>,
    pub p95_duration_ms: Option<i64>,
    pub p99_duration_ms: Option<i64>,
    pub unique_users: i64,
    pub total_images_generated: i64,
    pub hours_with_data: i64,
    pub latest_data_timestamp: Option<DateTime<Utc>>,
    /// Percentiles leave out hours the original service rolled up.
    pub percentiles_partial: bool,
    /// `unique_users` is at least this many (hours without a user list).
    pub unique_users_lower_bound: bool,
    /// Hours in the window the original service rolled up.
    pub legacy_hours: i64,
    /// The previous window of the same length (`--compare`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<Box<Overview>>,
    /// Requests per hour of the window, gaps as zeros (the sparkline).
    #[serde(skip)]
    pub requests_per_hour: Vec<i64>,
    #[serde(skip)]
    pub tz: chrono_tz::Tz,
}

/// The overview of `window` from its hourly parts; `users_in_lists` is the
/// number of distinct users in the window's hourly user lists.
pub fn build(window: &Window, parts: &[HourPart], users_in_lists: i64) -> Overview {
    let totals = Totals::sum(parts.iter().map(|p| &p.totals));
    let [p50, p95, p99] = totals.percentiles();
    let (unique_users, lower_bound) = totals.distinct_users(users_in_lists);
    let by_hour: BTreeMap<DateTime<Utc>, i64> =
        parts.iter().map(|p| (p.hour, p.totals.requests)).collect();
    Overview {
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
        unique_users,
        total_images_generated: totals.images,
        hours_with_data: parts.len() as i64,
        latest_data_timestamp: parts.iter().map(|p| p.hour).max(),
        percentiles_partial: totals.percentiles_partial(),
        unique_users_lower_bound: lower_bound,
        legacy_hours: totals.legacy_hours,
        previous: None,
        requests_per_hour: window
            .hours()
            .iter()
            .map(|hour| by_hour.get(hour).copied().unwrap_or(0))
            .collect(),
        tz: window.tz,
    }
}

/// The change from `previous` to `current`, in percent; none from zero or
/// an absent figure.
pub fn change_pct(current: Option<f64>, previous: Option<f64>) -> Option<f64> {
    match (current, previous) {
        (Some(now), Some(before)) if before != 0.0 => Some(super::figures::round2(
            (now - before) / before.abs() * 100.0,
        )),
        _ => None,
    }
}

impl Overview {
    /// (field, title, cell) for each figure the table shows.
    fn figures(&self) -> Vec<(&'static str, &'static str, Cell)> {
        vec![
            (
                "total_requests",
                "requests",
                Cell::Count(self.total_requests),
            ),
            (
                "successful_generations",
                "successful",
                Cell::Count(self.successful_generations),
            ),
            (
                "failed_generations",
                "failed",
                Cell::Count(self.failed_generations),
            ),
            (
                "cancelled_generations",
                "cancelled",
                Cell::Count(self.cancelled_generations),
            ),
            (
                "success_rate_pct",
                "success rate",
                Cell::Percent(self.success_rate_pct),
            ),
            (
                "avg_duration_ms",
                "average duration",
                Cell::Duration(self.avg_duration_ms),
            ),
            (
                "p50_duration_ms",
                "p50 duration",
                Cell::Duration(self.p50_duration_ms),
            ),
            (
                "p95_duration_ms",
                "p95 duration",
                Cell::Duration(self.p95_duration_ms),
            ),
            (
                "p99_duration_ms",
                "p99 duration",
                Cell::Duration(self.p99_duration_ms),
            ),
            ("unique_users", "users", Cell::Count(self.unique_users)),
            (
                "total_images_generated",
                "images",
                Cell::Count(self.total_images_generated),
            ),
            (
                "hours_with_data",
                "hours with data",
                Cell::Count(self.hours_with_data),
            ),
            (
                "latest_data_timestamp",
                "latest data",
                Cell::Time(self.latest_data_timestamp),
            ),
        ]
    }
}

impl Report for Overview {
    fn is_empty(&self) -> bool {
        self.total_requests == 0
            && self.successful_generations == 0
            && self.failed_generations == 0
            && self.cancelled_generations == 0
    }

    fn heading(&self) -> String {
        super::heading(
            "Overview",
            self.lookback_days,
            self.window_start,
            self.window_end,
            self.tz,
        )
    }

    fn sections(&self) -> Vec<Section> {
        let mut columns = vec![
            ("lookback_days", "days"),
            ("window_start", "from"),
            ("window_end", "to"),
        ];
        let mut row = vec![
            Cell::Count(i64::from(self.lookback_days)),
            Cell::Time(Some(self.window_start)),
            Cell::Time(Some(self.window_end)),
        ];
        for (field, title, cell) in self.figures() {
            columns.push((field, title));
            row.push(cell);
        }
        columns.extend([
            ("percentiles_partial", "percentiles partial"),
            ("unique_users_lower_bound", "users a lower bound"),
            ("legacy_hours", "hours from the original service"),
        ]);
        row.extend([
            Cell::Flag(self.percentiles_partial),
            Cell::Flag(self.unique_users_lower_bound),
            Cell::Count(self.legacy_hours),
        ]);
        vec![Section {
            name: "summary",
            title: None,
            layout: Layout::Figures,
            columns,
            rows: vec![row],
            bar: None,
        }]
    }

    /// For people: the figures with a sparkline of requests, or beside the
    /// previous window's with the change.
    fn table_sections(&self) -> Vec<Section> {
        let figures = self.figures();
        let Some(previous) = &self.previous else {
            let spark = Cell::Spark(self.requests_per_hour.iter().map(|&n| n as f64).collect());
            let mut columns: Vec<_> = figures.iter().map(|(f, t, _)| (*f, *t)).collect();
            let mut row: Vec<Cell> = figures.into_iter().map(|(_, _, c)| c).collect();
            columns.insert(1, ("requests_per_hour", "requests per hour"));
            row.insert(1, spark);
            return vec![Section {
                name: "summary",
                title: None,
                layout: Layout::Figures,
                columns,
                rows: vec![row],
                bar: None,
            }];
        };
        let rows = figures
            .into_iter()
            .zip(previous.figures())
            .map(|((_, title, now), (_, _, then))| {
                let change = match now {
                    Cell::Time(_) => Cell::Change(None),
                    _ => Cell::Change(change_pct(now.number(), then.number())),
                };
                vec![Cell::Text(Some(title.to_string())), now, then, change]
            })
            .collect();
        vec![Section {
            name: "comparison",
            title: None,
            layout: Layout::Rows,
            columns: vec![
                ("figure", "figure"),
                ("current", "this window"),
                ("previous", "previous window"),
                ("change_pct", "change"),
            ],
            rows,
            bar: None,
        }]
    }

    fn notes(&self) -> Vec<String> {
        super::partial_notes(
            self.percentiles_partial,
            self.unique_users_lower_bound,
            self.legacy_hours,
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timearg::parse_instant;

    #[test]
    fn changes_are_relative_to_the_previous_figure() {
        assert_eq!(change_pct(Some(150.0), Some(100.0)), Some(50.0));
        assert_eq!(change_pct(Some(50.0), Some(100.0)), Some(-50.0));
        assert_eq!(change_pct(Some(5.0), Some(0.0)), None);
        assert_eq!(change_pct(None, Some(3.0)), None);
    }

    #[test]
    fn the_sparkline_series_is_zero_filled_over_the_window() {
        let window = Window::new(1, parse_instant("2026-11-28T00").unwrap());
        let part = HourPart {
            hour: parse_instant("2026-11-27T05").unwrap(),
            totals: Totals {
                requests: 9,
                ..Totals::default()
            },
            ..HourPart::default()
        };
        let overview = build(&window, &[part], 0);
        assert_eq!(overview.requests_per_hour.len(), 24);
        assert_eq!(overview.requests_per_hour[5], 9);
        assert_eq!(overview.requests_per_hour.iter().sum::<i64>(), 9);
        assert_eq!(
            overview.latest_data_timestamp,
            Some(parse_instant("2026-11-27T05").unwrap())
        );
    }
}
