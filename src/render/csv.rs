//! CSV: one section of a report per output, with its JSON field names as
//! headers and values as machines want them (RFC 3339 times, plain
//! numbers, empty for absent). Text that a spreadsheet would run as a
//! formula gets a leading `'` unless `raw` asks for it exactly as stored:
//! stored text comes from producers, and a CSV is opened by people.

use std::io::Write;

use super::{Cell, Renderer, Report};
use crate::error::UsageError;

pub struct CsvRenderer {
    /// The section to print; the report's first when none.
    pub section: Option<String>,
    /// Text cells exactly as stored, formulas and all.
    pub raw: bool,
}

impl Renderer for CsvRenderer {
    fn render(&self, report: &dyn Report, out: &mut dyn Write) -> anyhow::Result<()> {
        let sections = report.sections();
        let section = match &self.section {
            None => sections.first(),
            Some(name) => sections.iter().find(|s| s.name == name.as_str()),
        };
        let Some(section) = section else {
            let names: Vec<&str> = sections.iter().map(|s| s.name).collect();
            return Err(UsageError(format!(
                "this report has no section '{}'; its sections are: {}",
                crate::text::escape_controls(self.section.as_deref().unwrap_or_default()),
                names.join(", ")
            ))
            .into());
        };
        let mut writer = csv::Writer::from_writer(out);
        writer
            .write_record(section.columns.iter().map(|(field, _)| *field))
            .map_err(unwrap_io)?;
        for row in &section.rows {
            writer
                .write_record(row.iter().map(|cell| match cell {
                    Cell::Text(Some(text)) if !self.raw => defused(text).into_owned(),
                    _ => value(cell),
                }))
                .map_err(unwrap_io)?;
        }
        writer.flush()?;
        Ok(())
    }
}

/// The `io::Error` inside a `csv::Error`, so a closed pipe is seen as one.
fn unwrap_io(err: csv::Error) -> anyhow::Error {
    match err.into_kind() {
        csv::ErrorKind::Io(io) => io.into(),
        other => anyhow::anyhow!("cannot write CSV: {other:?}"),
    }
}

/// Text a spreadsheet would take for a formula, with a leading `'`
/// (OWASP's advice for CSV injection); other text as it is.
pub fn defused(text: &str) -> std::borrow::Cow<'_, str> {
    if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}").into()
    } else {
        text.into()
    }
}

