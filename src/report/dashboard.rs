//! `report html`: the page a manager reads — the overview's figures,
//! hourly requests and durations, the failure rate per day against an
//! optional limit, the weekday × hour heatmap, and the models and
//! error-type tables, all over one window. It is the reports themselves,
//! put together: the same values the JSON reports give.

use super::failures::FailuresReport;
use super::models::ModelsReport;
use super::overview::Overview;
use super::peak::PeakHours;
use super::trends::Trends;
use crate::render::{Chart, Report, Section};

pub struct Dashboard {
    pub overview: Overview,
    /// Hourly.
    pub trends: Trends,
    pub failures: FailuresReport,
    /// By weekday.
    pub peak: PeakHours,
    pub models: ModelsReport,
    /// Failure rate (percent) drawn as a limit on the daily chart.
    pub failure_limit_pct: Option<f64>,
}

impl Report for Dashboard {
    fn heading(&self) -> String {
        let window = &self.trends.window;
        super::heading(
            "genalytics report",
            window.days,
            window.start,
            window.end,
            window.tz,
        )
    }

    /// The overview's figures, then the models and the error types.
    fn sections(&self) -> Vec<Section> {
        let mut sections = self.overview.sections();
        sections.extend(self.models.sections());
        sections.push(self.failures.error_types_section());
        sections
    }

    fn charts(&self) -> Vec<Chart> {
        let mut charts = self.trends.charts();
        for mut chart in self.failures.charts() {
            if let Chart::Line(line) = &mut chart {
                line.limit = self.failure_limit_pct;
            }
            charts.push(chart);
        }
        charts.extend(self.peak.charts());
        charts
    }

    fn notes(&self) -> Vec<String> {
        let mut notes: Vec<String> = Vec::new();
        for note in self
            .overview
            .notes()
            .into_iter()
            .chain(self.trends.notes())
            .chain(self.failures.notes())
            .chain(self.models.notes())
        {
            if !notes.contains(&note) {
                notes.push(note);
            }
        }
        notes
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "overview": self.overview.json(),
            "trends": self.trends.json(),
            "failures": self.failures.json(),
            "peak_hours": self.peak.json(),
            "models": self.models.json(),
            "failure_limit_pct": self.failure_limit_pct,
        })
    }
}
