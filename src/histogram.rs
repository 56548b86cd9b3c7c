//! A mergeable duration histogram with log-scaled buckets, in the manner of
//! DDSketch: a value `x ≥ 1` falls in bucket `k = ⌈log_γ x⌉` with
//! `γ = (1 + α) / (1 − α)`, and every value in bucket `k` lies within a
//! relative error `α` of the bucket's representative `2γᵏ / (γ + 1)`. With
//! `α = 1 %`, one hour of durations up to an hour long needs at most about
//! 800 buckets, and merging hours is adding counts key by key — which is
//! why window percentiles can be computed from hourly rows at all.
//!
//! PostgreSQL computes the keys when it rolls an hour up (see
//! [`KEY_SQL`]); this module merges them and answers quantiles.

use std::collections::BTreeMap;

/// Relative accuracy of every quantile answered from a histogram.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// `γ = (1 + α) / (1 − α)`.
pub const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// Bucket of zero (and, defensively, negative) durations: their logarithm
/// does not exist, and no positive integer maps below key 0.
pub const ZERO_KEY: i32 = -1;

/// The bucket key of a duration, as SQL over a column `duration_ms`; must
/// agree with [`key`].
pub const KEY_SQL: &str = "CASE WHEN duration_ms <= 0 THEN -1 ELSE ceil(ln(duration_ms::float8) / ln(1.0202020202020203::float8))::int END";

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

/// Bucket key of one duration in milliseconds.
pub fn key(duration_ms: i64) -> i32 {
    if duration_ms <= 0 {
        ZERO_KEY
    } else {
        ((duration_ms as f64).ln() / GAMMA.ln()).ceil() as i32
    }
}

/// The value a bucket stands for: within `α` of everything in it.
pub fn representative(key: i32) -> f64 {
    if key <= ZERO_KEY {
        0.0
    } else {
        2.0 * GAMMA.powi(key) / (GAMMA + 1.0)
    }
}

/// Counts per bucket key. Merging is adding counts, so it is associative
/// and commutative by construction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Histogram {
    counts: BTreeMap<i32, u64>,
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds a histogram from the parallel key/count arrays stored in
    /// an hourly row.
    pub fn from_parts(keys: &[i32], counts: &[i32]) -> Self {
        let mut histogram = Histogram::new();
        for (&key, &count) in keys.iter().zip(counts) {
            if count > 0 {
                *histogram.counts.entry(key).or_default() += count as u64;
            }
        }
        histogram
    }

    /// A histogram of durations given by their bucket keys (as SQL's
    /// [`KEY_SQL`] computes them).
    pub fn from_keys(keys: &[i32]) -> Self {
        let mut histogram = Histogram::new();
        for &key in keys {
            *histogram.counts.entry(key).or_default() += 1;
        }
        histogram
    }

    pub fn add(&mut self, duration_ms: i64) {
        *self.counts.entry(key(duration_ms)).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (&key, &count) in &other.counts {
            *self.counts.entry(key).or_default() += count;
        }
    }

    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Keys and counts as the hourly row stores them.
    pub fn to_parts(&self) -> (Vec<i32>, Vec<i32>) {
        self.counts
            .iter()
            .map(|(&key, &count)| (key, count as i32))
            .unzip()
    }

    /// The `q`-quantile as PostgreSQL's `percentile_cont` defines it
    /// (linear interpolation between the values at ranks ⌊q(n−1)⌋ and
    /// ⌈q(n−1)⌉), each value read as its bucket's representative; `None`
    /// when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * (n - 1) as f64;
        let (lower, upper) = (rank.floor() as u64, rank.ceil() as u64);
        let low = self.value_at(lower);
        let high = if upper == lower {
            low
        } else {
            self.value_at(upper)
        };
        Some(low + (high - low) * (rank - lower as f64))
    }

    /// Representative of the value at 0-based `rank` in sorted order.
    fn value_at(&self, rank: u64) -> f64 {
        let mut seen = 0;
        for (&key, &count) in &self.counts {
            seen += count;
            if seen > rank {
                return representative(key);
            }
        }
        self.counts
            .keys()
            .next_back()
            .map_or(0.0, |&key| representative(key))
    }
}

