//! `genalytics demo`: end to end with no configuration, leaving nothing
//! behind — or, with `--keep`, servers the other commands can use.

use std::path::Path;

use crate::harness::Cmd;

/// Processes whose command line mentions `dir`.
fn processes_under(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect()
}

fn requests_in_overview(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("requests"))
        .unwrap_or_else(|| panic!("no requests line in:\n{stdout}"));
    line.trim().replace(',', "").parse().unwrap()
}

#[test]
fn demo_runs_end_to_end_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    // PostgreSQL runs as the postgres user when we are root: it must be
    // able to reach its directory below this one.
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ran = Cmd::new()
        .args(["demo", "--events", "4000"])
        .env("TMPDIR", tmp.path())
        .ok();
    assert!(requests_in_overview(&ran.stdout) > 0, "{}", ran.stdout);
    assert!(ran.stdout.contains("Hourly trends"), "{}", ran.stdout);
    assert!(ran.stdout.contains("stopped and removed"), "{}", ran.stdout);
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        processes_under(tmp.path()).is_empty(),
        "{:?}",
        processes_under(tmp.path())
    );
}

#[test]
fn demo_keep_leaves_servers_the_other_commands_can_use() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let ran = Cmd::new()
        .args(["demo", "--keep", "--events", "2000"])
        .env("TMPDIR", tmp.path())
        .ok();
    let export = |name: &str| -> String {
        ran.stdout
            .lines()
            .find_map(|line| {
                line.trim()
                    .strip_prefix(&format!("export {name}="))
                    .map(String::from)
            })
            .unwrap_or_else(|| panic!("no {name} in:\n{}", ran.stdout))
    };
    let (database_url, redis_url) = (export("DATABASE_URL"), export("REDIS_URL"));
    let cleanup = ran
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("demo: when done: "))
        .unwrap()
        .to_string();
    let overview = Cmd::new()
        .args(["report", "overview", "--days", "1"])
        .env("DATABASE_URL", &database_url)
        .env("REDIS_URL", &redis_url)
        .run();
    // Clean up as the demo says, whatever the report did.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cleanup)
        .status()
        .unwrap();
    assert!(status.success(), "{cleanup}");
    assert_eq!(overview.code, Some(0), "{}", overview.stderr);
    assert!(requests_in_overview(&overview.stdout) > 0);
    crate::harness::wait_for("the kept servers to stop", 30, || {
        processes_under(tmp.path()).is_empty()
    });
}
