//! The shared test harness: a throwaway PostgreSQL and Redis per test (from
//! `genalytics::throwaway`), and a builder for running the real binary
//! against them with a clean environment.

pub mod events;
pub mod gate;
pub mod proxy;
pub mod reports;

use std::ffi::OsString;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use genalytics::throwaway::{Postgres, Redis};

/// Environment variables that must never leak in from a developer's shell.
const SCRUBBED: &[&str] = &[
    "DATABASE_URL",
    "REDIS_URL",
    "GENALYTICS_REDIS_NS",
    "GENALYTICS_REDIS_CLUSTER",
    "GENALYTICS_REDIS_SENTINEL",
    "GENALYTICS_RAW_RETENTION",
    "GENALYTICS_STALE_GRACE",
    "NO_COLOR",
    "RUST_BACKTRACE",
    "RUST_LOG",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    // libpq's variables: genalytics reads them as libpq does.
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGSSLCERT",
    "PGSSLKEY",
    "PGAPPNAME",
    "PGCONNECT_TIMEOUT",
    "PGTARGETSESSIONATTRS",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGSYSCONFDIR",
];

/// One test's private world: its own servers, database and stream namespace.
pub struct TestEnv {
    pub pg: Postgres,
    pub redis: Redis,
    pub database: String,
    pub namespace: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestEnv {
    #[track_caller]
    pub fn new() -> TestEnv {
        Self::with_postgres(Postgres::start().unwrap_or_else(|err| panic!("{err:#}")))
    }

    /// An environment around a server started with settings of its own.
    #[track_caller]
    pub fn with_postgres(pg: Postgres) -> TestEnv {
        let redis = Redis::start().unwrap_or_else(|err| panic!("{err:#}"));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let database = format!("genalytics_test_{n}");
        pg.create_database(&database)
            .unwrap_or_else(|err| panic!("{err:#}"));
        TestEnv {
            pg,
            redis,
            database,
            namespace: format!("test{}_{n}", std::process::id()),
        }
    }

    pub fn database_url(&self) -> String {
        self.pg.url(&self.database)
    }

    /// A URL to `database` for a superuser role that logs in with
    /// `password` (created on first use): for tests about passwords.
    #[track_caller]
    pub fn url_with_password(&self, database: &str, password: &str) -> String {
        let mut admin = self.pg.admin().unwrap_or_else(|err| panic!("{err:#}"));
        let exists = !admin
            .query("SELECT 1 FROM pg_roles WHERE rolname = 'alice'", &[])
            .unwrap()
            .is_empty();
        let verb = if exists { "ALTER" } else { "CREATE" };
        admin
            .batch_execute(&format!(
                "{verb} ROLE alice LOGIN SUPERUSER PASSWORD '{}'",
                password.replace('\'', "''")
            ))
            .unwrap();
        self.pg.url_as("alice", password, database)
    }

    pub fn stream_key(&self) -> String {
        format!("{}:generation_events:stream", self.namespace)
    }

    #[track_caller]
    pub fn db(&self) -> postgres::Client {
        postgres::Client::connect(&self.database_url(), postgres::NoTls)
            .unwrap_or_else(|err| panic!("cannot connect to the test database: {err}"))
    }

    #[track_caller]
    pub fn redis(&self) -> redis::Connection {
        self.redis
            .connection()
            .unwrap_or_else(|err| panic!("{err:#}"))
    }

    /// `genalytics status --format json`, parsed; hours count as stale as
    /// soon as they are complete (no grace), so tests need not wait.
    pub fn status_json(&self) -> serde_json::Value {
        let ran = self
            .genalytics()
            .args(["status", "--format", "json", "--stale-grace", "0"])
            .ok();
        serde_json::from_str(&ran.stdout).unwrap_or_else(|err| panic!("{err}: {}", ran.stdout))
    }

