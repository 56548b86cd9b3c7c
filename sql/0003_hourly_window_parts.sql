-- What windows (a day, a week) need from hourly rows to stay exact:
-- the distinct users of each hour, so a window's distinct users are a
-- union of hourly sets instead of a scan of raw events; and the sum and
-- number of queue-length samples, so a window's mean queue length is
-- weighted by samples, not an average of hourly averages. NULL on rows
-- written before genalytics rolled the hour up.
ALTER TABLE generation_metrics_hourly
    ADD COLUMN IF NOT EXISTS user_ids             UUID[],
    ADD COLUMN IF NOT EXISTS queue_length_sum     BIGINT,
    ADD COLUMN IF NOT EXISTS queue_length_samples INTEGER;
