//! A report and how fresh it is: how many hours of its window were read
//! from raw events because their rollup is not done yet. JSON carries the
//! count; a table says so under the report when there are any.

use crate::render::{Chart, Report, Section};

pub struct Fresh {
    pub report: Box<dyn Report>,
    /// Hours of the window read from raw events (the current hour, hours
    /// late events came to), not from their rollup.
    pub raw_hours: usize,
}

impl Report for Fresh {
    fn heading(&self) -> String {
        self.report.heading()
    }

    fn sections(&self) -> Vec<Section> {
        self.report.sections()
    }

    fn table_sections(&self) -> Vec<Section> {
        self.report.table_sections()
    }

    fn notes(&self) -> Vec<String> {
        let mut notes = self.report.notes();
        if self.raw_hours > 0 {
            notes.push(format!(
                "{} of the window not rolled up yet {} counted from stored events",
                crate::output::counted(self.raw_hours as u64, "hour"),
                if self.raw_hours == 1 { "is" } else { "are" }
            ));
        }
        notes
    }

    fn is_empty(&self) -> bool {
        self.report.is_empty()
    }

    fn charts(&self) -> Vec<Chart> {
        self.report.charts()
    }

    fn json(&self) -> serde_json::Value {
        let mut json = self.report.json();
        if let serde_json::Value::Object(fields) = &mut json {
            fields.insert(
                "hours_from_raw_events".into(),
                serde_json::Value::from(self.raw_hours),
            );
        }
        json
    }
}
