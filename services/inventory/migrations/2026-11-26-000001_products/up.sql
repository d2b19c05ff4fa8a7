CREATE TABLE products (
    sku         text        PRIMARY KEY,
    name        text        NOT NULL,
    price_cents bigint      NOT NULL CHECK (price_cents >= 0),
    -- Can be ordered.
    available   bigint      NOT NULL CHECK (available >= 0),
    -- Held for orders that have not finished.
    reserved    bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- Grows with every change; carried by product.changed so replicas can
    -- ignore stale states.
    version     bigint      NOT NULL DEFAULT 1,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
