-- The events, rollups and state tables, written so that it also adopts the tables the
-- original service's migrations created: every statement is a no-op where
-- the object already exists, and indexes are matched by definition rather
-- than by name, so a legacy database never gets a duplicate index.

CREATE TABLE IF NOT EXISTS generation_events (
    id                 BIGSERIAL PRIMARY KEY,
    event_type         VARCHAR(20) NOT NULL,
    generation_id      UUID,
    user_id            UUID,
    timestamp          TIMESTAMPTZ NOT NULL,
    generation_type    VARCHAR(20),
    duration_ms        INTEGER,
    success            BOOLEAN,
    error_type         TEXT,
    error_message      TEXT,
    queue_wait_time_ms INTEGER,
    generation_time_ms INTEGER,
    model_checkpoint   TEXT,
    image_dimensions   JSONB,
    batch_size         INTEGER,
    prompt_tokens      INTEGER,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Nullable additions without defaults: instant even on a table with
-- hundreds of millions of legacy rows, which keep stream_id NULL.
ALTER TABLE generation_events
    ADD COLUMN IF NOT EXISTS stream_id    TEXT,
    ADD COLUMN IF NOT EXISTS queue_length INTEGER,
    ADD COLUMN IF NOT EXISTS attributes   JSONB;
ALTER TABLE generation_events ALTER COLUMN created_at SET DEFAULT now();

-- Events outlive the users who made them: drop the original foreign key
-- from user_id to users(id), whatever it was called.
DO $$
DECLARE
    fk record;
BEGIN
    FOR fk IN
        SELECT con.conname
        FROM pg_constraint con
        JOIN pg_attribute att
          ON att.attrelid = con.conrelid AND att.attnum = ANY (con.conkey)
        WHERE con.conrelid = 'generation_events'::regclass
          AND con.contype = 'f'
          AND att.attname = 'user_id'
    LOOP
        EXECUTE format('ALTER TABLE generation_events DROP CONSTRAINT %I', fk.conname);
    END LOOP;
END
$$;

CREATE TABLE IF NOT EXISTS generation_events_rejected (
    stream_id   TEXT PRIMARY KEY,
    fields      JSONB NOT NULL,
    reason      TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS generation_metrics_hourly (
    id                     BIGSERIAL PRIMARY KEY,
    timestamp              TIMESTAMPTZ NOT NULL UNIQUE,
    total_requests         INTEGER NOT NULL DEFAULT 0,
    successful_generations INTEGER NOT NULL DEFAULT 0,
    failed_generations     INTEGER NOT NULL DEFAULT 0,
    cancelled_generations  INTEGER NOT NULL DEFAULT 0,
    avg_duration_ms        INTEGER,
    p50_duration_ms        INTEGER,
    p95_duration_ms        INTEGER,
    p99_duration_ms        INTEGER,
    unique_users           INTEGER,
    avg_queue_length       DOUBLE PRECISION,
    max_queue_length       INTEGER,
    total_images_generated INTEGER,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- What makes multi-hour answers exact (sum and count of successful
-- durations) or accurate (a log-bucketed histogram, keys and counts in two
-- parallel arrays, merged across hours). NULL on rows the original service
-- wrote: those hours need a fresh rollup before window figures use them.
ALTER TABLE generation_metrics_hourly
    ADD COLUMN IF NOT EXISTS duration_sum_ms      BIGINT,
    ADD COLUMN IF NOT EXISTS duration_count       INTEGER,
    ADD COLUMN IF NOT EXISTS duration_hist_keys   INTEGER[],
    ADD COLUMN IF NOT EXISTS duration_hist_counts INTEGER[],
    ADD COLUMN IF NOT EXISTS updated_at           TIMESTAMPTZ;

-- Creates an index unless one with the same definition already exists under
-- any name (the original service named its indexes its own way).
CREATE FUNCTION pg_temp.genalytics_ensure_index(
    index_name text, table_name text, is_unique boolean, definition text
) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1
        FROM pg_index i
        WHERE i.indrelid = table_name::regclass
          AND i.indisunique = is_unique
          AND regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', '') = definition
    ) OR to_regclass(index_name) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format(
        'CREATE %s INDEX %I ON %I USING %s',
        CASE WHEN is_unique THEN 'UNIQUE' ELSE '' END, index_name, table_name, definition
    );
END
$$;

SELECT pg_temp.genalytics_ensure_index('idx_generation_events_timestamp', 'generation_events', false,
    'btree ("timestamp" DESC)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_events_user_timestamp', 'generation_events', false,
    'btree (user_id, "timestamp" DESC)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_events_generation_id', 'generation_events', false,
    'btree (generation_id)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_events_event_type', 'generation_events', false,
    'btree (event_type)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_events_success', 'generation_events', false,
    'btree (success) WHERE ((event_type)::text = ''completion''::text)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_events_error_type', 'generation_events', false,
    'btree (error_type) WHERE (error_type IS NOT NULL)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_events_model_timestamp', 'generation_events', false,
    'btree (model_checkpoint, "timestamp" DESC)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_events_stream_id', 'generation_events', true,
    'btree (stream_id)');
SELECT pg_temp.genalytics_ensure_index('idx_generation_metrics_hourly_timestamp', 'generation_metrics_hourly', true,
    'btree ("timestamp")');

DROP FUNCTION pg_temp.genalytics_ensure_index(text, text, boolean, text);
