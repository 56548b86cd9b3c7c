//! Tables for people: thousands separators, durations like `41.2 s` (one
//! unit per column), percentages, times in the report's zone, `—` for
//! absent figures, a bar column or a sparkline where a series is shown
//! (only on a terminal), footnotes for what a figure leaves out. On a
//! terminal a table fits its width with one line per row: shorter times
//! first, then no bar column, then abbreviated headers. Text from the data
//! is escaped (no control characters reach the terminal); bold headers as
//! `--color` says (on a terminal, never with `NO_COLOR`, by default).

use std::io::{IsTerminal, Write};

use chrono::{DateTime, Utc};
use comfy_table::{
    Attribute, Cell as TableCell, CellAlignment, ContentArrangement, LineStyle, Table, TableStyle,
    presets,
};

use super::{Cell, Layout, Renderer, Report, Section};
use crate::config::Color;
use crate::output::{DurationUnit as Unit, bar, thousands_signed};
use crate::text::escape_controls;

/// Width of a bar column, in characters.
const BAR_WIDTH: usize = 20;

/// One rule under the header and nothing else: dense enough for a day of
/// hourly points on one screen.
const HEADER_RULE: TableStyle =
    TableStyle::new().header_separator(LineStyle::none().fill('─').junction('─'));

#[derive(Clone)]
pub struct TableRenderer {
    /// Bold headers.
    pub styled: bool,
    /// Bars and sparklines: only on a terminal.
    pub graphics: bool,
    /// The terminal's width, which a table fits (none in a pipe or file).
    pub width: Option<usize>,
    /// The zone times are shown in.
    pub tz: chrono_tz::Tz,
}

/// How a table is made to fit: each step gives up something.
#[derive(Debug, Clone, Copy, Default)]
struct Fit {
    step: Step,
    /// A bar column, where the section has one.
    bar: bool,
    /// Text cells cut to this many characters.
    text: Option<usize>,
}

/// The ways of fitting, in the order they are tried: each keeps what the
/// one before gave up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    #[default]
    Full,
    /// `12-04 01:00` for `2026-12-04 01:00 UTC`.
    ShortTimes,
    /// Headers cut to their column's width.
    ShortHeaders,
    /// Units without a space: `1.5m`, `74.5%`.
    Compact,
}

impl Renderer for TableRenderer {
    fn render(&self, report: &dyn Report, out: &mut dyn Write) -> anyhow::Result<()> {
        writeln!(out, "{}", report.heading())?;
        if report.is_empty() {
            writeln!(out, "no data in this window")?;
        } else {
            for section in report.table_sections() {
                if let Some(title) = section.title {
                    writeln!(out, "\n{title}")?;
                }
                writeln!(out, "{}", self.table(&section))?;
            }
        }
        for note in report.notes() {
            writeln!(out, "* {note}")?;
        }
        Ok(())
    }
}

impl TableRenderer {
    /// For standard output: styled as `color` says, graphics and the
    /// terminal's width only on a terminal.
    pub fn for_stdout(color: Color, tz: chrono_tz::Tz) -> TableRenderer {
        let terminal = std::io::stdout().is_terminal();
        TableRenderer {
            styled: match color {
                Color::Always => true,
                Color::Never => false,
                Color::Auto => terminal && std::env::var_os("NO_COLOR").is_none(),
            },
            graphics: terminal,
            width: terminal
                .then(terminal_size::terminal_size)
                .flatten()
                .map(|(width, _)| usize::from(width.0)),
            tz,
        }
    }

    /// For a file: no style, no graphics, no width.
    pub fn plain(tz: chrono_tz::Tz) -> TableRenderer {
        TableRenderer {
            styled: false,
            graphics: false,
            width: None,
            tz,
        }
    }

    fn new_table(style: TableStyle, styled: bool) -> Table {
        let mut table = Table::new();
        table
            .load_style(style)
            .set_content_arrangement(ContentArrangement::Disabled);
        if styled {
            table.enforce_styling();
        } else {
            table.force_no_tty();
        }
        table
    }

    fn header(title: &str, styled: bool) -> TableCell {
        let cell = TableCell::new(title);
        if styled {
            cell.add_attribute(Attribute::Bold)
        } else {
            cell
        }
    }

