//! `transfer --follow` as a service: it outlives
//! PostgreSQL and Redis restarts, commits what it read before a server went
//! away, reads on when Redis comes back empty, and SIGTERM still exits 0.
//! Each test proves its fault happened: the server was really down while
//! the follower ran (its log shows it waited), not after it finished.

use std::io::Read;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{TestEnv, gate, stored_ids, stream_ids, wait_for, xadd};

fn migrated() -> TestEnv {
    let env = TestEnv::new();
    env.genalytics().args(["migrate", "-q"]).ok();
    env
}

/// A follower with its log in a file the test can read while it runs.
struct Follower {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Follower {
    fn start(env: &TestEnv) -> Follower {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = env
            .genalytics()
            .args(["transfer", "--follow", "--keep", "100h", "--format", "json"])
            .command()
            .stdout(Stdio::piped())
            .stderr(log.reopen().unwrap())
            .spawn()
            .unwrap();
        Follower { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap()
    }

    #[track_caller]
    fn assert_running(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the follower exited:\n{}",
            self.log()
        );
    }

    /// Waits up to a minute for `n` stored rows, showing the log if not.
    #[track_caller]
    fn wait_stored(&self, db: &mut postgres::Client, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stored = stored_ids(db).len();
            if stored >= n {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{stored} of {n} entries stored after a minute; the follower said:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM; asserts exit 0 and returns the JSON summary.
    #[track_caller]
    fn stop(mut self) -> serde_json::Value {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}\n{}", self.log());
        let mut stdout = String::new();
        self.child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        serde_json::from_str(&stdout)
            .unwrap_or_else(|err| panic!("{err}: {stdout}\n{}", self.log()))
    }
}

/// Writes entries at a steady pace until told to stop, reconnecting when
/// Redis goes away; what it wrote is read back from the stream at the end.
fn producer(env: &TestEnv, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let url = env.redis.url();
    let key = env.stream_key();
    std::thread::spawn(move || {
        let client = redis::Client::open(url).unwrap();
        let mut con = None;
        while !stop.load(Ordering::Relaxed) {
            if con.is_none() {
                con = client
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .ok();
            }
            if let Some(c) = con.as_mut() {
                let added: redis::RedisResult<String> = redis::cmd("XADD")
                    .arg(&key)
                    .arg("*")
                    .arg("event_type")
                    .arg("request")
                    .query(c);
                if added.is_err() {
                    con = None;
                }
            }
            std::thread::sleep(Duration::from_millis(4));
        }
    })
}

/// Runs a producer and a follower across `fault`, then checks the follower
/// stayed up, waited for the server, and stored every entry once.
fn survive(fault: impl FnOnce(&mut TestEnv), waited_for: &str) {
    let mut env = migrated();
    let mut follower = Follower::start(&env);
    let stop = Arc::new(AtomicBool::new(false));
    let writing = producer(&env, Arc::clone(&stop));
    let mut db = env.db();
    wait_for("the follower to store entries", 30, || {
        stored_ids(&mut db).len() > 200
    });
    follower.assert_running();
    fault(&mut env);
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    writing.join().unwrap();
    let written = {
        let mut ids = stream_ids(&mut env.redis(), &env.stream_key());
        ids.sort();
        ids
    };
    let mut db = env.db();
    follower.wait_stored(&mut db, written.len());
    follower.assert_running();
    let log = follower.log();
    assert!(log.contains(waited_for), "the fault was not seen:\n{log}");
    let summary = follower.stop();
    assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(stored_ids(&mut db), written, "every entry exactly once");
}

#[test]
fn follow_outlives_a_postgres_restart() {
    survive(
        |env| env.pg.restart().unwrap(),
        "cannot store entries in PostgreSQL",
    );
}

#[test]
fn follow_outlives_a_redis_restart() {
    survive(|env| env.redis.restart().unwrap(), "cannot read the stream");
}

#[test]
fn entries_read_before_redis_dies_are_stored_and_a_fresh_redis_is_read_on() {
    let mut env = migrated();
    let mut follower = Follower::start(&env);
    let key = env.stream_key();
    let mut db = env.db();
    // The follower is up and idle.
    wait_for("the follower's state", 30, || {
        !db.query("SELECT 1 FROM genalytics_transfer_state", &[])
            .unwrap()
            .is_empty()
    });
    // The follower will be held at its first commit, with what it read.
    let mut gate = gate::Gate::close(&env.database_url(), gate::Stage::Claim, 1);
    let mut con = env.redis();
    // All hundred in one transaction, so the follower reads them together.
    let mut pipe = redis::pipe();
    pipe.atomic();
    for _ in 0..100 {
        pipe.cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event_type")
            .arg("request");
    }
    let written: Vec<String> = pipe.query(&mut con).unwrap();
    gate.wait_held(&mut follower.child, 30);
    assert!(
        stored_ids(&mut db).is_empty(),
        "the follower committed before the fault: nothing is tested"
    );
    env.redis.stop();
    drop(gate.release());
    wait_for("the entries read before Redis died", 20, || {
        stored_ids(&mut db).len() == 100
    });
    let mut want = written.clone();
    want.sort();
    assert_eq!(stored_ids(&mut db), want);
    follower.assert_running();

    // Redis comes back empty; the producer goes on with new entries.
    env.redis.start_again().unwrap();
    let mut con = env.redis();
    let fresh: Vec<String> = (0..30)
        .map(|_| xadd(&mut con, &key, "*", &[("event_type", "cancellation")]))
        .collect();
    wait_for("the new stream's entries", 60, || {
        stored_ids(&mut db).len() == 130
    });
    follower.assert_running();
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_resets"], 1, "{status:#}");
    assert!(
        status["warnings"].to_string().contains("replaced"),
        "{status:#}"
    );
    let summary = follower.stop();
    assert!(summary["reset"].is_object(), "{summary}");
    let incarnations: Vec<(i32, i64)> = db
        .query(
            "SELECT s.incarnation, count(*) FROM generation_events e
             JOIN genalytics_streams s ON s.id = e.stream GROUP BY 1 ORDER BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(incarnations, [(1, 100), (2, 30)]);
    let mut all = written;
    all.extend(fresh);
    all.sort();
    assert_eq!(stored_ids(&mut db), all);
}

#[test]
fn the_cap_warning_counts_entries_not_yet_stored() {
    let env = migrated();
    env.genalytics()
        .args([
            "simulate", "-q", "--events", "60000", "--hours", "1", "--maxlen", "0",
        ])
        .ok();
    // All stored, and kept in the stream for monitoring: no warning.
    env.genalytics()
        .args(["transfer", "-q", "--keep", "100h"])
        .ok();
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["stream_length"], 60_000);
    assert_eq!(status["behind"], 0);
    assert!(
        !status["warnings"].to_string().contains("cap"),
        "{status:#}"
    );
    // Over half the cap waiting: a warning.
    env.genalytics()
        .args([
            "simulate", "-q", "--events", "50001", "--hours", "1", "--maxlen", "0",
        ])
        .ok();
    let status: serde_json::Value = env.status_json();
    assert_eq!(status["behind"], 50_001);
    assert!(status["warnings"].to_string().contains("cap"), "{status:#}");
}

#[test]
fn a_stream_replaced_while_follow_runs_is_judged_before_its_entries_are_stored() {
    let env = migrated();
    let mut follower = Follower::start(&env);
    let key = env.stream_key();
    let mut db = env.db();
    let mut con = env.redis();
    for _ in 0..10 {
        xadd(&mut con, &key, "*", &[("event_type", "request")]);
    }
    follower.wait_stored(&mut db, 10);
    // Deleted and recreated in one step, with more entries than the old
    // stream ever had and than one read takes: its counters alone do not
    // give it away before a read of it is stored.
    let mut replace = redis::pipe();
    replace.atomic().cmd("DEL").arg(&key).ignore();
    for _ in 0..300 {
        replace
            .cmd("XADD")
            .arg(&key)
            .arg("*")
            .arg("event_type")
            .arg("cancellation")
            .ignore();
    }
    replace.exec(&mut con).unwrap();
    follower.wait_stored(&mut db, 310);
    follower.assert_running();
    let incarnations: Vec<(i32, String, i64)> = crate::harness::events_per_incarnation(&mut db);
    assert_eq!(
        incarnations,
        [
            (1, "request".to_string(), 10),
            (2, "cancellation".to_string(), 300)
        ],
        "{}",
        follower.log()
    );
    let summary = follower.stop();
    assert!(summary["reset"].is_object(), "{summary}");
}

#[test]
fn follow_goes_on_after_another_transfer_stored_entries_while_it_was_cut_off() {
    let env = migrated();
    let mut admin = env.db();
    // The follower logs in as a role of its own, which the test can lock
    // out while a one-off transfer, as another role, goes ahead.
    admin
        .batch_execute(
            "CREATE ROLE follower LOGIN PASSWORD 'follower';
             GRANT ALL ON ALL TABLES IN SCHEMA public TO follower;
             GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO follower;",
        )
        .unwrap();
    let log = tempfile::NamedTempFile::new().unwrap();
    let child = env
        .genalytics()
        .env(
            "DATABASE_URL",
            env.pg.url_as("follower", "follower", &env.database),
        )
        .args(["transfer", "--follow", "--keep", "100h", "--format", "json"])
        .command()
        .stdout(Stdio::piped())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let mut follower = Follower { child, log };
    let key = env.stream_key();
    let mut con = env.redis();
    let mut written: Vec<String> = (0..50)
        .map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")]))
        .collect();
    follower.wait_stored(&mut admin, 50);

    // Cut off: no new connection, and the one it has (with the stream's
    // lock) ended.
    admin
        .batch_execute(
            "ALTER ROLE follower CONNECTION LIMIT 0;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = 'follower';",
        )
        .unwrap();
    written.extend((0..50).map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")])));
    wait_for("the follower to find PostgreSQL gone", 30, || {
        follower.log().contains("cannot store entries")
    });
    let ran = env.genalytics().args(["transfer", "--keep", "100h"]).ok();
    assert!(
        ran.stdout.starts_with("transferred 50 events"),
        "{}",
        ran.stdout
    );
    written.extend((0..20).map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")])));
    admin
        .batch_execute("ALTER ROLE follower CONNECTION LIMIT -1")
        .unwrap();
    follower.wait_stored(&mut admin, 120);
    std::thread::sleep(Duration::from_millis(500));
    follower.assert_running();
    let summary = follower.stop();
    assert!(summary["reconnects"].as_u64().unwrap() >= 1, "{summary}");
    assert_eq!(summary["events"], 70, "{summary}");
    written.sort();
    assert_eq!(stored_ids(&mut admin), written, "every entry exactly once");
}

#[test]
fn an_idle_follower_reconnects_to_a_restarted_redis_and_survives_a_script_flush() {
    let mut env = migrated();
    let mut follower = Follower::start(&env);
    let key = env.stream_key();
    let mut db = env.db();
    let mut con = env.redis();
    let mut written: Vec<String> = (0..10)
        .map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")]))
        .collect();
    follower.wait_stored(&mut db, 10);
    // Idle, then Redis restarts (keeping its data): nothing to commit, so
    // only a fresh connection brings the follower back.
    env.redis.restart().unwrap();
    let mut con = env.redis();
    written.extend((0..20).map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")])));
    follower.wait_stored(&mut db, 30);
    follower.assert_running();
    // Redis forgets its scripts while a backlog is being read.
    written.extend((0..3_000).map(|_| xadd(&mut con, &key, "*", &[("event_type", "completion")])));
    let _: String = redis::cmd("SCRIPT").arg("FLUSH").query(&mut con).unwrap();
    written.extend((0..20).map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")])));
    follower.wait_stored(&mut db, written.len());
    follower.assert_running();
    let log = follower.log();
    assert!(
        log.contains("cannot read the stream"),
        "the restart was seen:\n{log}"
    );
    follower.stop();
    written.sort();
    assert_eq!(stored_ids(&mut db), written);
}

/// Waits until the follower's log holds `text`; returns how long it took.
#[track_caller]
fn until_logged(follower: &Follower, text: &str, seconds: u64) -> Duration {
    let started = std::time::Instant::now();
    wait_for(&format!("the follower to log {text:?}"), seconds, || {
        follower.log().contains(text)
    });
    started.elapsed()
}

/// A ten-second outage of a server under a follower: it retries, then
/// works again within two seconds of the server accepting connections,
/// and says it recovered, with how long the outage lasted.
fn outage(down: impl FnOnce(&mut TestEnv), up: impl FnOnce(&mut TestEnv), server: &str) {
    let mut env = migrated();
    let mut follower = Follower::start(&env);
    let key = env.stream_key();
    let mut con = env.redis();
    let mut written: Vec<String> = (0..10)
        .map(|_| xadd(&mut con, &key, "*", &[("event_type", "request")]))
        .collect();
    let mut db = env.db();
    follower.wait_stored(&mut db, 10);
    let _: () = redis::cmd("SAVE").query(&mut con).unwrap();
    drop(db);
    down(&mut env);
    if server == "PostgreSQL" {
        // Read while PostgreSQL is away: the follower finds it gone, and
        // commits the entry once it is back.
        written.push(xadd(&mut con, &key, "*", &[("event_type", "request")]));
    }
    drop(con);
    until_logged(&follower, "attempt 1,", 30);
    std::thread::sleep(Duration::from_secs(10));
    follower.assert_running();
    let log = follower.log();
    assert!(log.contains(server), "{log}");
    assert!(!log.contains("recovered"), "{log}");
    up(&mut env);
    // The server accepts connections again: storing resumes within two
    // seconds (an entry written now is stored, and the follower says so).
    let mut con = env.redis();
    written.push(xadd(&mut con, &key, "*", &[("event_type", "cancellation")]));
    let back = until_logged(&follower, "recovered after an outage of", 10);
    eprintln!("{server}: storing resumed {back:?} after the server was back");
    assert!(
        back < Duration::from_secs(2),
        "{back:?}: {}",
        follower.log()
    );
    let mut db = env.db();
    follower.wait_stored(&mut db, written.len());
    let log = follower.log();
    let recovered = log
        .lines()
        .find(|line| line.contains("recovered after an outage of"))
        .unwrap();
    // The outage's length, with a unit: at least the ten seconds it lasted.
    let seconds: f64 = recovered
        .split("outage of ")
        .nth(1)
        .and_then(|rest| rest.split(" s ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{recovered}"));
    assert!(seconds >= 10.0, "{recovered}");
    assert!(
        !log.contains("next run resumes"),
        "a follower retries: {log}"
    );
    follower.stop();
    written.sort();
    assert_eq!(stored_ids(&mut db), written, "every entry exactly once");
}

#[test]
fn a_follower_works_again_within_two_seconds_of_redis_coming_back_and_says_it_recovered() {
    outage(
        |env| env.redis.stop(),
        |env| env.redis.restart_from_last_save().unwrap(),
        "Redis",
    );
}

#[test]
fn a_follower_works_again_within_two_seconds_of_postgres_coming_back_and_says_it_recovered() {
    outage(
        |env| env.pg.stop(),
        |env| env.pg.restart().unwrap(),
        "PostgreSQL",
    );
}
