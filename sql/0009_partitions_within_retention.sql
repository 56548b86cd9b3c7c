-- Day partitions only inside the raw retention window (and a few days
-- ahead): events with hostile or broken clocks go to the default
-- partition, where prune deletes them in batches, so the table never holds
-- many more partitions than the window has days.

DROP FUNCTION genalytics_create_event_partition(date);
DROP FUNCTION genalytics_partition_day_sane(date);

CREATE FUNCTION genalytics_partition_day_sane(day date, retention_days integer) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT day >= DATE '2000-01-01'
       AND day >= (now() AT TIME ZONE 'UTC')::date - greatest(retention_days, 0)
       AND day < (now() AT TIME ZONE 'UTC')::date + 8
$$;

CREATE FUNCTION genalytics_create_event_partition(day date, retention_days integer DEFAULT 90)
RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER
SET DateStyle = 'ISO, YMD' SET TimeZone = 'UTC' SET lock_timeout = '2s' AS $$
DECLARE
    day_lo timestamptz := (day::timestamp AT TIME ZONE 'UTC');
    day_hi timestamptz := ((day + 1)::timestamp AT TIME ZONE 'UTC');
    part_name text := 'generation_events_p' || to_char(day, 'YYYYMMDD');
    fallback regclass;
BEGIN
    IF NOT genalytics_partition_day_sane(day, retention_days) THEN
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
    EXECUTE format(
        'ALTER FUNCTION genalytics_create_event_partition(date, integer) SET search_path = %I, pg_temp',
        current_schema());
END
$$;

-- A dead letter of an entry too large to store keeps its fields cut (each
-- name and value at 64 KiB, the first fields only): it can never be
-- replayed as the event it was.
ALTER TABLE generation_events_rejected ADD COLUMN cut boolean NOT NULL DEFAULT false;
