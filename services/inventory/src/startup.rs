//! Wires the API and the event handlers to the shared plumbing.

use dbps::inventory::v1::inventory_service_server::InventoryServiceServer;
use platform::{App, Config, Infra, NoExtra};

use crate::{api::InventoryApi, events};

/// Builds the inventory service on its connections and binds its port.
pub async fn build(infra: Infra, config: Config<NoExtra>) -> anyhow::Result<App> {
    let limit = infra.settings().grpc_max_message_bytes;
    let api = InventoryServiceServer::new(InventoryApi::new(infra.db.clone()));
    let app = infra.server().api(api.max_decoding_message_size(limit));
    app.consumer(events::consumer).bind(config.grpc_addr).await
}
