//! Bad flags, missing settings and unreachable servers: one sentence on
//! stderr, the right exit code, never a password or a panic. Flag values at
//! the extremes (far dates, huge durations) either work or are such errors.

use crate::harness::{Cmd, TestEnv, closed_port, migrated};

const PASSWORD: &str = "pw-s3cr3t-93412";

#[track_caller]
fn assert_one_clean_sentence(stderr: &str) {
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("genalytics: "), "{stderr}");
    assert!(!stderr.contains(PASSWORD), "password leaked: {stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn unreachable_postgres_names_the_server_and_the_setting() {
    let port = closed_port();
    let ran = Cmd::new()
        .args(["migrate", "--database-url"])
        .arg(format!(
            "postgres://alice:{PASSWORD}@127.0.0.1:{port}/analytics"
        ))
        .code(1);
    assert_one_clean_sentence(&ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "cannot connect to PostgreSQL at 127.0.0.1:{port}: connection refused"
        )),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("DATABASE_URL"), "{}", ran.stderr);
    assert!(ran.stdout.is_empty(), "{}", ran.stdout);
}

#[test]
fn unreachable_redis_names_the_server_and_the_setting() {
    let port = closed_port();
    let ran = Cmd::new()
        .args(["simulate", "--events", "10"])
        .env(
            "REDIS_URL",
            format!("redis://:{PASSWORD}@127.0.0.1:{port}/0"),
        )
        .code(1);
    assert_one_clean_sentence(&ran.stderr);
    assert!(
        ran.stderr.contains(&format!(
            "cannot connect to Redis at 127.0.0.1:{port}: connection refused"
        )),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("REDIS_URL"), "{}", ran.stderr);
}

#[test]
fn a_missing_database_is_named() {
    let env = TestEnv::new();
    let url = env.url_with_password("no_such_db", PASSWORD);
    let ran = Cmd::new().args(["migrate", "--database-url", &url]).code(1);
    assert_one_clean_sentence(&ran.stderr);
    assert!(
        ran.stderr.contains("\"no_such_db\" does not exist"),
        "{}",
        ran.stderr
    );
}

#[test]
fn no_database_configured_is_a_usage_error() {
    let ran = Cmd::new().arg("migrate").code(2);
    assert_one_clean_sentence(&ran.stderr);
    assert!(
        ran.stderr.contains("set DATABASE_URL, pass --database-url")
            && ran.stderr.contains("PGHOST"),
        "{}",
        ran.stderr
    );
}

#[test]
fn malformed_urls_are_usage_errors_without_the_password() {
    let ran = Cmd::new()
        .args(["migrate", "--database-url"])
        .arg(format!("postgres://alice:{PASSWORD}@db:notaport/x"))
        .code(2);
    assert_one_clean_sentence(&ran.stderr);
    assert!(ran.stderr.contains("DATABASE_URL"), "{}", ran.stderr);

    let ran = Cmd::new()
        .args(["simulate", "--redis-url"])
        .arg(format!("http://:{PASSWORD}@cache:6379"))
        .code(2);
    assert_one_clean_sentence(&ran.stderr);
    assert!(ran.stderr.contains("REDIS_URL"), "{}", ran.stderr);
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["simulate", "--events", "many"][..],
        &["simulate", "--hours", "0"],
        &["simulate", "--end", "yesterday"],
        &["frobnicate"],
        &["migrate", "--bogus"],
        &["--quiet", "--verbose", "migrate"],
    ] {
        let ran = Cmd::new().args(args.iter().copied()).code(2);
        assert!(ran.stderr.contains("error"), "{args:?}: {}", ran.stderr);
    }
    let ran = Cmd::new().args(["simulate", "--end", "yesterday"]).code(2);
    assert!(ran.stderr.contains("RFC 3339"), "{}", ran.stderr);
}

#[test]
fn extreme_flag_values_are_usage_errors_or_work_never_panics() {
    let env = migrated();
    let cases: &[(&[&str], i32)] = &[
        (&["report", "overview", "--until=-262143-01-02T00:00:00"], 2),
        (
            &["report", "overview", "--until", "+262142-12-31T23:59:59Z"],
            2,
        ),
        (&["report", "overview", "--days", "2147483647"], 2),
        (&["report", "trends", "--days", "0"], 2),
        (
            &[
                "report",
                "trends",
                "--until",
                "9999-12-31T23:59:59",
                "--days",
                "1",
            ],
            0,
        ),
        (
            &[
                "report",
                "trends",
                "--interval",
                "daily",
                "--until",
                "1900-01-01",
                "--days",
                "36500",
            ],
            0,
        ),
        (
            &[
                "report",
                "peak-hours",
                "--until",
                "9999-12-31T23",
                "--tz",
                "Pacific/Chatham",
            ],
            0,
        ),
        (&["aggregate", "--hour", "9999-12-31T23"], 0),
        (
            &["aggregate", "--from", "1900-01-01", "--to", "1900-01-02"],
            0,
        ),
        (
            &["aggregate", "--from", "0000-01-01", "--to", "1900-01-02"],
            2,
        ),
        (
            &[
                "simulate",
                "--end",
                "2300-01-01T00",
                "--events",
                "5",
                "--maxlen",
                "0",
            ],
            0,
        ),
        (&["simulate", "--end", "1900-01-01T00", "--events", "5"], 2),
        (&["prune", "--older-than", "99999999999999d"], 2),
        (&["check", "--max-lag", "9999999999999999999s"], 2),
        (&["transfer", "--keep=-1h"], 2),
    ];
    for (args, code) in cases {
        let ran = env.genalytics().args(args.iter().copied()).run();
        assert_eq!(
            ran.code,
            Some(*code),
            "{args:?}\n{}{}",
            ran.stdout,
            ran.stderr
        );
        if *code != 0 {
            assert_eq!(
                ran.stderr
                    .trim_end()
                    .lines()
                    .filter(|l| !l.is_empty() && !l.starts_with("For more"))
                    .count(),
                1,
                "{args:?}: {}",
                ran.stderr
            );
        }
    }
}

