-- The distinct users of each hour, so that the distinct users of any window
-- (a day, a week) are a union of hourly sets instead of a scan of raw
-- events. NULL on rows written before genalytics rolled the hour up.
ALTER TABLE generation_metrics_hourly ADD COLUMN IF NOT EXISTS user_ids UUID[];
