//! `genalytics migrate`: empty databases, the original service's tables,
//! changed migrations, concurrent runs.

use std::collections::BTreeMap;

use crate::harness::TestEnv;

const LEGACY_SCHEMA: &str = include_str!("fixtures/legacy_schema.sql");

/// The schema, written out by hand: (table, column) → (type, nullable).
fn expected_columns() -> BTreeMap<(&'static str, &'static str), (&'static str, bool)> {
    let events = [
        ("id", "bigint", false),
        ("event_type", "character varying", false),
        ("generation_id", "uuid", true),
        ("user_id", "uuid", true),
        ("timestamp", "timestamp with time zone", false),
        ("generation_type", "character varying", true),
        ("duration_ms", "integer", true),
        ("success", "boolean", true),
        ("error_type", "text", true),
        ("error_message", "text", true),
        ("queue_wait_time_ms", "integer", true),
        ("generation_time_ms", "integer", true),
        ("model_checkpoint", "text", true),
        ("image_dimensions", "jsonb", true),
        ("batch_size", "integer", true),
        ("prompt_tokens", "integer", true),
        ("created_at", "timestamp with time zone", false),
        ("stream_id", "text", true),
        ("queue_length", "integer", true),
        ("attributes", "jsonb", true),
        ("stream", "integer", true),
    ];
    let rejected = [
        ("stream_id", "text", false),
        ("fields", "jsonb", false),
        ("reason", "text", false),
        ("received_at", "timestamp with time zone", false),
        ("stream", "integer", true),
        ("raw_fields", "ARRAY", true),
    ];
    let hourly = [
        ("timestamp", "timestamp with time zone", false),
        ("total_requests", "integer", false),
        ("successful_generations", "integer", false),
        ("failed_generations", "integer", false),
        ("cancelled_generations", "integer", false),
        ("avg_duration_ms", "integer", true),
        ("p50_duration_ms", "integer", true),
        ("p95_duration_ms", "integer", true),
        ("p99_duration_ms", "integer", true),
        ("unique_users", "integer", true),
        ("avg_queue_length", "double precision", true),
        ("max_queue_length", "integer", true),
        ("total_images_generated", "bigint", true),
        ("created_at", "timestamp with time zone", false),
        ("duration_sum_ms", "bigint", true),
        ("duration_count", "integer", true),
        ("duration_hist_keys", "ARRAY", true),
        ("duration_hist_counts", "ARRAY", true),
        ("updated_at", "timestamp with time zone", true),
        ("user_ids", "ARRAY", true),
        ("queue_length_sum", "bigint", true),
        ("queue_length_samples", "integer", true),
    ];
    let mut all = BTreeMap::new();
    for (table, columns) in [
        ("generation_events", &events[..]),
        ("generation_events_rejected", &rejected[..]),
        ("generation_metrics_hourly", &hourly[..]),
    ] {
        for &(column, kind, nullable) in columns {
            all.insert((table, column), (kind, nullable));
        }
    }
    all
}

/// The schema's indexes, as PostgreSQL prints their definitions: (table,
/// unique, definition after USING).
const EXPECTED_INDEXES: &[(&str, bool, &str)] = &[
    // On the partitioned table (and so on every partition): what genalytics
    // reads through. The original service's other indexes stay on the
    // table it adopted, for those rows (docs/performance.md, "Indexes").
    ("generation_events", false, "btree (\"timestamp\" DESC)"),
    (
        "generation_events",
        false,
        "btree (user_id, \"timestamp\" DESC)",
    ),
    (
        "generation_events",
        true,
        "btree (stream, stream_id, \"timestamp\")",
    ),
    (
        "generation_events_rejected",
        true,
        "btree (stream, stream_id)",
    ),
    ("generation_events_rejected", false, "btree (received_at)"),
    ("generation_metrics_hourly", true, "btree (\"timestamp\")"),
];

/// (table, unique, definition) → how many indexes have it.
fn index_definitions(db: &mut postgres::Client) -> BTreeMap<(String, bool, String), usize> {
    let mut found = BTreeMap::new();
    for row in db
        .query(
            "SELECT c.relname::text, i.indisunique, pg_get_indexdef(i.indexrelid)
             FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
             WHERE c.relname LIKE 'generation%'",
            &[],
        )
        .unwrap()
    {
        let def: String = row.get(2);
        let def = def.split(" USING ").nth(1).unwrap().to_string();
        *found.entry((row.get(0), row.get(1), def)).or_insert(0) += 1;
    }
    found
}

