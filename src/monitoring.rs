//! What monitoring systems read, as pure functions: figures judged against
//! warning and critical limits, the Monitoring Plugins status line with its
//! performance data (`check --nagios`), and the Prometheus/OpenMetrics text
//! exposition (`status --format openmetrics`).

use std::fmt::Write as _;

/// A figure's state, in the Monitoring Plugins' order of severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Critical => "CRITICAL",
        }
    }

    /// The plugin exit code: 0, 1, 2 (3 is UNKNOWN: the check could not run).
    pub fn plugin_code(self) -> u8 {
        match self {
            Level::Ok => 0,
            Level::Warning => 1,
            Level::Critical => 2,
        }
    }
}

/// The unit of a figure, as performance data writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    Percent,
    Seconds,
    Count,
}

impl Unit {
    fn uom(self) -> &'static str {
        match self {
            Unit::Percent => "%",
            Unit::Seconds => "s",
            Unit::Count => "",
        }
    }
}

/// One figure `check` looked at: its value (none when there was nothing to
/// measure, e.g. no completions in the window), limits and verdict.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// Performance-data label and JSON name: `failure_rate`, `p95`, …
    pub name: &'static str,
    pub value: Option<f64>,
    pub unit: Unit,
    pub warn: Option<f64>,
    pub crit: Option<f64>,
    pub level: Level,
    /// The figure in words, with the limit it broke if it broke one.
    pub text: String,
}

/// A figure's warning and critical limits; either may be absent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub warn: Option<f64>,
    pub crit: Option<f64>,
}

impl Limits {
    /// Whether any limit was given: a figure without one is not measured.
    pub fn any(self) -> bool {
        self.warn.is_some() || self.crit.is_some()
    }
}

impl Figure {
    /// A figure as measured (none when there was nothing to measure), not
    /// yet judged: OK, without limits.
    pub fn new(name: &'static str, unit: Unit, value: Option<f64>, text: String) -> Figure {
        Figure {
            name,
            value,
            unit,
            warn: None,
            crit: None,
            level: Level::Ok,
            text,
        }
    }

    /// Judges the value against `limits`: above a limit (not at it) breaks
    /// it, and the text says which.
    #[must_use]
    pub fn judged(mut self, limits: Limits) -> Figure {
        let over = |limit: Option<f64>| matches!((self.value, limit), (Some(v), Some(l)) if v > l);
        let (level, broken) = if over(limits.crit) {
            (Level::Critical, limits.crit)
        } else if over(limits.warn) {
            (Level::Warning, limits.warn)
        } else {
            (Level::Ok, None)
        };
        if level != Level::Ok {
            self.text = format!("{}: exceeds {}", self.text, show(broken, self.unit));
        }
        self.level = self.level.max(level);
        self.warn = limits.warn;
        self.crit = limits.crit;
        self
    }

    /// Raises the level whatever the value: a stream that transfer will not
    /// read alone is critical however young its entries.
    #[must_use]
    pub fn at_least(mut self, level: Level) -> Figure {
        self.level = self.level.max(level);
        self
    }
}

fn show(limit: Option<f64>, unit: Unit) -> String {
    let limit = limit.unwrap_or_default();
    match unit {
        Unit::Percent => format!("{} %", number(limit)),
        // Below a millisecond, in seconds as given.
        Unit::Seconds if limit > 0.0 && limit < 0.001 => format!("{limit}s"),
        Unit::Seconds => crate::timearg::format_span(chrono::TimeDelta::milliseconds(
            (limit * 1_000.0).round() as i64,
        )),
        Unit::Count => number(limit),
    }
}

/// The worst level among the figures (OK for none).
pub fn worst(figures: &[Figure]) -> Level {
    figures.iter().map(|f| f.level).max().unwrap_or(Level::Ok)
}

/// The plugin output: `GENALYTICS LEVEL - summary | perfdata`, then one
/// line per figure (the plugins' long text).
pub fn plugin_output(figures: &[Figure]) -> String {
    let level = worst(figures);
    let summary = if level == Level::Ok {
        figures
            .iter()
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        figures
            .iter()
            .filter(|f| f.level == level)
            .map(|f| f.text.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut out = format!("GENALYTICS {} - {}", level.name(), plugin_text(&summary));
    let perfdata: Vec<String> = figures.iter().filter_map(perfdata).collect();
    if !perfdata.is_empty() {
        let _ = write!(out, " | {}", perfdata.join(" "));
    }
    out.push('\n');
    for figure in figures {
        let _ = writeln!(
            out,
            "{}: {}",
            figure.level.name(),
            plugin_text(&figure.text)
        );
    }
    out
}

/// `label=value[UOM];warn;crit;min;max` for a figure with a value.
fn perfdata(figure: &Figure) -> Option<String> {
    let value = figure.value?;
    let limit = |l: Option<f64>| l.map(number).unwrap_or_default();
    let max = if figure.unit == Unit::Percent {
        "100"
    } else {
        ""
    };
    Some(
        format!(
            "{}={}{};{};{};0;{max}",
            figure.name,
            number(value),
            figure.unit.uom(),
            limit(figure.warn),
            limit(figure.crit),
        )
        .trim_end_matches(';')
        .to_string(),
    )
}

/// The line a plugin prints when it could not check: UNKNOWN, exit 3.
pub fn unknown_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("GENALYTICS UNKNOWN - {}", plugin_text(first))
}

/// Plugin text may not hold `|` (it starts the performance data) nor
/// break lines; data in it (a stream key) could.
fn plugin_text(text: &str) -> String {
    crate::text::escape_controls(text).replace('|', "/")
}

/// A number as the plugins and Prometheus read it: no exponent, no
/// trailing zeros, at most three decimals.
pub fn number(value: f64) -> String {
    if !value.is_finite() {
        return if value.is_nan() {
            "NaN".into()
        } else if value > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "-0" {
        "0".into()
    } else {
        text.into()
    }
}

#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    /// Starts a gauge family.
    pub fn family(&mut self, name: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} gauge");
        if let Some(unit) = ["seconds", "bytes", "ratio"]
            .into_iter()
            .find(|unit| name.ends_with(&format!("_{unit}")))
        {
            let _ = writeln!(self.text, "# UNIT {name} {unit}");
        }
    }

    /// One sample of the family just started.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let labels: Vec<String> = labels
                .iter()
                .map(|(label, value)| format!("{label}=\"{}\"", escape_label(value)))
                .collect();
            let _ = write!(self.text, "{{{}}}", labels.join(","));
        }
        let _ = writeln!(self.text, " {}", exposed(value));
    }

    pub fn finish(mut self) -> String {
        self.text.push_str("# EOF\n");
        self.text
    }
}

