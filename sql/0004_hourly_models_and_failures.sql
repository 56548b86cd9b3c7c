-- Per hour and model checkpoint, and per hour and error type: what the
-- models and failures reports need, so that they read a few thousand
-- rollup rows instead of millions of raw events. Rewritten with their hour
-- by aggregate; a NULL model or error type is a group of its own.
CREATE TABLE generation_metrics_hourly_models (
    timestamp              TIMESTAMPTZ NOT NULL,
    model_checkpoint       TEXT,
    total_generations      INTEGER NOT NULL,
    successful_generations INTEGER NOT NULL,
    failed_generations     INTEGER NOT NULL,
    duration_sum_ms        BIGINT NOT NULL,
    duration_count         INTEGER NOT NULL,
    duration_hist_keys     INTEGER[] NOT NULL,
    duration_hist_counts   INTEGER[] NOT NULL,
    last_used_at           TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_generation_metrics_hourly_models_timestamp
    ON generation_metrics_hourly_models (timestamp);

CREATE TABLE generation_metrics_hourly_failures (
    timestamp       TIMESTAMPTZ NOT NULL,
    error_type      TEXT,
    failures        INTEGER NOT NULL,
    -- Over failed completions as sent, zeros included.
    duration_sum_ms BIGINT NOT NULL,
    duration_count  INTEGER NOT NULL,
    user_ids        UUID[] NOT NULL,
    -- Up to three distinct messages seen that hour.
    sample_messages TEXT[] NOT NULL
);
CREATE INDEX idx_generation_metrics_hourly_failures_timestamp
    ON generation_metrics_hourly_failures (timestamp);
