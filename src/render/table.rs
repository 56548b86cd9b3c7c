//! Tables for people: thousands separators, durations like `41.2 s`,
//! percentages, times in the report's zone, `—` for absent figures, a bar
//! column or a sparkline where a series is shown, footnotes for what a
//! figure leaves out. Text from the data is escaped (no control characters
//! reach the terminal); bold headers only on a terminal, never with
//! `NO_COLOR`.

use std::io::Write;

use chrono::{DateTime, Utc};
use comfy_table::{
    Attribute, Cell as TableCell, CellAlignment, ContentArrangement, LineStyle, Table, TableStyle,
    presets,
};

use super::{Cell, Layout, Renderer, Report, Section};
use crate::output::{bar, duration, thousands_signed};
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

pub struct TableRenderer {
    pub styled: bool,
    /// The zone times are shown in.
    pub tz: chrono_tz::Tz,
}

impl Renderer for TableRenderer {
    fn render(&self, report: &dyn Report, out: &mut dyn Write) -> anyhow::Result<()> {
        writeln!(out, "{}", report.heading())?;
        for section in report.table_sections() {
            if let Some(title) = section.title {
                writeln!(out, "\n{title}")?;
            }
            writeln!(out, "{}", self.table(&section))?;
        }
        for note in report.notes() {
            writeln!(out, "* {note}")?;
        }
        Ok(())
    }
}

impl TableRenderer {
    fn new_table(&self, style: TableStyle) -> Table {
        let mut table = Table::new();
        table
            .load_style(style)
            .set_content_arrangement(ContentArrangement::Dynamic);
        if !self.styled {
            table.force_no_tty();
        }
        table
    }

    fn header(&self, title: &str) -> TableCell {
        let cell = TableCell::new(title);
        if self.styled {
            cell.add_attribute(Attribute::Bold)
        } else {
            cell
        }
    }

    /// A section as a comfy table.
    pub fn table(&self, section: &Section) -> Table {
        match section.layout {
            Layout::Figures => {
                let mut table = self.new_table(presets::NOTHING);
                for row in &section.rows {
                    for ((_, title), cell) in section.columns.iter().zip(row) {
                        table.add_row([
                            TableCell::new(title),
                            TableCell::new(self.show(cell)).set_alignment(CellAlignment::Right),
                        ]);
                    }
                }
                table
            }
            Layout::Rows => {
                let mut table = self.new_table(HEADER_RULE);
                let mut header: Vec<TableCell> = section
                    .columns
                    .iter()
                    .map(|(_, title)| self.header(title))
                    .collect();
                if section.bar.is_some() {
                    header.push(self.header(""));
                }
                table.set_header(header);
                let max = section.bar.map_or(0.0, |column| {
                    section
                        .rows
                        .iter()
                        .filter_map(|row| row.get(column).and_then(Cell::number))
                        .fold(0.0, f64::max)
                });
                for row in &section.rows {
                    let mut cells: Vec<TableCell> = row
                        .iter()
                        .map(|cell| {
                            let shown = TableCell::new(self.show(cell));
                            if cell.is_numeric() {
                                shown.set_alignment(CellAlignment::Right)
                            } else {
                                shown
                            }
                        })
                        .collect();
                    if let Some(column) = section.bar {
                        let value = row.get(column).and_then(Cell::number).unwrap_or(0.0);
                        cells.push(TableCell::new(bar(value, max, BAR_WIDTH)));
                    }
                    table.add_row(cells);
                }
                table
            }
        }
    }

