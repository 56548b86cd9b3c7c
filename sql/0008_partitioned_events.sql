-- generation_events becomes range-partitioned by timestamp, one partition
-- per UTC day: retention drops whole days instead of deleting
-- rows, and each day's indexes stay the size of one day.
--
-- The existing table is not copied. It keeps its rows, its storage and its
-- own indexes, and is attached as the partition for everything before the
-- day after its newest event; days after that get partitions of their own.
-- The only work proportional to its size is building the new unique index
-- and one scan that proves every row lies in its range.
--
-- Exactly-once rests on the position stored in each batch's transaction;
-- the unique index on (stream, stream_id, timestamp) is the safety net for
-- a position set back by hand: an entry read again has the same timestamp,
-- so it meets its stored copy in the same partition.

-- Times below are written and read as text (partition bounds): in ISO and
-- UTC, whatever the database's or role's DateStyle and TimeZone, so no
-- zone abbreviation is read back as another zone's.
SET LOCAL DateStyle = 'ISO, YMD';
SET LOCAL TimeZone = 'UTC';

-- Days from 2000 to a week ahead get partitions of their own; events dated
-- outside go to the default partition, so a clock years ahead (broken or
-- hostile) makes no tables.
CREATE FUNCTION genalytics_partition_day_sane(day date) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT day >= DATE '2000-01-01' AND day < (now() AT TIME ZONE 'UTC')::date + 8
$$;

DO $$
DECLARE
    newest timestamptz;
    cutover date;
    adopted text;
    stray bigint;
    id_sequence text;
    dependents text;
    grant_ record;
BEGIN
    -- What the conversion cannot carry over is refused with its name,
    -- before anything changes.
    IF EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'generation_events'::regclass
               AND attname = 'id' AND attidentity <> '') THEN
        RAISE EXCEPTION 'generation_events.id is an identity column; genalytics expects BIGSERIAL: '
            'make it one (ALTER TABLE generation_events ALTER COLUMN id DROP IDENTITY, with a sequence '
            'as its default) and migrate again';
    END IF;
    SELECT string_agg(DISTINCT r.ev_class::regclass::text, ', ') INTO dependents
    FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
    WHERE d.refobjid = 'generation_events'::regclass AND r.ev_class <> 'generation_events'::regclass;
    IF dependents IS NOT NULL THEN
        RAISE EXCEPTION 'views depend on generation_events (%): drop them, migrate, and create them again '
            '(they would go on showing only the rows of the table as it was)', dependents;
    END IF;

    ALTER TABLE generation_events RENAME TO genalytics_events_unpartitioned;
    -- Columns, types and defaults (the id sequence included) as they are,
    -- whatever the original service or an earlier genalytics made them.
    CREATE TABLE generation_events (LIKE genalytics_events_unpartitioned INCLUDING DEFAULTS)
        PARTITION BY RANGE ("timestamp");
    -- The id sequence (BIGSERIAL) now belongs to the parent, so it
    -- outlives the adopted partition when prune drops that one.
    id_sequence := pg_get_serial_sequence('genalytics_events_unpartitioned', 'id');
    IF id_sequence IS NOT NULL THEN
        EXECUTE format('ALTER SEQUENCE %s OWNED BY generation_events.id', id_sequence);
    END IF;

    -- The indexes genalytics reads through (see README, "Indexes"): the
    -- entry key, a user's events by time (report user), and time (aggregate,
    -- check, prune, status). An attached partition with a matching index
    -- keeps it; the adopted table keeps its other indexes for its own rows.
    CREATE UNIQUE INDEX generation_events_stream_entry_time_key
        ON generation_events (stream, stream_id, "timestamp");
    CREATE INDEX generation_events_user_time_idx
        ON generation_events (user_id, "timestamp" DESC);
    CREATE INDEX generation_events_time_idx
        ON generation_events ("timestamp" DESC);

    -- Whoever could read or write the table can read or write the new one
    -- (partitions are reached through it, with its privileges).
    FOR grant_ IN
        SELECT a.privilege_type, a.grantee
        FROM pg_class c, aclexplode(c.relacl) a
        WHERE c.oid = 'genalytics_events_unpartitioned'::regclass AND a.grantee <> c.relowner
    LOOP
        EXECUTE format('GRANT %s ON generation_events TO %s', grant_.privilege_type,
            CASE WHEN grant_.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(pg_get_userbyid(grant_.grantee)) END);
    END LOOP;

    CREATE TABLE generation_events_default
        (LIKE generation_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS);

    -- The newest event short of the sane limit, through the time index.
    SELECT max("timestamp") INTO newest FROM genalytics_events_unpartitioned
    WHERE "timestamp" < ((now() AT TIME ZONE 'UTC')::date + 8)::timestamp AT TIME ZONE 'UTC';
    IF newest IS NULL THEN
        -- Nothing sane to keep in place: any stray rows move to the
        -- default partition and the empty table goes.
        INSERT INTO generation_events_default SELECT * FROM genalytics_events_unpartitioned;
        DROP TABLE genalytics_events_unpartitioned;
    ELSE
        cutover := (newest AT TIME ZONE 'UTC')::date + 1;
        -- Rows dated after the cutover (years ahead: hostile or broken
        -- clocks) move to the default partition: a handful, by nature.
        WITH moved AS (
            DELETE FROM genalytics_events_unpartitioned
            WHERE "timestamp" >= (cutover::timestamp AT TIME ZONE 'UTC')
            RETURNING *)
        INSERT INTO generation_events_default SELECT * FROM moved;
        GET DIAGNOSTICS stray = ROW_COUNT;
        IF stray > 0 THEN
            RAISE NOTICE 'moved % events dated after % to the default partition', stray, cutover;
        END IF;
        adopted := 'generation_events_before_' || to_char(cutover, 'YYYYMMDD');
        EXECUTE format('ALTER TABLE genalytics_events_unpartitioned RENAME TO %I', adopted);
        -- The old unique index on (stream, stream_id) and the primary key
        -- stay on this partition: they still hold for its rows.
        EXECUTE format(
            'ALTER TABLE generation_events ATTACH PARTITION %I FOR VALUES FROM (MINVALUE) TO (%L)',
            adopted, (cutover::timestamp AT TIME ZONE 'UTC'));
    END IF;
    ALTER TABLE generation_events ATTACH PARTITION generation_events_default DEFAULT;
