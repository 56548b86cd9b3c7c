//! Schema migrations: the `sql/NNNN_name.sql` files embedded at build time,
//! applied in order, each in its own transaction together with its record
//! (version, name, SHA-256 checksum). An advisory lock serialises concurrent
//! runs; an applied file that has since changed is refused, because the
//! database would no longer match what the code believes it is.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use postgres::Client;
use sha2::{Digest, Sha256};

/// One migration file compiled into the binary.
#[derive(Debug)]
pub struct EmbeddedMigration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

impl EmbeddedMigration {
    pub fn checksum(&self) -> String {
        checksum(self.sql)
    }

    /// `0001_initial_schema`, as the file is named.
    pub fn label(&self) -> String {
        format!("{:04}_{}", self.version, self.name)
    }
}

pub fn checksum(sql: &str) -> String {
    use std::fmt::Write as _;
    Sha256::digest(sql.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Key of the session advisory lock held while migrating ("genalyti").
const MIGRATION_LOCK: i64 = 0x6765_6e61_6c79_7469;

const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS genalytics_schema_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// A migration as recorded in the database.
#[derive(Debug, Clone)]
pub struct AppliedMigration {
    pub version: i32,
    pub name: String,
    pub checksum: String,
    pub applied_at: DateTime<Utc>,
}

/// Where one migration stands.
#[derive(Debug)]
pub enum State {
    Applied(DateTime<Utc>),
    Pending,
    /// Applied, but the file compiled in differs from what was applied.
    Changed(DateTime<Utc>),
    /// Recorded in the database, unknown to this binary (a newer genalytics ran).
    Unknown(DateTime<Utc>),
}

#[derive(Debug)]
pub struct MigrationStatus {
    pub version: i32,
    pub name: String,
    pub state: State,
}

/// Reads the history table, if there is one, without taking locks.
fn applied(client: &mut Client) -> anyhow::Result<BTreeMap<i32, AppliedMigration>> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('genalytics_schema_migrations') IS NOT NULL",
            &[],
        )?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = client.query(
        "SELECT version, name, checksum, applied_at FROM genalytics_schema_migrations ORDER BY version",
        &[],
    )?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let m = AppliedMigration {
                version: row.get(0),
                name: row.get(1),
                checksum: row.get(2),
                applied_at: row.get(3),
            };
            (m.version, m)
        })
        .collect())
}

/// Checksums of migration files as first released whose comments (and
/// one error message) were reworded since, the statements unchanged: a
/// database that recorded one of them has that very migration.
const REWORDED: [(i32, &str); 4] = [
    (
        1,
        "c285b506309698176828f6d6454300a9286fb28435285e7d98a89a6c3abbdfd2",
    ),
    (
        6,
        "b05b6621636174c58b838ac126d476755e9f50c15e670d3b535b0f1707864c23",
    ),
    (
        7,
        "c3f87b6ee1b439bc82a086d53537d0363add589d246bbcb31d77cc8f606d2554",
    ),
    (
        8,
        "3871f9686140a5e49cc81d1fb62400790c52667c4a53ce7c1de492d34403a929",
    ),
];

/// Whether a recorded checksum is this migration's.
fn recorded_as(migration: &EmbeddedMigration, recorded: &str) -> bool {
    recorded == migration.checksum()
        || REWORDED
            .iter()
            .any(|&(version, old)| version == migration.version && old == recorded)
}

/// Every migration the binary knows or the database recorded, in order.
pub fn status(client: &mut Client) -> anyhow::Result<Vec<MigrationStatus>> {
    let mut applied = applied(client).context("cannot read the migration history")?;
    let mut out = Vec::new();
    for migration in MIGRATIONS {
        let state = match applied.remove(&migration.version) {
            Some(done) if recorded_as(migration, &done.checksum) => State::Applied(done.applied_at),
            Some(done) => State::Changed(done.applied_at),
            None => State::Pending,
        };
        out.push(MigrationStatus {
            version: migration.version,
            name: migration.name.to_string(),
            state,
        });
    }
    out.extend(applied.into_values().map(|done| MigrationStatus {
        version: done.version,
        name: done.name,
        state: State::Unknown(done.applied_at),
    }));
    out.sort_by_key(|m| m.version);
    Ok(out)
}

