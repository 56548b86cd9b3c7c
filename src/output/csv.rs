//! CSV: one table per output, taken from the report's JSON form so the
//! two can never disagree. A section is either the report's scalar fields
//! (one row) or one of its lists (one row per item); headers are the JSON
//! field names.

use std::io::Write;

use anyhow::Context;
use serde_json::{Map, Value};

/// The scalar fields of a report, as one section.
pub const SUMMARY: &str = "summary";

/// Writes `section` of `report` (a JSON object) as CSV.
pub fn write(out: impl Write, report: &Value, section: &str) -> anyhow::Result<()> {
    let object = report.as_object().context("a report is a JSON object")?;
    let rows: Vec<Map<String, Value>> = if section == SUMMARY {
        vec![
            object
                .iter()
                .filter(|(_, v)| !v.is_array())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ]
    } else {
        object
            .get(section)
            .and_then(Value::as_array)
            .with_context(|| format!("the report has no section {section}"))?
            .iter()
            .filter_map(|item| item.as_object().cloned())
            .collect()
    };
    let mut writer = csv::Writer::from_writer(out);
    let header: Vec<String> = match rows.first() {
        Some(first) => first.keys().cloned().collect(),
        None => Vec::new(),
    };
    if !header.is_empty() {
        writer.write_record(&header).map_err(unwrap_io)?;
    }
    for row in &rows {
        writer
            .write_record(
                header
                    .iter()
                    .map(|key| cell(row.get(key).unwrap_or(&Value::Null))),
            )
            .map_err(unwrap_io)?;
    }
    writer.flush()?;
    Ok(())
}

/// The `io::Error` inside a `csv::Error`, so a closed pipe is seen as one.
fn unwrap_io(err: csv::Error) -> anyhow::Error {
    match err.into_kind() {
        csv::ErrorKind::Io(io) => io.into(),
        other => anyhow::anyhow!("cannot write CSV: {other:?}"),
    }
}

/// A JSON value as CSV text: null is empty, strings are themselves, lists
/// stay JSON so nothing in them is lost.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn csv_of(report: &Value, section: &str) -> String {
        let mut out = Vec::new();
        write(&mut out, report, section).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn scalar_fields_make_the_summary_and_lists_their_own_tables() {
        let report = json!({
            "lookback_days": 7,
            "rate": null,
            "items": [{"name": "a, \"quoted\"\nline", "n": 1}, {"name": "ü", "n": 2}],
        });
        assert_eq!(csv_of(&report, SUMMARY), "lookback_days,rate\n7,\n");
        assert_eq!(
            csv_of(&report, "items"),
            "name,n\n\"a, \"\"quoted\"\"\nline\",1\nü,2\n"
        );
        assert!(write(Vec::new(), &report, "nope").is_err());
    }
}
