-- Owned by the broker crate and run by every service into its own schema.

-- Events waiting to be published, written in the same transaction as the change
-- they describe. The relay publishes unpublished rows in id order.
CREATE TABLE outbox (
    id             bigserial   PRIMARY KEY,
    event_id       uuid        NOT NULL UNIQUE,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    event_type     text        NOT NULL,
    payload        bytea       NOT NULL,
    headers        jsonb       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    published_at   timestamptz
);

-- The relay's scan reads only this small index; published rows leave it.
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
-- Retention deletes published rows by age.
CREATE INDEX outbox_published_at ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Events this service has applied, so a redelivered message is applied once.
CREATE TABLE inbox (
    message_id uuid        PRIMARY KEY,
    event_type text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE INDEX inbox_applied_at ON inbox (applied_at);
