-- Streams get an identity of their own. A key can hold several streams over
-- time: Redis restarted empty, the key deleted and recreated, a failover to
-- a replica. Entry IDs are unique only within one of them, so each is an
-- incarnation of its key, rows record which one they came from, and an
-- entry is unique per (stream, entry ID).
CREATE TABLE genalytics_streams (
    id          INTEGER GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_key  TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (stream_key, incarnation)
);

-- The stream that already has rows becomes stream 1.
INSERT INTO genalytics_streams (stream_key, incarnation)
SELECT stream_key, 1 FROM genalytics_transfer_state
ORDER BY events_stored + entries_rejected DESC, stream_key;

ALTER TABLE genalytics_transfer_state
    -- The incarnation now being read.
    ADD COLUMN stream_ref      INTEGER REFERENCES genalytics_streams (id),
    -- The stream's entries-added when the entry at last_id was added, when
    -- known: compared with what Redis says to tell a new stream from this one.
    ADD COLUMN position_index  BIGINT,
    -- The highest entries-added seen of this incarnation, and when.
    ADD COLUMN observed_added  BIGINT,
    ADD COLUMN observed_at     TIMESTAMPTZ,
    -- Entries read again that were already stored (a position set back by hand).
    ADD COLUMN entries_skipped BIGINT NOT NULL DEFAULT 0,
    -- Streams replaced under the key, the last time, and how many entries
    -- the replaced one had received that were never stored (at least).
    ADD COLUMN resets          INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN last_reset_at   TIMESTAMPTZ,
    ADD COLUMN last_reset_lost BIGINT;
UPDATE genalytics_transfer_state s SET stream_ref = g.id
FROM genalytics_streams g WHERE g.stream_key = s.stream_key;
ALTER TABLE genalytics_transfer_state ALTER COLUMN stream_ref SET NOT NULL;

-- Rows stored so far came from stream 1 (legacy rows, without a stream_id,
-- get it too and are told apart by that). A constant default fills existing
-- rows without rewriting the table; dropping it leaves them filled.
DO $$
DECLARE
    first_stream integer;
BEGIN
    SELECT min(id) INTO first_stream FROM genalytics_streams;
    IF first_stream IS NULL THEN
        ALTER TABLE generation_events ADD COLUMN stream INTEGER;
        ALTER TABLE generation_events_rejected ADD COLUMN stream INTEGER;
    ELSE
        EXECUTE format('ALTER TABLE generation_events ADD COLUMN stream INTEGER DEFAULT %s', first_stream);
        ALTER TABLE generation_events ALTER COLUMN stream DROP DEFAULT;
        EXECUTE format('ALTER TABLE generation_events_rejected ADD COLUMN stream INTEGER DEFAULT %s', first_stream);
        ALTER TABLE generation_events_rejected ALTER COLUMN stream DROP DEFAULT;
    END IF;
END
$$;

CREATE UNIQUE INDEX generation_events_stream_entry_key ON generation_events (stream, stream_id);

-- The unique index on stream_id alone, under whatever name it has.
DO $$
DECLARE
    old record;
BEGIN
    FOR old IN
        SELECT c.relname
        FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
        WHERE i.indrelid = 'generation_events'::regclass
          AND i.indisunique
          AND regexp_replace(pg_get_indexdef(i.indexrelid), '^.* USING ', '') = 'btree (stream_id)'
    LOOP
        EXECUTE format('DROP INDEX %I', old.relname);
    END LOOP;
END
$$;

-- Dead letters keep the entry exactly as received: names and values as
-- bytes, in order, every value of a repeated field (`fields` is the
-- readable form, with escapes). Unique per stream, like events.
ALTER TABLE generation_events_rejected
    ADD COLUMN raw_fields BYTEA[],
    DROP CONSTRAINT generation_events_rejected_pkey;
CREATE UNIQUE INDEX generation_events_rejected_stream_entry_key
    ON generation_events_rejected (stream, stream_id);
CREATE INDEX generation_events_rejected_received_at
    ON generation_events_rejected (received_at);

-- Two completions of batch_size 2147483647 overflowed INT.
ALTER TABLE generation_metrics_hourly ALTER COLUMN total_images_generated TYPE BIGINT;

-- An hour whose rollup failed stays queued with PostgreSQL's words.
ALTER TABLE generation_rollup_queue
    ADD COLUMN last_error TEXT,
    ADD COLUMN failed_at  TIMESTAMPTZ,
    ADD COLUMN failures   INTEGER NOT NULL DEFAULT 0;
