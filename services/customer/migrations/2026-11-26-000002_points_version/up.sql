-- Grows with every change of the balance; carried by customer.points_changed
-- so read models can ignore an older balance.
ALTER TABLE customers ADD COLUMN points_version bigint NOT NULL DEFAULT 0;
-- Reversals only take back what was credited, so the balance never goes
-- negative; the database guards it too.
ALTER TABLE customers ADD CONSTRAINT loyalty_points_not_negative CHECK (loyalty_points >= 0);
