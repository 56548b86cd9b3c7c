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