#[test]
fn help_names_the_environment_but_never_shows_its_secrets() {
    let ran = Cmd::new()
        .arg("--help")
        .env("DATABASE_URL", format!("postgres://alice:{PASSWORD}@db/x"))
        .env("REDIS_URL", format!("redis://:{PASSWORD}@cache"))
        .ok();
    for name in [
        "DATABASE_URL",
        "REDIS_URL",
        "GENALYTICS_REDIS_NS",
        "--stream",
        "migrate",
        "simulate",
    ] {
        assert!(
            ran.stdout.contains(name),
            "{name} missing from --help:\n{}",
            ran.stdout
        );
    }
    assert!(!ran.stdout.contains(PASSWORD), "{}", ran.stdout);
}

#[test]
fn global_flags_work_before_and_after_the_subcommand() {
    let env = TestEnv::new();
    Cmd::new()
        .args(["--database-url", &env.database_url(), "migrate"])
        .ok();
    Cmd::new()
        .args(["migrate", "--status", "--database-url", &env.database_url()])
        .ok();
}

#[test]
fn rust_log_filters_and_json_logs_carry_every_line() {
    // -v shows each migration applied; RUST_LOG overrides the level.
    let env = TestEnv::new();
    let ran = env
        .genalytics()
        .args(["migrate", "-v"])
        .env("RUST_LOG", "warn")
        .ok();
    assert!(!ran.stderr.contains("applied migration"), "{}", ran.stderr);
    let env = TestEnv::new();
    let ran = env
        .genalytics()
        .arg("migrate")
        .env("RUST_LOG", "genalytics=info")
        .ok();
    assert!(ran.stderr.contains("applied migration"), "{}", ran.stderr);

    // As JSON: every line an object with a time, a level and a message,
    // the final error included; a password still never shows.
    let env = TestEnv::new();
    let ran = env
        .genalytics()
        .args(["migrate", "-v", "--log-format", "json"])
        .ok();
    let lines: Vec<serde_json::Value> = ran
        .stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    assert!(lines.len() >= 5, "{}", ran.stderr);
    for line in &lines {
        assert!(line["timestamp"].is_string(), "{line}");
        assert_eq!(line["level"], "INFO", "{line}");
    }
    assert!(
        lines[0]["fields"]["message"]
            .as_str()
            .unwrap()
            .starts_with("applied migration")
    );
    let port = closed_port();
    let ran = Cmd::new()
        .args(["status", "--log-format", "json", "--database-url"])
        .arg(format!("postgres://alice:{PASSWORD}@127.0.0.1:{port}/x"))
        .code(1);
    let error: serde_json::Value = serde_json::from_str(ran.stderr.trim()).unwrap();
    assert_eq!(error["level"], "ERROR");
    assert!(
        error["fields"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot connect to PostgreSQL")
    );
    assert!(!ran.stderr.contains(PASSWORD));
    // A RUST_LOG that does not parse is said once, not obeyed.
    let ran = Cmd::new()
        .args(["status", "--database-url"])
        .arg(format!("postgres://alice@127.0.0.1:{port}/x"))
        .env("RUST_LOG", "a=[")
        .code(1);
    assert!(ran.stderr.contains("RUST_LOG ignored"), "{}", ran.stderr);
}

#[test]
fn version_names_the_commit_and_the_tls_library() {
    let ran = Cmd::new().arg("--version").ok();
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", ran.stdout);
    assert_eq!(
        lines[0],
        format!("genalytics {}", env!("CARGO_PKG_VERSION"))
    );
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8(out.stdout).unwrap().trim().to_string());
    match head {
        Some(head) => assert_eq!(lines[1], format!("commit {head}")),
        None => assert!(lines[1].starts_with("commit "), "{}", lines[1]),
    }
    assert!(
        lines[2].starts_with("TLS: native-tls on OpenSSL "),
        "{}",
        lines[2]
    );
    // -V stays one line, for scripts.
    assert_eq!(Cmd::new().arg("-V").ok().stdout.trim(), lines[0]);
}
