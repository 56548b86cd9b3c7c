//! One self-contained HTML page: inline CSS, charts as inline SVG drawn by
//! plotters, tables for the rest — no script, no font, no fetch, readable
//! in any browser and in a mail client. Figures come first, then charts,
//! then tables. Every value cell carries its JSON field name and raw value
//! (`data-field`, `data-value`), so a machine can read the page too and a
//! test can hold it to the JSON report.

use std::fmt::Write as _;
use std::io::Write;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::table::TableRenderer;
use super::{Cell, Chart, Heatmap, Layout, LineChart, Renderer, Report, Section, Series, Unit};
use crate::output::duration;

pub struct HtmlRenderer {
    /// The zone times are shown in.
    pub tz: chrono_tz::Tz,
}

/// Size of a line chart, in CSS pixels (it scales to the page's width).
const WIDTH: u32 = 960;
const HEIGHT: u32 = 300;

/// Series colours, in order, and the limit's.
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];
const LIMIT: RGBColor = RGBColor(214, 39, 40);

const CSS: &str = "
body { font: 15px/1.45 system-ui, -apple-system, 'Segoe UI', sans-serif; color: #222; margin: 0; background: #fafafa; }
main { max-width: 1000px; margin: 0 auto; padding: 1.5em; }
h1 { font-size: 1.4em; margin: 0 0 1em; }
h2 { font-size: 1.1em; margin: 1.6em 0 .5em; }
table { border-collapse: collapse; background: #fff; }
th, td { padding: .25em .7em; border-bottom: 1px solid #e4e4e4; text-align: left; vertical-align: top; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.figures th { font-weight: normal; color: #555; }
figure { margin: 1.6em 0; background: #fff; padding: .5em; border: 1px solid #e4e4e4; }
figcaption { font-weight: 600; margin-bottom: .3em; }
figure svg { width: 100%; height: auto; }
.legend span { margin-right: 1.2em; white-space: nowrap; }
.legend i { display: inline-block; width: 1.4em; height: .25em; vertical-align: middle; margin-right: .3em; }
table.heatmap td { width: 2.4em; height: 1.5em; padding: 0; border: 1px solid #fff; }
table.heatmap th { font-weight: normal; font-size: .8em; color: #555; padding: 0 .2em; }
p.note { color: #555; font-size: .9em; }
.scale span { display: inline-block; width: 1.6em; height: .9em; vertical-align: middle; }
@media (prefers-color-scheme: dark) {
  body { background: #121212; color: #ddd; }
  table, figure { background: #1c1c1c; }
  th, td, figure { border-color: #333; }
  table.figures th, table.heatmap th, p.note { color: #aaa; }
  table.heatmap td { border-color: #121212; }
  /* The charts are drawn on white: turned dark, their colours kept. */
  figure svg { filter: invert(.92) hue-rotate(180deg); }
}
";

impl Renderer for HtmlRenderer {
    fn render(&self, report: &dyn Report, out: &mut dyn Write) -> anyhow::Result<()> {
        out.write_all(self.page(report)?.as_bytes())?;
        Ok(())
    }
}

impl HtmlRenderer {
    /// The whole page.
    pub fn page(&self, report: &dyn Report) -> anyhow::Result<String> {
        let cells = TableRenderer::plain(self.tz);
        let heading = escape(&report.heading());
        let mut page = format!(
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
             <meta name=\"generator\" content=\"genalytics {}\">\n<title>{heading}</title>\n\
             <style>{CSS}</style>\n</head>\n<body>\n<main>\n<h1>{heading}</h1>\n",
            env!("CARGO_PKG_VERSION")
        );
        let sections = report.sections();
        for section in sections.iter().filter(|s| s.layout == Layout::Figures) {
            figures(&mut page, section, &cells);
        }
        for chart in report.charts() {
            match &chart {
                Chart::Line(line) => self.line_chart(&mut page, line)?,
                Chart::Heatmap(grid) => heatmap(&mut page, grid),
            }
        }
        for section in sections.iter().filter(|s| s.layout == Layout::Rows) {
            rows(&mut page, section, &cells);
        }
        for note in report.notes() {
            let _ = writeln!(page, "<p class=\"note\">* {}</p>", escape(&note));
        }
        page.push_str("</main>\n</body>\n</html>\n");
        Ok(page)
    }

    fn line_chart(&self, page: &mut String, chart: &LineChart) -> anyhow::Result<()> {
        let LineChart {
            name,
            title,
            x,
            daily,
            series,
            unit,
            limit,
        } = chart;
        let svg = draw_lines(x, *daily, series, *unit, *limit, self.tz)?;
        let _ = write!(
            page,
            "<figure id=\"chart-{name}\" class=\"chart\">\n<figcaption>{}</figcaption>\n{svg}\n<p class=\"legend\">",
            escape(title)
        );
        for (series, colour) in series.iter().zip(COLOURS) {
            let _ = write!(
                page,
                "<span><i style=\"background:{}\"></i>{}</span>",
                hex(colour),
                escape(series.label)
            );
        }
        if let Some(limit) = limit {
            let _ = write!(
                page,
                "<span><i style=\"background:{}\"></i>limit {}</span>",
                hex(LIMIT),
                escape(&value_label(*limit, *unit))
            );
        }
        page.push_str("</p>\n</figure>\n");
        Ok(())
    }
}

/// Contiguous runs of present values, as (index, value) points: a line
/// breaks where a value is absent rather than dropping to zero.
pub fn runs(values: &[Option<f64>]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = Vec::new();
    let mut run = Vec::new();
    for (index, value) in values.iter().enumerate() {
        match value {
            Some(v) => run.push((index as f64, *v)),
            None if !run.is_empty() => runs.push(std::mem::take(&mut run)),
            None => {}
        }
    }
    if !run.is_empty() {
        runs.push(run);
    }
    runs
}

fn draw_lines(
    x: &[chrono::DateTime<chrono::Utc>],
    daily: bool,
    series: &[Series],
    unit: Unit,
    limit: Option<f64>,
    tz: chrono_tz::Tz,
) -> anyhow::Result<String> {
    let fail = |err: &dyn std::fmt::Display| anyhow::anyhow!("cannot draw a chart: {err}");
    let mut svg = String::new();
    // Each point's place on the drawing and what it says on hover.
    let mut hovers: Vec<((i32, i32), String)> = Vec::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let last = x.len().saturating_sub(1).max(1) as f64;
        // Bars need half a slot on each side.
        let (left, right) = if daily {
            (-0.5, last + 0.5)
        } else {
            (0.0, last)
        };
        let top = series
            .iter()
            .flat_map(|s| s.values.iter().flatten().copied())
            .chain(limit)
            .fold(0.0_f64, f64::max);
        let top = if top > 0.0 { top * 1.1 } else { 1.0 };
        let when = |index: f64| -> String {
            let Some(at) = x.get(index.round().max(0.0) as usize) else {
                return String::new();
            };
            let local = at.with_timezone(&tz);
            if daily {
                local.format("%b %d").to_string()
            } else {
                local.format("%b %d %H:%M").to_string()
            }
        };
        // Ticks where a reader looks: local midnights (every sixth hour
        // when the window is short), every day or week for daily points.
        let ticks: Vec<(f64, String)> = ticks(x, daily, tz)
            .into_iter()
            .map(|index| (index, tick_label(x, index, daily, tz)))
            .collect();
        let y_label = |value: &f64| value_label(*value, unit);
        let (x_title, y_title) = axis_titles(daily, unit, tz);
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            // Room for the last label, centred on the last point.
            .margin_right(40)
            .x_label_area_size(48)
            .y_label_area_size(92)
            .build_cartesian_2d(left..right, 0.0..top)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            // The x labels are drawn at the chosen ticks below.
            .x_labels(0)
            .disable_x_mesh()
            .y_labels(6)
            .y_label_formatter(&y_label)
            .x_desc(x_title)
            .y_desc(y_title)
            .light_line_style(RGBColor(238, 238, 238))
            .bold_line_style(RGBColor(220, 220, 220))
            .label_style(("sans-serif", 16))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(|e| fail(&e))?;
        draw_ticks(&mut chart, &root, &ticks).map_err(|e| fail(&e))?;
        let lines = series.len().max(1) as f64;
        for (k, (series, colour)) in series.iter().zip(COLOURS).enumerate() {
            if daily {
                // A day is a bar (side by side when several series).
                let width = 0.8 / lines;
                let bars = series.values.iter().enumerate().filter_map(|(i, v)| {
                    let from = i as f64 - 0.4 + k as f64 * width;
                    v.map(|v| Rectangle::new([(from, 0.0), (from + width, v)], colour.filled()))
                });
                chart.draw_series(bars).map_err(|e| fail(&e))?;
            } else {
                for run in runs(&series.values) {
                    chart
                        .draw_series(LineSeries::new(run, colour.stroke_width(2)))
                        .map_err(|e| fail(&e))?;
                }
            }
            for (i, value) in series.values.iter().enumerate() {
                if let Some(value) = value {
                    hovers.push((
                        chart.backend_coord(&(i as f64, *value)),
                        format!(
                            "{} {}: {}",
                            series.label,
                            when(i as f64),
                            value_label(*value, unit)
                        ),
                    ));
                }
            }
        }
        if let Some(limit) = limit {
            chart
                .draw_series(LineSeries::new(
                    [(left, limit), (right, limit)],
                    LIMIT.stroke_width(1),
                ))
                .map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    with_hover_points(&mut svg, &hovers);
    Ok(svg)
}

/// Each point says its value on hover: a transparent circle over it with
/// a title, no script; appended to the drawing.
fn with_hover_points(svg: &mut String, hovers: &[((i32, i32), String)]) {
    let mut points = String::from("<g class=\"points\">");
    for ((cx, cy), says) in hovers {
        let _ = write!(
            points,
            "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"6\" fill=\"#000\" fill-opacity=\"0\"><title>{}</title></circle>",
            escape(says)
        );
    }
    points.push_str("</g>\n</svg>");
    if let Some(end) = svg.rfind("</svg>") {
        svg.replace_range(end.., &points);
    }
}

/// A line chart as plotters draws it.
type Drawing<'a, 'b> = ChartContext<
    'a,
    SVGBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

/// A mark and a label below the axis at each tick.
fn draw_ticks(
    chart: &mut Drawing<'_, '_>,
    root: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    ticks: &[(f64, String)],
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    for (tick, label) in ticks {
        // A short mark on the axis (a rectangle: the lines drawn are data).
        let (px, py) = chart.backend_coord(&(*tick, 0.0));
        root.draw(&Rectangle::new(
            [(px, py), (px + 1, py + 4)],
            BLACK.filled(),
        ))?;
        let (px, py) = chart.backend_coord(&(*tick, 0.0));
        root.draw(&Text::new(
            label.clone(),
            (px, py + 6),
            ("sans-serif", 16)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Center, VPos::Top)),
        ))?;
    }
    Ok(())
}

/// A tick's label: the local date at midnight (and for daily points), the
/// local time otherwise.
fn tick_label(
    x: &[chrono::DateTime<chrono::Utc>],
    index: f64,
    daily: bool,
    tz: chrono_tz::Tz,
) -> String {
    let Some(at) = x.get(index.round().max(0.0) as usize) else {
        return String::new();
    };
    let local = at.with_timezone(&tz);
    if daily || chrono::Timelike::hour(&local) == 0 {
        local.format("%b %d").to_string()
    } else {
        local.format("%H:%M").to_string()
    }
}

/// The indices of `x` to put a tick at: local midnights, or every sixth
/// hour when the window holds fewer than three; each day for daily points,
/// or each week when there are more than 14. At most about 12 labels.
fn ticks(x: &[chrono::DateTime<chrono::Utc>], daily: bool, tz: chrono_tz::Tz) -> Vec<f64> {
    use chrono::Timelike;
    let pick = |keep: &dyn Fn(usize, u32) -> bool| -> Vec<f64> {
        x.iter()
            .enumerate()
            .filter(|(i, at)| keep(*i, at.with_timezone(&tz).hour()))
            .map(|(i, _)| i as f64)
            .collect()
    };
    let mut chosen = if daily {
        let step = if x.len() > 14 { 7 } else { 1 };
        pick(&|i, _| i % step == 0)
    } else {
        let midnights = pick(&|_, hour| hour == 0);
        if midnights.len() >= 3 {
            midnights
        } else {
            pick(&|_, hour| hour % 6 == 0)
        }
    };
    let step = chosen.len().div_ceil(12).max(1);
    if step > 1 {
        chosen = chosen.into_iter().step_by(step).collect();
    }
    chosen
}

/// What the axes measure: the time (and its zone) and the unit.
fn axis_titles(daily: bool, unit: Unit, tz: chrono_tz::Tz) -> (String, &'static str) {
    let y = match unit {
        Unit::Count => "count",
        Unit::Milliseconds => "duration",
        Unit::Percent => "percent",
    };
    (format!("{} ({tz})", if daily { "day" } else { "hour" }), y)
}

/// A value on an axis or a limit, in the chart's unit.
fn value_label(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Count => {
            if value.fract() == 0.0 {
                crate::output::thousands(value.max(0.0) as u64)
            } else {
                format!("{value:.1}")
            }
        }
        Unit::Milliseconds => duration(value),
        Unit::Percent => format!("{value:.1} %"),
    }
}

fn hex(colour: RGBColor) -> String {
    format!("#{:02x}{:02x}{:02x}", colour.0, colour.1, colour.2)
}

/// A heatmap as a table of shaded cells: readable without script, and its
/// values in `title` and `data-value`.
fn heatmap(page: &mut String, chart: &Heatmap) {
    let Heatmap {
        name,
        title,
        rows,
        columns,
        values,
        per,
    } = chart;
    let [r, g, b] = [COLOURS[0].0, COLOURS[0].1, COLOURS[0].2];
    let max = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    let _ = write!(
        page,
        "<figure id=\"chart-{name}\" class=\"chart\">\n<figcaption>{}</figcaption>\n<table class=\"heatmap\">\n<tr><th></th>",
        escape(title)
    );
    for column in columns {
        let _ = write!(page, "<th>{}</th>", escape(column));
    }
    page.push_str("</tr>\n");
    for (row, line) in rows.iter().zip(values) {
        let _ = write!(page, "<tr><th>{}</th>", escape(row));
        for (column, value) in columns.iter().zip(line) {
            let alpha = if max > 0.0 { value / max } else { 0.0 };
            let _ = write!(
                page,
                "<td style=\"background:rgba({r},{g},{b},{alpha:.3})\" title=\"{} {}: {value:.2} {per}\" data-value=\"{value}\"></td>",
                escape(row),
                escape(column)
            );
        }
        page.push_str("</tr>\n");
    }
    // The colour scale, lightest to darkest, with the values it spans.
    let _ = write!(page, "</table>\n<p class=\"legend scale\">0 ");
    for step in 1..=5 {
        let alpha = f64::from(step) / 5.0;
        let _ = write!(
            page,
            "<span style=\"background:rgba({r},{g},{b},{alpha:.3})\"></span>"
        );
    }
    let _ = writeln!(page, " {max:.2} {per}</p>\n</figure>");
}

/// A one-row section as title/value lines (sparklines left to the charts).
fn figures(page: &mut String, section: &Section, cells: &TableRenderer) {
    let _ = writeln!(
        page,
        "<section id=\"section-{}\">\n<table class=\"figures\">",
        section.name
    );
    // A flag is a footnote when it holds, and nothing when it does not.
    let mut notes = Vec::new();
    for row in &section.rows {
        for ((field, title), cell) in section.columns.iter().zip(row) {
            match cell {
                Cell::Spark(_) | Cell::Flag(false) => continue,
                Cell::Flag(true) => {
                    notes.push(format!(
                        "<p class=\"note\" data-field=\"{field}\">* {}</p>",
                        escape(title)
                    ));
                    continue;
                }
                _ => {}
            }
            let _ = writeln!(
                page,
                "<tr><th>{}</th>{}</tr>",
                escape(title),
                value_cell(field, cell, cells)
            );
        }
    }
    page.push_str("</table>\n");
    for note in notes {
        page.push_str(&note);
        page.push('\n');
    }
    page.push_str("</section>\n");
}

fn rows(page: &mut String, section: &Section, cells: &TableRenderer) {
    let _ = writeln!(page, "<section id=\"section-{}\">", section.name);
    if let Some(title) = section.title {
        let _ = writeln!(page, "<h2>{}</h2>", escape(title));
    }
    page.push_str("<table>\n<thead><tr>");
    for (_, title) in &section.columns {
        let _ = write!(page, "<th>{}</th>", escape(title));
    }
    page.push_str("</tr></thead>\n<tbody>\n");
    for row in &section.rows {
        page.push_str("<tr>");
        for ((field, _), cell) in section.columns.iter().zip(row) {
            page.push_str(&value_cell(field, cell, cells));
        }
        page.push_str("</tr>\n");
    }
    page.push_str("</tbody>\n</table>\n</section>\n");
}

/// A `<td>` showing a value as the tables do, with its raw form.
fn value_cell(field: &str, cell: &Cell, cells: &TableRenderer) -> String {
    let raw = match cell {
        Cell::Count(n) => n.to_string(),
        Cell::MaybeCount(n) => n.map(|n| n.to_string()).unwrap_or_default(),
        Cell::Decimal(v) | Cell::Percent(v) | Cell::Change(v) => {
            v.map(|v| v.to_string()).unwrap_or_default()
        }
        Cell::Duration(v) => v.map(|v| v.to_string()).unwrap_or_default(),
        Cell::Time(at) => at.map(|at| at.to_rfc3339()).unwrap_or_default(),
        Cell::Date(date) => date.to_string(),
        Cell::Text(text) => text.clone().unwrap_or_default(),
        Cell::List(items) => items.join("\n"),
        Cell::Outcome(ok) => ok.map(|ok| ok.to_string()).unwrap_or_default(),
        Cell::Flag(flag) => flag.to_string(),
        Cell::Spark(values) => values
            .iter()
            .map(f64::to_string)
            .collect::<Vec<_>>()
            .join(" "),
    };
    format!(
        "<td{} data-field=\"{field}\" data-value=\"{}\">{}</td>",
        if cell.is_numeric() {
            " class=\"n\""
        } else {
            ""
        },
        escape(&raw),
        escape(&cells.show(cell))
    )
}

/// Text as HTML element content or a quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_break_at_absent_values() {
        let values = [
            Some(1.0),
            Some(2.0),
            None,
            None,
            Some(3.0),
            None,
            Some(4.0),
            Some(5.0),
        ];
        assert_eq!(
            runs(&values),
            vec![
                vec![(0.0, 1.0), (1.0, 2.0)],
                vec![(4.0, 3.0)],
                vec![(6.0, 4.0), (7.0, 5.0)],
            ]
        );
        assert!(runs(&[None, None]).is_empty());
    }

    #[test]
    fn text_from_the_data_cannot_become_markup() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"y\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;y&quot;"
        );
    }

    #[test]
    fn a_chart_is_inline_svg_with_a_line_per_run() {
        let at = |h: i64| {
            "2026-11-27T00:00:00Z"
                .parse::<chrono::DateTime<chrono::Utc>>()
                .unwrap()
                + chrono::TimeDelta::hours(h)
        };
        let svg = draw_lines(
            &(0..5).map(at).collect::<Vec<_>>(),
            false,
            &[Series {
                label: "requests",
                values: vec![Some(1.0), Some(5.0), None, Some(2.0), Some(3.0)],
            }],
            Unit::Count,
            Some(4.0),
            chrono_tz::UTC,
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        // Axes and ticks are black; the series' two runs and the limit are
        // drawn in their colours.
        let drawn: Vec<&str> = svg
            .lines()
            .filter(|line| line.starts_with("<polyline") && !line.contains("stroke=\"#000000\""))
            .collect();
        assert_eq!(drawn.len(), 3, "{svg}");
        let points: Vec<usize> = drawn
            .iter()
            .map(|line| {
                line.split("points=\"")
                    .nth(1)
                    .unwrap()
                    .split_whitespace()
                    .count()
                    - 1
            })
            .collect();
        assert_eq!(points.iter().sum::<usize>(), 2 + 2 + 2, "{drawn:?}");
    }
}
