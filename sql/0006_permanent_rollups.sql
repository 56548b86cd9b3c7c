-- Rollups are permanent: no later operation changes a stored
-- figure except by adding events that really happened.

-- The raw horizon: the start of the oldest hour that still has all its raw
-- events (NULL: every hour has). prune moves it forward, on whole hours;
-- an hour before it is never rolled up again from raw events, only merged
-- into.
CREATE TABLE genalytics_raw_horizon (
    id      BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    horizon TIMESTAMPTZ,
    set_at  TIMESTAMPTZ
);
INSERT INTO genalytics_raw_horizon (id) VALUES (true);

-- Events stored for an hour before the horizon, waiting to be merged into
-- that hour's rollups. Transfer adds them in the transaction that stores
-- the events; aggregate takes them off in the one that merges them, so each
-- is merged once.
CREATE TABLE generation_rollup_late (
    event_id BIGINT PRIMARY KEY,
    event_at TIMESTAMPTZ NOT NULL,
    hour     TIMESTAMPTZ NOT NULL
);
CREATE INDEX generation_rollup_late_hour ON generation_rollup_late (hour);

ALTER TABLE generation_metrics_hourly
    -- p50/p95/p99 are the hour's exact percentiles (true), or come from its
    -- histogram since late events were merged in (false); NULL on rows the
    -- original service wrote.
    ADD COLUMN percentiles_exact BOOLEAN,
    -- The histogram holds every successful duration of the hour, and
    -- user_ids every user: false on the original service's hours.
    ADD COLUMN hist_complete     BOOLEAN NOT NULL DEFAULT true,
    ADD COLUMN users_complete    BOOLEAN NOT NULL DEFAULT true,
    -- Written by the original service (its figures, not genalytics' own).
    ADD COLUMN legacy            BOOLEAN NOT NULL DEFAULT false,
    -- What genalytics last wrote, so a row changed by anything else (the
    -- original service's aggregator still running) shows in status.
    ADD COLUMN checksum          TEXT;

-- The figures that matter, in a form no session setting changes.
CREATE FUNCTION genalytics_hourly_checksum(m generation_metrics_hourly) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT md5(concat_ws('|', extract(epoch FROM m.timestamp), m.total_requests,
        m.successful_generations, m.failed_generations, m.cancelled_generations,
        m.avg_duration_ms, m.p50_duration_ms, m.p95_duration_ms, m.p99_duration_ms,
        m.unique_users, round(m.avg_queue_length::numeric, 6), m.max_queue_length,
        m.total_images_generated, m.duration_sum_ms, m.duration_count,
        cardinality(m.user_ids), m.legacy))
$$;

-- genalytics signs what it writes (it sets genalytics.writer in the
-- transaction); anything else that writes a row leaves it unsigned.
CREATE FUNCTION genalytics_hourly_sign() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('genalytics.writer', true) = 'genalytics' THEN
        NEW.checksum := genalytics_hourly_checksum(NEW);
    ELSE
        NEW.checksum := NULL;
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER genalytics_hourly_sign
    BEFORE INSERT OR UPDATE ON generation_metrics_hourly
    FOR EACH ROW EXECUTE FUNCTION genalytics_hourly_sign();

SET LOCAL genalytics.writer = 'genalytics';

-- Rows genalytics rolled up have histograms; the others are the original
-- service's.
UPDATE generation_metrics_hourly SET
    percentiles_exact = CASE WHEN duration_hist_keys IS NOT NULL THEN true END,
    hist_complete = duration_hist_keys IS NOT NULL,
    users_complete = user_ids IS NOT NULL,
    legacy = duration_hist_keys IS NULL;

-- What the raw events say per hour, once.
CREATE TEMP TABLE genalytics_raw_hours ON COMMIT DROP AS
SELECT date_trunc('hour', timestamp, 'UTC') AS hour,
       count(*) FILTER (WHERE event_type = 'request') AS requests,
       count(*) FILTER (WHERE event_type = 'completion' AND success) AS successful,
       count(*) FILTER (WHERE event_type = 'completion' AND NOT success) AS failed,
       count(*) FILTER (WHERE event_type = 'cancellation') AS cancelled
FROM generation_events
GROUP BY 1;

-- An hour whose rollup counts more than its raw events lost raw events (a
-- prune, or the original service's cleanup): the horizon starts after the
-- newest such hour, so no rollup is ever rebuilt from a fraction.
UPDATE genalytics_raw_horizon SET set_at = now(), horizon = (
    SELECT max(m.timestamp) + interval '1 hour'
    FROM generation_metrics_hourly m
    LEFT JOIN genalytics_raw_hours r ON r.hour = m.timestamp
    WHERE coalesce(r.requests, 0) < m.total_requests
       OR coalesce(r.successful, 0) < m.successful_generations
       OR coalesce(r.failed, 0) < m.failed_generations
       OR coalesce(r.cancelled, 0) < m.cancelled_generations);

-- Hours from the horizon on whose raw events genalytics never rolled up
-- (no row, or the original service's): queued, so the first plain
-- aggregate rolls them up exactly and replaces the original's figures.
INSERT INTO generation_rollup_queue (hour)
SELECT r.hour
FROM genalytics_raw_hours r
LEFT JOIN generation_metrics_hourly m ON m.timestamp = r.hour
WHERE r.hour >= coalesce((SELECT horizon FROM genalytics_raw_horizon), '-infinity')
  AND (m.timestamp IS NULL OR m.legacy)
ON CONFLICT (hour) DO NOTHING;

-- Before the horizon, an hour with raw events and no rollup at all gets
-- one from those events, merged in as late events.
INSERT INTO generation_rollup_late (event_id, event_at, hour)
SELECT e.id, e.timestamp, date_trunc('hour', e.timestamp, 'UTC')
FROM generation_events e
WHERE e.timestamp < (SELECT horizon FROM genalytics_raw_horizon)
  AND NOT EXISTS (
      SELECT 1 FROM generation_metrics_hourly m
      WHERE m.timestamp = date_trunc('hour', e.timestamp, 'UTC'))
ON CONFLICT (event_id) DO NOTHING;
INSERT INTO generation_rollup_queue (hour)
SELECT DISTINCT hour FROM generation_rollup_late
ON CONFLICT (hour) DO NOTHING;