/// A cell as CSV text.
pub fn value(cell: &Cell) -> String {
    // As JSON writes it, so the two agree to the character.
    let number = |v: &Option<f64>| {
        v.and_then(serde_json::Number::from_f64)
            .map_or_else(String::new, |n| n.to_string())
    };
    match cell {
        Cell::Count(n) => n.to_string(),
        Cell::MaybeCount(n) => n.map_or_else(String::new, |n| n.to_string()),
        Cell::Decimal(v) | Cell::Percent(v) | Cell::Change(v) => number(v),
        Cell::Duration(v) => v.map_or_else(String::new, |v| v.to_string()),
        Cell::Time(at) => at.map_or_else(String::new, |at| {
            at.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        }),
        Cell::Date(date) => date.to_string(),
        Cell::Text(text) => text.clone().unwrap_or_default(),
        // A list stays JSON, so nothing in it is lost.
        Cell::List(items) => serde_json::to_string(items).unwrap_or_default(),
        Cell::Outcome(ok) => ok.map_or_else(String::new, |ok| ok.to_string()),
        Cell::Flag(flag) => flag.to_string(),
        Cell::Spark(values) => serde_json::to_string(values).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::{Layout, Section};

    struct Two;

    impl Report for Two {
        fn heading(&self) -> String {
            String::new()
        }
        fn sections(&self) -> Vec<Section> {
            vec![
                Section {
                    name: "summary",
                    title: None,
                    layout: Layout::Figures,
                    columns: vec![("lookback_days", "days"), ("rate", "rate")],
                    rows: vec![vec![Cell::Count(7), Cell::Percent(None)]],
                    bar: None,
                },
                Section {
                    name: "items",
                    title: None,
                    layout: Layout::Rows,
                    columns: vec![("name", "name"), ("n", "n"), ("at", "at")],
                    rows: vec![
                        vec![
                            Cell::Text(Some("a, \"quoted\"\nline".into())),
                            Cell::Count(1),
                            Cell::Time(Some("2026-11-27T14:00:00Z".parse().unwrap())),
                        ],
                        vec![
                            Cell::Text(Some("ü".into())),
                            Cell::Count(2),
                            Cell::Time(None),
                        ],
                    ],
                    bar: None,
                },
            ]
        }
        fn json(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    fn csv_of(section: Option<&str>) -> anyhow::Result<String> {
        let mut out = Vec::new();
        CsvRenderer {
            section: section.map(String::from),
            raw: false,
        }
        .render(&Two, &mut out)?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn sections_print_with_field_names_and_machine_values() {
        assert_eq!(csv_of(None).unwrap(), "lookback_days,rate\n7,\n");
        assert_eq!(
            csv_of(Some("items")).unwrap(),
            "name,n,at\n\"a, \"\"quoted\"\"\nline\",1,2026-11-27T14:00:00Z\nü,2,\n"
        );
        let err = csv_of(Some("nope")).unwrap_err().to_string();
        assert!(err.contains("summary, items"), "{err}");
    }

    /// Cells a spreadsheet would run, beside ones it would not.
    struct Formulas;

    impl Report for Formulas {
        fn heading(&self) -> String {
            String::new()
        }
        fn sections(&self) -> Vec<Section> {
            let texts = [
                "=HYPERLINK(\"http://x\",\"y\")",
                "+1",
                "-2",
                "@SUM(A1)",
                "\tx",
                "\rx",
                "a=b",
                " =x",
                "",
            ];
            vec![Section {
                name: "cells",
                title: None,
                layout: Layout::Rows,
                columns: vec![("text", "text"), ("n", "n"), ("rate", "rate")],
                rows: texts
                    .iter()
                    .map(|t| {
                        vec![
                            Cell::Text(Some((*t).to_string())),
                            Cell::Change(Some(-12.5)),
                            Cell::Percent(Some(-0.5)),
                        ]
                    })
                    .collect(),
                bar: None,
            }]
        }
        fn json(&self) -> serde_json::Value {
            serde_json::Value::Null
        }
    }

    fn formulas(raw: bool) -> Vec<csv::StringRecord> {
        let mut out = Vec::new();
        CsvRenderer { section: None, raw }
            .render(&Formulas, &mut out)
            .unwrap();
        csv::Reader::from_reader(out.as_slice())
            .records()
            .map(Result::unwrap)
            .collect()
    }

    #[test]
    fn text_a_spreadsheet_would_run_gets_a_quote_and_numbers_stay_numbers() {
        let cells: Vec<(String, String, String)> = formulas(false)
            .iter()
            .map(|r| (r[0].to_string(), r[1].to_string(), r[2].to_string()))
            .collect();
        let texts: Vec<&str> = cells.iter().map(|c| c.0.as_str()).collect();
        assert_eq!(
            texts,
            [
                "'=HYPERLINK(\"http://x\",\"y\")",
                "'+1",
                "'-2",
                "'@SUM(A1)",
                "'\tx",
                "'\rx",
                "a=b",
                " =x",
                "",
            ]
        );
        assert!(cells.iter().all(|c| c.1 == "-12.5" && c.2 == "-0.5"));
        let raw: Vec<String> = formulas(true).iter().map(|r| r[0].to_string()).collect();
        assert_eq!(raw[0], "=HYPERLINK(\"http://x\",\"y\")");
        assert_eq!(raw[4], "\tx");
    }
}
