//! No password in any output of any command — successes, failures, and
//! with debugging logs on.

use crate::harness::{Cmd, TestEnv};

const PASSWORD: &str = "Pw-9f3Kx-never-print";

fn assert_no_password(what: &str, stdout: &str, stderr: &str) {
    assert!(
        !stdout.contains(PASSWORD),
        "{what} printed the password:\n{stdout}"
    );
    assert!(
        !stderr.contains(PASSWORD),
        "{what} printed the password:\n{stderr}"
    );
}

#[test]
fn no_command_prints_a_password() {
    let env = TestEnv::new();
    // A role whose password is the one that must never be printed.
    let database_url = env.url_with_password(&env.database, PASSWORD);
    let closed = crate::harness::closed_port();
    let commands: &[&[&str]] = &[
        &["migrate"],
        &["migrate", "--status"],
        &["simulate", "--events", "500", "--hours", "2"],
        &["transfer"],
        &["aggregate", "--include-current"],
        &["report", "overview"],
        &["report", "trends", "--format", "csv"],
        &[
            "report",
            "user",
            "00000000-0000-4000-8000-000000000001",
            "--format",
            "json",
        ],
        &["report", "models"],
        &["report", "failures"],
        &["report", "peak-hours"],
        &["status"],
        &["check", "--max-failure-rate", "100", "--max-lag", "1h"],
        &["prune", "--older-than", "3650d", "--dry-run"],
    ];
    for args in commands {
        for verbose in [false, true] {
            let mut cmd = Cmd::new()
                .args(args.iter().copied())
                .env("DATABASE_URL", &database_url)
                .env("REDIS_URL", env.redis.url())
                .env("GENALYTICS_REDIS_NS", &env.namespace);
            if verbose {
                cmd = cmd.arg("-vv");
            }
            let ran = cmd.ok();
            assert_no_password(&format!("{args:?}"), &ran.stdout, &ran.stderr);
        }
        // The same command against servers that are not there.
        let ran = Cmd::new()
            .args(args.iter().copied())
            .env(
                "DATABASE_URL",
                format!("postgres://alice:{PASSWORD}@127.0.0.1:{closed}/x"),
            )
            .env(
                "REDIS_URL",
                format!("redis://:{PASSWORD}@127.0.0.1:{closed}/0"),
            )
            .run();
        assert_no_password(&format!("{args:?} failing"), &ran.stdout, &ran.stderr);
        assert_ne!(
            ran.code,
            Some(0),
            "{args:?} cannot succeed without its servers"
        );
    }
    // Redis that answers, but refuses the password.
    let ran = Cmd::new()
        .args(["simulate", "--events", "10"])
        .env(
            "REDIS_URL",
            format!("redis://:{PASSWORD}@127.0.0.1:{}/0", env.redis.port()),
        )
        .code(1);
    assert_no_password(
        "simulate with a refused Redis password",
        &ran.stdout,
        &ran.stderr,
    );
    assert!(ran.stderr.contains("Redis"), "{}", ran.stderr);
}