/// `percentile_cont` over exact values, for comparison in tests.
#[cfg(test)]
pub fn exact_quantile(sorted: &[i64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = q * (sorted.len() - 1) as f64;
    let (lower, upper) = (rank.floor() as usize, rank.ceil() as usize);
    let (low, high) = (sorted[lower] as f64, sorted[upper] as f64);
    Some(low + (high - low) * (rank - lower as f64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn every_duration_lies_within_one_percent_of_its_bucket() {
        for duration in (1..5_000).chain((5_000..10_000_000).step_by(997)) {
            let value = representative(key(duration));
            let error = (value - duration as f64).abs() / duration as f64;
            assert!(error <= RELATIVE_ACCURACY + 1e-12, "{duration}: {value}");
        }
        assert!(representative(key(0)).abs() < f64::EPSILON);
    }

    #[test]
    fn an_empty_histogram_has_no_quantiles() {
        assert_eq!(Histogram::new().quantile(0.5), None);
        assert_eq!(exact_quantile(&[], 0.5), None);
    }

    #[test]
    fn quantiles_follow_percentile_cont() {
        assert_eq!(exact_quantile(&[10, 20, 30, 40], 0.5), Some(25.0));
        assert_eq!(exact_quantile(&[10, 20, 30, 40], 0.95), Some(38.5));
        let mut h = Histogram::new();
        for d in [1000, 2000, 3000, 4000] {
            h.add(d);
        }
        let p50 = h.quantile(0.5).unwrap();
        assert!((p50 - 2500.0).abs() <= 25.0, "{p50}");
    }

    #[test]
    fn parts_round_trip() {
        let mut h = Histogram::new();
        for d in [0, 5, 5, 900, 41_000] {
            h.add(d);
        }
        let (keys, counts) = h.to_parts();
        assert_eq!(Histogram::from_parts(&keys, &counts), h);
        assert_eq!(h.count(), 5);
    }

    fn histogram_of(values: &[i64]) -> Histogram {
        let mut h = Histogram::new();
        for &v in values {
            h.add(v);
        }
        h
    }

    proptest! {
        #[test]
        fn merge_is_associative_and_commutative(
            a in proptest::collection::vec(0i64..3_600_000, 0..200),
            b in proptest::collection::vec(0i64..3_600_000, 0..200),
            c in proptest::collection::vec(0i64..3_600_000, 0..200),
        ) {
            let (ha, hb, hc) = (histogram_of(&a), histogram_of(&b), histogram_of(&c));
            let mut left = ha.clone();
            left.merge(&hb);
            left.merge(&hc);
            let mut right = hc.clone();
            let mut bc = hb.clone();
            bc.merge(&ha);
            right.merge(&bc);
            prop_assert_eq!(&left, &right);
            // And merging equals building from the union.
            let union: Vec<i64> = a.iter().chain(&b).chain(&c).copied().collect();
            prop_assert_eq!(left, histogram_of(&union));
        }

        #[test]
        fn merged_quantiles_stay_within_one_percent_of_the_exact_ones(
            parts in proptest::collection::vec(proptest::collection::vec(1i64..3_600_000, 1..300), 1..24),
            q in prop_oneof![Just(0.5), Just(0.95), Just(0.99), 0.0f64..1.0],
        ) {
            let mut merged = Histogram::new();
            for part in &parts {
                merged.merge(&histogram_of(part));
            }
            let mut all: Vec<i64> = parts.concat();
            all.sort_unstable();
            let exact = exact_quantile(&all, q).unwrap();
            let estimate = merged.quantile(q).unwrap();
            prop_assert!((estimate - exact).abs() <= exact * RELATIVE_ACCURACY + 1e-9,
                "q={} exact={} estimate={}", q, exact, estimate);
        }
    }
}
