//! The `orders` schema: diesel tables and one module of queries per concern.

pub mod orders;
pub mod replicas;
pub mod schema;
