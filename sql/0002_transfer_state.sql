-- Where transfer stands, committed in the same transaction as the rows it
-- stored: the heart of exactly-once delivery. One row per stream.
CREATE TABLE genalytics_transfer_state (
    stream_key       TEXT PRIMARY KEY,
    -- ID of the last entry stored or rejected; everything up to it is in.
    last_id          TEXT NOT NULL,
    events_stored    BIGINT NOT NULL DEFAULT 0,
    entries_rejected BIGINT NOT NULL DEFAULT 0,
    last_transfer_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Hours that received events since they were last rolled up. Transfer adds
-- to it in the same transaction as the events; aggregate takes from it in
-- the same transaction as the rollup. Late arrivals re-queue their hour.
CREATE TABLE generation_rollup_queue (
    hour      TIMESTAMPTZ PRIMARY KEY,
    queued_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
