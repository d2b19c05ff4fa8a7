ALTER TABLE customers DROP CONSTRAINT loyalty_points_not_negative;
ALTER TABLE customers DROP COLUMN points_version;
