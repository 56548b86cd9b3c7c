//! `genalytics report …` as people and pipes see it: tables with the window
//! in their heading and no colour off a terminal, CSV sections, a small
//! models table character for character, zeros from an empty database,
//! exit 2 on bad input, and a reader closing the pipe early is no error.

use std::io::Read;
use std::process::Stdio;

use chrono::Duration;

use crate::harness::TestEnv;
use crate::harness::events::{Written, write};
use crate::report::{UNTIL, loaded, report, report_json, until};

#[test]
fn tables_for_people_and_csv_sections() {
    let (env, _) = loaded();
    for args in [
        &["overview"][..],
        &["trends", "--days", "1"],
        &["user", "00000000-0000-4000-8000-000000000003"],
        &["models"],
        &["failures"],
        &["peak-hours"],
    ] {
        let ran = report(&env, args);
        assert!(ran.stdout.lines().count() > 3, "{args:?}:\n{}", ran.stdout);
        assert!(
            ran.stdout.contains("2026-11-20 00:00"),
            "{args:?}: heading names the window"
        );
        assert!(
            !ran.stdout.contains('\u{1b}'),
            "{args:?}: no colour off a terminal"
        );
    }
    let overview = report(&env, &["overview", "--days", "2"]).stdout;
    assert!(
        overview.starts_with("Overview, last 2 days: 2026-11-18 00:00 → 2026-11-20 00:00 UTC\n"),
        "{overview}"
    );
    assert!(overview.contains(" %"), "{overview}");
    assert!(overview.contains(" s"), "{overview}");

    let failures = report(
        &env,
        &["failures", "--format", "csv", "--section", "failure_trends"],
    )
    .stdout;
    assert!(
        failures.starts_with("date,total_completions,failures,failure_rate_pct\n"),
        "{failures}"
    );
    let models = report(&env, &["models", "--format", "csv"]).stdout;
    let mut reader = csv::Reader::from_reader(models.as_bytes());
    let names: Vec<String> = reader
        .records()
        .map(|r| r.unwrap()[0].to_string())
        .collect();
    assert!(
        names.contains(&"model, \"quoted\"\nnewline ü".to_string()),
        "{names:?}"
    );
    let ran = env
        .genalytics()
        .args(["report", "failures", "--format", "csv", "--section", "nope"])
        .code(2);
    assert!(
        ran.stderr.contains("error_types, failure_trends"),
        "{}",
        ran.stderr
    );
}

#[test]
fn an_empty_database_gives_zeros_and_bad_input_exits_2() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let overview = report_json(&env, &["overview"]);
    assert_eq!(overview["total_requests"], 0);
    assert_eq!(overview["hours_with_data"], 0);
    assert!(overview["avg_duration_ms"].is_null() && overview["latest_data_timestamp"].is_null());
    assert_eq!(
        report_json(&env, &["models"])["models"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        report_json(&env, &["failures"])["failure_trends"]
            .as_array()
            .unwrap()
            .len(),
        7
    );
    assert_eq!(
        report_json(&env, &["trends"])["data_points"]
            .as_array()
            .unwrap()
            .len(),
        168
    );

    for (args, says) in [
        (&["overview", "--days", "0"][..], "--days"),
        (&["overview", "--days", "-3"], "-3"),
        (&["overview", "--days", "1.5"], "1.5"),
        (&["trends", "--interval", "weekly"], "weekly"),
        (&["user", "not-a-uuid"], "not a UUID"),
        (&["peak-hours", "--tz", "Mars/Olympus"], "IANA"),
        (&["overview", "--until", "soon"], "RFC 3339"),
    ] {
        let ran = env
            .genalytics()
            .arg("report")
            .args(args.iter().copied())
            .code(2);
        assert!(ran.stderr.contains(says), "{args:?}: {}", ran.stderr);
    }
}

#[test]
fn a_closed_pipe_is_not_an_error() {
    let (env, _) = loaded();
    for format in ["table", "json", "csv"] {
        let mut child = env
            .genalytics()
            .args([
                "report", "trends", "--days", "60", "--until", UNTIL, "--format", format,
            ])
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = [0_u8; 64];
        child
            .stdout
            .as_mut()
            .unwrap()
            .read_exact(&mut first)
            .unwrap();
        drop(child.stdout.take());
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        assert!(status.success(), "{format}: {status}: {stderr}");
        assert!(stderr.is_empty(), "{format}: {stderr}");
    }
}

#[test]
fn a_small_models_table_reads_as_expected() {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    let at = |minute: i64| until() - Duration::hours(2) + Duration::minutes(minute);
    let completion = |minute: i64, model: &str, ms: i64, ok: bool| Written {
        model: Some(model.to_string()),
        duration_ms: Some(ms),
        success: Some(ok),
        error_type: (!ok).then(|| "TimeoutError".to_string()),
        ..Written::new(at(minute), "completion")
    };
    write(
        &env,
        &[
            completion(1, "sd_xl_base_1.0", 41_200, true),
            completion(2, "sd_xl_base_1.0", 0, false),
            completion(3, "illustriousXL_v01", 850, true),
        ],
    );
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    env.genalytics()
        .args(["aggregate", "-q", "--hour", "2026-11-19T22"])
        .ok();
    let table = report(&env, &["models", "--days", "1"]).stdout;
    let want = "\
Models, last 1 day: 2026-11-19 00:00 → 2026-11-20 00:00 UTC
 model               completions   ok   failed   success    avg      p50      p95      last used            
────────────────────────────────────────────────────────────────────────────────────────────────────────────
 sd_xl_base_1.0                2    1        1    50.00 %   41.2 s   41.4 s   41.4 s   2026-11-19 22:02 UTC 
 illustriousXL_v01             1    1        0   100.00 %    0.8 s    0.9 s    0.9 s   2026-11-19 22:03 UTC 
";
    // (p50/p95 come from the 1 %-accurate histogram: 41.4 s for 41.2 s;
    // each duration column keeps one unit: 850 ms shows as 0.8 s.)
    assert_eq!(table, want);
}
