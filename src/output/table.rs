//! Tables for people, built from a report's JSON form: each value is
//! formatted by what its field name says it is (`*_ms` a duration, `*_pct`
//! a percentage, `*_at`/`timestamp` a UTC time, counts with thousands
//! separators, absent figures as `—`), with an optional bar column for a
//! series.

use comfy_table::{
    Attribute, Cell, CellAlignment, ContentArrangement, LineStyle, Table, TableStyle, presets,
};
use serde_json::{Map, Value};

use super::{bar, duration, thousands_signed};
use crate::text::escape_controls;

/// Width of a bar column, in characters.
const BAR_WIDTH: usize = 20;

/// Whether to style (bold headers): only on a terminal, never with `NO_COLOR`.
pub fn styled() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stdout()) && std::env::var_os("NO_COLOR").is_none()
}

/// One rule under the header and nothing else: dense enough for a day of
/// hourly points on one screen.
const HEADER_RULE: TableStyle =
    TableStyle::new().header_separator(LineStyle::none().fill('─').junction('─'));

fn new_table(style: TableStyle) -> Table {
    let mut table = Table::new();
    table
        .load_style(style)
        .set_content_arrangement(ContentArrangement::Dynamic);
    if !styled() {
        table.force_no_tty();
    }
    table
}

fn header_cell(title: &str) -> Cell {
    let cell = Cell::new(title);
    if styled() {
        cell.add_attribute(Attribute::Bold)
    } else {
        cell
    }
}

/// Rows of objects as a table of the given `(field, title)` columns, with
/// a bar of `bar_field` scaled to its largest value.
pub fn rows(items: &[Value], columns: &[(&str, &str)], bar_field: Option<&str>) -> Table {
    let mut table = new_table(HEADER_RULE);
    let mut header: Vec<Cell> = columns
        .iter()
        .map(|(_, title)| header_cell(title))
        .collect();
    if bar_field.is_some() {
        header.push(header_cell(""));
    }
    table.set_header(header);
    let max = bar_field.map_or(0.0, |field| {
        items
            .iter()
            .filter_map(|item| item.get(field).and_then(Value::as_f64))
            .fold(0.0, f64::max)
    });
    for item in items {
        let mut cells: Vec<Cell> = columns
            .iter()
            .map(|(field, _)| {
                let value = item.get(*field).unwrap_or(&Value::Null);
                let cell = Cell::new(format_value(field, value));
                if value.is_number() {
                    cell.set_alignment(CellAlignment::Right)
                } else {
                    cell
                }
            })
            .collect();
        if let Some(field) = bar_field {
            let value = item.get(field).and_then(Value::as_f64).unwrap_or(0.0);
            cells.push(Cell::new(bar(value, max, BAR_WIDTH)));
        }
        table.add_row(cells);
    }
    table
}

/// An object's fields as a two-column figure/value table.
pub fn figures(object: &Map<String, Value>, fields: &[(&str, &str)]) -> Table {
    let mut table = new_table(presets::NOTHING);
    for (field, title) in fields {
        let value = object.get(*field).unwrap_or(&Value::Null);
        table.add_row([
            Cell::new(title),
            Cell::new(format_value(field, value)).set_alignment(CellAlignment::Right),
        ]);
    }
    table
}

/// One value as people read it, judged by its field's name.
pub fn format_value(field: &str, value: &Value) -> String {
    match value {
        Value::Null => "—".to_string(),
        Value::Bool(true) if field == "success" => "ok".to_string(),
        Value::Bool(false) if field == "success" => "failed".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            if field.ends_with("_ms") {
                duration(v)
            } else if field.ends_with("_pct") {
                format!("{v:.2} %")
            } else if let Some(i) = n.as_i64() {
                thousands_signed(i)
            } else {
                format!(
                    "{}.{:02}",
                    thousands_signed(v.trunc() as i64),
                    ((v.fract().abs()) * 100.0).round() as i64 % 100
                )
            }
        }
        Value::String(text) if is_time_field(field) => chrono::DateTime::parse_from_rfc3339(text)
            .map_or_else(
                |_| text.clone(),
                |at| at.format("%Y-%m-%d %H:%M UTC").to_string(),
            ),
        // Text from the data never reaches the terminal as control codes.
        Value::String(text) => escape_controls(text).into_owned(),
        Value::Array(items) => items
            .iter()
            .map(|item| {
                item.as_str().map_or_else(
                    || item.to_string(),
                    |text| escape_controls(text).into_owned(),
                )
            })
            .collect::<Vec<_>>()
            .join("; "),
        Value::Object(_) => value.to_string(),
    }
}

fn is_time_field(field: &str) -> bool {
    field == "timestamp"
        || field.ends_with("_at")
        || field.starts_with("window_")
        || field.ends_with("_timestamp")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_are_formatted_by_their_field() {
        assert_eq!(format_value("avg_duration_ms", &json!(41_234)), "41.2 s");
        assert_eq!(format_value("success_rate_pct", &json!(97.5)), "97.50 %");
        assert_eq!(
            format_value("total_requests", &json!(1_234_567)),
            "1,234,567"
        );
        assert_eq!(format_value("avg_requests", &json!(1234.5)), "1,234.50");
        assert_eq!(format_value("p95_duration_ms", &Value::Null), "—");
        assert_eq!(
            format_value("timestamp", &json!("2026-11-27T14:00:00Z")),
            "2026-11-27 14:00 UTC"
        );
        assert_eq!(format_value("success", &json!(false)), "failed");
        assert_eq!(format_value("sample_messages", &json!(["a", "b"])), "a; b");
        assert_eq!(
            format_value("model_checkpoint", &json!("evil\u{1b}]0;title\u{7}\r")),
            "evil\\x1b]0;title\\x07\\r"
        );
        assert_eq!(
            format_value("sample_messages", &json!(["a\u{1b}[2J"])),
            "a\\x1b[2J"
        );
    }
}
