//! Status as a table: its figures, and the tables' sizes.

use super::Status;
use crate::render::{Cell, Layout, Report, Section};

/// A figure the table shows: (field, title, cell).
type Figure = (&'static str, &'static str, Cell);

impl Status {
    /// (field, title, cell) for each figure the table shows.
    fn figures(&self) -> Vec<Figure> {
        let mut figures = self.stream_cells();
        figures.extend(self.stored_cells());
        figures
    }

    /// What Redis said of the stream.
    fn stream_cells(&self) -> Vec<Figure> {
        let count =
            |n: Option<u64>| Cell::Count(n.map_or(0, |n| i64::try_from(n).unwrap_or(i64::MAX)));
        vec![
            (
                "requests_last_24h",
                "requests per hour, 24 h",
                Cell::Spark(self.requests_last_24h.iter().map(|&n| n as f64).collect()),
            ),
            (
                "stream_length",
                "stream length",
                match self.stream_length {
                    Some(n) => count(Some(n)),
                    None => Cell::Text(None),
                },
            ),
            (
                "stream_identity",
                "stream",
                Cell::Text(
                    self.stream_identity
                        .as_ref()
                        .map(|id| id.name().to_string()),
                ),
            ),
            (
                "behind",
                "not yet transferred",
                match self.behind {
                    Some(n) => count(Some(n)),
                    None => Cell::Text(None),
                },
            ),
            (
                "behind_cap_pct",
                "of the producer's cap",
                Cell::Percent(self.behind_cap_pct),
            ),
            (
                "oldest_untransferred_at",
                "oldest not transferred",
                Cell::Time(self.oldest_untransferred_at),
            ),
            (
                "newest_entry_at",
                "newest entry",
                Cell::Time(self.newest_entry_at),
            ),
        ]
    }

    /// What PostgreSQL holds.
    fn stored_cells(&self) -> Vec<Figure> {
        vec![
            (
                "database",
                "database",
                Cell::Text(Some(format!("{} ({})", self.database, self.database_role))),
            ),
            (
                "standby_replay_lag_seconds",
                "standbys' replay lag, s",
                Cell::Decimal(self.standby_replay_lag_seconds),
            ),
            (
                "last_transfer_at",
                "last transfer",
                Cell::Time(self.last_transfer_at),
            ),
            (
                "events_transferred",
                "events transferred",
                Cell::Count(self.events_transferred),
            ),
            (
                "rejected_entries",
                "dead letters",
                Cell::Count(self.rejected_entries),
            ),
            (
                "newest_event_at",
                "newest stored event",
                Cell::Time(self.newest_event_at),
            ),
            (
                "hours_from_raw_events",
                "hours reports read beside rollups",
                Cell::Count(self.hours_from_raw_events),
            ),
            (
                "hours_awaiting_rollup",
                "hours awaiting rollup",
                Cell::Count(self.hours_awaiting_rollup),
            ),
            ("stale_hours", "stale hours", Cell::Count(self.stale_hours)),
            (
                "failing_hours",
                "hours failing rollup",
                Cell::Count(self.failing_hours),
            ),
            (
                "raw_horizon",
                "raw events complete from",
                Cell::Time(self.raw_horizon),
            ),
            (
                "legacy_hours",
                "hours from the original service",
                Cell::Count(self.legacy_hours),
            ),
            (
                "events_outside_partitions",
                "events in the default partition",
                Cell::Count(self.events_outside_partitions),
            ),
        ]
    }
}

impl Report for Status {
    fn heading(&self) -> String {
        format!(
            "Status of {}, {}",
            crate::text::escape_controls(&self.stream),
            self.at.format("%Y-%m-%d %H:%M:%S UTC")
        )
    }

    fn sections(&self) -> Vec<Section> {
        let figures = self.figures();
        let (columns, row): (Vec<_>, Vec<_>) = figures
            .into_iter()
            .map(|(field, title, cell)| ((field, title), cell))
            .unzip();
        vec![
            Section {
                name: "summary",
                title: None,
                layout: Layout::Figures,
                columns,
                rows: vec![row],
                bar: None,
            },
            Section {
                name: "tables",
                title: None,
                layout: Layout::Rows,
                columns: vec![("table", "table"), ("rows", "rows"), ("size", "size")],
                rows: self
                    .tables
                    .iter()
                    .map(|t| {
                        vec![
                            Cell::Text(Some(t.table.clone())),
                            Cell::Count(t.rows),
                            Cell::Text(Some(human_bytes(t.bytes))),
                        ]
                    })
                    .collect(),
                bar: None,
            },
        ]
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
