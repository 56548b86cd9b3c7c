//! Peak hours: average load per local hour of day (or weekday and hour),
//! every hour of the window counted in the denominators — empty hours
//! too, and 23- or 25-hour days at daylight-saving changes.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::Serialize;

use super::figures::{HourPart, Totals, round2};
use super::window::Window;
use crate::histogram::whole_ms;
use crate::render::{Cell, Chart, Heatmap, Layout, Report, Section};

pub const WEEKDAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];

const HOURS: [&str; 24] = [
    "00", "01", "02", "03", "04", "05", "06", "07", "08", "09", "10", "11", "12", "13", "14", "15",
    "16", "17", "18", "19", "20", "21", "22", "23",
];

/// How the rows are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Sort {
    /// Busiest first
    #[default]
    Busiest,
    /// In (weekday and) hour order
    Hour,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PeakHours {
    pub lookback_days: u32,
    pub tz: String,
    pub peak_hours: Vec<PeakRow>,
    /// p95 leaves out hours the original service rolled up.
    pub percentiles_partial: bool,
    #[serde(skip)]
    pub window: Window,
    #[serde(skip)]
    pub by_weekday: bool,
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

/// One (weekday,) hour-of-day slot.
#[derive(Default)]
struct Slot {
    hours: i64,
    with_data: i64,
    users: i64,
    totals: Totals,
}

pub fn build(window: &Window, by_weekday: bool, sort: Sort, parts: &[HourPart]) -> PeakHours {
    let tz = window.tz;
    let slot = |at: DateTime<Utc>| {
        let local = at.with_timezone(&tz);
        let weekday = by_weekday.then(|| local.weekday().num_days_from_monday());
        (weekday, local.hour())
    };
    let mut slots: BTreeMap<(Option<u32>, u32), Slot> = BTreeMap::new();
    for hour in window.hours() {
        slots.entry(slot(hour)).or_default().hours += 1;
    }
    let mut all = Totals::default();
    for part in parts {
        let acc = slots.entry(slot(part.hour)).or_default();
        acc.with_data += 1;
        acc.users += part.unique_users;
        acc.totals.add(&part.totals);
        all.add(&part.totals);
    }
    let mut rows: Vec<PeakRow> = slots
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
    if sort == Sort::Busiest {
        // Stable: equal averages stay in (weekday, hour) order.
        rows.sort_by(|a, b| b.avg_requests.total_cmp(&a.avg_requests));
    }
    PeakHours {
        lookback_days: window.days,
        tz: tz.name().to_string(),
        peak_hours: rows,
        percentiles_partial: all.percentiles_partial(),
        window: *window,
        by_weekday,
    }
}

/// A shade for a share of the largest value, for the heatmap.
pub fn shade(value: f64, max: f64) -> &'static str {
    const SHADES: [&str; 5] = [" ", "░", "▒", "▓", "█"];
    if max <= 0.0 || value <= 0.0 {
        return SHADES[0];
    }
    SHADES[(((value / max) * 4.0).ceil() as usize).clamp(1, 4)]
}

impl PeakHours {
    /// Average requests per hour by local weekday (rows, Monday first) and
    /// hour of day (columns).
    fn grid(&self) -> [[f64; 24]; 7] {
        let mut grid = [[0.0_f64; 24]; 7];
        for row in &self.peak_hours {
            if let Some(day) = row
                .weekday
                .as_deref()
                .and_then(|d| WEEKDAYS.iter().position(|w| *w == d))
            {
                grid[day][row.hour_of_day as usize] = row.avg_requests;
            }
        }
        grid
    }
}

impl Report for PeakHours {
    fn is_empty(&self) -> bool {
        self.peak_hours.iter().all(|row| row.hours_with_data == 0)
    }

    fn heading(&self) -> String {
        super::heading(
            &format!("Peak hours ({})", self.tz),
            self.lookback_days,
            self.window.start,
            self.window.end,
            self.window.tz,
        )
    }

    fn charts(&self) -> Vec<Chart> {
        if !self.by_weekday {
            return Vec::new();
        }
        vec![Chart::Heatmap(Heatmap {
            name: "peak_hours",
            title: format!("Requests per hour by weekday and hour of day ({})", self.tz),
            rows: WEEKDAYS.iter().map(|d| (*d).to_string()).collect(),
            columns: HOURS.iter().map(|h| (*h).to_string()).collect(),
            values: self.grid().iter().map(|hours| hours.to_vec()).collect(),
            per: "requests an hour",
        })]
    }