#[track_caller]
fn assert_schema_complete(db: &mut postgres::Client) {
    let mut columns = BTreeMap::new();
    for row in db
        .query(
            "SELECT table_name::text, column_name::text, data_type::text, is_nullable = 'YES'
             FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name LIKE 'generation%'",
            &[],
        )
        .unwrap()
    {
        let (table, column): (String, String) = (row.get(0), row.get(1));
        columns.insert(
            (table, column),
            (row.get::<_, String>(2), row.get::<_, bool>(3)),
        );
    }
    for ((table, column), (kind, nullable)) in expected_columns() {
        let found = columns.get(&(table.to_string(), column.to_string()));
        assert_eq!(
            found,
            Some(&(kind.to_string(), nullable)),
            "{table}.{column}"
        );
    }
    // Partitioned by day, with a default partition for stray times and
    // today's and the next two days' partitions made ahead of need.
    assert_eq!(
        crate::harness::relkind(db, "generation_events"),
        b'p',
        "generation_events is partitioned"
    );
    let ahead: i64 = db
        .query_one(
            "SELECT count(*) FROM genalytics_event_partitions p, generate_series(0, 2) d
             WHERE coalesce(p.lo, '-infinity') <= ((now() AT TIME ZONE 'UTC')::date + d)::timestamp AT TIME ZONE 'UTC'
               AND p.hi > ((now() AT TIME ZONE 'UTC')::date + d)::timestamp AT TIME ZONE 'UTC'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(ahead, 3, "partitions for today and the next two days");
    let defaults: i64 = db
        .query_one(
            "SELECT count(*) FROM genalytics_event_partitions WHERE is_default",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(defaults, 1);
    let indexes = index_definitions(db);
    for &(table, unique, def) in EXPECTED_INDEXES {
        let count = indexes
            .get(&(table.to_string(), unique, def.to_string()))
            .copied()
            .unwrap_or(0);
        assert_eq!(
            count, 1,
            "index {table} {def} (unique: {unique}); found {indexes:#?}"
        );
    }
}

fn foreign_keys_on_events(db: &mut postgres::Client) -> i64 {
    db.query_one(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = 'generation_events'::regclass AND contype = 'f'",
        &[],
    )
    .unwrap()
    .get(0)
}

#[test]
fn migrate_creates_the_whole_schema_on_an_empty_database() {
    let env = TestEnv::new();
    let ran = env.genalytics().arg("migrate").ok();
    assert!(
        ran.stdout.contains("applied 0001_initial_schema"),
        "{}",
        ran.stdout
    );
    let mut db = env.db();
    assert_schema_complete(&mut db);

    let again = env.genalytics().arg("migrate").ok();
    assert!(
        again.stdout.contains("nothing to apply"),
        "{}",
        again.stdout
    );

    let status = env.genalytics().args(["migrate", "--status"]).ok();
    assert!(status.stdout.contains("0001"), "{}", status.stdout);
    assert!(status.stdout.contains("applied"), "{}", status.stdout);
    assert!(!status.stdout.contains("pending"), "{}", status.stdout);
}

#[test]
fn migrate_status_lists_pending_migrations_before_the_first_run() {
    let env = TestEnv::new();
    let status = env.genalytics().args(["migrate", "--status"]).ok();
    assert!(status.stdout.contains("0001"), "{}", status.stdout);
    assert!(
        status.stdout.contains("initial_schema"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("pending"), "{}", status.stdout);
    // Looking changes nothing.
    let mut db = env.db();
    let tables: i64 = db
        .query_one(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(tables, 0);
}

/// Fingerprint of the original columns of every row, ordered by id.
fn legacy_fingerprint(db: &mut postgres::Client) -> (i64, String, i64, String) {
    let events = db
        .query_one(
            "SELECT count(*), md5(string_agg(row(id, event_type, generation_id, user_id, timestamp,
                    generation_type, duration_ms, success, error_type, error_message,
                    queue_wait_time_ms, generation_time_ms, model_checkpoint, image_dimensions,
                    batch_size, prompt_tokens, created_at)::text, '|' ORDER BY id))
             FROM generation_events",
            &[],
        )
        .unwrap();
    let hourly = db
        .query_one(
            "SELECT count(*), md5(string_agg(row(timestamp, total_requests, successful_generations,
                    failed_generations, cancelled_generations, avg_duration_ms, p50_duration_ms,
                    p95_duration_ms, p99_duration_ms, unique_users, avg_queue_length,
                    max_queue_length, total_images_generated, created_at)::text, '|' ORDER BY timestamp))
             FROM generation_metrics_hourly",
            &[],
        )
        .unwrap();
    (events.get(0), events.get(1), hourly.get(0), hourly.get(1))
}

