//! The arithmetic every window figure is built from: sums of hourly parts,
//! weighted means (total / count, never an average of averages), rates
//! rounded to two decimals, percentiles from merged histograms (never an
//! average of percentiles) — and what a window leaves out: hours the
//! original service rolled up have no histogram and no user list, so
//! percentiles over them are partial and distinct users a lower bound.

use chrono::{DateTime, Utc};

use crate::histogram::Histogram;
use crate::rollup::HourRollup;

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

use crate::histogram::{mean, percentiles};

/// Sums over a set of hourly rows.
#[derive(Debug, Clone, Default, PartialEq)]
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
    /// Hours with successful completions whose durations are not all in
    /// `histogram` (the original service's): percentiles leave them out.
    pub partial_hours: i64,
    /// At least this many distinct users: the most that any hour without
    /// a user list had (the original service's hours).
    pub users_floor: i64,
    /// Hours without a user list.
    pub users_partial_hours: i64,
    /// Hours the original service rolled up.
    pub legacy_hours: i64,
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
        self.partial_hours += other.partial_hours;
        self.users_floor = self.users_floor.max(other.users_floor);
        self.users_partial_hours += other.users_partial_hours;
        self.legacy_hours += other.legacy_hours;
    }

    pub fn sum<'a>(parts: impl IntoIterator<Item = &'a Totals>) -> Totals {
        let mut totals = Totals::default();
        for part in parts {
            totals.add(part);
        }
        totals
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

    /// Some hours' durations are missing from the percentiles.
    pub fn percentiles_partial(&self) -> bool {
        self.partial_hours > 0
    }

    /// Distinct users over these hours, given the count of distinct users
    /// in their user lists; and whether that is only a lower bound.
    pub fn distinct_users(&self, in_lists: i64) -> (i64, bool) {
        (in_lists.max(self.users_floor), self.users_partial_hours > 0)
    }
}

/// One hourly rollup row, as a window reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourPart {
    pub hour: DateTime<Utc>,
    pub totals: Totals,
    /// The hour's distinct users (a lower bound without a user list).
    pub unique_users: i64,
    /// The hour's own p50/p95/p99 as genalytics stored them (exact, or from
    /// its histogram after late events); `None` for the original service's
    /// figures, which are not comparable (failures included).
    pub own_percentiles: Option<[Option<i64>; 3]>,
}

impl HourPart {
    /// An hour's rollup as a window reads it.
    pub fn from_rollup(hour: DateTime<Utc>, rollup: &HourRollup) -> HourPart {
        HourPart {
            hour,
            totals: Totals {
                requests: rollup.requests,
                successful: rollup.successful,
                failed: rollup.failed,
                cancelled: rollup.cancelled,
                duration_sum: rollup.duration_sum,
                duration_count: rollup.duration_count,
                images: rollup.images,
                queue_sum: rollup.queue_sum,
                queue_samples: rollup.queue_samples,
                max_queue: rollup.max_queue,
                histogram: rollup.histogram.clone(),
                partial_hours: i64::from(!rollup.hist_complete && rollup.successful > 0),
                users_floor: if rollup.users_complete {
                    0
                } else {
                    rollup.unique_users
                },
                users_partial_hours: i64::from(!rollup.users_complete),
                legacy_hours: i64::from(rollup.legacy),
            },
            unique_users: rollup.unique_users,
            own_percentiles: rollup.percentiles_exact.map(|_| rollup.percentiles),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_original_services_hours_make_figures_partial_not_wrong() {
        let ours = Totals {
            requests: 10,
            successful: 4,
            duration_sum: 4_000,
            duration_count: 4,
            histogram: Histogram::from_keys(&[crate::histogram::key(1_000); 4]),
            ..Totals::default()
        };
        // avg 4000 ms over 8 successes, 3 users, no histogram.
        let legacy = Totals {
            requests: 11,
            successful: 8,
            duration_sum: 32_000,
            duration_count: 8,
            partial_hours: 1,
            users_floor: 3,
            users_partial_hours: 1,
            legacy_hours: 1,
            ..Totals::default()
        };
        let window = Totals::sum([&ours, &legacy]);
        assert_eq!(window.requests, 21);
        assert_eq!(
            window.avg_duration_ms(),
            Some(3_000),
            "weighted by successes"
        );
        assert!(window.percentiles_partial());
        assert_eq!(window.distinct_users(2), (3, true));
        assert_eq!(window.distinct_users(5), (5, true));
        assert_eq!(Totals::sum([&ours]).distinct_users(2), (2, false));
    }
}
