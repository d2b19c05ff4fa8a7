-- When the event was written, not when its transaction began: the outbox's
-- oldest-unpublished age and the measured propagation latency then mean what
-- they say even for long transactions.
ALTER TABLE outbox ALTER COLUMN created_at SET DEFAULT clock_timestamp();
