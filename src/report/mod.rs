//! Report models: what each report says, as plain data. Queries fill them
//! (`db::reports`), renderers print them (`output`). The arithmetic that
//! defines the figures — windows, weighted averages, success rates,
//! percentiles from merged histograms, zero-filled series — lives here and
//! is pure.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use serde::Serialize;

use crate::histogram::Histogram;

/// `[end − days, end)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub days: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    pub fn new(days: u32, end: DateTime<Utc>) -> Window {
        Window {
            days,
            start: end - TimeDelta::days(i64::from(days)),
            end,
        }
    }

    /// Starts of the hours that begin inside the window.
    pub fn hours(&self) -> Vec<DateTime<Utc>> {
        crate::hour::starts(crate::hour::ceil(self.start), self.end).collect()
    }

    /// The UTC days that overlap the window.
    pub fn days(&self) -> Vec<NaiveDate> {
        let mut day = self.start.date_naive();
        let mut days = Vec::new();
        while day.and_hms_opt(0, 0, 0).expect("midnight").and_utc() < self.end {
            days.push(day);
            day = day.succ_opt().expect("a next day");
        }
        days
    }
}

/// successful / (successful + failed) × 100, to two decimals; none without
/// completions.
pub fn success_rate(successful: i64, failed: i64) -> Option<f64> {
    let completions = successful + failed;
    (completions > 0).then(|| round2(successful as f64 * 100.0 / completions as f64))
}

/// failed / completions × 100, to two decimals.
pub fn failure_rate(failed: i64, completions: i64) -> Option<f64> {
    (completions > 0).then(|| round2(failed as f64 * 100.0 / completions as f64))
}

pub fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// Milliseconds as an integer, half away from zero.
pub fn whole_ms(value: f64) -> i64 {
    value.round() as i64
}

/// A weighted mean: total / count, none for no count.
pub fn mean(total: i64, count: i64) -> Option<i64> {
    (count > 0).then(|| whole_ms(total as f64 / count as f64))
}

/// The usual duration trio from a merged histogram.
pub fn percentiles(histogram: &Histogram) -> [Option<i64>; 3] {
    [0.5, 0.95, 0.99].map(|q| histogram.quantile(q).map(whole_ms))
}

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
}

