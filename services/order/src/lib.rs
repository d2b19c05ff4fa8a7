//! The order service: owns orders (schema `orders`, role `order_svc`).
//!
//! * [`api`]: `order.v1.OrderService` over gRPC. `PlaceOrder` checks the
//!   customer and prices the lines against this service's own replicas, then
//!   writes the order (PENDING), its lines and `order.created` in one
//!   statement. `CancelOrder` and the stock answers move orders through
//!   [`transitions`]; `WatchOrder` streams changes heard by [`watch`].
//! * [`events`]: keeps the replicas (`known_customers`, `catalog`) from
//!   `customer.registered` and `product.changed`, and approves or rejects
//!   orders on `stock.reserved` / `stock.rejected`.
//! * [`domain`]: validated requests, order status, pricing.
//! * [`wire`]: stored orders as `order.v1` messages, for the API and events.
//! * [`db`]: diesel schema and queries; [`startup`] wires it to `platform`.

#![warn(missing_docs, unreachable_pub)]

pub mod api;
pub mod db;
pub mod domain;
pub mod events;
pub mod startup;
pub mod transitions;
pub mod watch;
pub mod wire;

use diesel_migrations::embed_migrations;
use platform::ServiceSpec;

/// How the order service runs.
pub static SERVICE: ServiceSpec = ServiceSpec {
    name: "order",
    binary: "order-service",
    about: "Orders, priced against local replicas of customers and the catalog, over gRPC",
    schema: "orders",
    metrics_port: 9091,
    grpc_port: 50051,
    migrations: embed_migrations!("migrations"),
};
