//! The `customers` schema: diesel tables and one module of queries per table.

pub mod customers;
pub mod ledger;
pub mod schema;
