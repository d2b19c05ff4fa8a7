//! The contracts of the system, generated from `proto/` and nothing else.
//!
//! * `customer::v1`, `inventory::v1`, `order::v1`, `reporting::v1`: each service's gRPC API
//!   (`<service>.proto`) and the events it publishes (`events.proto`), with
//!   tonic clients and servers.
//! * [`Event`]: how each event message travels on the broker (which exchange,
//!   which routing key). It is part of the contract, so it lives here beside
//!   the messages; the `broker` crate moves any [`Event`] without knowing it.
//!   [`ALL_EVENTS`] lists them all (checked against `docs/asyncapi.yaml`).
//! * [`FILE_DESCRIPTOR_SET`]: every file above, for gRPC reflection.
//!
//! Services depend on this crate, never on each other.

mod event;

pub use event::{ALL_EVENTS, Event, EventType};

/// Serialized `FileDescriptorSet` of every `.proto` under `proto/`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("descriptor");

/// Customer service contracts.
pub mod customer {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("customer.v1");
    }
}

/// Inventory service contracts.
pub mod inventory {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("inventory.v1");
    }
}

/// Order service contracts.
pub mod order {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("order.v1");
    }
}

/// Reporting service contracts.
pub mod reporting {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("reporting.v1");
    }
}
