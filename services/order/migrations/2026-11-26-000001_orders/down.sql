DROP TABLE catalog;
DROP TABLE known_customers;
DROP TABLE order_lines;
DROP TABLE orders;
