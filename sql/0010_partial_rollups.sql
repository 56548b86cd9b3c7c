-- The part of a queued hour (in practice the current one) rolled up so far:
-- its events before `through`, as the hour's rollup will count them, and
-- the durations of its successful completions, sorted, for exact
-- percentiles. A report adds the hour's events from `through` on instead
-- of reading all of them. A transfer storing an event of the hour from
-- before `through` deletes the row in the same transaction (it was no
-- longer the whole of that part); a rollup of the hour deletes it too.
CREATE TABLE generation_rollup_partial (
    hour           TIMESTAMPTZ PRIMARY KEY,
    through        TIMESTAMPTZ NOT NULL,
    events         BIGINT NOT NULL,
    requests       BIGINT NOT NULL,
    successful     BIGINT NOT NULL,
    failed         BIGINT NOT NULL,
    cancelled      BIGINT NOT NULL,
    duration_sum   BIGINT NOT NULL,
    durations      INTEGER[] NOT NULL,
    user_ids       UUID[] NOT NULL,
    images         BIGINT NOT NULL,
    queue_sum      BIGINT NOT NULL,
    queue_samples  BIGINT NOT NULL,
    max_queue      INTEGER,
    hist_keys      INTEGER[] NOT NULL,
    hist_counts    INTEGER[] NOT NULL,
    refreshed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (through > hour AND through <= hour + interval '1 hour')
);
