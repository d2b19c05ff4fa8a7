-- What inventory decided for each order it heard of. The row is claimed
-- (inserted) before any stock moves, so one order is handled once even when
-- its events are replayed or arrive out of order.
CREATE TABLE reservations (
    order_id   uuid        PRIMARY KEY,
    -- PENDING exists only inside the deciding transaction.
    -- CANCELLED: the cancellation arrived first; nothing will be reserved.
    status     text        NOT NULL
               CHECK (status IN ('PENDING', 'RESERVED', 'REJECTED', 'RELEASED', 'CANCELLED')),
    reason     text        NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservation_lines (
    order_id uuid NOT NULL REFERENCES reservations ON DELETE CASCADE,
    sku      text NOT NULL,
    quantity int  NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
