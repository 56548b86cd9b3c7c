//! `genalytics demo`: end to end with no configuration, leaving nothing
//! behind — or, with `--keep`, servers the other commands can use.

use std::path::Path;

use crate::harness::Cmd;

/// Processes whose command line mentions `dir` (PostgreSQL's postmaster
/// names its data directory there).
fn processes_under(dir: &Path) -> Vec<String> {
    processes_mentioning(&dir.to_string_lossy())
}

/// The redis-server the demo said it started, if it still runs (it
/// rewrites its command line to `redis-server 127.0.0.1:PORT`).
fn redis_of(stdout: &str) -> Vec<String> {
    let port = stdout
        .split("Redis on 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no Redis port in:\n{stdout}"));
    processes_mentioning(&format!("redis-server 127.0.0.1:{port}"))
}

fn processes_mentioning(needle: &str) -> Vec<String> {
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
        .filter(|cmdline| cmdline.contains(needle))
        .collect()
}

fn requests_in_overview(stdout: &str) -> u64 {
    let line = stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("requests"))
        .unwrap_or_else(|| panic!("no requests line in:\n{stdout}"));
    line.trim().replace(',', "").parse().unwrap()
}

/// A TMPDIR of the test's own for the demo's servers. PostgreSQL runs as
/// the postgres user when we are root, so it must be able to enter it.
pub(crate) fn demo_tmpdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    tmp
}

#[test]
fn demo_runs_end_to_end_and_leaves_nothing_behind() {
    let tmp = demo_tmpdir();
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
    assert!(
        redis_of(&ran.stdout).is_empty(),
        "{:?}",
        redis_of(&ran.stdout)
    );
}

#[test]
fn demo_keep_leaves_servers_the_other_commands_can_use() {
    let tmp = demo_tmpdir();
    let ran = Cmd::new()
        .args(["demo", "--keep", "-q", "--events", "2000"])
        .env("TMPDIR", tmp.path())
        .ok();
    // Quiet hides the progress, not what --keep is for.
    assert!(!ran.stdout.contains("$ genalytics"), "{}", ran.stdout);
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
    // Without the printed credentials, neither server lets anyone in.
    let without_password = |url: &str| {
        let (scheme, rest) = url.split_once("://").unwrap();
        let (userinfo, host) = rest.split_once('@').unwrap();
        let user = userinfo.split(':').next().unwrap();
        format!(
            "{scheme}://{user}{}{host}",
            if user.is_empty() { "" } else { "@" }
        )
    };
    let no_pg = Cmd::new()
        .args([
            "migrate",
            "--status",
            "--database-url",
            &without_password(&database_url),
        ])
        .run();
    let no_redis = Cmd::new()
        .args([
            "simulate",
            "--events",
            "1",
            "--redis-url",
            &without_password(&redis_url),
        ])
        .run();
    // Their files are their owner's alone.
    let modes: Vec<(String, u32)> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flat_map(|dir| {
            let dir = dir.unwrap().path();
            let mut found = vec![dir.clone()];
            found.extend(
                std::fs::read_dir(&dir)
                    .unwrap()
                    .map(|entry| entry.unwrap().path())
                    .filter(|path| path.extension().is_some_and(|ext| ext == "log")),
            );
            found
        })
        .map(|path| {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            (path.display().to_string(), mode)
        })
        .collect();
    // Clean up as the demo says, whatever the report did.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&cleanup)
        .status()
        .unwrap();
    assert!(status.success(), "{cleanup}");
    assert_eq!(overview.code, Some(0), "{}", overview.stderr);
    assert!(requests_in_overview(&overview.stdout) > 0);
    assert_eq!(no_pg.code, Some(1), "{}", no_pg.stderr);
    assert!(no_pg.stderr.contains("password"), "{}", no_pg.stderr);
    assert_eq!(no_redis.code, Some(1), "{}", no_redis.stderr);
    assert!(no_redis.stderr.contains("Redis"), "{}", no_redis.stderr);
    assert!(modes.len() >= 4, "{modes:?}");
    for (path, mode) in &modes {
        assert_eq!(mode & 0o077, 0, "{path} is open to others: {mode:o}");
    }
    crate::harness::wait_for("the kept servers to stop", 30, || {
        processes_under(tmp.path()).is_empty()
    });
}

#[test]
fn ctrl_c_during_the_demo_still_removes_everything() {
    let tmp = demo_tmpdir();
    let child = Cmd::new()
        .args(["demo", "--events", "2000000"])
        .env("TMPDIR", tmp.path())
        .command()
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Interrupt once the servers are up and the simulation is running.
    crate::harness::wait_for("the demo's servers", 60, || {
        !processes_under(tmp.path()).is_empty()
    });
    std::thread::sleep(std::time::Duration::from_millis(1500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(
        processes_under(tmp.path()).is_empty(),
        "{:?}",
        processes_under(tmp.path())
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(redis_of(&stdout).is_empty(), "{:?}", redis_of(&stdout));
}