/// Sums over a set of hourly rows: what every window figure is built from.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub requests: i64,
    pub successful: i64,
    pub failed: i64,
    pub cancelled: i64,
    pub duration_sum: i64,
    pub duration_count: i64,
    pub images: i64,
    pub queue_sum: i64,
    pub queue_samples: i64,
    pub max_queue: Option<i64>,
    pub histogram: Histogram,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.requests += other.requests;
        self.successful += other.successful;
        self.failed += other.failed;
        self.cancelled += other.cancelled;
        self.duration_sum += other.duration_sum;
        self.duration_count += other.duration_count;
        self.images += other.images;
        self.queue_sum += other.queue_sum;
        self.queue_samples += other.queue_samples;
        self.max_queue = self.max_queue.max(other.max_queue);
        self.histogram.merge(&other.histogram);
    }

    pub fn success_rate(&self) -> Option<f64> {
        success_rate(self.successful, self.failed)
    }

    /// Weighted: total duration / count, never an average of averages.
    pub fn avg_duration_ms(&self) -> Option<i64> {
        mean(self.duration_sum, self.duration_count)
    }

    /// p50, p95, p99 from the merged histogram.
    pub fn percentiles(&self) -> [Option<i64>; 3] {
        percentiles(&self.histogram)
    }

    pub fn avg_queue_length(&self) -> Option<f64> {
        (self.queue_samples > 0).then(|| round2(self.queue_sum as f64 / self.queue_samples as f64))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Trends {
    pub interval: Interval,
    pub lookback_days: u32,
    pub data_points: Vec<TrendPoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    Hourly,
    Daily,
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
}

impl TrendPoint {
    /// A point from the totals of its hours; `exact` carries an hour's own
    /// exact percentiles, which beat the histogram's estimate.
    pub fn new(
        timestamp: DateTime<Utc>,
        totals: &Totals,
        unique_users: i64,
        exact: Option<[Option<i64>; 3]>,
    ) -> Self {
        let [p50, p95, p99] = exact.unwrap_or_else(|| totals.percentiles());
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
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserReport {
    pub user_id: uuid::Uuid,
    pub lookback_days: u32,
    pub total_requests: i64,
    pub successful_generations: i64,
    pub failed_generations: i64,
    pub cancelled_generations: i64,
    pub success_rate_pct: Option<f64>,
    pub avg_duration_ms: Option<i64>,
    pub p50_duration_ms: Option<i64>,
    pub p95_duration_ms: Option<i64>,
    pub first_generation_at: Option<DateTime<Utc>>,
    pub last_generation_at: Option<DateTime<Utc>>,
    pub recent_activity: Vec<Activity>,
    pub failure_breakdown: Vec<ErrorCount>,
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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelsReport {
    pub lookback_days: u32,
    pub models: Vec<ModelRow>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRow {
    pub model_checkpoint: Option<String>,
    pub total_generations: i64,
    pub successful_generations: i64,
    pub failed_generations: i64,
    pub success_rate_pct: Option<f64>,
    pub avg_duration_ms: Option<i64>,
    pub p50_duration_ms: Option<i64>,
    pub p95_duration_ms: Option<i64>,
    pub last_used_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailuresReport {
    pub lookback_days: u32,
    pub error_types: Vec<ErrorTypeRow>,
    pub failure_trends: Vec<FailureDay>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorTypeRow {
    pub error_type: Option<String>,
    pub count: i64,
    pub affected_users: i64,
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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeakHours {
    pub lookback_days: u32,
    pub tz: String,
    pub peak_hours: Vec<PeakRow>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeakRow {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weekday: Option<String>,
    pub hour_of_day: u32,
    pub avg_requests: f64,
    pub avg_unique_users: f64,
    pub avg_queue_length: Option<f64>,
    pub max_queue_length: Option<i64>,
    pub p95_duration_ms: Option<i64>,
    pub hours_with_data: i64,
}

/// One hourly row as peak-hours needs it.
#[derive(Debug, Clone)]
pub struct HourFigures {
    pub hour: DateTime<Utc>,
    pub totals: Totals,
    pub unique_users: i64,
}

const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

/// One (weekday,) hour-of-day slot of the peak-hours report.
#[derive(Default)]
struct Slot {
    hours: i64,
    with_data: i64,
    users: i64,
    totals: Totals,
}

/// Peak hours: every hour of the window in the zone, with empty hours
/// counting in the denominators.
pub fn peak_hours(
    window: &Window,
    tz: chrono_tz::Tz,
    by_weekday: bool,
    rows: &[HourFigures],
) -> Vec<PeakRow> {
    use chrono::{Datelike, Timelike};
    let slot = |at: DateTime<Utc>| {
        let local = at.with_timezone(&tz);
        let weekday = by_weekday.then(|| local.weekday().num_days_from_monday());
        (weekday, local.hour())
    };
    let mut slots: BTreeMap<(Option<u32>, u32), Slot> = BTreeMap::new();
    for hour in window.hours() {
        slots.entry(slot(hour)).or_default().hours += 1;
    }
    for row in rows {
        let acc = slots.entry(slot(row.hour)).or_default();
        acc.with_data += 1;
        acc.users += row.unique_users;
        acc.totals.add(&row.totals);
    }
    let mut out: Vec<PeakRow> = slots
        .into_iter()
        .map(|((weekday, hour_of_day), acc)| {
            let per_hour = |total: i64| {
                if acc.hours > 0 {
                    round2(total as f64 / acc.hours as f64)
                } else {
                    0.0
                }
            };
            PeakRow {
                weekday: weekday.map(|d| WEEKDAYS[d as usize].to_string()),
                hour_of_day,
                avg_requests: per_hour(acc.totals.requests),
                avg_unique_users: per_hour(acc.users),
                avg_queue_length: acc.totals.avg_queue_length(),
                max_queue_length: acc.totals.max_queue,
                p95_duration_ms: acc.totals.histogram.quantile(0.95).map(whole_ms),
                hours_with_data: acc.with_data,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        b.avg_requests
            .total_cmp(&a.avg_requests)
            .then(a.weekday.is_none().cmp(&b.weekday.is_none()))
            .then(a.hour_of_day.cmp(&b.hour_of_day))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timearg::parse_instant;

    #[test]
    fn a_window_holds_the_hours_that_start_in_it() {
        let window = Window::new(1, parse_instant("2026-11-28T10:30").unwrap());
        let hours = window.hours();
        assert_eq!(hours.len(), 24);
        assert_eq!(hours[0], parse_instant("2026-11-27T11").unwrap());
        assert_eq!(hours[23], parse_instant("2026-11-28T10").unwrap());
        let days: Vec<String> = window.days().iter().map(ToString::to_string).collect();
        assert_eq!(days, ["2026-11-27", "2026-11-28"]);
        let aligned = Window::new(2, parse_instant("2026-11-28T00").unwrap());
        assert_eq!(aligned.hours().len(), 48);
        assert_eq!(aligned.days().len(), 2);
    }

    #[test]
    fn rates_round_to_two_decimals_and_are_null_without_completions() {
        assert_eq!(success_rate(2, 1), Some(66.67));
        assert_eq!(success_rate(0, 0), None);
        assert_eq!(failure_rate(1, 3), Some(33.33));
        assert_eq!(mean(5, 2), Some(3));
        assert_eq!(mean(-5, 2), Some(-3));
        assert_eq!(mean(1, 0), None);
    }

    #[test]
    fn peak_hours_count_empty_hours_in_the_denominator() {
        let window = Window::new(2, parse_instant("2026-11-28T00").unwrap());
        let figures = |at: &str, requests: i64| HourFigures {
            hour: parse_instant(at).unwrap(),
            totals: Totals {
                requests,
                ..Totals::default()
            },
            unique_users: 3,
        };
        let rows = [figures("2026-11-26T14", 10), figures("2026-11-27T09", 4)];
        let peaks = peak_hours(&window, chrono_tz::UTC, false, &rows);
        assert_eq!(peaks.len(), 24);
        assert_eq!((peaks[0].hour_of_day, peaks[0].avg_requests), (14, 5.0));
        assert_eq!((peaks[1].hour_of_day, peaks[1].avg_requests), (9, 2.0));
        assert!((peaks[0].avg_unique_users - 1.5).abs() < 1e-9);
        assert_eq!(peaks[0].hours_with_data, 1);
        // Local hours in a zone with a half-hour offset still number 24.
        let kolkata = peak_hours(&window, chrono_tz::Asia::Kolkata, false, &rows);
        assert_eq!(kolkata.len(), 24);
        assert_eq!(kolkata[0].hour_of_day, 19);
    }
}
