-- A queued hour is "late-listed" when its stored rollup (or none) and the
-- late events listed for it in generation_rollup_late are together all of
-- its events: a report then reads the rollup and those few events instead
-- of the whole hour. Transfer decides it when it queues the hour, holding
-- the queue row: an hour before the raw horizon, or with a rollup of
-- genalytics' own, is late-listed, and every event stored for it while
-- it stays queued is listed. A rollup from raw events clears the list.
ALTER TABLE generation_rollup_queue
    ADD COLUMN late_listed BOOLEAN NOT NULL DEFAULT false;

-- Before the horizon every event stored since the prune was listed.
UPDATE generation_rollup_queue
SET late_listed = true
WHERE hour < (SELECT horizon FROM genalytics_raw_horizon);

-- A listed late event carries what the rollups read of it, so that a
-- report reads an hour's few late events from this table alone rather
-- than look each up among the partitions.
ALTER TABLE generation_rollup_late
    ADD COLUMN event_type       TEXT,
    ADD COLUMN success          BOOLEAN,
    ADD COLUMN duration_ms      INTEGER,
    ADD COLUMN user_id          UUID,
    ADD COLUMN batch_size       INTEGER,
    ADD COLUMN queue_length     INTEGER,
    ADD COLUMN model_checkpoint TEXT,
    ADD COLUMN error_type       TEXT,
    ADD COLUMN error_message    TEXT;
UPDATE generation_rollup_late l
SET event_type = e.event_type, success = e.success, duration_ms = e.duration_ms,
    user_id = e.user_id, batch_size = e.batch_size, queue_length = e.queue_length,
    model_checkpoint = e.model_checkpoint, error_type = e.error_type,
    error_message = left(e.error_message, 300)
FROM generation_events e
WHERE e.id = l.event_id AND e.timestamp = l.event_at;
-- A listed event whose row is gone (deleted by hand) counts for nothing.
DELETE FROM generation_rollup_late WHERE event_type IS NULL;
ALTER TABLE generation_rollup_late ALTER COLUMN event_type SET NOT NULL;
