//! Throwaway PostgreSQL and Redis servers, for the test suite and `demo`.
//!
//! Each server lives in its own temporary directory (0700: its data and log
//! are no one else's) on a free private port, answers only to a random
//! password,
//! is polled for readiness with a bound (its log goes into any failure), and
//! is stopped and its directory removed when dropped — also when a test
//! panics. PostgreSQL refuses to run as root, so as root it runs under the
//! unprivileged `postgres` system user in a directory that user owns.
//!
//! Servers get the parent-death signal: if the process that started them is
//! killed outright, they go too. That signal follows the *thread* that
//! spawned them, so start servers on a thread that outlives them.

mod postgres;
mod redis;

pub use self::postgres::Postgres;
pub use self::redis::{Redis, RedisCluster, RedisSentinel};

use std::fs;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to stop before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A temporary directory only its owner can enter (tempfile leaves the
/// mode to the umask).
fn private_dir(prefix: &str) -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .permissions(fs::Permissions::from_mode(0o700))
        .tempdir()
        .with_context(|| format!("cannot create a temporary directory for {prefix}"))?;
    Ok(dir)
}

/// A log file (appended to) only its owner can read.
fn private_file(path: &Path) -> std::io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

/// A password for a throwaway server: 32 letters and digits.
fn random_password() -> String {
    use rand::RngExt;
    let mut rng = rand::rng();
    (0..32)
        .map(|_| {
            let n: u8 = rng.random_range(0..62);
            char::from(match n {
                0..=9 => b'0' + n,
                10..=35 => b'a' + n - 10,
                _ => b'A' + n - 36,
            })
        })
        .collect()
}

/// A port nobody listens on right now. Another process could take it before
/// the server binds it; servers retry with a new port when that happens.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free local port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `launch` on free ports until one is not taken by someone else in
/// the meantime (the clash shows in the server's log).
fn launch_on_free_port(
    log: &Path,
    mut launch: impl FnMut(u16) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match launch(free_port()?) {
            Err(_) if attempts < 5 && log_tail(log).contains("already in use") => {}
            outcome => return outcome,
        }
    }
}

/// Starts a server with its output appended to `log`, in a process group
/// of its own (a Ctrl-C meant for genalytics is not also sent to it), dying
/// with this thread (`signal`) unless `detached`, and waits until `ready`
/// says it accepts connections; one that never does is stopped with the
/// same signal.
fn spawn_server(
    command: &mut Command,
    what: &str,
    log: &Path,
    signal: Signal,
    detached: bool,
    ready: impl FnMut() -> bool,
) -> anyhow::Result<Child> {
    let out = private_file(log)?;
    command
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .process_group(0);
    if !detached {
        die_with_parent(command, signal);
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", command.get_program().to_string_lossy()))?;
    if let Err(err) = wait_ready(what, &mut child, log, ready) {
        stop_child(&mut child, signal);
        return Err(err);
    }
    Ok(child)
}

/// Polls `ready` until it answers true, the child exits, or time runs out.
fn wait_ready(
    what: &str,
    child: &mut Child,
    log: &Path,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(10);
    loop {
        if ready() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited during start-up ({status}); its log:\n{}",
                log_tail(log)
            );
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!(
                "{what} did not accept connections within {} s; its log:\n{}",
                READY_TIMEOUT.as_secs(),
                log_tail(log)
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Last lines of a server log, for error messages.
pub fn log_tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_else(|err| format!("(no log: {err})"));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Sends `signal` and waits for the child to exit; kills it if it will not.
fn stop_child(child: &mut Child, signal: Signal) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = signal::kill(pid, signal);
    let started = Instant::now();
    while started.elapsed() < STOP_TIMEOUT {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Makes `command` die with the thread that spawns it.
fn die_with_parent(command: &mut Command, signal: Signal) {
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command
            .pre_exec(move || nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from));
    }
}

/// Finds one of PostgreSQL's server programs: `pg_config --bindir`, then the
/// newest `/usr/lib/postgresql/*/bin`, then `PATH`.
fn postgres_program(name: &str) -> anyhow::Result<PathBuf> {
    let mut candidates = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    if let Ok(entries) = fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse().ok()?;
                Some((version, e.path().join("bin")))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        candidates.extend(versions.into_iter().map(|v| v.1));
    }
    candidates.extend(path_dirs());
    candidates
        .into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "cannot find PostgreSQL's `{name}` (looked in pg_config --bindir, /usr/lib/postgresql/*/bin and PATH); \
                 install the PostgreSQL server, e.g. `apt-get install postgresql`"
            )
        })
}

/// Finds `redis-server` on `PATH` or in `/usr/bin`.
fn redis_program() -> anyhow::Result<PathBuf> {
    path_dirs()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|path| path.is_file())
        .context("cannot find `redis-server` on PATH; install Redis, e.g. `apt-get install redis-server`")
}

fn path_dirs() -> impl Iterator<Item = PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
}
