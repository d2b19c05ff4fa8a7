//! The customer service: owns customers and their loyalty points (schema
//! `customers`, role `customer_svc`).
//!
//! * [`api`]: `customer.v1.CustomerService` over gRPC. `RegisterCustomer`
//!   writes the customer and a `customer.registered` event in one transaction.
//! * [`events`]: `order.created` credits 10 % of the order total as points,
//!   `order.rejected` / `order.cancelled` take them back, once per order,
//!   through the [`db::ledger`]; each move publishes `customer.points_changed`.
//! * [`domain`]: validated names and emails, the points rule.
//! * [`wire`]: stored customers as `customer.v1` messages.
//! * [`db`]: diesel schema and queries; [`startup`] wires it all to the
//!   shared plumbing in `platform`.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod db;
pub mod domain;
pub mod events;
pub mod startup;
pub mod wire;

use diesel_migrations::embed_migrations;
use platform::ServiceSpec;

/// How the customer service runs.
pub static SERVICE: ServiceSpec = ServiceSpec {
    name: "customer",
    binary: "customer-service",
    about: "Customers and their loyalty points, over gRPC",
    schema: "customers",
    metrics_port: 9092,
    grpc_port: 50052,
    migrations: embed_migrations!("migrations"),
};
