-- Read models: projections of the other services' events, never written by
-- anything else. All of it (and the inbox) can be dropped and rebuilt from the
-- event log (`reporting-service rebuild`).

CREATE TABLE customer_view (
    customer_id    uuid   PRIMARY KEY,
    name           text   NOT NULL DEFAULT '',
    email          text   NOT NULL DEFAULT '',
    loyalty_points bigint NOT NULL DEFAULT 0,
    -- Version of the balance held (customer.points_changed).
    points_version bigint NOT NULL DEFAULT 0
);

CREATE TABLE product_view (
    sku         text   PRIMARY KEY,
    name        text   NOT NULL,
    price_cents bigint NOT NULL,
    available   bigint NOT NULL,
    reserved    bigint NOT NULL,
    version     bigint NOT NULL
);

-- One row per order, created by whichever of its events arrives first
-- (inventory's answer can come before order.created: it names no customer).
CREATE TABLE order_view (
    order_id      uuid        PRIMARY KEY,
    customer_id   uuid,
    status        text        NOT NULL DEFAULT 'PENDING',
    -- Statuses only move forward: PENDING 0, APPROVED 1, REJECTED/CANCELLED 2.
    status_rank   int         NOT NULL DEFAULT 0,
    status_reason text        NOT NULL DEFAULT '',
    -- Inventory's answer: RESERVED or REJECTED, then maybe RELEASED.
    stock         text        NOT NULL DEFAULT '',
    stock_rank    int         NOT NULL DEFAULT 0,
    -- Known once order.created has been applied.
    total_cents   bigint,
    line_count    int,
    created_at    timestamptz,
    -- Whether its lines are counted in sales_by_sku (APPROVED and lines known).
    counted       boolean     NOT NULL DEFAULT false
);

CREATE INDEX order_view_by_customer ON order_view (customer_id, order_id DESC);

CREATE TABLE order_line_view (
    order_id         uuid   NOT NULL,
    sku              text   NOT NULL,
    quantity         int    NOT NULL,
    unit_price_cents bigint NOT NULL,
    PRIMARY KEY (order_id, sku)
);

-- Units and revenue of approved orders that were not cancelled.
CREATE TABLE sales_by_sku (
    sku           text   PRIMARY KEY,
    units         bigint NOT NULL DEFAULT 0,
    revenue_cents bigint NOT NULL DEFAULT 0,
    orders        bigint NOT NULL DEFAULT 0
);

CREATE INDEX sales_by_revenue ON sales_by_sku (revenue_cents DESC, sku);
