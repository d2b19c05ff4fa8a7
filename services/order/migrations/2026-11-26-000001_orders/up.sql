CREATE TABLE orders (
    order_id        uuid        PRIMARY KEY,
    customer_id     uuid        NOT NULL,
    status          text        NOT NULL
                    CHECK (status IN ('PENDING', 'APPROVED', 'REJECTED', 'CANCELLED')),
    status_reason   text        NOT NULL DEFAULT '',
    total_cents     bigint      NOT NULL CHECK (total_cents >= 0),
    -- Chosen by the client; the same key (per customer) returns the same order.
    idempotency_key text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, idempotency_key)
);

CREATE INDEX orders_by_customer ON orders (customer_id, order_id DESC);

CREATE TABLE order_lines (
    order_id         uuid   NOT NULL REFERENCES orders ON DELETE CASCADE,
    line_no          int    NOT NULL,
    sku              text   NOT NULL,
    quantity         int    NOT NULL CHECK (quantity > 0),
    unit_price_cents bigint NOT NULL CHECK (unit_price_cents >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- Replicas of other services' data, fed only by their events: the order
-- service never reads another schema.

-- Customers that exist (customer.registered).
CREATE TABLE known_customers (
    customer_id   uuid        PRIMARY KEY,
    registered_at timestamptz NOT NULL DEFAULT now()
);

-- The catalog as of the newest product.changed of each SKU.
CREATE TABLE catalog (
    sku         text        PRIMARY KEY,
    name        text        NOT NULL,
    price_cents bigint      NOT NULL CHECK (price_cents >= 0),
    version     bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
