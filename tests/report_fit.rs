//! Output that fits: in a terminal of 80 columns every report and status
//! print one line per row and nothing wider; in a pipe there are no
//! sparklines or bars; an empty window says so.

use std::io::Read;
use std::process::Stdio;

use chrono::{Duration, Utc};

use crate::harness::events::{traffic, write};
use crate::harness::{TestEnv, json, migrated};

const GRAPHICS: &[char] = &[
    '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█', '▏', '▎', '▍', '▌', '▋', '▊', '▉',
];

/// What `args` prints on a terminal of 80 columns and 50 rows, without
/// its escape sequences.
fn on_a_terminal(env: &TestEnv, args: &[&str]) -> String {
    let size = nix::pty::Winsize {
        ws_row: 50,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&size), None).unwrap();
    let slave = || Stdio::from(pty.slave.try_clone().unwrap());
    let mut child = env
        .genalytics()
        .args(args.iter().copied())
        .command()
        .stdin(slave())
        .stdout(slave())
        .stderr(slave())
        .spawn()
        .unwrap();
    drop(pty.slave);
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buffer = [0_u8; 4096];
        // EIO once the child has closed the terminal.
        while let Ok(n @ 1..) = master.read(&mut buffer) {
            out.extend_from_slice(&buffer[..n]);
        }
        out
    });
    assert!(child.wait().unwrap().success(), "{args:?}");
    let raw = String::from_utf8(reader.join().unwrap()).unwrap();
    without_escapes(&raw).replace("\r\n", "\n")
}

/// The text without ANSI escape sequences (CSI: ESC [ … final byte).
fn without_escapes(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn stored_traffic() -> TestEnv {
    let env = migrated();
    let start = genalytics::testing::hour_floor(Utc::now()) - Duration::hours(6);
    for hour in 0..6 {
        write(
            &env,
            &traffic(start + Duration::hours(hour), 400, 11 + hour as u64),
        );
    }
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
    env.genalytics().args(["aggregate", "-q"]).ok();
    env
}

#[test]
fn reports_and_status_fit_80_columns_with_one_line_per_row() {
    let env = stored_traffic();
    for args in [
        &["report", "trends", "--days", "1"][..],
        &["report", "overview"],
        &["report", "models"],
        &["report", "failures"],
        &["report", "peak-hours"],
        &["status"],
    ] {
        let out = on_a_terminal(&env, args);
        for line in out.lines() {
            assert!(
                line.chars().count() <= 80,
                "{args:?}: {} wide:\n{out}",
                line.chars().count()
            );
        }
        assert!(!out.contains("panicked"), "{out}");
    }
    // One line per hour: as many lines starting with a time as points.
    let out = on_a_terminal(&env, &["report", "trends", "--days", "1"]);
    let points = json(&env, &["report", "trends", "--days", "1"])["data_points"]
        .as_array()
        .unwrap()
        .len();
    let rows = out
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            line.len() > 11 && line.as_bytes()[2] == b'-' && line.as_bytes()[5] == b' '
        })
        .count();
    assert_eq!(rows, points, "one line per point:\n{out}");
    // The overview's sparkline is drawn on a terminal, within the width.
    let out = on_a_terminal(&env, &["report", "overview"]);
    assert!(out.contains(GRAPHICS), "{out}");
}

#[test]
fn a_pipe_gets_no_sparklines_or_bars_and_durations_keep_one_unit() {
    let env = stored_traffic();
    for args in [
        &["report", "overview"][..],
        &["report", "trends", "--days", "1"],
        &["report", "models"],
        &["report", "peak-hours"],
    ] {
        let ran = env.genalytics().args(args.iter().copied()).ok();
        assert!(!ran.stdout.contains(GRAPHICS), "{args:?}:\n{}", ran.stdout);
        assert!(
            ran.stdout.lines().all(|l| l.chars().count() <= 160),
            "{}",
            ran.stdout
        );
    }
    // Each duration column shows one unit.
    let ran = env
        .genalytics()
        .args(["report", "trends", "--days", "1"])
        .ok();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    let header = lines.iter().position(|l| l.contains("p95")).unwrap();
    let data: Vec<&str> = lines[header + 2..]
        .iter()
        .copied()
        .filter(|l| l.contains(" UTC "))
        .collect();
    assert!(!data.is_empty(), "{}", ran.stdout);
    let unit = |line: &str, from_end: usize| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words[words.len() - from_end].to_string()
    };
    // … p95 value, its unit, users: the unit is the second word from the end.
    let units: std::collections::BTreeSet<String> = data
        .iter()
        .filter(|l| !l.contains('—'))
        .map(|l| unit(l, 2))
        .collect();
    assert_eq!(units.len(), 1, "p95 in one unit: {units:?}\n{}", ran.stdout);
}

#[test]
fn an_empty_window_says_there_is_no_data() {
    let env = stored_traffic();
    for which in ["overview", "trends", "models", "failures", "peak-hours"] {
        let ran = env
            .genalytics()
            .args(["report", which, "--until", "2001-01-01"])
            .ok();
        assert!(
            ran.stdout.contains("no data in this window"),
            "{which}:\n{}",
            ran.stdout
        );
        assert!(
            ran.stdout.lines().count() <= 3,
            "{which}: no rows of zeros:\n{}",
            ran.stdout
        );
        // JSON keeps its shape.
        let report = json(&env, &["report", which, "--until", "2001-01-01"]);
        assert!(report.is_object());
    }
    let ran = env
        .genalytics()
        .args(["report", "user", "00000000-0000-4000-8000-999999999999"])
        .ok();
    assert!(
        ran.stdout.contains("no data in this window"),
        "{}",
        ran.stdout
    );
}

#[test]
fn color_always_styles_a_pipe_and_never_does_not_on_a_terminal() {
    let env = stored_traffic();
    let ran = env
        .genalytics()
        .args(["--color", "always", "report", "models"])
        .ok();
    assert!(ran.stdout.contains("\u{1b}[1m"), "{}", ran.stdout);
    let ran = env
        .genalytics()
        .args(["report", "models", "--color", "never"])
        .ok();
    assert!(!ran.stdout.contains('\u{1b}'));
    let ran = env
        .genalytics()
        .args(["--color", "rainbow", "report", "models"])
        .code(2);
    assert!(ran.stderr.contains("rainbow"), "{}", ran.stderr);
}
