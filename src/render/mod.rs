//! Printing reports: one renderer per format behind one trait, in the
//! manner of hyperfine's exporters. A report is a typed value (`report/`);
//! it says how it reads as tables — sections of typed cells — and as JSON
//! (its serde form), and the renderers never look at field names: a
//! duration is a duration because its cell says so.
//!
//! Data flows one way: database parts → report value → renderer. A
//! renderer never queries, a report never prints.

pub mod csv;
pub mod html;
pub mod json;
pub mod table;

use std::io::Write;

use chrono::{DateTime, NaiveDate, Utc};

/// A report as the renderers see it.
pub trait Report {
    /// One line naming the report and its window.
    fn heading(&self) -> String;
    /// Its tables; the first is what CSV prints by default.
    fn sections(&self) -> Vec<Section>;
    /// Its tables for people, where they differ (a sparkline, a
    /// comparison).
    fn table_sections(&self) -> Vec<Section> {
        self.sections()
    }
    /// Footnotes: what a figure leaves out.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
    /// Whether the window holds nothing to show: a table then says so
    /// instead of printing rows of zeros.
    fn is_empty(&self) -> bool {
        false
    }
    /// Its series as charts, for renderers that draw (HTML).
    fn charts(&self) -> Vec<Chart> {
        Vec::new()
    }
    /// The whole report as JSON, under the field names every format shares.
    fn json(&self) -> serde_json::Value;
}

/// One table of a report.
#[derive(Debug, Clone)]
pub struct Section {
    /// Its name for `--section` (CSV).
    pub name: &'static str,
    /// A title above it in a table for people.
    pub title: Option<&'static str>,
    pub layout: Layout,
    /// (JSON field name, title for people).
    pub columns: Vec<(&'static str, &'static str)>,
    pub rows: Vec<Vec<Cell>>,
    /// Draw a bar of this column's values after the last column.
    pub bar: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One row of figures, shown as "title  value" lines.
    Figures,
    /// A table with a header.
    Rows,
}

/// A value and what kind of figure it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Count(i64),
    /// A count that may be absent (a maximum of no samples).
    MaybeCount(Option<i64>),
    Decimal(Option<f64>),
    Percent(Option<f64>),
    /// A relative change, in percent: shown with its sign.
    Change(Option<f64>),
    /// Milliseconds.
    Duration(Option<i64>),
    Time(Option<DateTime<Utc>>),
    Date(NaiveDate),
    Text(Option<String>),
    List(Vec<String>),
    /// A completion's outcome.
    Outcome(Option<bool>),
    Flag(bool),
    /// A series over the window, drawn as a sparkline (tables only).
    Spark(Vec<f64>),
}

impl Cell {
    /// Whether it holds a number (shown right-aligned, even when absent).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Cell::Count(_)
                | Cell::MaybeCount(_)
                | Cell::Decimal(_)
                | Cell::Percent(_)
                | Cell::Change(_)
                | Cell::Duration(_)
        )
    }

    /// The value for a bar or chart, if it has one.
    pub fn number(&self) -> Option<f64> {
        match self {
            Cell::Count(n) => Some(*n as f64),
            Cell::MaybeCount(n) => n.map(|n| n as f64),
            Cell::Decimal(v) | Cell::Percent(v) | Cell::Change(v) => *v,
            Cell::Duration(v) => v.map(|v| v as f64),
            _ => None,
        }
    }
}

/// A chart of a report: what to draw, not how.
#[derive(Debug, Clone, PartialEq)]
pub enum Chart {
    Line(LineChart),
    Heatmap(Heatmap),
}

/// Series over time: one point per hour or day, a gap where a value is
/// absent, and an optional horizontal limit.
#[derive(Debug, Clone, PartialEq)]
pub struct LineChart {
    pub name: &'static str,
    pub title: String,
    pub x: Vec<DateTime<Utc>>,
    /// Whether x are days (labels as dates) rather than hours.
    pub daily: bool,
    pub series: Vec<Series>,
    pub unit: Unit,
    pub limit: Option<f64>,
}

/// A grid of values, darker where larger.
#[derive(Debug, Clone, PartialEq)]
pub struct Heatmap {
    pub name: &'static str,
    pub title: String,
    pub rows: Vec<String>,
    pub columns: Vec<String>,
    pub values: Vec<Vec<f64>>,
    /// What a value is, after the number: "requests an hour".
    pub per: &'static str,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub label: &'static str,
    pub values: Vec<Option<f64>>,
}

/// What a chart's values are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Count,
    Milliseconds,
    Percent,
}

/// How a report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Tables for people
    Table,
    /// One CSV table (pick it with --section)
    Csv,
    /// The whole report as one JSON object
    Json,
    /// One self-contained HTML page (inline CSS and SVG charts)
    Html,
}

/// What `--section` and `--csv-raw` ask of CSV output.
#[derive(Debug, Clone, Default)]
pub struct CsvChoice {
    pub section: Option<String>,
    pub raw: bool,
}

/// One renderer per format.
pub trait Renderer {
    fn render(&self, report: &dyn Report, out: &mut dyn Write) -> anyhow::Result<()>;
}

/// The renderer for a format; `csv` says which CSV table and whether its
/// text is written raw, `tz` the zone times are shown in.
pub fn renderer(
    format: Format,
    csv: CsvChoice,
    tz: chrono_tz::Tz,
    color: crate::config::Color,
) -> Box<dyn Renderer> {
    match format {
        Format::Table => Box::new(table::TableRenderer::for_stdout(color, tz)),
        Format::Csv => Box::new(csv::CsvRenderer {
            section: csv.section,
            raw: csv.raw,
        }),
        Format::Json => Box::new(json::JsonRenderer),
        Format::Html => Box::new(html::HtmlRenderer { tz }),
    }
}
