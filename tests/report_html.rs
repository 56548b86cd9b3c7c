//! `genalytics report html`: one self-contained page (nothing fetched)
//! whose tables and charts show the JSON reports' figures value for value,
//! with data escaped as text, and which headless Chromium renders to a
//! screenshot that is not blank.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::report::{UNTIL, loaded};

/// Points of the lines drawn in a chart's SVG: every polyline that is not
/// an axis or a tick (those are black).
fn drawn_points(figure: scraper::ElementRef<'_>) -> usize {
    let polylines = scraper::Selector::parse("polyline").unwrap();
    figure
        .select(&polylines)
        .filter(|line| line.value().attr("stroke") != Some("#000000"))
        .map(|line| {
            line.value()
                .attr("points")
                .unwrap()
                .split_whitespace()
                .count()
        })
        .sum()
}

/// A JSON value and a cell's `data-value` say the same.
#[track_caller]
fn same_value(json: &Value, shown: &str, what: &str) {
    match json {
        Value::Null => assert_eq!(shown, "", "{what}"),
        Value::Number(n) => {
            let shown: f64 = shown.parse().unwrap_or_else(|_| panic!("{what}: {shown}"));
            assert!(
                (n.as_f64().unwrap() - shown).abs() < 1e-9,
                "{what}: {n} vs {shown}"
            );
        }
        Value::Bool(b) => assert_eq!(shown, b.to_string(), "{what}"),
        Value::String(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(at) => assert_eq!(
                chrono::DateTime::parse_from_rfc3339(shown).unwrap(),
                at,
                "{what}"
            ),
            Err(_) => assert_eq!(shown, s, "{what}"),
        },
        Value::Array(items) => {
            let items: Vec<&str> = items.iter().map(|i| i.as_str().unwrap()).collect();
            assert_eq!(shown, items.join("\n"), "{what}");
        }
        Value::Object(_) => panic!("{what}: an object in a cell"),
    }
}

