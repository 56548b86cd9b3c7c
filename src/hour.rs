//! Whole UTC hours: the unit of every rollup. One place rounds a time down
//! to its hour, for every time the tool accepts: chrono's `duration_trunc`
//! gives up after 2262, and falling back to the raw time would make rollup
//! "hours" such as 00:30 that overlap and count an event twice.

use chrono::{DateTime, TimeDelta, Utc};

const HOUR_SECONDS: i64 = 3_600;

/// Start of the UTC hour containing `at`.
pub fn floor(at: DateTime<Utc>) -> DateTime<Utc> {
    let start = at.timestamp().div_euclid(HOUR_SECONDS) * HOUR_SECONDS;
    // Only the first hour chrono can represent could fall outside it.
    DateTime::from_timestamp(start, 0).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Start of the first hour that begins at or after `at`.
pub fn ceil(at: DateTime<Utc>) -> DateTime<Utc> {
    let start = floor(at);
    if start == at {
        at
    } else {
        start
            .checked_add_signed(TimeDelta::hours(1))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Starts of the hours that begin in `[from, to)`, counting the hour that
/// contains `from`; lazy, so a span of centuries costs nothing up front.
pub fn starts(from: DateTime<Utc>, to: DateTime<Utc>) -> impl Iterator<Item = DateTime<Utc>> {
    std::iter::successors(Some(floor(from)), |at| {
        at.checked_add_signed(TimeDelta::hours(1))
    })
    .take_while(move |at| *at < to)
}

/// How many hours [`starts`] yields, without walking them.
pub fn count(from: DateTime<Utc>, to: DateTime<Utc>) -> u64 {
    let first = floor(from);
    if first >= to {
        return 0;
    }
    let span = (to - first).num_seconds();
    (span + HOUR_SECONDS - 1).div_euclid(HOUR_SECONDS) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timearg::parse_instant;
    use proptest::prelude::*;

    fn at(text: &str) -> DateTime<Utc> {
        parse_instant(text).unwrap()
    }

    #[test]
    fn floors_to_the_utc_hour_start_in_every_century() {
        assert_eq!(floor(at("2026-11-27T14:59:59.999999")), at("2026-11-27T14"));
        assert_eq!(floor(at("2300-01-01T00:45:00")), at("2300-01-01T00"));
        assert_eq!(floor(at("9999-12-31T23:30:00")), at("9999-12-31T23"));
        assert_eq!(floor(at("1900-01-01T00:00:01")), at("1900-01-01T00"));
        assert_eq!(ceil(at("2026-11-27T14:00:01")), at("2026-11-27T15"));
        assert_eq!(ceil(at("2026-11-27T14")), at("2026-11-27T14"));
    }

    #[test]
    fn starts_walks_whole_hours() {
        let hours: Vec<_> = starts(at("2026-11-27T22:30"), at("2026-11-28T01")).collect();
        assert_eq!(
            hours,
            [
                at("2026-11-27T22"),
                at("2026-11-27T23"),
                at("2026-11-28T00")
            ]
        );
        assert_eq!(count(at("2026-11-27T22:30"), at("2026-11-28T01")), 3);
        assert_eq!(count(at("2026-11-28T01"), at("2026-11-28T01")), 0);
        assert_eq!(count(at("1900-01-01"), at("9999-12-31")), 71_003_112);
    }

    proptest! {
        #[test]
        fn every_time_lands_on_a_whole_hour_at_or_before_it(
            secs in -2_208_988_800i64..253_402_300_799, nanos in 0u32..1_000_000_000,
        ) {
            let time = DateTime::from_timestamp(secs, nanos).unwrap();
            let start = floor(time);
            prop_assert!(start <= time);
            prop_assert!(time - start < TimeDelta::hours(1));
            prop_assert_eq!(start.timestamp() % 3_600, 0);
            prop_assert_eq!(start.timestamp_subsec_nanos(), 0);
            prop_assert_eq!(floor(start), start);
        }

        #[test]
        fn count_agrees_with_starts(
            from in 0i64..10_000_000, span in 0i64..1_000_000,
        ) {
            let from = DateTime::from_timestamp(1_700_000_000 + from, 0).unwrap();
            let to = from + TimeDelta::seconds(span);
            prop_assert_eq!(count(from, to), starts(from, to).count() as u64);
        }
    }
}
