-- Per user and hour: what `report user` needs, so that it costs the same
-- for a user with a million events as for one with ten. Kept forever like
-- the other rollups: aggregate writes an hour's rows with the
-- hour, late events are merged into them, prune leaves them.
CREATE TABLE generation_metrics_hourly_users (
    timestamp              TIMESTAMPTZ NOT NULL,
    user_id                UUID NOT NULL,
    total_requests         INTEGER NOT NULL,
    successful_generations INTEGER NOT NULL,
    failed_generations     INTEGER NOT NULL,
    cancelled_generations  INTEGER NOT NULL,
    -- Over successful completions with a duration.
    duration_sum_ms        BIGINT NOT NULL,
    duration_count         INTEGER NOT NULL,
    duration_hist_keys     INTEGER[] NOT NULL,
    duration_hist_counts   INTEGER[] NOT NULL,
    -- Failed completions by error type (a NULL element: without one).
    error_types            TEXT[] NOT NULL,
    error_counts           INTEGER[] NOT NULL,
    -- The user's first and last event of the hour.
    first_event_at         TIMESTAMPTZ NOT NULL,
    last_event_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, timestamp)
);
CREATE INDEX idx_generation_metrics_hourly_users_timestamp
    ON generation_metrics_hourly_users (timestamp);

-- Whether the hour's per-user rows were written: false on hours rolled up
-- before this table existed (or by the original service), whose raw events
-- a prune may have taken — a user report over them says they are missing.
ALTER TABLE generation_metrics_hourly
    ADD COLUMN users_rolled_up BOOLEAN NOT NULL DEFAULT false;

-- Hours from the raw horizon on get their per-user rows from the first
-- plain aggregate.
INSERT INTO generation_rollup_queue (hour)
SELECT m.timestamp FROM generation_metrics_hourly m
WHERE m.timestamp >= coalesce((SELECT horizon FROM genalytics_raw_horizon), '-infinity')
  AND EXISTS (
      SELECT 1 FROM generation_events e
      WHERE e.timestamp >= m.timestamp AND e.timestamp < m.timestamp + interval '1 hour')
ON CONFLICT (hour) DO NOTHING;

-- The stream's entries-added counts for the position only while index_id
-- is last_id: not after last_id was set by hand.
ALTER TABLE genalytics_transfer_state ADD COLUMN index_id TEXT;
UPDATE genalytics_transfer_state SET index_id = last_id WHERE position_index IS NOT NULL;
