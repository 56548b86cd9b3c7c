//! One hour's rollups as values — overall, per model, per error type, per
//! user — and merging into them the rollup of events that arrived after the
//! hour's raw events were pruned: rollups are permanent, so late events are
//! added, never recomputed. Pure: counts and sums add, histograms merge,
//! user sets unite; the merged hour's percentiles then come from its
//! histogram and say they are no longer exact (unless no late event had a
//! successful duration). The property test below
//! checks that merging the parts equals rolling up the whole.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::histogram::Histogram;

/// The figures of one hour (a `generation_metrics_hourly` row).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HourRollup {
    pub requests: i64,
    pub successful: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Over successful completions with a duration.
    pub duration_sum: i64,
    pub duration_count: i64,
    pub histogram: Histogram,
    pub users: BTreeSet<Uuid>,
    /// Distinct users: `users.len()` when complete, else a lower bound.
    pub unique_users: i64,
    pub images: i64,
    pub queue_sum: i64,
    pub queue_samples: i64,
    pub max_queue: Option<i64>,
    /// p50, p95, p99.
    pub percentiles: [Option<i64>; 3],
    /// The percentiles are the hour's exact ones; `None` on the original
    /// service's rows.
    pub percentiles_exact: Option<bool>,
    /// `histogram` holds every successful duration; `users` every user.
    pub hist_complete: bool,
    pub users_complete: bool,
    /// Figures the original service wrote.
    pub legacy: bool,
}

impl HourRollup {
    /// Adds `late`, the rollup of events that were not in this one.
    pub fn merge(&mut self, late: &HourRollup) {
        self.requests += late.requests;
        self.successful += late.successful;
        self.failed += late.failed;
        self.cancelled += late.cancelled;
        self.duration_sum += late.duration_sum;
        self.duration_count += late.duration_count;
        self.histogram.merge(&late.histogram);
        self.users.extend(late.users.iter().copied());
        self.hist_complete &= late.hist_complete;
        self.users_complete &= late.users_complete;
        self.unique_users = if self.users_complete {
            self.users.len() as i64
        } else {
            // Who the unknown users were is not known: at least this many.
            self.unique_users.max(self.users.len() as i64)
        };
        self.images += late.images;
        self.queue_sum += late.queue_sum;
        self.queue_samples += late.queue_samples;
        self.max_queue = self.max_queue.max(late.max_queue);
        // Late events without a successful duration leave the durations,
        // and so the percentiles, as they were.
        if self.hist_complete && late.duration_count > 0 {
            self.percentiles = crate::histogram::percentiles(&self.histogram);
            self.percentiles_exact = Some(false);
        }
    }

    /// An hour's stored rollup, if any, with the rollup of its late events
    /// added: what the hour's figures are once they are merged in.
    pub fn with_late(stored: Option<HourRollup>, late: HourRollup) -> HourRollup {
        match stored {
            Some(mut stored) => {
                stored.merge(&late);
                stored
            }
            // An hour that had no events: these are all of them.
            None => late,
        }
    }

    /// Mean of successful durations, rounded half away from zero.
    pub fn avg_duration_ms(&self) -> Option<i64> {
        crate::histogram::mean(self.duration_sum, self.duration_count)
    }

    pub fn avg_queue_length(&self) -> Option<f64> {
        (self.queue_samples > 0).then(|| self.queue_sum as f64 / self.queue_samples as f64)
    }
}

/// One hour and model checkpoint (`generation_metrics_hourly_models`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelRollup {
    pub total: i64,
    pub successful: i64,
    pub failed: i64,
    pub duration_sum: i64,
    pub duration_count: i64,
    pub histogram: Histogram,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ModelRollup {
    pub fn merge(&mut self, late: &ModelRollup) {
        self.total += late.total;
        self.successful += late.successful;
        self.failed += late.failed;
        self.duration_sum += late.duration_sum;
        self.duration_count += late.duration_count;
        self.histogram.merge(&late.histogram);
        self.last_used_at = self.last_used_at.max(late.last_used_at);
    }
}

/// How many sample messages an hour keeps per error type.
pub const SAMPLE_MESSAGES: usize = 3;

/// One hour and error type (`generation_metrics_hourly_failures`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FailureRollup {
    pub failures: i64,
    /// Over failed completions as sent, zeros included.
    pub duration_sum: i64,
    pub duration_count: i64,
    pub users: BTreeSet<Uuid>,
    /// Up to [`SAMPLE_MESSAGES`] distinct messages, in order.
    pub sample_messages: Vec<String>,
}

impl FailureRollup {
    pub fn merge(&mut self, late: &FailureRollup) {
        self.failures += late.failures;
        self.duration_sum += late.duration_sum;
        self.duration_count += late.duration_count;
        self.users.extend(late.users.iter().copied());
        let messages: BTreeSet<String> = self
            .sample_messages
            .drain(..)
            .chain(late.sample_messages.iter().cloned())
            .collect();
        self.sample_messages = messages.into_iter().take(SAMPLE_MESSAGES).collect();
    }
}