    /// One value as people read it.
    pub fn show(&self, cell: &Cell) -> String {
        let absent = || "—".to_string();
        match cell {
            Cell::Count(n) => thousands_signed(*n),
            Cell::MaybeCount(n) => n.map_or_else(absent, thousands_signed),
            Cell::Decimal(v) => v.map_or_else(absent, decimal),
            Cell::Percent(v) => v.map_or_else(absent, |v| format!("{v:.2} %")),
            Cell::Change(v) => v.map_or_else(absent, |v| {
                let sign = if v > 0.0 { "+" } else { "" };
                format!("{sign}{} %", decimal(v))
            }),
            Cell::Duration(v) => v.map_or_else(absent, |v| duration(v as f64)),
            Cell::Time(at) => at.map_or_else(absent, |at| self.time(at)),
            Cell::Date(date) => date.to_string(),
            Cell::Text(text) => text
                .as_deref()
                .map_or_else(absent, |t| escape_controls(t).into_owned()),
            Cell::List(items) => items
                .iter()
                .map(|item| escape_controls(item).into_owned())
                .collect::<Vec<_>>()
                .join("; "),
            Cell::Outcome(ok) => match ok {
                Some(true) => "ok".to_string(),
                Some(false) => "failed".to_string(),
                None => absent(),
            },
            Cell::Flag(flag) => if *flag { "yes" } else { "no" }.to_string(),
            Cell::Spark(values) => sparkline(values),
        }
    }

    /// A time in the report's zone, to the minute.
    pub fn time(&self, at: DateTime<Utc>) -> String {
        at.with_timezone(&self.tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }
}

/// `1234.5` → `1,234.50`.
fn decimal(value: f64) -> String {
    let sign = if value < 0.0 { "-" } else { "" };
    let cents = (value.abs() * 100.0).round() as u64;
    format!(
        "{sign}{}.{:02}",
        crate::output::thousands(cents / 100),
        cents % 100
    )
}

/// A series as a line of eighth blocks, scaled to its largest value.
pub fn sparkline(values: &[f64]) -> String {
    const LEVELS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().fold(0.0, f64::max);
    values
        .iter()
        .map(|&v| {
            if max <= 0.0 || v <= 0.0 {
                ' '
            } else {
                LEVELS[(((v / max) * 7.0).round() as usize).min(7)]
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn renderer() -> TableRenderer {
        TableRenderer {
            styled: false,
            tz: chrono_tz::UTC,
        }
    }

    #[test]
    fn cells_are_shown_by_their_kind() {
        let r = renderer();
        assert_eq!(r.show(&Cell::Duration(Some(41_234))), "41.2 s");
        assert_eq!(r.show(&Cell::Percent(Some(97.5))), "97.50 %");
        assert_eq!(r.show(&Cell::Change(Some(4504.391))), "+4,504.39 %");
        assert_eq!(r.show(&Cell::Change(Some(-50.0))), "-50.00 %");
        assert_eq!(r.show(&Cell::Count(1_234_567)), "1,234,567");
        assert_eq!(r.show(&Cell::Decimal(Some(1_234.5))), "1,234.50");
        assert_eq!(r.show(&Cell::Decimal(Some(-0.5))), "-0.50");
        assert_eq!(r.show(&Cell::Duration(None)), "—");
        assert_eq!(
            r.show(&Cell::Time(Some("2026-11-27T14:00:00Z".parse().unwrap()))),
            "2026-11-27 14:00 UTC"
        );
        assert_eq!(r.show(&Cell::Outcome(Some(false))), "failed");
        assert_eq!(r.show(&Cell::List(vec!["a".into(), "b".into()])), "a; b");
        assert_eq!(
            r.show(&Cell::Text(Some("evil\u{1b}]0;title\u{7}\r".into()))),
            "evil\\x1b]0;title\\x07\\r"
        );
        assert_eq!(r.show(&Cell::List(vec!["a\u{1b}[2J".into()])), "a\\x1b[2J");
        let berlin = TableRenderer {
            styled: false,
            tz: chrono_tz::Europe::Berlin,
        };
        assert_eq!(
            berlin.show(&Cell::Time(Some("2026-07-01T12:00:00Z".parse().unwrap()))),
            "2026-07-01 14:00 CEST"
        );
    }

    #[test]
    fn sparklines_scale_to_the_largest_value() {
        assert_eq!(sparkline(&[0.0, 1.0, 8.0, 4.0]), " ▂█▅");
        assert_eq!(sparkline(&[0.0, 0.0]), "  ");
    }
}