/// A sample's value at full precision (Rust never writes an exponent), the
/// infinities as both formats spell them.
fn exposed(value: f64) -> String {
    match value {
        v if v.is_nan() => "NaN".into(),
        v if v == f64::INFINITY => "+Inf".into(),
        v if v == f64::NEG_INFINITY => "-Inf".into(),
        v => format!("{v}"),
    }
}

fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(value: Option<f64>, warn: Option<f64>, crit: Option<f64>) -> Figure {
        Figure::new("lag", Unit::Seconds, value, "lag".into()).judged(Limits { warn, crit })
    }

    #[test]
    fn limits_are_broken_above_not_at() {
        assert_eq!(figure(Some(60.0), Some(60.0), Some(120.0)).level, Level::Ok);
        assert_eq!(
            figure(Some(61.0), Some(60.0), Some(120.0)).level,
            Level::Warning
        );
        assert_eq!(
            figure(Some(121.0), Some(60.0), Some(120.0)).level,
            Level::Critical
        );
        // Critical alone, warning alone, and nothing to measure.
        assert_eq!(
            figure(Some(121.0), None, Some(120.0)).level,
            Level::Critical
        );
        assert_eq!(figure(Some(61.0), Some(60.0), None).level, Level::Warning);
        assert_eq!(figure(None, Some(0.0), Some(0.0)).level, Level::Ok);
    }

    #[test]
    fn forced_levels_win_over_a_fine_value() {
        let f = Figure::new("lag", Unit::Seconds, Some(1.0), "replaced".into())
            .judged(Limits {
                warn: None,
                crit: Some(60.0),
            })
            .at_least(Level::Critical);
        assert_eq!(f.level, Level::Critical);
    }

    #[test]
    fn plugin_output_follows_the_guidelines() {
        let figures = [
            figure(Some(90.0), Some(60.0), Some(3_600.0)),
            Figure::new(
                "failure_rate",
                Unit::Percent,
                Some(2.5),
                "failure rate 2.50 %".into(),
            )
            .judged(Limits {
                warn: Some(5.0),
                crit: Some(10.0),
            }),
            Figure::new("p95", Unit::Seconds, None, "no | completions".into()).judged(Limits {
                warn: None,
                crit: Some(1.5),
            }),
        ];
        let out = plugin_output(&figures);
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(
                "GENALYTICS WARNING - lag: exceeds 1m | lag=90s;60;3600;0 failure_rate=2.5%;5;10;0;100"
            )
        );
        assert_eq!(lines.next(), Some("WARNING: lag: exceeds 1m"));
        assert_eq!(lines.next(), Some("OK: failure rate 2.50 %"));
        assert_eq!(lines.next(), Some("OK: no / completions"));
        assert_eq!(lines.next(), None);
        assert_eq!(worst(&figures).plugin_code(), 1);
        assert_eq!(worst(&[]), Level::Ok);
    }

    #[test]
    fn numbers_have_no_exponent_nor_trailing_zeros() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(1e21), "1000000000000000000000");
        assert_eq!(number(0.000_4), "0");
        assert_eq!(number(-0.0), "0");
        assert_eq!(number(f64::NAN), "NaN");
    }

    #[test]
    fn exposition_escapes_labels_and_ends_with_eof() {
        let mut e = Exposition::default();
        e.family("x_bytes", "Size.\nof \\ it");
        e.sample("x_bytes", &[("table", "a\"b\\c\nd")], 3.0);
        e.family("y_ratio", "Y.");
        e.sample("y_ratio", &[], 0.123_456_7);
        assert_eq!(
            e.finish(),
            "# HELP x_bytes Size.\\nof \\\\ it\n# TYPE x_bytes gauge\n# UNIT x_bytes bytes\n\
             x_bytes{table=\"a\\\"b\\\\c\\nd\"} 3\n# HELP y_ratio Y.\n# TYPE y_ratio gauge\n\
             # UNIT y_ratio ratio\ny_ratio 0.1234567\n# EOF\n"
        );
    }
}
