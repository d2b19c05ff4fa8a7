DROP TABLE loyalty_ledger;
DROP TABLE customers;