#[test]
fn the_html_report_is_self_contained_and_shows_the_json_reports_figures() {
    let (env, _) = loaded();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("report.html");
    let common = ["--days", "3", "--until", UNTIL, "--tz", "America/New_York"];
    env.genalytics()
        .args(["report", "html", "--failure-limit", "5", "-o"])
        .arg(&file)
        .args(common)
        .ok();
    let html = std::fs::read_to_string(&file).unwrap();
    let json = |args: &[&str]| -> Value {
        let ran = env
            .genalytics()
            .arg("report")
            .args(args.iter().copied())
            .args(common)
            .args(["--format", "json"])
            .ok();
        serde_json::from_str(&ran.stdout).unwrap()
    };
    let overview = json(&["overview"]);
    let trends = json(&["trends"]);
    let failures = json(&["failures"]);
    let models = json(&["models"]);
    let peak = json(&["peak-hours", "--by", "weekday"]);

    let page = scraper::Html::parse_document(&html);
    assert!(page.errors.is_empty(), "{:?}", page.errors);
    let select = |css: &str| scraper::Selector::parse(css).unwrap();
    // Nothing is fetched: no scripts, no links, no sources, no imports.
    for css in [
        "script", "link", "img", "iframe", "object", "[src]", "[href]",
    ] {
        assert_eq!(page.select(&select(css)).count(), 0, "{css}");
    }
    let style: String = page
        .select(&select("style"))
        .flat_map(|s| s.text())
        .collect();
    assert!(
        !style.contains("@import") && !style.contains("url("),
        "{style}"
    );
    assert!(!html.contains("https://"));
    assert_eq!(
        html.matches("http://").count(),
        html.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
        "only SVG namespaces mention http"
    );

    // The overview's figures, value for value.
    let summary = select("#section-summary td[data-field]");
    let mut shown = 0;
    for cell in page.select(&summary) {
        let field = cell.value().attr("data-field").unwrap();
        same_value(
            &overview[field],
            cell.value().attr("data-value").unwrap(),
            field,
        );
        shown += 1;
    }
    assert!(shown >= 15, "{shown} figures");
    // Models and error types, row for row.
    for (section, rows) in [
        ("#section-models", &models["models"]),
        ("#section-error_types", &failures["error_types"]),
    ] {
        let rows = rows.as_array().unwrap();
        let table_rows: Vec<_> = page
            .select(&select(&format!("{section} tbody tr")))
            .collect();
        assert_eq!(table_rows.len(), rows.len(), "{section}");
        assert!(!rows.is_empty(), "{section}");
        for (tr, row) in table_rows.iter().zip(rows) {
            for cell in tr.select(&select("td")) {
                let field = cell.value().attr("data-field").unwrap();
                assert!(
                    row.get(field).is_some(),
                    "{field} is not in the JSON report"
                );
                same_value(&row[field], cell.value().attr("data-value").unwrap(), field);
            }
        }
    }

    // One SVG per line chart, with as many points as its series have.
    let figure = |id: &str| {
        page.select(&select(&format!("figure#chart-{id}")))
            .next()
            .unwrap_or_else(|| panic!("no chart {id}"))
    };
    let points = trends["data_points"].as_array().unwrap();
    assert_eq!(points.len(), 72);
    let present = |field: &str| points.iter().filter(|p| !p[field].is_null()).count();
    for id in ["requests", "durations", "failure_rate"] {
        assert_eq!(figure(id).select(&select("svg")).count(), 1, "{id}");
    }
    assert_eq!(drawn_points(figure("requests")), points.len());
    assert!(
        present("p95_duration_ms") < points.len(),
        "gaps in the durations"
    );
    assert_eq!(
        drawn_points(figure("durations")),
        present("p50_duration_ms") + present("p95_duration_ms")
    );
    let days = failures["failure_trends"].as_array().unwrap();
    let rated = days
        .iter()
        .filter(|d| !d["failure_rate_pct"].is_null())
        .count();
    // Days are bars (one per rated day); the limit is a line.
    let bars = figure("failure_rate")
        .select(&select("rect"))
        .filter(|rect| rect.value().attr("fill") == Some("#1F77B4"))
        .count();
    assert_eq!(bars, rated, "a bar per rated day");
    assert_eq!(drawn_points(figure("failure_rate")), 2, "the limit");
    // Every point says its value on hover; axes have titles; labels are
    // at least 12 px on a 960 px chart.
    let titled = |id: &str| figure(id).select(&select("svg circle title")).count();
    assert_eq!(titled("requests"), points.len());
    assert_eq!(
        titled("durations"),
        present("p50_duration_ms") + present("p95_duration_ms")
    );
    assert_eq!(titled("failure_rate"), rated);
    let first_title: String = figure("requests")
        .select(&select("svg circle title"))
        .next()
        .unwrap()
        .text()
        .collect();
    assert!(first_title.starts_with("requests "), "{first_title}");
    for id in ["requests", "durations", "failure_rate"] {
        let texts: Vec<String> = figure(id)
            .select(&select("svg text"))
            .flat_map(|t| t.text())
            .map(str::to_string)
            .collect();
        assert!(
            texts
                .iter()
                .any(|t| t.contains("hour (America/New_York)")
                    || t.contains("day (America/New_York)")),
            "{id}: an x axis title: {texts:?}"
        );
        // Ticks fall on local midnights ("Nov 17") or every sixth hour.
        let labels: Vec<&str> = texts.iter().map(|t| t.trim()).collect();
        let days = labels
            .iter()
            .filter(|t| {
                t.len() == 6 && t.as_bytes()[3] == b' ' && t[..3].chars().all(char::is_alphabetic)
            })
            .count();
        assert!(days >= 2, "{id}: day ticks: {labels:?}");
        for label in labels.iter().filter(|t| t.contains(':')) {
            let hour: u32 = label[..2].parse().unwrap_or(99);
            assert!(
                label.len() == 5 && label.ends_with(":00") && hour.is_multiple_of(6),
                "{id}: a tick at an odd time: {label}"
            );
        }
        for text in figure(id).select(&select("svg text")) {
            let size: f64 = text.value().attr("font-size").unwrap().parse().unwrap();
            assert!(size >= 12.0, "{id}: a {size} px label");
        }
    }
    assert!(
        style.contains("@media (prefers-color-scheme: dark)"),
        "{style}"
    );
    // Flags are footnotes when they hold, and absent when they do not.
    assert!(
        page.select(&select("#section-summary td")).all(|td| {
            let shown: String = td.text().collect();
            shown != "no" && shown != "yes"
        }),
        "no yes/no cells"
    );
    assert!(
        figure("failure_rate")
            .text()
            .any(|t| t.contains("limit 5.0 %"))
    );
    // The heatmap: 7 local weekdays × 24 hours, as the JSON report has them.
    let cells: Vec<f64> = figure("peak_hours")
        .select(&select("td"))
        .map(|td| td.value().attr("data-value").unwrap().parse().unwrap())
        .collect();
    assert_eq!(cells.len(), 7 * 24);
    let weekdays = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut want = vec![0.0; 7 * 24];
    for row in peak["peak_hours"].as_array().unwrap() {
        let day = weekdays.iter().position(|d| row["weekday"] == *d).unwrap();
        let hour = row["hour_of_day"].as_u64().unwrap() as usize;
        want[day * 24 + hour] = row["avg_requests"].as_f64().unwrap();
    }
    assert_eq!(cells, want);
    // Its colour scale, five steps up to the largest value.
    let scale = figure("peak_hours").select(&select("p.scale span")).count();
    assert_eq!(scale, 5);

    // A model name from the data is text, never markup.
    let mut db = env.db();
    db.execute(
        "UPDATE generation_metrics_hourly_models SET model_checkpoint = '<script>alert(1)</script>'
         WHERE model_checkpoint = (SELECT min(model_checkpoint) FROM generation_metrics_hourly_models)",
        &[],
    )
    .unwrap();
    let ran = env.genalytics().args(["report", "html"]).args(common).ok();
    assert!(!ran.stdout.contains("<script>"), "markup from the data");
    assert!(ran.stdout.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

    // Headless Chromium (Debian's chromium, installed by .ci/run) renders
    // the page in the light and the dark scheme; neither screenshot is
    // blank, and the dark one is dark.
    for (scheme, preferred) in [("light", "1"), ("dark", "0")] {
        let (colours, near_white, near_black, total, corner) =
            screenshot(&dir.path().join(format!("{scheme}.png")), &file, preferred);
        assert!(colours > 50, "{scheme}: {colours} colours");
        assert!(
            near_white < total * 97 / 100 && near_black < total * 97 / 100,
            "{scheme}: {near_white} near white, {near_black} near black of {total}"
        );
        match scheme {
            "light" => assert!(corner.iter().all(|&c| c > 240), "{scheme}: {corner:?}"),
            _ => assert!(corner.iter().all(|&c| c < 40), "{scheme}: {corner:?}"),
        }
    }
}

/// A screenshot of `page` with `preferredColorScheme` (0 dark, 1 light):
/// its distinct colours, pixels near white and near black, all pixels, and
/// the top-left pixel's colour.
fn screenshot(
    shot: &std::path::Path,
    page: &std::path::Path,
    preferred: &str,
) -> (usize, usize, usize, usize, Vec<u8>) {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1100,2400",
        ])
        .arg(format!("--blink-settings=preferredColorScheme={preferred}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium is installed (.ci/run installs Debian's chromium)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(shot).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut pixels).unwrap();
    let channels = info.color_type.samples();
    let pixels = &pixels[..info.buffer_size()];
    let colours: BTreeSet<&[u8]> = pixels.chunks(channels).collect();
    let near = |test: fn(u8) -> bool| {
        pixels
            .chunks(channels)
            .filter(|p| p.iter().take(3).all(|&c| test(c)))
            .count()
    };
    (
        colours.len(),
        near(|c| c > 240),
        near(|c| c < 15),
        pixels.len() / channels,
        pixels[..3].to_vec(),
    )
}
