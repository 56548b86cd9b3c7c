//! Models: one row per model checkpoint (no checkpoint is a group of its
//! own), busiest first, from the per-hour-and-model rollups.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::figures::success_rate;
use super::window::Window;
use crate::histogram::{mean, percentiles};
use crate::render::{Cell, Layout, Report, Section};
use crate::rollup::ModelRollup;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelsReport {
    pub lookback_days: u32,
    pub models: Vec<ModelRow>,
    /// Hours in the window rolled up by the original service: they have no
    /// per-model figures.
    pub hours_without_breakdown: i64,
    #[serde(skip)]
    pub window: Window,
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

/// The report from the window's (model, hourly part) rows.
pub fn build(
    window: &Window,
    parts: impl IntoIterator<Item = (Option<String>, ModelRollup)>,
    legacy_hours: i64,
) -> ModelsReport {
    let mut by_model: BTreeMap<Option<String>, ModelRollup> = BTreeMap::new();
    for (model, part) in parts {
        by_model.entry(model).or_default().merge(&part);
    }
    let mut models: Vec<ModelRow> = by_model
        .into_iter()
        .map(|(model_checkpoint, m)| {
            let [p50, p95, _] = percentiles(&m.histogram);
            ModelRow {
                model_checkpoint,
                total_generations: m.total,
                successful_generations: m.successful,
                failed_generations: m.failed,
                success_rate_pct: success_rate(m.successful, m.failed),
                avg_duration_ms: mean(m.duration_sum, m.duration_count),
                p50_duration_ms: p50,
                p95_duration_ms: p95,
                last_used_at: m.last_used_at,
            }
        })
        .collect();
    models.sort_by(|a, b| {
        b.total_generations
            .cmp(&a.total_generations)
            .then_with(|| a.model_checkpoint.cmp(&b.model_checkpoint))
    });
    ModelsReport {
        lookback_days: window.days,
        models,
        hours_without_breakdown: legacy_hours,
        window: *window,
    }
}

impl Report for ModelsReport {
    fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    fn heading(&self) -> String {
        super::heading(
            "Models",
            self.lookback_days,
            self.window.start,
            self.window.end,
            self.window.tz,
        )
    }

    fn sections(&self) -> Vec<Section> {
        vec![Section {
            name: "models",
            title: None,
            layout: Layout::Rows,
            columns: vec![
                ("model_checkpoint", "model"),
                ("total_generations", "completions"),
                ("successful_generations", "ok"),
                ("failed_generations", "failed"),
                ("success_rate_pct", "success"),
                ("avg_duration_ms", "avg"),
                ("p50_duration_ms", "p50"),
                ("p95_duration_ms", "p95"),
                ("last_used_at", "last used"),
            ],
            rows: self
                .models
                .iter()
                .map(|m| {
                    vec![
                        Cell::Text(m.model_checkpoint.clone()),
                        Cell::Count(m.total_generations),
                        Cell::Count(m.successful_generations),
                        Cell::Count(m.failed_generations),
                        Cell::Percent(m.success_rate_pct),
                        Cell::Duration(m.avg_duration_ms),
                        Cell::Duration(m.p50_duration_ms),
                        Cell::Duration(m.p95_duration_ms),
                        Cell::Time(m.last_used_at),
                    ]
                })
                .collect(),
            bar: None,
        }]
    }

    fn notes(&self) -> Vec<String> {
        without_breakdown(self.hours_without_breakdown, "per-model")
    }

    fn json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

/// A footnote for hours that have no breakdown.
pub fn without_breakdown(hours: i64, what: &str) -> Vec<String> {
    if hours == 0 {
        return Vec::new();
    }
    vec![format!(
        "{hours} hour{} in the window were rolled up by the original service and have no {what} figures: \
         they are not in this table",
        if hours == 1 { "" } else { "s" }
    )]
}