    /// The binary, pointed at this environment through the environment
    /// variables an operator would set.
    pub fn genalytics(&self) -> Cmd {
        Cmd::new()
            .env("DATABASE_URL", self.database_url())
            .env("REDIS_URL", self.redis.url())
            .env("GENALYTICS_REDIS_NS", &self.namespace)
    }
}

/// Runs `genalytics` and checks how it ended.
#[must_use]
pub struct Cmd {
    command: Command,
}

/// What a finished run printed.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Cmd {
    pub fn new() -> Cmd {
        let mut command = Command::new(env!("CARGO_BIN_EXE_genalytics"));
        for name in SCRUBBED {
            command.env_remove(name);
        }
        // No config file from the machine or the developer's home: an
        // empty one (tests of the file name their own).
        command.env("GENALYTICS_CONFIG", "/dev/null");
        command.stdin(Stdio::null());
        Cmd { command }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Cmd {
        self.command.arg(arg.into());
        self
    }

    pub fn args<I: IntoIterator<Item = S>, S: Into<OsString>>(mut self, args: I) -> Cmd {
        for arg in args {
            self.command.arg(arg.into());
        }
        self
    }

    pub fn env(mut self, name: &str, value: impl Into<OsString>) -> Cmd {
        self.command.env(name, value.into());
        self
    }

    pub fn env_remove(mut self, name: &str) -> Cmd {
        self.command.env_remove(name);
        self
    }

    pub fn command(self) -> Command {
        self.command
    }

    /// Starts it with its output captured, for a test that acts while it
    /// runs (kills it, restarts a server under it).
    pub fn spawn(self) -> std::process::Child {
        let mut command = self.command;
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        command.spawn().expect("genalytics starts")
    }

    #[track_caller]
    pub fn run(mut self) -> Ran {
        let Output {
            status,
            stdout,
            stderr,
        } = self
            .command
            .output()
            .unwrap_or_else(|err| panic!("cannot run genalytics: {err}"));
        let ran = Ran {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        };
        assert!(
            !ran.stderr.contains("panicked"),
            "genalytics panicked:\n{}",
            ran.stderr
        );
        ran
    }

    /// Runs and asserts exit code 0.
    #[track_caller]
    pub fn ok(self) -> Ran {
        self.code(0)
    }

    /// Runs and asserts the exit code.
    #[track_caller]
    pub fn code(self, want: i32) -> Ran {
        let ran = self.run();
        assert_eq!(
            ran.code,
            Some(want),
            "exit code\n--- stdout:\n{}\n--- stderr:\n{}",
            ran.stdout,
            ran.stderr
        );
        ran
    }
}

/// Stores what the stream holds, keeping it there for ten years (tests
/// read it again).
pub fn transfer(env: &TestEnv) {
    env.genalytics()
        .args(["transfer", "-q", "--keep", "3650d"])
        .ok();
}

/// A fresh environment with the schema migrated.
#[track_caller]
pub fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

/// Appends one entry; `id` "*" lets Redis choose. Returns the entry ID.
#[track_caller]
pub fn xadd(con: &mut redis::Connection, key: &str, id: &str, fields: &[(&str, &str)]) -> String {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(key).arg(id);
    for (name, value) in fields {
        cmd.arg(*name).arg(*value);
    }
    cmd.query(con)
        .unwrap_or_else(|err| panic!("XADD failed: {err}"))
}

/// Every entry ID in the stream, oldest first.
#[track_caller]
pub fn stream_ids(con: &mut redis::Connection, key: &str) -> Vec<String> {
    let entries: Vec<(String, Vec<Vec<u8>>)> = redis::cmd("XRANGE")
        .arg(key)
        .arg("-")
        .arg("+")
        .query(con)
        .unwrap();
    entries.into_iter().map(|(id, _)| id).collect()
}

/// Events stored per incarnation of the stream and event type, as
/// (incarnation, event type, count), by incarnation.
#[track_caller]
pub fn events_per_incarnation(db: &mut postgres::Client) -> Vec<(i32, String, i64)> {
    db.query(
        "SELECT s.incarnation, e.event_type, count(*) FROM generation_events e
         JOIN genalytics_streams s ON s.id = e.stream GROUP BY 1, 2 ORDER BY 1, 2",
        &[],
    )
    .unwrap()
    .into_iter()
    .map(|row| (row.get(0), row.get(1), row.get(2)))
    .collect()
}

/// Every stream ID stored in `generation_events`, with repeats, sorted.
#[track_caller]
pub fn stored_ids(db: &mut postgres::Client) -> Vec<String> {
    let mut ids: Vec<String> = db
        .query(
            "SELECT stream_id FROM generation_events WHERE stream_id IS NOT NULL",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| row.get(0))
        .collect();
    ids.sort();
    ids
}

/// The seed of a randomized test: `GENALYTICS_TEST_SEED` replays one.
pub fn seed() -> u64 {
    let seed = std::env::var("GENALYTICS_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("seed {seed} (replay with GENALYTICS_TEST_SEED={seed})");
    seed
}

/// The file a relation's rows are stored in: the same after a change only
/// if nothing rewrote them.
pub fn filenode(db: &mut postgres::Client, relation: &str) -> u32 {
    db.query_one(
        "SELECT pg_relation_filenode($1::text::regclass)::int8::oid",
        &[&relation],
    )
    .unwrap()
    .get(0)
}

/// What kind of relation `table` is (`r` a table, `p` a partitioned one).
pub fn relkind(db: &mut postgres::Client, table: &str) -> u8 {
    let kind: i8 = db
        .query_one(
            "SELECT relkind::\"char\" FROM pg_class WHERE oid = $1::text::regclass",
            &[&table],
        )
        .unwrap()
        .get(0);
    kind as u8
}

/// A local port with nothing listening on it.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A listener that accepts connections (the kernel does, into the
/// backlog) and never says a word: a server stopped (SIGSTOP) or cut off
/// after the TCP handshake. Silent while the listener lives.
pub fn silent_server() -> (std::net::TcpListener, u16) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

/// `genalytics ARGS --format json`, parsed.
#[track_caller]
pub fn json(env: &TestEnv, args: &[&str]) -> serde_json::Value {
    let ran = env
        .genalytics()
        .args(args.iter().copied())
        .args(["--format", "json"])
        .ok();
    serde_json::from_str(&ran.stdout)
        .unwrap_or_else(|err| panic!("{args:?}: {err}\n{}", ran.stdout))
}

/// Polls `condition` every 50 ms for up to `seconds`.
#[track_caller]
pub fn wait_for(what: &str, seconds: u64, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Waits until the wall clock is at least `seconds` before the next whole
/// hour and a minute past the last. Tests whose expectations name "the
/// current hour" call it first, so the hour cannot turn while they run (a
/// run that starts at 10:59:50 would otherwise see 10:00 complete before
/// its assertions) and it already holds some seconds of events.
pub fn clear_of_hour_turn(seconds: i64) {
    use chrono::Timelike;
    let now = chrono::Utc::now();
    let into_hour = i64::from(now.minute() * 60 + now.second());
    let left = 3600 - into_hour;
    if left < seconds {
        eprintln!("waiting {left} s for the hour to turn");
        std::thread::sleep(std::time::Duration::from_secs(left as u64 + 1));
    }
    // Nor in its first minute: "the current hour so far" must hold some
    // seconds of events a few seconds old.
    let into_hour = {
        let now = chrono::Utc::now();
        i64::from(now.minute() * 60 + now.second())
    };
    if into_hour < 60 {
        eprintln!("waiting {} s into the hour", 60 - into_hour);
        std::thread::sleep(std::time::Duration::from_secs((60 - into_hour) as u64));
    }
}

/// Asks a child genalytics to stop, as systemd does.
pub fn sigterm(child: &std::process::Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}
