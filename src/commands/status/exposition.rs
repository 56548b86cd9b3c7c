//! Status as `OpenMetrics` gauges, for Prometheus's textfile collector or
//! a scrape: each figure status learned, none it could not.

use chrono::{DateTime, Utc};

use super::Status;
use crate::monitoring::Exposition;
use crate::stream::identity::Identity;

/// A gauge of status: name, help, and its value if status learned it.
type Gauge = (&'static str, &'static str, Option<f64>);

/// Seconds since the epoch, as Prometheus writes times.
fn epoch(at: DateTime<Utc>) -> f64 {
    at.timestamp_millis() as f64 / 1_000.0
}

impl Status {
    /// The figures as metric families: (name, help, value). A figure
    /// status could not learn (Redis down, nothing transferred yet) is left
    /// out rather than shown as 0.
    pub(super) fn exposition(&self) -> String {
        let mut e = Exposition::default();
        let stream = [("stream", self.stream.as_str())];
        for (labels, figures) in [
            (&stream[..], self.stream_gauges()),
            (&[], self.stored_gauges()),
        ] {
            for (name, help, value) in figures {
                if let Some(value) = value {
                    e.family(name, help);
                    e.sample(name, labels, value);
                }
            }
        }
        let name = "genalytics_completions_last_hour";
        e.family(name, "Completions stored for the last hour, by outcome.");
        for (outcome, n) in [
            ("success", self.successful_last_hour),
            ("failure", self.failed_last_hour),
        ] {
            e.sample(name, &[("outcome", outcome)], n as f64);
        }
        let name = "genalytics_table_rows";
        e.family(name, "Rows of each table (estimated for large ones).");
        for t in &self.tables {
            e.sample(name, &[("table", &t.table)], t.rows as f64);
        }
        let name = "genalytics_table_size_bytes";
        e.family(name, "Size of each table with its indexes and TOAST.");
        for t in &self.tables {
            e.sample(name, &[("table", &t.table)], t.bytes as f64);
        }
        e.finish()
    }

    /// What Redis and the transfer state say about the stream.
    fn stream_gauges(&self) -> Vec<Gauge> {
        let flag = |b: bool| f64::from(u8::from(b));
        vec![
            (
                "genalytics_database_standby",
                "Whether the PostgreSQL server status read is a standby (1) or the primary (0).",
                Some(flag(self.database_role == "standby")),
            ),
            (
                "genalytics_standby_replay_lag_seconds",
                "How far the furthest standby streaming from the primary lags in replay.",
                self.standby_replay_lag_seconds,
            ),
            (
                "genalytics_redis_up",
                "Whether Redis answered status (1) or not (0).",
                Some(flag(self.redis_up)),
            ),
            (
                "genalytics_stream_length",
                "Entries in the Redis stream.",
                self.stream_length.map(|n| n as f64),
            ),
            (
                "genalytics_stream_cap_used_ratio",
                "The stream's length as a share of the producer's trim cap.",
                self.cap_used_pct.map(|pct| pct / 100.0),
            ),
            (
                "genalytics_untransferred_entries",
                "Entries not yet stored: what the producer's cap can destroy.",
                self.behind.map(|n| n as f64),
            ),
            (
                "genalytics_untransferred_cap_ratio",
                "Entries not yet stored as a share of the producer's cap.",
                self.behind_cap_pct.map(|pct| pct / 100.0),
            ),
            (
                "genalytics_oldest_untransferred_age_seconds",
                "Age of the oldest entry not yet stored (0: none).",
                self.redis_up
                    .then(|| self.oldest_untransferred_age_seconds.unwrap_or(0) as f64),
            ),
            (
                "genalytics_stream_replaced_below_position",
                "1: the stream was replaced below the position; transfer waits for --new-stream.",
                self.stream_identity
                    .as_ref()
                    .map(|id| flag(matches!(id, Identity::ResetBelow { .. }))),
            ),
            (
                "genalytics_last_transfer_timestamp_seconds",
                "When a transfer last committed.",
                self.last_transfer_at.map(epoch),
            ),
            (
                "genalytics_events_transferred",
                "Events stored from the stream so far (it only grows).",
                Some(self.events_transferred as f64),
            ),
            (
                "genalytics_stream_resets",
                "Times the stream was found replaced (Redis restarted empty, flushed, failed over).",
                Some(f64::from(self.stream_resets)),
            ),
        ]
    }

    /// What PostgreSQL says about what is stored.
    fn stored_gauges(&self) -> Vec<Gauge> {
        let count = |n: i64| Some(n as f64);
        vec![
            (
                "genalytics_rejected_entries",
                "Dead letters in generation_events_rejected.",
                count(self.rejected_entries),
            ),
            (
                "genalytics_newest_event_timestamp_seconds",
                "Time of the newest stored event.",
                self.newest_event_at.map(epoch),
            ),
            (
                "genalytics_rollup_read_raw",
                "Hours reports count from their stored events (raw or late) until their rollup.",
                count(self.hours_from_raw_events),
            ),
            (
                "genalytics_rollup_queued",
                "Hours queued for their rollup.",
                count(self.hours_awaiting_rollup),
            ),
            (
                "genalytics_rollup_stale",
                "Complete hours whose events are not all rolled up.",
                count(self.stale_hours),
            ),
            (
                "genalytics_rollup_failing",
                "Queued hours whose rollup failed.",
                count(self.failing_hours),
            ),
            (
                "genalytics_raw_horizon_timestamp_seconds",
                "Raw events are complete from this hour on (set by prune).",
                self.raw_horizon.map(epoch),
            ),
            (
                "genalytics_rollup_legacy",
                "Hours rolled up only by the original service.",
                count(self.legacy_hours),
            ),
            (
                "genalytics_late_events",
                "Late events listed for hours already rolled up, waiting for their rollup.",
                count(self.late_events_waiting),
            ),
            (
                "genalytics_default_partition_events",
                "Events whose times lie outside the window day partitions are made for.",
                count(self.events_outside_partitions),
            ),
            (
                "genalytics_warnings",
                "Warnings status gives, each a thing to act on.",
                Some(self.warnings.len() as f64),
            ),
        ]
    }
}
