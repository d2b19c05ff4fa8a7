//! Wires the API and the event handlers to the shared plumbing.

use dbps::inventory::v1::inventory_service_server::InventoryServiceServer;
use platform::{App, Config, Infra, NoExtra};

use crate::{api::InventoryApi, events};

/// Builds the inventory service on its connections and binds its port.
pub async fn build(infra: Infra, config: Config<NoExtra>) -> anyhow::Result<App> {
    let api = InventoryServiceServer::new(InventoryApi::new(infra.db.clone()))
        .max_decoding_message_size(infra.settings().grpc_max_message_bytes);
    infra
        .server()
        .api(api)
        .consumer(events::consumer)
        .bind(config.grpc_addr)
        .await
}
