//! A gate in the database that stops a transfer at a chosen commit, so a
//! fault test strikes a run that is provably in the middle of its work —
//! whatever the machine's load — instead of after a sleep that a fast run
//! outlives or a slow one never reaches.
//!
//! A trigger on `genalytics_transfer_state` counts the batches a run
//! commits; at the chosen one it waits for an advisory lock the test holds.
//! The test sees the transfer's backend waiting in `pg_locks`, strikes
//! (SIGKILL, a server restart), then opens the gate.

use std::time::{Duration, Instant};

use postgres::Client;

/// The advisory lock the gate waits for (two-key space; transfer's own
/// locks use another class).
const GATE: (i32, i32) = (1954, 1954);

/// Where in a batch's commit the transfer is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// At the claim on the position, before any row of the batch is sent:
    /// a kill here rolls the batch back.
    Claim,
    /// After the batch's rows and dead letters, before COMMIT.
    Rows,
    /// Inside COMMIT (a deferred trigger): the batch commits after a kill,
    /// and the killed run never learns it nor trims.
    Commit,
}

impl Stage {
    pub const ALL: [Stage; 3] = [Stage::Claim, Stage::Rows, Stage::Commit];
}

/// The test's end of the gate: holds the lock from before the transfer
/// starts until [`Gate::open`].
pub struct Gate {
    holder: Client,
    url: String,
}

impl Gate {
    /// Creates the gate's function once per database.
    fn ensure_function(db: &mut Client) {
        db.batch_execute(&format!(
            "CREATE SEQUENCE IF NOT EXISTS test_gate_batches;
             CREATE OR REPLACE FUNCTION test_gate() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF nextval('test_gate_batches') = TG_ARGV[0]::int8 THEN
                     PERFORM pg_advisory_xact_lock({}, {});
                 END IF;
                 RETURN NEW;
             END $$;",
            GATE.0, GATE.1
        ))
        .unwrap();
    }

    /// Closes the gate at the `batch`-th batch (from 1) the next transfer
    /// commits, at `stage`. Call before starting the transfer.
    #[track_caller]
    pub fn close(url: &str, stage: Stage, batch: u32) -> Gate {
        assert!(batch >= 1);
        let mut holder = Client::connect(url, postgres::NoTls).unwrap();
        Self::ensure_function(&mut holder);
        let when = match stage {
            Stage::Claim | Stage::Commit => "OLD.last_id IS DISTINCT FROM NEW.last_id",
            Stage::Rows => "OLD.events_stored IS DISTINCT FROM NEW.events_stored",
        };
        let trigger = match stage {
            Stage::Claim | Stage::Rows => {
                "TRIGGER test_gate BEFORE UPDATE ON genalytics_transfer_state"
            }
            Stage::Commit => {
                "CONSTRAINT TRIGGER test_gate AFTER UPDATE ON genalytics_transfer_state
                 DEFERRABLE INITIALLY DEFERRED"
            }
        };
        holder
            .batch_execute(&format!(
                "DROP TRIGGER IF EXISTS test_gate ON genalytics_transfer_state;
                 ALTER SEQUENCE test_gate_batches RESTART;
                 CREATE {trigger}
                 FOR EACH ROW WHEN ({when}) EXECUTE FUNCTION test_gate('{batch}');
                 SELECT pg_advisory_lock({}, {});",
                GATE.0, GATE.1
            ))
            .unwrap();
        Gate {
            holder,
            url: url.to_string(),
        }
    }

    /// Waits until a transfer's backend is held at the gate, and asserts
    /// the transfer is still running: the fault that follows lands in
    /// the middle of its run by construction.
    #[track_caller]
    pub fn wait_held(&mut self, child: &mut std::process::Child, seconds: u64) {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if self.waiters() > 0 {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the transfer ended ({status}) before it reached the gate: \
                     the backlog is too small for the batch chosen"
                );
            }
            assert!(
                Instant::now() < deadline,
                "the transfer did not reach the gate in {seconds} s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "a transfer held at the gate cannot have exited"
        );
    }

    fn waiters(&mut self) -> i64 {
        self.holder
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE locktype = 'advisory' AND NOT granted
                   AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2",
                &[&GATE.0, &GATE.1],
            )
            .unwrap()
            .get(0)
    }

    /// Opens the gate and removes it, then waits until every other
    /// backend of genalytics has ended, so a killed run's last statement
    /// has settled (committed or rolled back) and its transfer lock is
    /// free before anything is checked or started.
    #[track_caller]
    pub fn open(self) {
        let mut db = self.release();
        wait_for_genalytics_to_leave(&mut db);
    }

    /// Opens the gate and removes it without waiting for anyone, also after
    /// a restart of PostgreSQL (which ended the lock with the holder's
    /// connection). Returns a fresh connection.
    #[track_caller]
    pub fn release(mut self) -> Client {
        let _ = self
            .holder
            .execute("SELECT pg_advisory_unlock($1, $2)", &[&GATE.0, &GATE.1]);
        drop(self.holder);
        let mut db = Client::connect(&self.url, postgres::NoTls).unwrap();
        db.batch_execute("DROP TRIGGER IF EXISTS test_gate ON genalytics_transfer_state")
            .unwrap();
        db
    }
}

/// Waits (up to 30 s) until no backend of genalytics is connected to the
/// current database.
#[track_caller]
fn wait_for_genalytics_to_leave(db: &mut Client) {
    crate::harness::wait_for("the killed transfer's backends to end", 30, || {
        let left: i64 = db
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name = 'genalytics'
                   AND pid <> pg_backend_pid()",
                &[],
            )
            .unwrap()
            .get(0);
        left == 0
    });
}

/// One kill of a seeded series: the stage and the batch (1 to 3) of the
/// next run at which it strikes, drawn from `rng` so a seed replays them.
pub fn draw(rng: &mut impl rand::RngExt) -> (Stage, u32) {
    (
        Stage::ALL[rng.random_range(0..Stage::ALL.len())],
        rng.random_range(1..=3),
    )
}

/// Starts a transfer with `start`, holds it at `stage` of its `batch`-th
/// commit, SIGKILLs it there, and lets the killed run's last statement
/// settle. Returns what the killed run printed on stderr.
#[track_caller]
pub fn kill_at(
    url: &str,
    stage: Stage,
    batch: u32,
    start: impl FnOnce() -> std::process::Child,
) -> String {
    let mut gate = Gate::close(url, stage, batch);
    let mut child = start();
    gate.wait_held(&mut child, 60);
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    gate.open();
    String::from_utf8_lossy(&out.stderr).into_owned()
}
