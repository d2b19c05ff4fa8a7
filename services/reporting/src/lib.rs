//! The reporting service: the read side (schema `reporting`, role
//! `reporting_svc`). It owns no business data, only views of everyone else's.
//!
//! * [`events`]: projects every event the other services publish into
//!   denormalized read models (order history per customer, sales per SKU),
//!   idempotently and whatever order the events arrive in.
//! * [`rebuild`]: `reporting-service rebuild` drops the read models and
//!   replays the event log (a RabbitMQ stream bound to every event).
//! * [`api`]: `reporting.v1.ReportingService`: queries of the read models,
//!   and [`compose`]: `GetCustomerOverview`, answered live by asking the
//!   customer, order and inventory services in parallel.
//! * [`wire`]: read-model rows as `reporting.v1` messages.
//! * [`config`]: where the other services are; [`db`], [`startup`] as in
//!   every service.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod compose;
pub mod config;
pub mod db;
pub mod events;
pub mod rebuild;
pub mod startup;
pub mod wire;

use diesel_migrations::embed_migrations;
use platform::ServiceSpec;

/// How the reporting service runs.
pub static SERVICE: ServiceSpec = ServiceSpec {
    name: "reporting",
    binary: "reporting-service",
    about: "Read models of every event, and live API composition, over gRPC",
    schema: "reporting",
    metrics_port: 9094,
    grpc_port: 50054,
    migrations: embed_migrations!("migrations"),
};
