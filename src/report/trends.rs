//! Trends: one point per hour, or per local day, of the window, gaps filled
//! with zeros.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::figures::{HourPart, Totals};
use super::window::{Window, local_midnight};
use crate::render::{Cell, Chart, Layout, LineChart, Report, Section, Series, Unit};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Hourly,
    Daily,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trends {
    pub interval: Interval,
    pub lookback_days: u32,
    /// The zone of the daily buckets and shown times.
    pub tz: String,
    pub data_points: Vec<TrendPoint>,
    #[serde(skip)]
    pub window: Window,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrendPoint {
    pub timestamp: DateTime<Utc>,
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
    pub avg_queue_length: Option<f64>,
    pub max_queue_length: Option<i64>,
    pub total_images_generated: i64,
    /// Percentiles leave out hours the original service rolled up.
    pub percentiles_partial: bool,
    /// `unique_users` is at least this many.
    pub unique_users_lower_bound: bool,
}

impl TrendPoint {
    /// A point from its hours' totals; `own` is an hour's own stored
    /// percentiles, which beat the histogram's estimate.
    fn new(
        timestamp: DateTime<Utc>,
        totals: &Totals,
        users_in_lists: i64,
        own: Option<[Option<i64>; 3]>,
    ) -> Self {
        let [p50, p95, p99] = own.unwrap_or_else(|| totals.percentiles());
        let (unique_users, lower_bound) = totals.distinct_users(users_in_lists);
        TrendPoint {
            timestamp,
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
            avg_queue_length: totals.avg_queue_length(),
            max_queue_length: totals.max_queue,
            total_images_generated: totals.images,
            percentiles_partial: own.is_none() && totals.percentiles_partial(),
            unique_users_lower_bound: lower_bound,
        }
    }
}

/// Hourly points, one per hour of the window.
pub fn hourly(window: &Window, parts: &[HourPart]) -> Trends {
    let by_hour: HashMap<DateTime<Utc>, &HourPart> = parts.iter().map(|p| (p.hour, p)).collect();
    let data_points = window
        .hours()
        .into_iter()
        .map(|hour| match by_hour.get(&hour) {
            Some(part) => {
                TrendPoint::new(hour, &part.totals, part.unique_users, part.own_percentiles)
            }
            None => TrendPoint::new(hour, &Totals::default(), 0, None),
        })
        .collect();
    Trends {
        interval: Interval::Hourly,
        lookback_days: window.days,
        tz: window.tz.name().to_string(),
        data_points,
        window: *window,
    }
}

/// Daily points, one per local day that overlaps the window; a partial
/// first or last day counts only its hours inside the window.
/// `users_by_day` is the distinct users in each day's hourly user lists.
pub fn daily(
    window: &Window,
    parts: &[HourPart],
    users_by_day: &BTreeMap<NaiveDate, i64>,
) -> Trends {
    let mut by_day: BTreeMap<NaiveDate, Totals> = BTreeMap::new();
    for part in parts {
        by_day
            .entry(window.date_of(part.hour))
            .or_default()
            .add(&part.totals);
    }
    let data_points = window
        .days()
        .into_iter()
        .map(|day| {
            let totals = by_day.remove(&day.date).unwrap_or_default();
            let users = users_by_day.get(&day.date).copied().unwrap_or(0);
            TrendPoint::new(local_midnight(window.tz, day.date), &totals, users, None)
        })
        .collect();
    Trends {
        interval: Interval::Daily,
        lookback_days: window.days,
        tz: window.tz.name().to_string(),
        data_points,
        window: *window,
    }
}

impl Report for Trends {
    fn is_empty(&self) -> bool {
        self.data_points.iter().all(|p| {
            p.total_requests == 0
                && p.successful_generations == 0
                && p.failed_generations == 0
                && p.cancelled_generations == 0
        })
    }

    fn heading(&self) -> String {
        let what = match self.interval {
            Interval::Hourly => "Hourly trends",
            Interval::Daily => "Daily trends",
        };
        super::heading(
            what,
            self.lookback_days,
            self.window.start,
            self.window.end,
            self.window.tz,
        )
    }

    fn charts(&self) -> Vec<Chart> {
        let x: Vec<DateTime<Utc>> = self.data_points.iter().map(|p| p.timestamp).collect();
        let daily = self.interval == Interval::Daily;
        let per = if daily { "day" } else { "hour" };
        let series = |label, value: fn(&TrendPoint) -> Option<f64>| Series {
            label,
            values: self.data_points.iter().map(value).collect(),
        };
        vec![
            Chart::Line(LineChart {
                name: "requests",
                title: format!("Requests per {per}"),
                x: x.clone(),
                daily,
                series: vec![series("requests", |p| Some(p.total_requests as f64))],
                unit: Unit::Count,
                limit: None,
            }),
            Chart::Line(LineChart {
                name: "durations",
                title: format!("Duration of successful generations per {per}"),
                x,
                daily,
                series: vec![
                    series("p50", |p| p.p50_duration_ms.map(|ms| ms as f64)),
                    series("p95", |p| p.p95_duration_ms.map(|ms| ms as f64)),
                ],
                unit: Unit::Milliseconds,
                limit: None,
            }),
        ]
    }

    fn sections(&self) -> Vec<Section> {
        let columns = vec![
            ("timestamp", "time"),
            ("total_requests", "requests"),
            ("successful_generations", "ok"),
            ("failed_generations", "failed"),
            ("cancelled_generations", "cancelled"),
            ("success_rate_pct", "success"),
            ("avg_duration_ms", "avg"),
            ("p50_duration_ms", "p50"),
            ("p95_duration_ms", "p95"),
            ("p99_duration_ms", "p99"),
            ("unique_users", "users"),
            ("avg_queue_length", "queue"),
            ("max_queue_length", "max queue"),
            ("total_images_generated", "images"),
            ("percentiles_partial", "percentiles partial"),
            ("unique_users_lower_bound", "users a lower bound"),
        ];
        let rows = self
            .data_points
            .iter()
            .map(|p| {
                vec![
                    Cell::Time(Some(p.timestamp)),
                    Cell::Count(p.total_requests),
                    Cell::Count(p.successful_generations),
                    Cell::Count(p.failed_generations),
                    Cell::Count(p.cancelled_generations),
                    Cell::Percent(p.success_rate_pct),
                    Cell::Duration(p.avg_duration_ms),
                    Cell::Duration(p.p50_duration_ms),
                    Cell::Duration(p.p95_duration_ms),
                    Cell::Duration(p.p99_duration_ms),
                    Cell::Count(p.unique_users),
                    Cell::Decimal(p.avg_queue_length),
                    Cell::MaybeCount(p.max_queue_length),
                    Cell::Count(p.total_images_generated),
                    Cell::Flag(p.percentiles_partial),
                    Cell::Flag(p.unique_users_lower_bound),
                ]
            })
            .collect();
        vec![Section {
            name: "data_points",
            title: None,
            layout: Layout::Rows,
            columns,
            rows,
            bar: Some(1),
        }]
    }

    /// For people: the columns that fit a terminal, a bar of requests.
    fn table_sections(&self) -> Vec<Section> {
        let keep = [0, 1, 2, 3, 4, 5, 6, 8, 10];
        let mut section = self.sections().remove(0);
        section.columns = keep.iter().map(|&i| section.columns[i]).collect();
        section.rows = section
            .rows
            .into_iter()
            .map(|row| keep.iter().map(|&i| row[i].clone()).collect())
            .collect();
        vec![section]
    }

    fn notes(&self) -> Vec<String> {
        let partial = self.data_points.iter().any(|p| p.percentiles_partial);
        let lower = self.data_points.iter().any(|p| p.unique_users_lower_bound);
        if partial || lower {
            vec![
                "marked points include hours rolled up by the original service: percentiles leave them out, \
                 users are a lower bound (JSON: percentiles_partial, unique_users_lower_bound)"
                    .to_string(),
            ]
        } else {
            Vec::new()
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timearg::parse_instant;

    fn part(at: &str, requests: i64) -> HourPart {
        HourPart {
            hour: parse_instant(at).unwrap(),
            totals: Totals {
                requests,
                ..Totals::default()
            },
            ..HourPart::default()
        }
    }

    #[test]
    fn hourly_points_fill_gaps_with_zeros() {
        let window = Window::new(1, parse_instant("2026-11-28T00").unwrap());
        let trends = hourly(
            &window,
            &[part("2026-11-27T03", 5), part("2026-11-27T20", 2)],
        );
        assert_eq!(trends.data_points.len(), 24);
        let requests: Vec<i64> = trends
            .data_points
            .iter()
            .map(|p| p.total_requests)
            .collect();
        assert_eq!(requests.iter().sum::<i64>(), 7);
        assert_eq!((requests[3], requests[20], requests[4]), (5, 2, 0));
        assert_eq!(trends.data_points[4].success_rate_pct, None);
    }

    #[test]
    fn daily_points_are_local_days_across_a_daylight_saving_change() {
        let berlin = chrono_tz::Europe::Berlin;
        // 2026-10-25 has 25 hours in Berlin: 22:00 UTC on the 24th to 23:00 UTC on the 25th.
        let window = Window::in_zone(
            2,
            parse_instant("2026-10-26T00:00:00+01:00").unwrap(),
            berlin,
        );
        let parts = [
            part("2026-10-24T21", 1),   // 23:00 local on the 24th
            part("2026-10-24T22", 10),  // 00:00 local on the 25th
            part("2026-10-25T22", 100), // 23:00 local on the 25th (CET)
        ];
        let trends = daily(&window, &parts, &BTreeMap::new());
        let points: Vec<(String, i64)> = trends
            .data_points
            .iter()
            .map(|p| {
                (
                    p.timestamp.with_timezone(&berlin).to_rfc3339(),
                    p.total_requests,
                )
            })
            .collect();
        assert_eq!(
            points,
            [
                ("2026-10-24T00:00:00+02:00".to_string(), 1),
                ("2026-10-25T00:00:00+02:00".to_string(), 110),
            ]
        );
    }
}
