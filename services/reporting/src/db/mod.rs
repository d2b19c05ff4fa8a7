//! The `reporting` schema: read-model tables and their queries.

pub mod customers;
pub mod orders;
pub mod products;
pub mod schema;