#[test]
fn migrate_adopts_the_original_services_tables_without_losing_a_row() {
    let env = TestEnv::new();
    let mut db = env.db();
    db.batch_execute(LEGACY_SCHEMA).unwrap();
    let before = legacy_fingerprint(&mut db);
    assert_eq!((before.0, before.2), (2000, 20));
    assert_eq!(foreign_keys_on_events(&mut db), 1);
    let storage = crate::harness::filenode(&mut db, "generation_events");

    env.genalytics().arg("migrate").ok();

    assert_eq!(legacy_fingerprint(&mut db), before, "legacy rows changed");
    // Not copied: the legacy table, with its storage, is the partition for
    // its days, and holds every one of its rows.
    let adopted = db
        .query_one(
            "SELECT p.name, pg_relation_filenode(p.partition)::int8::oid,
                    (SELECT count(*) FROM generation_events e WHERE e.tableoid = p.partition)
             FROM genalytics_event_partitions p WHERE p.lo IS NULL AND NOT p.is_default",
            &[],
        )
        .unwrap();
    let name: String = adopted.get(0);
    assert!(name.starts_with("generation_events_before_"), "{name}");
    assert_eq!(
        adopted.get::<_, u32>(1),
        storage,
        "the legacy table was rewritten"
    );
    assert_eq!(adopted.get::<_, i64>(2), 2000);
    assert_schema_complete(&mut db);
    assert_eq!(
        foreign_keys_on_events(&mut db),
        0,
        "the user_id foreign key is gone"
    );
    let with_stream_id: i64 = db
        .query_one(
            "SELECT count(*) FROM generation_events WHERE stream_id IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(with_stream_id, 0, "legacy rows keep stream_id NULL");
    // Events of a user who no longer exists can now be stored.
    db.execute(
        "INSERT INTO generation_events (event_type, user_id, timestamp, stream_id)
         VALUES ('request', '99999999-0000-4000-8000-000000000000', now(), '1-0')",
        &[],
    )
    .unwrap();
    // New rows get created_at and ids after the legacy ones.
    let newest: i64 = db
        .query_one("SELECT max(id) FROM generation_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(newest, 2001);

    let again = env.genalytics().arg("migrate").ok();
    assert!(
        again.stdout.contains("nothing to apply"),
        "{}",
        again.stdout
    );
    let status = env.genalytics().args(["migrate", "--status"]).ok();
    assert!(status.stdout.contains("applied"), "{}", status.stdout);
    assert!(!status.stdout.contains("pending"), "{}", status.stdout);
}

#[test]
fn an_applied_migration_that_changed_is_refused() {
    let env = TestEnv::new();
    env.genalytics().arg("migrate").ok();
    let mut db = env.db();
    // As if sql/0001 had been edited after it ran here.
    db.execute(
        "UPDATE genalytics_schema_migrations SET checksum = repeat('0', 64) WHERE version = 1",
        &[],
    )
    .unwrap();

    let ran = env.genalytics().arg("migrate").code(1);
    assert!(ran.stderr.contains("0001_initial_schema"), "{}", ran.stderr);
    assert!(
        ran.stderr.contains("changed after it was applied"),
        "{}",
        ran.stderr
    );
    assert_eq!(
        ran.stderr.lines().count(),
        1,
        "one sentence: {}",
        ran.stderr
    );

    let status = env.genalytics().args(["migrate", "--status"]).ok();
    assert!(status.stdout.contains("CHANGED"), "{}", status.stdout);
}

#[test]
fn a_database_that_recorded_a_migration_before_its_comments_were_reworded_goes_on() {
    let env = TestEnv::new();
    env.genalytics().arg("migrate").ok();
    let mut db = env.db();
    // sql/0001 as first released: the same statements, other comments.
    db.execute(
        "UPDATE genalytics_schema_migrations
         SET checksum = 'c285b506309698176828f6d6454300a9286fb28435285e7d98a89a6c3abbdfd2'
         WHERE version = 1",
        &[],
    )
    .unwrap();
    env.genalytics().arg("migrate").ok();
    let status = env.genalytics().args(["migrate", "--status"]).ok();
    assert!(!status.stdout.contains("CHANGED"), "{}", status.stdout);
    env.genalytics().args(["status", "--format", "json"]).ok();
}

#[test]
fn a_database_migrated_by_a_newer_genalytics_is_refused() {
    let env = TestEnv::new();
    env.genalytics().arg("migrate").ok();
    let mut db = env.db();
    db.execute(
        "INSERT INTO genalytics_schema_migrations (version, name, checksum) VALUES (9999, 'from_the_future', 'x')",
        &[],
    )
    .unwrap();
    let ran = env.genalytics().arg("migrate").code(1);
    assert!(
        ran.stderr.contains("9999_from_the_future"),
        "{}",
        ran.stderr
    );
    assert!(ran.stderr.contains("newer genalytics"), "{}", ran.stderr);
}

#[test]
fn concurrent_migrations_apply_the_schema_once() {
    let env = TestEnv::new();
    let children: Vec<_> = (0..4)
        .map(|_| {
            env.genalytics()
                .arg("migrate")
                .command()
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut applied_by = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if stdout.contains("applied 0001") {
            applied_by += 1;
        }
    }
    assert_eq!(applied_by, 1, "exactly one run applies the migration");
    let mut db = env.db();
    let recorded: i64 = db
        .query_one("SELECT count(*) FROM genalytics_schema_migrations", &[])
        .unwrap()
        .get(0);
    assert_eq!(recorded as usize, genalytics::testing::MIGRATIONS.len());
    assert_schema_complete(&mut db);
}
