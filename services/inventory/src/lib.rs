//! The inventory service: owns the catalog and the stock (schema
//! `inventory`, role `inventory_svc`).
//!
//! * [`api`]: `inventory.v1.InventoryService` over gRPC. Every change of a
//!   product writes its full new state as a `product.changed` event in the same
//!   transaction, so other services can keep replicas of the catalog.
//! * [`events`]: the saga's inventory side: reserve an order's lines all or
//!   nothing on `order.created`, give them back on `order.cancelled`.
//! * [`domain`]: validated product fields and stock rules.
//! * [`wire`]: stored products and stock decisions as `inventory.v1` messages.
//! * [`db`]: diesel schema and queries; [`startup`] wires it to `platform`.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod db;
pub mod domain;
pub mod events;
pub mod startup;
pub mod wire;

use diesel_migrations::embed_migrations;
use platform::ServiceSpec;

/// How the inventory service runs.
pub static SERVICE: ServiceSpec = ServiceSpec {
    name: "inventory",
    binary: "inventory-service",
    about: "The catalog and the stock, over gRPC",
    schema: "inventory",
    metrics_port: 9093,
    grpc_port: 50053,
    migrations: embed_migrations!("migrations"),
};