    /// A section as a comfy table, one line per row: on a terminal, the
    /// first of ever shorter forms that fits its width.
    pub fn table(&self, section: &Section) -> Table {
        let full = Fit {
            bar: self.graphics,
            ..Fit::default()
        };
        let Some(width) = self.width else {
            return self.table_as(section, full, self.styled);
        };
        let fit = |step: Step, bar: bool| Fit {
            step,
            bar,
            text: None,
        };
        let tries = [
            full,
            fit(Step::ShortTimes, self.graphics),
            fit(Step::ShortTimes, false),
            fit(Step::ShortHeaders, false),
            fit(Step::Compact, false),
        ];
        let wide = |fit: Fit| widest(&self.table_as(section, fit, false));
        let chosen = tries
            .into_iter()
            .find(|&fit| wide(fit) <= width)
            .unwrap_or_else(|| {
                // Last, the text (a model's name, error messages) is cut.
                let compact = tries[4];
                let longest = section
                    .rows
                    .iter()
                    .flatten()
                    .filter(|cell| matches!(cell, Cell::Text(_) | Cell::List(_)))
                    .map(|cell| self.show_as(cell, compact, None).chars().count())
                    .max()
                    .unwrap_or(0);
                let excess = wide(compact).saturating_sub(width);
                Fit {
                    text: Some(longest.saturating_sub(excess).max(8)),
                    ..compact
                }
            });
        self.table_as(section, chosen, self.styled)
    }

