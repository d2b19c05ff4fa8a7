//! The `inventory` schema: diesel tables and queries.

pub mod products;
pub mod reservations;
pub mod schema;
