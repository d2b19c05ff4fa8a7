-- An event the broker refused or could not route (no queue bound for it yet)
-- is retried with its own backoff, so it never holds up the events behind it.
ALTER TABLE outbox ADD COLUMN attempts int NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN next_attempt_at timestamptz;