/// One hour and user (`generation_metrics_hourly_users`): what the user
/// report needs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UserRollup {
    pub requests: i64,
    pub successful: i64,
    pub failed: i64,
    pub cancelled: i64,
    /// Over successful completions with a duration.
    pub duration_sum: i64,
    pub duration_count: i64,
    pub histogram: Histogram,
    /// Failed completions by error type.
    pub errors: BTreeMap<Option<String>, i64>,
    pub first_event_at: Option<DateTime<Utc>>,
    pub last_event_at: Option<DateTime<Utc>>,
}

impl UserRollup {
    pub fn merge(&mut self, late: &UserRollup) {
        self.requests += late.requests;
        self.successful += late.successful;
        self.failed += late.failed;
        self.cancelled += late.cancelled;
        self.duration_sum += late.duration_sum;
        self.duration_count += late.duration_count;
        self.histogram.merge(&late.histogram);
        for (error, n) in &late.errors {
            *self.errors.entry(error.clone()).or_default() += n;
        }
        self.first_event_at = match (self.first_event_at, late.first_event_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.last_event_at = self.last_event_at.max(late.last_event_at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histogram::{RELATIVE_ACCURACY, exact_quantile};
    use proptest::prelude::*;

    /// An event as far as the rollups care.
    #[derive(Debug, Clone)]
    enum Kind {
        Request,
        Success(Option<i64>),
        Failure(Option<i64>),
        Cancellation,
    }

    #[derive(Debug, Clone)]
    struct Event {
        kind: Kind,
        user: Option<u8>,
        model: Option<u8>,
        error: Option<u8>,
        message: Option<u8>,
        batch: Option<i64>,
        queue: Option<i64>,
        minute: i64,
    }

    fn uuid(n: u8) -> Uuid {
        Uuid::from_u128(u128::from(n) + 1)
    }

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_820_400 + minute * 60, 0).unwrap()
    }

    type Rollups = (
        HourRollup,
        BTreeMap<Option<u8>, ModelRollup>,
        BTreeMap<Option<u8>, FailureRollup>,
        BTreeMap<u8, UserRollup>,
    );

    /// The rollups of `events`, computed here the long way: what the SQL
    /// computes for an hour's raw events.
    fn rollup(events: &[Event]) -> Rollups {
        let mut hour = HourRollup {
            hist_complete: true,
            users_complete: true,
            percentiles_exact: Some(true),
            ..HourRollup::default()
        };
        let mut models: BTreeMap<Option<u8>, ModelRollup> = BTreeMap::new();
        let mut failures: BTreeMap<Option<u8>, FailureRollup> = BTreeMap::new();
        let mut users: BTreeMap<u8, UserRollup> = BTreeMap::new();
        let mut durations = Vec::new();
        for e in events {
            if let Some(user) = e.user {
                hour.users.insert(uuid(user));
                let u = users.entry(user).or_default();
                let time = at(e.minute);
                u.first_event_at = Some(u.first_event_at.map_or(time, |t| t.min(time)));
                u.last_event_at = u.last_event_at.max(Some(time));
                match e.kind {
                    Kind::Request => u.requests += 1,
                    Kind::Cancellation => u.cancelled += 1,
                    Kind::Success(duration) => {
                        u.successful += 1;
                        if let Some(d) = duration {
                            u.duration_sum += d;
                            u.duration_count += 1;
                            u.histogram.add(d);
                        }
                    }
                    Kind::Failure(_) => {
                        u.failed += 1;
                        *u.errors
                            .entry(e.error.map(|n| format!("E{n}")))
                            .or_default() += 1;
                    }
                }
            }
            if let Some(q) = e.queue {
                hour.queue_sum += q;
                hour.queue_samples += 1;
                hour.max_queue = hour.max_queue.max(Some(q));
            }
            match e.kind {
                Kind::Request => hour.requests += 1,
                Kind::Cancellation => hour.cancelled += 1,
                Kind::Success(duration) | Kind::Failure(duration) => {
                    let ok = matches!(e.kind, Kind::Success(_));
                    let model = models.entry(e.model).or_default();
                    model.total += 1;
                    model.last_used_at = model.last_used_at.max(Some(at(e.minute)));
                    if ok {
                        hour.successful += 1;
                        hour.images += e.batch.unwrap_or(1);
                        model.successful += 1;
                        if let Some(d) = duration {
                            hour.duration_sum += d;
                            hour.duration_count += 1;
                            hour.histogram.add(d);
                            durations.push(d);
                            model.duration_sum += d;
                            model.duration_count += 1;
                            model.histogram.add(d);
                        }
                    } else {
                        hour.failed += 1;
                        model.failed += 1;
                        let failure = failures.entry(e.error).or_default();
                        failure.failures += 1;
                        if let Some(d) = duration {
                            failure.duration_sum += d;
                            failure.duration_count += 1;
                        }
                        if let Some(user) = e.user {
                            failure.users.insert(uuid(user));
                        }
                        if let Some(m) = e.message {
                            let m = format!("message {m}");
                            if !failure.sample_messages.contains(&m) {
                                failure.sample_messages.push(m);
                                failure.sample_messages.sort();
                                failure.sample_messages.truncate(SAMPLE_MESSAGES);
                            }
                        }
                    }
                }
            }
        }
        durations.sort_unstable();
        hour.percentiles = [0.5, 0.95, 0.99]
            .map(|q| exact_quantile(&durations, q).map(crate::histogram::whole_ms));
        hour.unique_users = hour.users.len() as i64;
        (hour, models, failures, users)
    }

    fn events() -> impl Strategy<Value = Vec<Event>> {
        let kind = prop_oneof![
            Just(Kind::Request),
            proptest::option::weighted(0.9, 0i64..3_600_000).prop_map(Kind::Success),
            proptest::option::of(0i64..100_000).prop_map(Kind::Failure),
            Just(Kind::Cancellation),
        ];
        proptest::collection::vec(
            (
                kind,
                proptest::option::of(0u8..12),
                proptest::option::of(0u8..4),
                proptest::option::of(0u8..3),
                proptest::option::of(0u8..5),
                proptest::option::of(1i64..8),
                proptest::option::of(0i64..50),
                0i64..60,
            )
                .prop_map(
                    |(kind, user, model, error, message, batch, queue, minute)| Event {
                        kind,
                        user,
                        model,
                        error,
                        message,
                        batch,
                        queue,
                        minute,
                    },
                ),
            0..120,
        )
    }

    proptest! {
        /// Rolling up what was there before a prune, then merging the
        /// rollup of what arrived late, equals rolling up all of it: every
        /// count and sum exactly, percentiles within the histogram's 1 %.
        #[test]
        fn merging_late_events_equals_rolling_up_everything(all in events(), split in 0usize..=120) {
            let split = split.min(all.len());
            let (before, late) = all.split_at(split);
            let (mut hour, mut models, mut failures, mut users) = rollup(before);
            let (late_hour, late_models, late_failures, late_users) = rollup(late);
            hour.merge(&late_hour);
            for (key, model) in late_models {
                models.entry(key).or_default().merge(&model);
            }
            for (key, failure) in late_failures {
                failures.entry(key).or_default().merge(&failure);
            }
            for (key, user) in late_users {
                users.entry(key).or_default().merge(&user);
            }
            let (want, want_models, want_failures, want_users) = rollup(&all);

            let counts = |h: &HourRollup| (
                h.requests, h.successful, h.failed, h.cancelled, h.duration_sum, h.duration_count,
                h.images, h.queue_sum, h.queue_samples, h.max_queue, h.unique_users,
            );
            prop_assert_eq!(counts(&hour), counts(&want));
            prop_assert_eq!(&hour.users, &want.users);
            prop_assert_eq!(&hour.histogram, &want.histogram);
            prop_assert_eq!(hour.avg_duration_ms(), want.avg_duration_ms());
            for (got, exact) in hour.percentiles.iter().zip(want.percentiles) {
                match (got, exact) {
                    (Some(got), Some(exact)) => prop_assert!(
                        (got - exact).abs() as f64 <= exact as f64 * RELATIVE_ACCURACY + 1.0,
                        "{} vs {}", got, exact
                    ),
                    (got, exact) => prop_assert_eq!(*got, exact),
                }
            }
            prop_assert_eq!(models, want_models);
            prop_assert_eq!(failures, want_failures);
            prop_assert_eq!(users, want_users);
        }
    }

    #[test]
    fn a_merged_hour_says_its_percentiles_are_no_longer_exact() {
        let mut hour = HourRollup {
            hist_complete: true,
            users_complete: true,
            percentiles_exact: Some(true),
            ..HourRollup::default()
        };
        let mut late = hour.clone();
        late.successful = 1;
        late.histogram.add(1_000);
        late.duration_sum = 1_000;
        late.duration_count = 1;
        hour.merge(&late);
        assert_eq!(hour.percentiles_exact, Some(false));
        assert!((hour.percentiles[0].unwrap() - 1_000).abs() <= 10);
    }

    #[test]
    fn the_original_services_hours_keep_their_figures_and_stay_partial() {
        // 11 requests, 3 users, avg 4000 ms over 8 successes; no histogram.
        let mut legacy = HourRollup {
            requests: 11,
            successful: 8,
            duration_sum: 32_000,
            duration_count: 8,
            unique_users: 3,
            percentiles: [Some(3_900), Some(7_000), Some(7_500)],
            legacy: true,
            ..HourRollup::default()
        };
        let mut late = HourRollup {
            hist_complete: true,
            users_complete: true,
            requests: 1,
            ..HourRollup::default()
        };
        late.users.insert(uuid(1));
        legacy.merge(&late);
        assert_eq!(legacy.requests, 12);
        assert_eq!(
            legacy.unique_users, 3,
            "a lower bound: the new user may be one of the three"
        );
        assert_eq!(legacy.percentiles, [Some(3_900), Some(7_000), Some(7_500)]);
        assert!(!legacy.hist_complete && !legacy.users_complete && legacy.legacy);
    }
}
