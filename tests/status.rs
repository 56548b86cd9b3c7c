//! `genalytics status` and `genalytics check` on crafted pipelines.

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde_json::Value;

use crate::harness::events::{Written, percentile, write};
use crate::harness::{TestEnv, xadd};

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

fn status(env: &TestEnv) -> Value {
    env.status_json()
}

fn warned(status: &Value, text: &str) -> bool {
    status["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap().contains(text))
}

#[test]
fn status_of_an_empty_pipeline() {
    let env = migrated();
    let status = status(&env);
    assert_eq!(status["stream"], env.stream_key());
    assert_eq!(status["stream_length"], 0);
    assert_eq!(status["behind"], 0);
    assert_eq!(status["events_transferred"], 0);
    assert_eq!(status["rejected_entries"], 0);
    assert_eq!(status["hours_awaiting_rollup"], 0);
    assert!(status["newest_event_at"].is_null());
    assert!(warned(&status, "nothing has been transferred"));
    let table = env.genalytics().arg("status").ok();
    assert!(
        table.stdout.contains("generation_events"),
        "{}",
        table.stdout
    );
}

#[test]
fn status_of_a_busy_pipeline() {
    let env = migrated();
    let key = env.stream_key();
    let mut con = env.redis();
    xadd(&mut con, &key, "1-0", &[("event_type", "bogus")]);
    let end = (Utc::now() - Duration::hours(2)).to_rfc3339();
    env.genalytics()
        .args([
            "simulate", "-q", "--events", "60000", "--hours", "1", "--maxlen", "0", "--seed", "2",
            "--end", &end,
        ])
        .ok();
    env.genalytics()
        .args([
            "transfer",
            "-q",
            "--max-events",
            "10000",
            "--keep",
            "36500d",
        ])
        .ok();

    // What the test set up, read straight from the stream.
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query(&mut con)
        .unwrap();
    assert_eq!(entries.len(), 60_001);
    let stored_hours: BTreeSet<DateTime<Utc>> = entries[1..10_000]
        .iter()
        .map(|(_, fields)| {
            let at = fields.iter().position(|f| f == "timestamp").unwrap() + 1;
            let at = chrono::NaiveDateTime::parse_from_str(&fields[at], "%Y-%m-%dT%H:%M:%S%.f")
                .unwrap()
                .and_utc();
            at.duration_trunc(Duration::hours(1)).unwrap()
        })
        .collect();
    let first_behind_ms: i64 = entries[10_000]
        .0
        .split('-')
        .next()
        .unwrap()
        .parse()
        .unwrap();

    let status = status(&env);
    assert_eq!(status["stream_length"], 60_001);
    assert_eq!(status["cap_used_pct"], 60.0);
    assert!(
        warned(&status, "more than half the producer's"),
        "{status:#}"
    );
    // Exact: only 10,000 entries precede the position.
    assert_eq!(status["behind"], 50_001);
    assert_eq!(status["behind_exact"], true);
    assert_eq!(
        status["oldest_untransferred_at"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        DateTime::from_timestamp_millis(first_behind_ms).unwrap()
    );
    assert_eq!(status["position"], entries[9_999].0.as_str());
    assert_eq!(status["events_transferred"], 9_999);
    assert_eq!(status["rejected_entries"], 1);
    assert!(warned(&status, "dead-letter"));
    assert_eq!(status["hours_awaiting_rollup"], stored_hours.len());
    assert_eq!(status["stale_hours"], stored_hours.len());
    assert!(warned(&status, "not yet rolled up"));
    let events = status["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "generation_events")
        .unwrap()
        .clone();
    assert_eq!(
        (events["rows"].as_i64(), events["rows_exact"].as_bool()),
        (Some(9_999), Some(true))
    );
    assert!(events["bytes"].as_i64().unwrap() > 0);

    // Redis unreachable: still an answer, with a warning.
    let ran = env
        .genalytics()
        .args([
            "status",
            "--format",
            "json",
            "--redis-url",
            "redis://127.0.0.1:1",
        ])
        .ok();
    let status: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(status["stream_length"].is_null());
    assert!(warned(&status, "cannot connect to Redis"));
}

#[test]
fn check_turns_thresholds_into_exit_codes() {
    let env = migrated();
    let now = Utc::now();
    // Ten completions in the last hour, three failed.
    let durations = [1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 70_000];
    let mut events: Vec<Written> = durations
        .iter()
        .enumerate()
        .map(|(i, &ms)| Written {
            success: Some(true),
            duration_ms: Some(ms),
            ..Written::new(now - Duration::minutes(50 - i as i64), "completion")
        })
        .collect();
    for i in 0..3 {
        events.push(Written {
            success: Some(false),
            duration_ms: Some(0),
            ..Written::new(now - Duration::minutes(30 - i), "completion")
        });
    }
    events.sort_by_key(|e| e.at);
    write(&env, &events);
    env.genalytics().args(["transfer", "-q"]).ok();
    let mut sorted: Vec<i64> = durations.to_vec();
    sorted.sort_unstable();
    let p95 = percentile(&sorted, 0.95).unwrap();
    assert!(p95 > 30_000.0 && p95 < 60_000.0, "{p95}");

    let ran = env
        .genalytics()
        .args(["check", "--max-failure-rate", "50", "--max-p95", "60s"])
        .ok();
    assert!(
        ran.stdout
            .starts_with("ok: failure rate 30.00 % (3 of 10 completions)"),
        "{}",
        ran.stdout
    );
    let ran = env
        .genalytics()
        .args(["check", "--max-failure-rate", "10", "--max-p95", "30s"])
        .code(3);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", ran.stdout);
    assert!(
        lines[0].contains("failure rate 30.00 %") && lines[0].contains(": exceeds 10 %"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains("p95 duration") && lines[1].contains(": exceeds 30s"),
        "{}",
        lines[1]
    );

    // The Monitoring Plugins protocol: warning and critical limits, exit
    // 0/1/2, perfdata with the figures, durations in humantime's forms.
    let plugin = |args: &[&str], code: i32| {
        let ran = env
            .genalytics()
            .args(["check", "--nagios"])
            .args(args)
            .code(code);
        let first = ran.stdout.lines().next().unwrap_or_default().to_string();
        let (status, perfdata) = first.split_once(" | ").unwrap_or((&first, ""));
        let perf: std::collections::BTreeMap<String, Vec<String>> = perfdata
            .split(' ')
            .filter_map(|item| item.split_once('='))
            .map(|(label, data)| {
                (
                    label.to_string(),
                    data.split(';').map(str::to_string).collect(),
                )
            })
            .collect();
        (status.to_string(), perf, ran.stdout)
    };
    let (line, perf, _) = plugin(
        &["--warn-failure-rate", "20", "--crit-failure-rate", "50"],
        1,
    );
    assert!(
        line.starts_with("GENALYTICS WARNING - failure rate 30.00 %"),
        "{line}"
    );
    assert_eq!(perf["failure_rate"], ["30%", "20", "50", "0", "100"]);
    let (line, perf, out) = plugin(
        &[
            "--crit-failure-rate",
            "10",
            "--warn-p95",
            "1500ms",
            "--crit-p95",
            "1h30m",
        ],
        2,
    );
    assert!(
        line.starts_with("GENALYTICS CRITICAL - failure rate 30.00 %"),
        "{line}"
    );
    assert!(!line.contains("p95"), "only the worst figures lead: {line}");
    assert!(out.contains("\nWARNING: p95 duration"), "{out}");
    let p95_perf = &perf["p95"];
    let shown: f64 = p95_perf[0].strip_suffix('s').unwrap().parse().unwrap();
    assert!((shown - p95 / 1_000.0).abs() < 0.001, "{shown} vs {p95}");
    assert_eq!(p95_perf[1..], ["1.5", "5400", "0"]);
    let (line, perf, _) = plugin(&["--warn-lag", "2w"], 0);
    assert!(line.starts_with("GENALYTICS OK - "), "{line}");
    assert_eq!(perf["lag"], ["0s", "1209600", "", "0"]);
    // A stream that does not exist (a typo in --stream) is never plainly OK.
    let (line, _, _) = plugin(&["--crit-lag", "5m", "--stream", "typo:key"], 1);
    assert!(
        line.starts_with("GENALYTICS WARNING - the stream typo:key does not exist"),
        "{line}"
    );
    // Whatever stops the check is UNKNOWN: a wrong flag, no database.
    let (line, _, _) = plugin(&["--warn-lag", "5 parsecs"], 3);
    assert!(line.starts_with("GENALYTICS UNKNOWN - "), "{line}");
    let ran = env
        .genalytics()
        .args(["check", "--nagios", "--crit-lag", "1m"])
        .env("DATABASE_URL", "postgres://postgres:hunter2@127.0.0.1:1/x")
        .code(3);
    assert!(
        ran.stdout.starts_with("GENALYTICS UNKNOWN - ") && !ran.stdout.contains("hunter2"),
        "{}",
        ran.stdout
    );
    // JSON for agents: the same figures, exit codes as without --nagios.
    let ran = env
        .genalytics()
        .args([
            "check",
            "--format",
            "json",
            "--max-failure-rate",
            "10",
            "--warn-p95",
            "1s",
        ])
        .code(3);
    let report: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(report["status"], "critical");
    assert_eq!(report["checks"][0]["name"], "failure_rate");
    assert_eq!(report["checks"][0]["value"], 30.0);
    assert_eq!(report["checks"][0]["level"], "critical");
    assert_eq!(report["checks"][1]["level"], "warning");
    let ran = env
        .genalytics()
        .args(["check", "--warn-failure-rate", "10"])
        .ok();
    assert!(
        ran.stdout.starts_with("WARNING: failure rate 30.00 %"),
        "{}",
        ran.stdout
    );

    // A window with no completions breaches no rate or duration threshold.
    let empty = migrated();
    let ran = empty
        .genalytics()
        .args(["check", "--max-failure-rate", "1"])
        .ok();
    assert!(ran.stdout.contains("no completions"), "{}", ran.stdout);

    // Lag: in a stream of its own, an entry added ten minutes ago and not
    // transferred.
    let ten_minutes_ago = (Utc::now() - Duration::minutes(10)).timestamp_millis();
    xadd(
        &mut env.redis(),
        "lagging",
        &format!("{ten_minutes_ago}-0"),
        &[("event_type", "request")],
    );
    env.genalytics()
        .args(["check", "--max-lag", "1h", "--stream", "lagging"])
        .ok();
    let ran = env
        .genalytics()
        .args(["check", "--max-lag", "5m", "--stream", "lagging"])
        .code(3);
    assert!(
        ran.stdout.contains("oldest untransferred entry is 10m old"),
        "{}",
        ran.stdout
    );

    // Stale rollups: the completed hours above wait for aggregate.
    let ran = env
        .genalytics()
        .args(["check", "--max-stale-hours", "5", "--stale-grace", "0"])
        .ok();
    assert!(ran.stdout.starts_with("ok"), "{}", ran.stdout);
    // Which hours are complete depends on the clock when check runs: an hour
    // may turn between the writes and the check, so the expectation is
    // taken on both sides of the run and either is accepted if they differ.
    let stale_at = |at: DateTime<Utc>| {
        let hour_start = at.duration_trunc(Duration::hours(1)).unwrap();
        if events.iter().any(|e| e.at < hour_start) {
            3
        } else {
            0
        }
    };
    let before = stale_at(Utc::now());
    let ran = env
        .genalytics()
        .args(["check", "--max-stale-hours", "0", "--stale-grace", "0"])
        .run();
    let after = stale_at(Utc::now());
    assert!(
        ran.code == Some(before) || ran.code == Some(after),
        "exit {:?}, expected {before} or {after}: {}",
        ran.code,
        ran.stdout
    );

    // Nothing to check is a usage error; no database is a failure to check.
    env.genalytics().arg("check").code(2);
    env.genalytics()
        .args(["check", "--max-failure-rate", "5"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x")
        .code(1);
}

/// Runs `promtool check metrics` (Debian package `prometheus`, which
/// `.ci/run` installs) on an exposition; its complaints, if any.
fn promtool_complaints(exposition: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs it from Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said
    } else {
        format!("exit {:?}: {said}", out.status)
    }
}

/// The sample of `family` whose labels include `labels`, as a number.
fn sample(exposition: &str, family: &str, labels: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let rest = line.strip_prefix(family)?;
        let (labelled, value) = rest.rsplit_once(' ')?;
        (labelled.is_empty() && labels.is_empty() || labelled.contains(labels))
            .then(|| value.parse().unwrap())
    })
}

fn status_of(env: &TestEnv, key: &str) -> Value {
    let ran = env
        .genalytics()
        .args([
            "status",
            "--format",
            "json",
            "--stream",
            key,
            "--stale-grace",
            "0",
        ])
        .ok();
    serde_json::from_str(&ran.stdout).unwrap()
}

#[test]
fn status_as_openmetrics_passes_promtool() {
    let env = migrated();
    // Its stale-hour figure is computed against "this hour".
    crate::harness::clear_of_hour_turn(120);
    // An empty pipeline: nothing transferred yet, nothing in the stream.
    let ran = env
        .genalytics()
        .args(["status", "--format", "openmetrics"])
        .ok();
    assert_eq!(promtool_complaints(&ran.stdout), "", "{}", ran.stdout);
    assert_eq!(
        sample(&ran.stdout, "genalytics_rejected_entries", ""),
        Some(0.0)
    );
    assert!(
        !ran.stdout
            .contains("genalytics_last_transfer_timestamp_seconds")
    );

    // A stream key with the bytes label values must escape.
    let key = "odd\"key\\with\nnewline";
    let mut con = env.redis();
    let now = Utc::now().timestamp_millis();
    xadd(
        &mut con,
        key,
        &format!("{}-0", now - 30_000),
        &[("event_type", "bogus")],
    );
    let events: Vec<Written> = (0..7)
        .map(|i| Written::new(Utc::now() - Duration::minutes(5 + i), "request"))
        .collect();
    for (i, event) in events.iter().enumerate() {
        let fields = event.fields();
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        xadd(&mut con, key, &format!("{}-{}", now - 20_000, i), &fields);
    }
    env.genalytics()
        .args(["transfer", "-q", "--stream", key])
        .ok();
    // One more entry waits, 10 s old.
    xadd(
        &mut con,
        key,
        &format!("{}-0", now - 10_000),
        &[("event_type", "request")],
    );

    let ran = env
        .genalytics()
        .args([
            "status",
            "--format",
            "openmetrics",
            "--stream",
            key,
            "--stale-grace",
            "0",
        ])
        .ok();
    let text = ran.stdout;
    assert_eq!(promtool_complaints(&text), "", "{text}");
    assert!(text.ends_with("# EOF\n"), "{text}");
    let stream = r#"stream="odd\"key\\with\nnewline""#;
    assert_eq!(
        sample(&text, "genalytics_events_transferred", stream),
        Some(7.0)
    );
    assert_eq!(sample(&text, "genalytics_rejected_entries", ""), Some(1.0));
    assert_eq!(sample(&text, "genalytics_stream_length", stream), Some(9.0));
    assert_eq!(
        sample(&text, "genalytics_untransferred_entries", stream),
        Some(1.0)
    );
    assert_eq!(sample(&text, "genalytics_redis_up", stream), Some(1.0));
    let age = sample(&text, "genalytics_oldest_untransferred_age_seconds", stream).unwrap();
    assert!((9.0..120.0).contains(&age), "{age}");
    let last = sample(&text, "genalytics_last_transfer_timestamp_seconds", stream).unwrap();
    assert!(
        (Utc::now().timestamp() as f64 - last).abs() < 120.0,
        "{last}"
    );
    let rows = sample(
        &text,
        "genalytics_table_rows",
        r#"table="generation_events""#,
    );
    assert_eq!(rows, Some(7.0));
    assert!(
        text.contains("# UNIT genalytics_table_size_bytes bytes\n"),
        "{text}"
    );

    // The rollup figures against what the test wrote: nothing rolled up
    // yet, so every hour with an event waits, and those before this hour
    // are stale.
    let current = Utc::now().duration_trunc(Duration::hours(1)).unwrap();
    let hours: BTreeSet<DateTime<Utc>> = events
        .iter()
        .map(|e| e.at.duration_trunc(Duration::hours(1)).unwrap())
        .collect();
    let stale = hours.iter().filter(|h| **h < current).count();
    assert_eq!(
        sample(&text, "genalytics_rollup_queued", ""),
        Some(hours.len() as f64)
    );
    assert_eq!(
        sample(&text, "genalytics_rollup_stale", ""),
        Some(stale as f64)
    );
    assert_eq!(sample(&text, "genalytics_rollup_failing", ""), Some(0.0));
    assert_eq!(sample(&text, "genalytics_late_events", ""), Some(0.0));
    // The same figures as status --format json.
    let json = status_of(&env, key);
    for (family, field) in [
        ("genalytics_stream_length", "stream_length"),
        ("genalytics_untransferred_entries", "behind"),
        ("genalytics_events_transferred", "events_transferred"),
        ("genalytics_stream_resets", "stream_resets"),
        (
            "genalytics_oldest_untransferred_age_seconds",
            "oldest_untransferred_age_seconds",
        ),
    ] {
        let shown = sample(&text, family, stream).unwrap();
        let want = json[field].as_f64().unwrap();
        // Ages move on between the two runs.
        let slack = if field.ends_with("seconds") { 5.0 } else { 0.0 };
        assert!(
            (shown - want).abs() <= slack,
            "{family} {shown} vs {field} {want}"
        );
    }
    for (family, field) in [
        ("genalytics_rejected_entries", "rejected_entries"),
        ("genalytics_rollup_queued", "hours_awaiting_rollup"),
        ("genalytics_rollup_stale", "stale_hours"),
        ("genalytics_rollup_failing", "failing_hours"),
        ("genalytics_rollup_legacy", "legacy_hours"),
        ("genalytics_late_events", "late_events_waiting"),
    ] {
        assert_eq!(sample(&text, family, ""), json[field].as_f64(), "{family}");
    }
    assert_eq!(
        sample(
            &text,
            "genalytics_completions_last_hour",
            "outcome=\"success\""
        ),
        json["successful_last_hour"].as_f64()
    );

    // The alerting rules in contrib/ are valid, pass their own unit tests,
    // and name only metrics that status writes.
    let rules = concat!(env!("CARGO_MANIFEST_DIR"), "/contrib/prometheus");
    for args in [
        ["check", "rules", "genalytics-alerts.yml"],
        ["test", "rules", "genalytics-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(rules)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let alerts = std::fs::read_to_string(format!("{rules}/genalytics-alerts.yml")).unwrap();
    let named: BTreeSet<&str> = alerts
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("genalytics_"))
        .collect();
    assert!(named.len() >= 8, "{named:?}");
    for name in named {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is not in\n{text}"
        );
    }

    // Written to a file for the textfile collector: whole, readable by
    // all, nothing else left in its directory.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("genalytics.prom");
    std::fs::write(&file, "stale").unwrap();
    let ran = env
        .genalytics()
        .args(["status", "--format", "openmetrics", "--stream", key, "-o"])
        .arg(&file)
        .ok();
    assert_eq!(ran.stdout, "");
    let written = std::fs::read_to_string(&file).unwrap();
    assert_eq!(promtool_complaints(&written), "", "{written}");
    assert!(written.ends_with("# EOF\n"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o644);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let ran = env
        .genalytics()
        .args(["status", "-o", "/nonexistent/dir/x.prom"])
        .code(1);
    assert!(
        ran.stderr.contains("cannot write /nonexistent/dir/x.prom"),
        "{}",
        ran.stderr
    );

    // A symlink is followed, not replaced; what is not a regular file is
    // refused and left as it is.
    let real = dir.path().join("real.prom");
    std::fs::write(&real, "old").unwrap();
    let link = dir.path().join("link.prom");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    env.genalytics()
        .args(["status", "--format", "openmetrics", "-o"])
        .arg(&link)
        .ok();
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(std::fs::read_to_string(&real).unwrap().ends_with("# EOF\n"));
    let fifo = dir.path().join("fifo");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let ran = env.genalytics().args(["status", "-o"]).arg(&fifo).code(1);
    assert!(
        ran.stderr.contains("it is not a regular file"),
        "{}",
        ran.stderr
    );
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &std::fs::symlink_metadata(&fifo).unwrap().file_type()
    ));

    // Without Redis: what PostgreSQL knows, Redis' figures left out.
    let ran = env
        .genalytics()
        .args(["status", "--format", "openmetrics", "--stream", key])
        .args(["--redis-url", "redis://127.0.0.1:1"])
        .ok();
    assert_eq!(promtool_complaints(&ran.stdout), "", "{}", ran.stdout);
    assert_eq!(
        sample(&ran.stdout, "genalytics_redis_up", stream),
        Some(0.0)
    );
    assert_eq!(
        sample(&ran.stdout, "genalytics_stream_length", stream),
        None
    );
    assert_eq!(
        sample(&ran.stdout, "genalytics_events_transferred", stream),
        Some(7.0)
    );
}

#[test]
fn check_gives_up_on_a_server_that_never_answers() {
    // Accepts connections (the kernel does, into the backlog) and never
    // says a word: what a proxy in front of a dead server looks like.
    let (silent, port) = crate::harness::silent_server();
    let url = format!("postgres://u:p@127.0.0.1:{port}/db");
    let started = std::time::Instant::now();
    let ran = crate::harness::Cmd::new()
        .args([
            "check",
            "--nagios",
            "--crit-lag",
            "5m",
            "-t",
            "2s",
            "--database-url",
            &url,
        ])
        .code(3);
    assert!(
        ran.stdout
            .starts_with("GENALYTICS UNKNOWN - no answer within 2s"),
        "{}",
        ran.stdout
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let ran = crate::harness::Cmd::new()
        .args([
            "check",
            "--max-failure-rate",
            "5",
            "--timeout",
            "1500ms",
            "--database-url",
            &url,
        ])
        .code(1);
    assert!(
        ran.stderr
            .contains("check gave up: no answer within 1500ms"),
        "{}",
        ran.stderr
    );
    drop(silent);
}

#[test]
fn table_sizes_are_the_tables_real_sizes_partitioned_or_not() {
    let env = migrated();
    let mut con = env.redis();
    let key = env.stream_key();
    for n in 0..200 {
        let user = format!("00000000-0000-0000-0000-{n:012}");
        xadd(
            &mut con,
            &key,
            "*",
            &[("event_type", "request"), ("user_id", &user)],
        );
    }
    xadd(&mut con, &key, "*", &[("event_type", "bogus")]);
    env.genalytics().arg("transfer").ok();
    env.genalytics().arg("aggregate").ok();
    let mut db = env.db();
    // Settled, so the sizes hold still between status and the check.
    db.batch_execute("VACUUM ANALYZE").unwrap();
    let status = status(&env);
    let tables = status["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 6, "{status:#}");
    for table in tables {
        let name = table["table"].as_str().unwrap();
        // A partitioned table's size is its partitions' (one level deep).
        let want: i64 = db
            .query_one(
                "SELECT pg_total_relation_size($1::text::regclass)
                      + coalesce((SELECT sum(pg_total_relation_size(inhrelid))
                                  FROM pg_inherits WHERE inhparent = $1::text::regclass), 0)::int8",
                &[&name],
            )
            .unwrap()
            .get(0);
        assert!(want > 0, "{name}");
        assert_eq!(table["bytes"].as_i64(), Some(want), "{name}");
    }
    let metrics = env
        .genalytics()
        .args(["status", "--format", "openmetrics"])
        .ok();
    let rejected = metrics
        .stdout
        .lines()
        .find(|l| {
            l.starts_with("genalytics_table_size_bytes{table=\"generation_events_rejected\"}")
        })
        .unwrap_or_else(|| panic!("{}", metrics.stdout));
    assert!(!rejected.ends_with(" 0"), "{rejected}");
}
