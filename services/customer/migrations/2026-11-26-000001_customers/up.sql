CREATE TABLE customers (
    customer_id    uuid        PRIMARY KEY,
    name           text        NOT NULL,
    email          text        NOT NULL UNIQUE,
    loyalty_points bigint      NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- One row per order that moved points: what was credited and whether it was
-- reversed. The balance is the sum of credited minus reversed, kept in
-- customers.loyalty_points; the ledger makes each move happen once.
CREATE TABLE loyalty_ledger (
    order_id    uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL REFERENCES customers,
    credited    bigint      NOT NULL CHECK (credited >= 0),
    reversed    boolean     NOT NULL DEFAULT false,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX loyalty_ledger_customer ON loyalty_ledger (customer_id);
