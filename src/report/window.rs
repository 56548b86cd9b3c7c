//! The window a report covers: `[until − days, until)`, the hours that
//! start in it, and its days in the report's time zone — local days, 23 or
//! 25 hours long at daylight-saving changes.

use chrono::{DateTime, NaiveDate, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

/// `[end − days, end)`, shown and bucketed by day in `tz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub days: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    pub tz: Tz,
}

/// One local day of a window: its date and where it starts and ends in
/// UTC, clipped to the window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day {
    pub date: NaiveDate,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    pub fn new(days: u32, end: DateTime<Utc>) -> Window {
        Window::in_zone(days, end, chrono_tz::UTC)
    }

    pub fn in_zone(days: u32, end: DateTime<Utc>, tz: Tz) -> Window {
        Window {
            days,
            start: end - TimeDelta::days(i64::from(days)),
            end,
            tz,
        }
    }

    /// The window of the same length just before this one (`--compare`).
    #[must_use]
    pub fn previous(&self) -> Window {
        Window::in_zone(self.days, self.start, self.tz)
    }

    /// Starts of the hours that begin inside the window.
    pub fn hours(&self) -> Vec<DateTime<Utc>> {
        crate::hour::starts(crate::hour::ceil(self.start), self.end).collect()
    }

    /// The local date an hour belongs to: the one its start falls on (in
    /// a zone with a half-hour offset, an hour belongs to the day it starts
    /// in).
    pub fn date_of(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    /// The local days that overlap the window, each clipped to it.
    pub fn days(&self) -> Vec<Day> {
        let mut days = Vec::new();
        let mut date = self.date_of(self.start);
        loop {
            let start = local_midnight(self.tz, date);
            if start >= self.end {
                break;
            }
            let Some(next) = date.succ_opt() else { break };
            let end = local_midnight(self.tz, next);
            days.push(Day {
                date,
                start: start.max(self.start),
                end: end.min(self.end),
            });
            date = next;
        }
        days
    }
}

/// The first instant of a local date: midnight, or the first moment after
/// it when a daylight-saving change skips midnight.
pub fn local_midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    match tz.from_local_datetime(&midnight) {
        chrono::LocalResult::Single(at) | chrono::LocalResult::Ambiguous(at, _) => {
            at.with_timezone(&Utc)
        }
        // Midnight skipped (a few zones change at 00:00): the day starts at
        // the first hour that exists.
        chrono::LocalResult::None => (1..=3)
            .find_map(|h| {
                tz.from_local_datetime(&date.and_hms_opt(h, 0, 0)?)
                    .earliest()
            })
            .map_or_else(|| midnight.and_utc(), |at| at.with_timezone(&Utc)),
    }
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
        let days: Vec<String> = window.days().iter().map(|d| d.date.to_string()).collect();
        assert_eq!(days, ["2026-11-27", "2026-11-28"]);
        assert_eq!(window.days()[0].start, window.start);
        let aligned = Window::new(2, parse_instant("2026-11-28T00").unwrap());
        assert_eq!(aligned.hours().len(), 48);
        assert_eq!(aligned.days().len(), 2);
    }

    #[test]
    fn local_days_are_23_or_25_hours_at_daylight_saving_changes() {
        let berlin = chrono_tz::Europe::Berlin;
        // Spring forward on 2026-03-29, fall back on 2026-10-25.
        let spring = Window::in_zone(
            3,
            parse_instant("2026-03-31T00:00:00+02:00").unwrap(),
            berlin,
        );
        let lengths: Vec<(String, i64)> = spring
            .days()
            .iter()
            .map(|d| (d.date.to_string(), (d.end - d.start).num_hours()))
            .collect();
        // 72 hours: the first local day is clipped to its last hour.
        assert_eq!(
            lengths,
            [
                ("2026-03-27".to_string(), 1),
                ("2026-03-28".to_string(), 24),
                ("2026-03-29".to_string(), 23),
                ("2026-03-30".to_string(), 24)
            ]
        );
        let fall = Window::in_zone(
            2,
            parse_instant("2026-10-26T00:00:00+01:00").unwrap(),
            berlin,
        );
        let days = fall.days();
        assert_eq!(days.len(), 2);
        assert_eq!(days[1].date.to_string(), "2026-10-25");
        assert_eq!((days[1].end - days[1].start).num_hours(), 25);
        // The first day is clipped to the window: it began an hour before it.
        assert_eq!((days[0].end - days[0].start).num_hours(), 23);
        assert_eq!(
            fall.hours().len(),
            48,
            "a 2-day window is 48 hours, whatever the zone"
        );
    }

    #[test]
    fn the_previous_window_ends_where_this_one_starts() {
        let window = Window::new(7, parse_instant("2026-11-28T00").unwrap());
        let previous = window.previous();
        assert_eq!(previous.end, window.start);
        assert_eq!(previous.end - previous.start, window.end - window.start);
    }

    #[test]
    fn a_zone_that_skips_midnight_still_has_its_day() {
        // America/Santiago moved its clocks at 00:00 (2026-09-06).
        let tz: Tz = "America/Santiago".parse().unwrap();
        let date = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        let start = local_midnight(tz, date);
        assert_eq!(start.with_timezone(&tz).date_naive(), date);
    }
}