    fn table_as(&self, section: &Section, fit: Fit, styled: bool) -> Table {
        match section.layout {
            Layout::Figures => {
                let mut table = Self::new_table(presets::NOTHING, false);
                // A sparkline as wide as the terminal leaves beside the titles.
                let titles = section
                    .columns
                    .iter()
                    .map(|(_, title)| title.chars().count())
                    .max()
                    .unwrap_or(0);
                let room = self
                    .width
                    .map(|width| width.saturating_sub(titles + 4).max(8));
                for row in &section.rows {
                    for ((_, title), cell) in section.columns.iter().zip(row) {
                        let shown = match cell {
                            Cell::Spark(_) if !self.graphics => continue,
                            Cell::Spark(values) => {
                                sparkline(&resampled(values, room.unwrap_or(values.len())))
                            }
                            _ => self.show_as(cell, fit, None),
                        };
                        table.add_row([
                            TableCell::new(title),
                            TableCell::new(shown).set_alignment(CellAlignment::Right),
                        ]);
                    }
                }
                table
            }
            Layout::Rows => {
                let mut table = Self::new_table(HEADER_RULE, styled);
                let units: Vec<Option<Unit>> = (0..section.columns.len())
                    .map(|column| column_unit(section, column))
                    .collect();
                let mut shown: Vec<Vec<String>> = section
                    .rows
                    .iter()
                    .map(|row| {
                        row.iter()
                            .zip(&units)
                            .map(|(cell, unit)| self.show_as(cell, fit, *unit))
                            .collect()
                    })
                    .collect();
                self.zone_where_times_repeat(section, &mut shown);
                let mut header: Vec<TableCell> = section
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(column, (_, title))| {
                        let title = if fit.step >= Step::ShortHeaders {
                            let cells = shown
                                .iter()
                                .filter_map(|row| row.get(column))
                                .map(|text| text.chars().count())
                                .max()
                                .unwrap_or(0);
                            abbreviated(title, cells)
                        } else {
                            (*title).to_string()
                        };
                        Self::header(&title, styled)
                    })
                    .collect();
                let bar_column = section.bar.filter(|_| fit.bar);
                if bar_column.is_some() {
                    header.push(Self::header("", styled));
                }
                table.set_header(header);
                let max = bar_column.map_or(0.0, |column| {
                    section
                        .rows
                        .iter()
                        .filter_map(|row| row.get(column).and_then(Cell::number))
                        .fold(0.0, f64::max)
                });
                for (row, texts) in section.rows.iter().zip(shown) {
                    let mut cells: Vec<TableCell> = row
                        .iter()
                        .zip(texts)
                        .map(|(cell, text)| {
                            let shown = TableCell::new(text);
                            if cell.is_numeric() {
                                shown.set_alignment(CellAlignment::Right)
                            } else {
                                shown
                            }
                        })
                        .collect();
                    if let Some(column) = bar_column {
                        let value = row.get(column).and_then(Cell::number).unwrap_or(0.0);
                        cells.push(TableCell::new(bar(value, max, BAR_WIDTH)));
                    }
                    table.add_row(cells);
                }
                table
            }
        }
    }

    /// Short times (no zone) that read the same for two instants — the
    /// hour a DST change repeats — get their zone back, in that column.
    fn zone_where_times_repeat(&self, section: &Section, shown: &mut [Vec<String>]) {
        for column in 0..section.columns.len() {
            let mut seen: std::collections::HashMap<&str, DateTime<Utc>> =
                std::collections::HashMap::new();
            let mut repeats = false;
            for (row, texts) in section.rows.iter().zip(shown.iter()) {
                if let (Some(Cell::Time(Some(at))), Some(text)) =
                    (row.get(column), texts.get(column))
                {
                    // Minutes apart is the same minute shown; an hour apart
                    // is the same wall-clock time twice.
                    repeats |= seen
                        .insert(text.as_str(), *at)
                        .is_some_and(|other| (other - *at).abs() >= chrono::TimeDelta::minutes(30));
                }
            }
            if !repeats {
                continue;
            }
            for (row, texts) in section.rows.iter().zip(shown.iter_mut()) {
                if let (Some(Cell::Time(Some(at))), Some(text)) =
                    (row.get(column), texts.get_mut(column))
                {
                    *text = at
                        .with_timezone(&self.tz)
                        .format("%m-%d %H:%M %Z")
                        .to_string();
                }
            }
        }
    }

    /// One value as people read it.
    pub fn show(&self, cell: &Cell) -> String {
        self.show_as(cell, Fit::default(), None)
    }

    /// One value, durations in `unit` when given (one per column), times
    /// shorter when `fit` asks.
    fn show_as(&self, cell: &Cell, fit: Fit, unit: Option<Unit>) -> String {
        let absent = || "—".to_string();
        match cell {
            Cell::Count(n) => thousands_signed(*n),
            Cell::MaybeCount(n) => n.map_or_else(absent, thousands_signed),
            Cell::Decimal(v) => v.map_or_else(absent, decimal),
            Cell::Percent(v) if fit.step >= Step::Compact => {
                v.map_or_else(absent, |v| format!("{v:.1}%"))
            }
            Cell::Percent(v) => v.map_or_else(absent, |v| format!("{v:.2} %")),
            Cell::Change(v) => v.map_or_else(absent, |v| {
                let sign = if v > 0.0 { "+" } else { "" };
                format!("{sign}{} %", decimal(v))
            }),
            Cell::Duration(v) => v.map_or_else(absent, |v| {
                let ms = v as f64;
                let shown = unit.unwrap_or_else(|| Unit::of(ms)).show(ms);
                if fit.step >= Step::Compact {
                    shown.replace(" min", "m").replace(' ', "")
                } else {
                    shown
                }
            }),
            Cell::Time(at) if fit.step >= Step::ShortTimes => at.map_or_else(absent, |at| {
                at.with_timezone(&self.tz).format("%m-%d %H:%M").to_string()
            }),
            Cell::Time(at) => at.map_or_else(absent, |at| self.time(at)),
            Cell::Date(date) => date.to_string(),
            Cell::Text(text) => text
                .as_deref()
                .map_or_else(absent, |t| cut(&escape_controls(t), fit.text)),
            Cell::List(items) => cut(
                &items
                    .iter()
                    .map(|item| escape_controls(item).into_owned())
                    .collect::<Vec<_>>()
                    .join("; "),
                fit.text,
            ),
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

/// `text` cut to `room` characters, the last an ellipsis.
fn cut(text: &str, room: Option<usize>) -> String {
    match room {
        Some(room) if text.chars().count() > room => {
            let mut cut: String = text.chars().take(room.saturating_sub(1)).collect();
            cut.push('…');
            cut
        }
        _ => text.to_string(),
    }
}

/// The widest line of a table, in terminal columns: a CJK model name
/// takes two per character, as comfy-table lays it out.
fn widest(table: &Table) -> usize {
    table
        .lines()
        .map(|line| unicode_width::UnicodeWidthStr::width(line.as_str()))
        .max()
        .unwrap_or(0)
}

/// A header cut to its column's width (at least 4): `requests` → `req.`.
fn abbreviated(title: &str, cells: usize) -> String {
    let room = cells.max(4);
    if title.chars().count() <= room {
        return title.to_string();
    }
    let mut short: String = title.chars().take(room.saturating_sub(1).max(2)).collect();
    short.truncate(short.trim_end().len());
    short.push('.');
    short
}

/// The unit of a column of durations: the one that suits its largest.
fn column_unit(section: &Section, column: usize) -> Option<Unit> {
    let largest = section
        .rows
        .iter()
        .filter_map(|row| match row.get(column) {
            Some(Cell::Duration(Some(ms))) => Some((*ms as f64).abs()),
            _ => None,
        })
        .fold(None, |max: Option<f64>, ms| {
            Some(max.map_or(ms, |max| max.max(ms)))
        })?;
    Some(Unit::for_column(largest))
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

/// A series of at most `points` values: each the mean of a run of the
/// original's, the last run taking what is left.
fn resampled(values: &[f64], points: usize) -> Vec<f64> {
    if values.len() <= points || points == 0 {
        return values.to_vec();
    }
    (0..points)
        .map(|i| {
            let (from, to) = (i * values.len() / points, (i + 1) * values.len() / points);
            let run = &values[from..to.max(from + 1)];
            run.iter().sum::<f64>() / run.len() as f64
        })
        .collect()
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
        TableRenderer::plain(chrono_tz::UTC)
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
        let berlin = TableRenderer::plain(chrono_tz::Europe::Berlin);
        assert_eq!(
            berlin.show(&Cell::Time(Some("2026-07-01T12:00:00Z".parse().unwrap()))),
            "2026-07-01 14:00 CEST"
        );
    }

    #[test]
    fn a_long_series_is_resampled_to_fit() {
        let values: Vec<f64> = (0..168).map(f64::from).collect();
        let short = resampled(&values, 60);
        assert_eq!(short.len(), 60);
        assert!(short.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(resampled(&values[..10], 60).len(), 10);
        assert_eq!(resampled(&[1.0, 3.0], 1), vec![2.0]);
    }

    #[test]
    fn a_duration_column_keeps_one_unit() {
        let section = Section {
            name: "t",
            title: None,
            layout: Layout::Rows,
            columns: vec![("d", "p95")],
            rows: vec![
                vec![Cell::Duration(Some(58_500))],
                vec![Cell::Duration(Some(66_000))],
            ],
            bar: None,
        };
        let table = renderer().table(&section).to_string();
        assert!(
            table.contains("58.5 s") && table.contains("66.0 s"),
            "{table}"
        );
        assert!(!table.contains("min"), "{table}");
    }

    #[test]
    fn a_table_fits_a_narrow_terminal_one_line_per_row() {
        let time: DateTime<Utc> = "2026-12-04T01:00:00Z".parse().unwrap();
        let section = Section {
            name: "t",
            title: None,
            layout: Layout::Rows,
            columns: vec![("t", "time"), ("r", "requests"), ("c", "cancelled")],
            rows: vec![vec![Cell::Time(Some(time)), Cell::Count(5), Cell::Count(1)]; 3],
            bar: Some(1),
        };
        let wide = TableRenderer {
            graphics: true,
            ..renderer()
        };
        let full = wide.table(&section).to_string();
        assert!(
            full.contains("2026-12-04 01:00 UTC") && full.contains('█'),
            "{full}"
        );
        for (width, wanted) in [(48, "12-04 01:00"), (30, "12-04 01:00"), (27, "req.")] {
            let narrow = TableRenderer {
                width: Some(width),
                ..wide.clone()
            };
            let table = narrow.table(&section).to_string();
            assert!(table.contains(wanted), "{width}: {table}");
            assert!(
                table.lines().all(|l| l.chars().count() <= width),
                "{width}:\n{table}"
            );
            assert_eq!(
                table.lines().count(),
                5,
                "{width}: one line per row:\n{table}"
            );
        }
    }

    #[test]
    fn a_repeated_hour_keeps_its_zone_in_short_times() {
        // 2026-11-01 01:00 happens twice in New York: EDT, then EST.
        let first: DateTime<Utc> = "2026-11-01T05:00:00Z".parse().unwrap();
        let again: DateTime<Utc> = "2026-11-01T06:00:00Z".parse().unwrap();
        let section = Section {
            name: "t",
            title: None,
            layout: Layout::Rows,
            columns: vec![("t", "time"), ("r", "requests"), ("c", "cancelled")],
            rows: vec![
                vec![Cell::Time(Some(first)), Cell::Count(5), Cell::Count(1)],
                vec![Cell::Time(Some(again)), Cell::Count(6), Cell::Count(2)],
            ],
            bar: None,
        };
        let narrow = TableRenderer {
            width: Some(40),
            ..TableRenderer::plain(chrono_tz::America::New_York)
        };
        let table = narrow.table(&section).to_string();
        assert!(
            table.contains("11-01 01:00 EDT") && table.contains("11-01 01:00 EST"),
            "{table}"
        );
    }

    #[test]
    fn wide_characters_count_as_two_columns() {
        let section = Section {
            name: "t",
            title: None,
            layout: Layout::Rows,
            columns: vec![("m", "model"), ("n", "completions")],
            rows: vec![vec![
                Cell::Text(Some("画像生成モデル大型版".into())),
                Cell::Count(12_345),
            ]],
            bar: None,
        };
        let narrow = TableRenderer {
            width: Some(30),
            ..renderer()
        };
        let table = narrow.table(&section).to_string();
        for line in table.lines() {
            assert!(
                unicode_width::UnicodeWidthStr::width(line) <= 30,
                "{line:?} is wider than 30 columns:\n{table}"
            );
        }
    }

    #[test]
    fn sparklines_scale_to_the_largest_value() {
        assert_eq!(sparkline(&[0.0, 1.0, 8.0, 4.0]), " ▂█▅");
        assert_eq!(sparkline(&[0.0, 0.0]), "  ");
    }
}
