//! One user's report: counts, success rate and durations over the window,
//! the last 20 completions, failures by error type.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::window::Window;
use crate::render::{Cell, Layout, Report, Section};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UserReport {
    pub user_id: Uuid,
    pub lookback_days: u32,
    pub total_requests: i64,
    pub successful_generations: i64,
    pub failed_generations: i64,
    pub cancelled_generations: i64,
    pub success_rate_pct: Option<f64>,
    pub avg_duration_ms: Option<i64>,
    pub p50_duration_ms: Option<i64>,
    pub p95_duration_ms: Option<i64>,
    /// The percentiles are exact (false: from merged histograms, ≤ 1 %).
    pub percentiles_exact: bool,
    pub first_generation_at: Option<DateTime<Utc>>,
    pub last_generation_at: Option<DateTime<Utc>>,
    pub recent_activity: Vec<Activity>,
    pub failure_breakdown: Vec<ErrorCount>,
    #[serde(skip)]
    pub window: Window,
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

impl Report for UserReport {
    fn heading(&self) -> String {
        super::heading(
            &format!("User {}", self.user_id),
            self.lookback_days,
            self.window.start,
            self.window.end,
            self.window.tz,
        )
    }

    fn sections(&self) -> Vec<Section> {
        vec![
            Section {
                name: "summary",
                title: None,
                layout: Layout::Figures,
                columns: vec![
                    ("user_id", "user"),
                    ("lookback_days", "days"),
                    ("total_requests", "requests"),
                    ("successful_generations", "successful"),
                    ("failed_generations", "failed"),
                    ("cancelled_generations", "cancelled"),
                    ("success_rate_pct", "success rate"),
                    ("avg_duration_ms", "average duration"),
                    ("p50_duration_ms", "p50 duration"),
                    ("p95_duration_ms", "p95 duration"),
                    ("percentiles_exact", "percentiles exact"),
                    ("first_generation_at", "first seen"),
                    ("last_generation_at", "last seen"),
                ],
                rows: vec![vec![
                    Cell::Text(Some(self.user_id.to_string())),
                    Cell::Count(i64::from(self.lookback_days)),
                    Cell::Count(self.total_requests),
                    Cell::Count(self.successful_generations),
                    Cell::Count(self.failed_generations),
                    Cell::Count(self.cancelled_generations),
                    Cell::Percent(self.success_rate_pct),
                    Cell::Duration(self.avg_duration_ms),
                    Cell::Duration(self.p50_duration_ms),
                    Cell::Duration(self.p95_duration_ms),
                    Cell::Flag(self.percentiles_exact),
                    Cell::Time(self.first_generation_at),
                    Cell::Time(self.last_generation_at),
                ]],
                bar: None,
            },
            Section {
                name: "recent_activity",
                title: Some("Recent completions"),
                layout: Layout::Rows,
                columns: vec![
                    ("timestamp", "time"),
                    ("success", "outcome"),
                    ("duration_ms", "duration"),
                    ("error_type", "error"),
                    ("generation_type", "type"),
                    ("model_checkpoint", "model"),
                ],
                rows: self
                    .recent_activity
                    .iter()
                    .map(|a| {
                        vec![
                            Cell::Time(Some(a.timestamp)),
                            Cell::Outcome(a.success),
                            Cell::Duration(a.duration_ms),
                            Cell::Text(a.error_type.clone()),
                            Cell::Text(a.generation_type.clone()),
                            Cell::Text(a.model_checkpoint.clone()),
                        ]
                    })
                    .collect(),
                bar: None,
            },
            Section {
                name: "failure_breakdown",
                title: Some("Failures by error type"),
                layout: Layout::Rows,
                columns: vec![("error_type", "error"), ("count", "failures")],
                rows: self
                    .failure_breakdown
                    .iter()
                    .map(|f| vec![Cell::Text(f.error_type.clone()), Cell::Count(f.count)])
                    .collect(),
                bar: None,
            },
        ]
    }

    /// For people: the summary without the figures the heading says.
    fn table_sections(&self) -> Vec<Section> {
        let mut sections = self.sections();
        let summary = &mut sections[0];
        summary.columns.drain(..2);
        summary.rows[0].drain(..2);
        let flag = summary
            .columns
            .iter()
            .position(|(f, _)| *f == "percentiles_exact");
        if let Some(at) = flag {
            summary.columns.remove(at);
            summary.rows[0].remove(at);
        }
        sections
    }

    fn notes(&self) -> Vec<String> {
        if self.percentiles_exact {
            Vec::new()
        } else {
            vec!["p50 and p95 come from merged hourly histograms (within 1 %): the window holds more \
                  successful completions than are read one by one"
                .to_string()]
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}