    fn sections(&self) -> Vec<Section> {
        let mut columns = vec![
            ("hour_of_day", "hour"),
            ("avg_requests", "requests/h"),
            ("avg_unique_users", "users/h"),
            ("avg_queue_length", "queue"),
            ("max_queue_length", "max queue"),
            ("p95_duration_ms", "p95"),
            ("hours_with_data", "hours"),
        ];
        if self.by_weekday {
            columns.insert(0, ("weekday", "day"));
        }
        let rows = self
            .peak_hours
            .iter()
            .map(|r| {
                let mut row = vec![
                    Cell::Count(i64::from(r.hour_of_day)),
                    Cell::Decimal(Some(r.avg_requests)),
                    Cell::Decimal(Some(r.avg_unique_users)),
                    Cell::Decimal(r.avg_queue_length),
                    Cell::MaybeCount(r.max_queue_length),
                    Cell::Duration(r.p95_duration_ms),
                    Cell::Count(r.hours_with_data),
                ];
                if self.by_weekday {
                    row.insert(0, Cell::Text(r.weekday.clone()));
                }
                row
            })
            .collect();
        vec![Section {
            name: "peak_hours",
            title: None,
            layout: Layout::Rows,
            columns,
            rows,
            bar: Some(if self.by_weekday { 2 } else { 1 }),
        }]
    }

    /// By weekday, people get a heatmap: weekdays down, hours across,
    /// darker for busier.
    fn table_sections(&self) -> Vec<Section> {
        if !self.by_weekday {
            return self.sections();
        }
        let max = self
            .peak_hours
            .iter()
            .map(|r| r.avg_requests)
            .fold(0.0, f64::max);
        let grid = self.grid();
        let mut columns = vec![("weekday", "")];
        columns.extend(HOURS.iter().map(|h| ("hour", *h)));
        let rows = WEEKDAYS
            .iter()
            .zip(grid)
            .map(|(day, hours)| {
                let mut row = vec![Cell::Text(Some((*day).to_string()))];
                row.extend(
                    hours
                        .iter()
                        .map(|&v| Cell::Text(Some(shade(v, max).repeat(2)))),
                );
                row
            })
            .collect();
        vec![Section {
            name: "heatmap",
            title: Some("Requests per hour, by local weekday and hour (darker is busier)"),
            layout: Layout::Rows,
            columns,
            rows,
            bar: None,
        }]
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.by_weekday {
            let max = self
                .peak_hours
                .iter()
                .map(|r| r.avg_requests)
                .fold(0.0, f64::max);
            notes.push(format!(
                "█ is the busiest slot, {max:.2} requests an hour; the figures are in --format csv or json"
            ));
        }
        if self.percentiles_partial {
            notes.push(
                "p95 leaves out hours rolled up by the original service (no duration histogram)"
                    .into(),
            );
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

    fn part(at: &str, requests: i64) -> HourPart {
        HourPart {
            hour: parse_instant(at).unwrap(),
            totals: Totals {
                requests,
                ..Totals::default()
            },
            unique_users: 3,
            own_percentiles: None,
        }
    }

    #[test]
    fn peak_hours_count_empty_hours_in_the_denominator() {
        let window = Window::new(2, parse_instant("2026-11-28T00").unwrap());
        let rows = [part("2026-11-26T14", 10), part("2026-11-27T09", 4)];
        let peaks = build(&window, false, Sort::Busiest, &rows).peak_hours;
        assert_eq!(peaks.len(), 24);
        assert_eq!((peaks[0].hour_of_day, peaks[0].avg_requests), (14, 5.0));
        assert_eq!((peaks[1].hour_of_day, peaks[1].avg_requests), (9, 2.0));
        assert!((peaks[0].avg_unique_users - 1.5).abs() < 1e-9);
        assert_eq!(peaks[0].hours_with_data, 1);
        // In hour order on request.
        let by_hour = build(&window, false, Sort::Hour, &rows).peak_hours;
        assert!(
            by_hour
                .iter()
                .enumerate()
                .all(|(i, r)| r.hour_of_day as usize == i)
        );
        // Local hours in a zone with a half-hour offset still number 24.
        let kolkata = Window::in_zone(2, window.end, chrono_tz::Asia::Kolkata);
        let peaks = build(&kolkata, false, Sort::Busiest, &rows).peak_hours;
        assert_eq!(peaks.len(), 24);
        assert_eq!(peaks[0].hour_of_day, 19);
    }

    #[test]
    fn the_heatmap_shades_by_share_of_the_busiest() {
        assert_eq!(shade(0.0, 10.0), " ");
        assert_eq!(shade(1.0, 10.0), "░");
        assert_eq!(shade(10.0, 10.0), "█");
        assert_eq!(shade(6.0, 10.0), "▓");
    }
}