END
$$;

-- The partitions with their ranges. lo is NULL for MINVALUE, hi for
-- MAXVALUE; both NULL for the default partition. Bounds are read back from
-- PostgreSQL's own text, in ISO and UTC whatever the session's settings.
CREATE FUNCTION genalytics_event_partition_list()
RETURNS TABLE (partition regclass, name text, is_default boolean, lo timestamptz, hi timestamptz)
LANGUAGE sql STABLE SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' AS $$
SELECT c.oid::regclass,
       c.relname::text,
       b.bound = 'DEFAULT',
       CASE WHEN m[1] LIKE '''%' THEN trim(BOTH '''' FROM m[1])::timestamptz END,
       CASE WHEN m[2] LIKE '''%' THEN trim(BOTH '''' FROM m[2])::timestamptz END
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
LEFT JOIN LATERAL regexp_match(b.bound, '^FOR VALUES FROM \((.*)\) TO \((.*)\)$') m ON true
WHERE i.inhparent = 'generation_events'::regclass
$$;
CREATE VIEW genalytics_event_partitions AS SELECT * FROM genalytics_event_partition_list();

-- Creates the partition for one UTC day unless a partition already covers
-- it or the day is outside the sane range; returns whether it created one.
-- Rows the default partition holds for that day move into it. Attaching
-- needs only a SHARE UPDATE EXCLUSIVE lock on generation_events (CREATE
-- TABLE … PARTITION OF would need an exclusive one), so transfers and
-- reports go on meanwhile; a lock not had within 2 s is an error, and
-- transfer then stores the day's events in the default partition.
-- Concurrent callers are serialised. It runs with the rights of the role
-- that migrated (who owns the table), so a transfer role that may only
-- insert can still make the partitions its events need.
CREATE FUNCTION genalytics_create_event_partition(day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET lock_timeout = '2s' AS $$
DECLARE
    day_lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
    day_hi timestamptz := ((day + 1)::timestamp AT TIME ZONE 'UTC');
    part_name text := 'generation_events_p' || to_char(day, 'YYYYMMDD');
    fallback regclass;
BEGIN
    IF NOT genalytics_partition_day_sane(day) THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('genalytics_create_event_partition'));
    IF EXISTS (
        SELECT 1 FROM genalytics_event_partitions p
        WHERE NOT p.is_default
          AND (p.lo IS NULL OR p.lo < day_hi)
          AND (p.hi IS NULL OR p.hi > day_lo)
    ) THEN
        RETURN false;
    END IF;
    -- With the table's CHECK constraints (one added by hand too): ATTACH
    -- requires a partition to have every one of them.
    EXECUTE format('CREATE TABLE %I (LIKE generation_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
        part_name);
    SELECT partition INTO fallback FROM genalytics_event_partitions WHERE is_default;
    IF fallback IS NOT NULL THEN
        EXECUTE format(
            'WITH moved AS (DELETE FROM %s WHERE "timestamp" >= $1 AND "timestamp" < $2 RETURNING *)
             INSERT INTO %I SELECT * FROM moved', fallback, part_name)
        USING day_lo, day_hi;
    END IF;
    -- The constraint lets ATTACH skip its validation scan.
    EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I CHECK ("timestamp" >= %L AND "timestamp" < %L)',
        part_name, part_name || '_range', day_lo, day_hi);
    EXECUTE format('ALTER TABLE generation_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
        part_name, day_lo, day_hi);
    EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', part_name, part_name || '_range');
    RETURN true;
END
$$;

-- A SECURITY DEFINER function resolves names in the schema it was made
-- for, never in one a caller put first on its search_path.
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION genalytics_create_event_partition(date) SET search_path = %I, pg_temp',
        current_schema());
END
$$;

-- Today and the next two days, ahead of need; transfer creates the rest.
SELECT genalytics_create_event_partition((now() AT TIME ZONE 'UTC')::date + d)
FROM generate_series(0, 2) d;
