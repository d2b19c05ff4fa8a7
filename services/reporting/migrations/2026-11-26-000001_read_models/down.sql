DROP TABLE sales_by_sku;
DROP TABLE order_line_view;
DROP TABLE order_view;
DROP TABLE product_view;
DROP TABLE customer_view;
