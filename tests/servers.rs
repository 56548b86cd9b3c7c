//! The throwaway servers themselves: restart in place, and leave nothing
//! behind — also when the test that owns them panics.

use std::path::PathBuf;
use std::sync::Mutex;

use genalytics::throwaway::{Postgres, Redis};
use nix::sys::signal::kill;
use nix::unistd::Pid;

fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

#[test]
fn servers_restart_on_the_same_port_with_their_data() {
    let mut pg = Postgres::start().unwrap();
    let mut redis = Redis::start().unwrap();
    let (pg_port, redis_port) = (pg.port(), redis.port());
    pg.admin()
        .unwrap()
        .batch_execute("CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)")
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg("s")
        .arg("*")
        .arg("k")
        .arg("v")
        .query(&mut redis.connection().unwrap())
        .unwrap();

    pg.restart().unwrap();
    redis.restart().unwrap();

    assert_eq!((pg.port(), redis.port()), (pg_port, redis_port));
    let n: i32 = pg
        .admin()
        .unwrap()
        .query_one("SELECT n FROM kept", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 42);
    let len: u64 = redis::cmd("XLEN")
        .arg("s")
        .query(&mut redis.connection().unwrap())
        .unwrap();
    assert_eq!(len, 1);
}

#[test]
fn servers_are_stopped_and_removed_on_drop_even_after_a_panic() {
    let seen: Mutex<Vec<(u32, PathBuf)>> = Mutex::new(Vec::new());
    let outcome = std::panic::catch_unwind(|| {
        let pg = Postgres::start().unwrap();
        let redis = Redis::start().unwrap();
        let mut seen = seen.lock().unwrap();
        seen.push((pg.pid().unwrap(), pg.dir().to_path_buf()));
        seen.push((redis.pid().unwrap(), redis.dir().to_path_buf()));
        drop(seen);
        panic!("a failing test");
    });
    assert!(outcome.is_err());
    let seen = seen
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(seen.len(), 2);
    for (pid, dir) in seen {
        assert!(!alive(pid), "server {pid} still running");
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
