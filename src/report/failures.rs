//! Failures: by error type (no type is a group of its own), most frequent
//! first, and the failure rate per local day of the window, zeros included.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use serde::Serialize;

use super::figures::{HourPart, failure_rate};
use super::window::Window;
use crate::histogram::mean;
use crate::render::{Cell, Chart, Layout, LineChart, Report, Section, Series, Unit};
use crate::rollup::FailureRollup;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailuresReport {
    pub lookback_days: u32,
    pub error_types: Vec<ErrorTypeRow>,
    pub failure_trends: Vec<FailureDay>,
    /// Hours rolled up by the original service: counted by day, but with
    /// no per-error-type figures.
    pub hours_without_breakdown: i64,
    #[serde(skip)]
    pub window: Window,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorTypeRow {
    pub error_type: Option<String>,
    pub count: i64,
    pub affected_users: i64,
    /// Over failed completions as sent, zeros included.
    pub avg_duration_ms: Option<i64>,
    pub sample_messages: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureDay {
    pub date: NaiveDate,
    pub total_completions: i64,
    pub failures: i64,
    pub failure_rate_pct: Option<f64>,
}

/// The report from the window's hourly parts and its (error type, hourly
/// part) rows.
pub fn build(
    window: &Window,
    hours: &[HourPart],
    parts: impl IntoIterator<Item = (Option<String>, FailureRollup)>,
) -> FailuresReport {
    let mut by_type: BTreeMap<Option<String>, FailureRollup> = BTreeMap::new();
    for (error_type, part) in parts {
        by_type.entry(error_type).or_default().merge(&part);
    }
    let mut error_types: Vec<ErrorTypeRow> = by_type
        .into_iter()
        .map(|(error_type, f)| ErrorTypeRow {
            error_type,
            count: f.failures,
            affected_users: f.users.len() as i64,
            avg_duration_ms: mean(f.duration_sum, f.duration_count),
            sample_messages: f.sample_messages,
        })
        .collect();
    error_types.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| a.error_type.cmp(&b.error_type))
    });

    let mut by_day: BTreeMap<NaiveDate, (i64, i64)> = BTreeMap::new();
    for hour in hours {
        let day = by_day.entry(window.date_of(hour.hour)).or_default();
        day.0 += hour.totals.successful + hour.totals.failed;
        day.1 += hour.totals.failed;
    }
    let failure_trends = window
        .days()
        .into_iter()
        .map(|day| {
            let (completions, failed) = by_day.get(&day.date).copied().unwrap_or_default();
            FailureDay {
                date: day.date,
                total_completions: completions,
                failures: failed,
                failure_rate_pct: failure_rate(failed, completions),
            }
        })
        .collect();
    FailuresReport {
        lookback_days: window.days,
        error_types,
        failure_trends,
        hours_without_breakdown: hours.iter().map(|h| h.totals.legacy_hours).sum(),
        window: *window,
    }
}

impl FailuresReport {
    /// Failures by error type: a table of its own, for the HTML report too.
    pub fn error_types_section(&self) -> Section {
        Section {
            name: "error_types",
            title: Some("By error type"),
            layout: Layout::Rows,
            columns: vec![
                ("error_type", "error"),
                ("count", "failures"),
                ("affected_users", "users"),
                ("avg_duration_ms", "avg duration"),
                ("sample_messages", "messages"),
            ],
            rows: self
                .error_types
                .iter()
                .map(|e| {
                    vec![
                        Cell::Text(e.error_type.clone()),
                        Cell::Count(e.count),
                        Cell::Count(e.affected_users),
                        Cell::Duration(e.avg_duration_ms),
                        Cell::List(e.sample_messages.clone()),
                    ]
                })
                .collect(),
            bar: None,
        }
    }
}

impl Report for FailuresReport {
    fn is_empty(&self) -> bool {
        self.error_types.is_empty() && self.failure_trends.iter().all(|d| d.total_completions == 0)
    }

    fn heading(&self) -> String {
        super::heading(
            "Failures",
            self.lookback_days,
            self.window.start,
            self.window.end,
            self.window.tz,
        )
    }

    fn charts(&self) -> Vec<Chart> {
        vec![Chart::Line(LineChart {
            name: "failure_rate",
            title: "Failure rate per day (failed of completed)".to_string(),
            x: self
                .failure_trends
                .iter()
                .map(|day| super::window::local_midnight(self.window.tz, day.date))
                .collect(),
            daily: true,
            series: vec![Series {
                label: "failure rate",
                values: self
                    .failure_trends
                    .iter()
                    .map(|day| day.failure_rate_pct)
                    .collect(),
            }],
            unit: Unit::Percent,
            limit: None,
        })]
    }

    fn sections(&self) -> Vec<Section> {
        vec![
            self.error_types_section(),
            Section {
                name: "failure_trends",
                title: Some("By day"),
                layout: Layout::Rows,
                columns: vec![
                    ("date", "day"),
                    ("total_completions", "completions"),
                    ("failures", "failures"),
                    ("failure_rate_pct", "rate"),
                ],
                rows: self
                    .failure_trends
                    .iter()
                    .map(|d| {
                        vec![
                            Cell::Date(d.date),
                            Cell::Count(d.total_completions),
                            Cell::Count(d.failures),
                            Cell::Percent(d.failure_rate_pct),
                        ]
                    })
                    .collect(),
                bar: Some(3),
            },
        ]
    }

    fn notes(&self) -> Vec<String> {
        super::models::without_breakdown(self.hours_without_breakdown, "per-error-type")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::figures::Totals;
    use crate::timearg::parse_instant;

    #[test]
    fn failure_days_are_zero_filled_and_messages_merged() {
        let window = Window::new(3, parse_instant("2026-11-28T00").unwrap());
        let hour = HourPart {
            hour: parse_instant("2026-11-26T10").unwrap(),
            totals: Totals {
                successful: 3,
                failed: 1,
                ..Totals::default()
            },
            ..HourPart::default()
        };
        let timeout = |messages: &[&str], failures| FailureRollup {
            failures,
            sample_messages: messages.iter().map(|m| (*m).to_string()).collect(),
            ..FailureRollup::default()
        };
        let report = build(
            &window,
            &[hour],
            [
                (Some("Timeout".to_string()), timeout(&["c", "d"], 1)),
                (Some("Timeout".to_string()), timeout(&["a", "d", "e"], 2)),
                (None, timeout(&[], 1)),
            ],
        );
        let rates: Vec<Option<f64>> = report
            .failure_trends
            .iter()
            .map(|d| d.failure_rate_pct)
            .collect();
        assert_eq!(rates, [None, Some(25.0), None]);
        assert_eq!(report.error_types[0].count, 3);
        assert_eq!(report.error_types[0].sample_messages, ["a", "c", "d"]);
        assert_eq!(report.error_types[1].error_type, None);
    }
}