/// Refuses to go on if the database and the binary disagree about history.
fn verify(statuses: &[MigrationStatus]) -> anyhow::Result<()> {
    for m in statuses {
        match m.state {
            State::Changed(_) => bail!(
                "migration {:04}_{} was changed after it was applied to this database (its checksum differs); \
                 restore the original sql/{:04}_{}.sql and add the change as a new migration",
                m.version,
                m.name,
                m.version,
                m.name
            ),
            State::Unknown(_) => bail!(
                "the database has migration {:04}_{} which this genalytics does not know; \
                 it was migrated by a newer genalytics — upgrade this one",
                m.version,
                m.name
            ),
            State::Applied(_) | State::Pending => {}
        }
    }
    Ok(())
}

/// What one `apply` did.
#[derive(Debug)]
pub struct Applied {
    pub label: String,
    pub took: Duration,
}

/// Applies every pending migration. Safe to run concurrently: the second
/// run waits for the lock, then finds nothing left to do.
pub fn apply(client: &mut Client) -> anyhow::Result<Vec<Applied>> {
    apply_through(client, i32::MAX)
}

/// Applies the pending migrations up to version `last`: how the tests build
/// a database as an older genalytics left it.
pub fn apply_through(client: &mut Client, last: i32) -> anyhow::Result<Vec<Applied>> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .context("cannot take the migration lock")?;
    let result = apply_locked(client, last);
    // The lock also dies with the connection; unlocking keeps it short.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]);
    result
}

fn apply_locked(client: &mut Client, last: i32) -> anyhow::Result<Vec<Applied>> {
    client
        .batch_execute(CREATE_HISTORY)
        .context("cannot create the migration history table")?;
    let statuses = status(client)?;
    verify(&statuses)?;
    let mut done = Vec::new();
    for migration in MIGRATIONS.iter().filter(|m| m.version <= last) {
        let pending = statuses
            .iter()
            .any(|s| s.version == migration.version && matches!(s.state, State::Pending));
        if !pending {
            continue;
        }
        let started = Instant::now();
        let label = migration.label();
        let mut tx = client.transaction()?;
        tx.batch_execute(migration.sql)
            .with_context(|| format!("migration {label} failed; nothing of it was applied"))?;
        tx.execute(
            "INSERT INTO genalytics_schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            &[&migration.version, &migration.name, &migration.checksum()],
        )?;
        tx.commit()
            .with_context(|| format!("cannot commit migration {label}"))?;
        tracing::info!("applied migration {label}");
        done.push(Applied {
            label,
            took: started.elapsed(),
        });
    }
    Ok(done)
}

/// Fails with a clear message unless the schema is current; commands other
/// than `migrate` call this before touching tables.
pub fn ensure_current(client: &mut Client) -> anyhow::Result<()> {
    let statuses = status(client)?;
    verify(&statuses)?;
    let pending: Vec<String> = statuses
        .iter()
        .filter(|s| matches!(s.state, State::Pending))
        .map(|s| format!("{:04}_{}", s.version, s.name))
        .collect();
    if !pending.is_empty() {
        bail!(
            "the database schema is not up to date (pending: {}); run `genalytics migrate` first",
            pending.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_migrations_are_numbered_in_order_without_gaps() {
        assert!(!MIGRATIONS.is_empty());
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                migration.version as usize,
                index + 1,
                "{}",
                migration.label()
            );
            assert!(!migration.sql.trim().is_empty(), "{}", migration.label());
        }
    }

    #[test]
    fn a_reworded_migration_is_the_one_a_database_recorded() {
        for (version, old) in REWORDED {
            let migration = MIGRATIONS.iter().find(|m| m.version == version).unwrap();
            assert!(recorded_as(migration, old));
            assert!(recorded_as(migration, &migration.checksum()));
            assert_ne!(migration.checksum(), old, "{version} was reworded");
        }
        let first = &MIGRATIONS[0];
        assert!(
            !recorded_as(first, REWORDED[1].1),
            "another version's checksum"
        );
    }

    #[test]
    fn checksum_is_sha256_hex() {
        assert_eq!(
            checksum(""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
