//! Wires the API and the event handlers to the shared plumbing.

use dbps::order::v1::order_service_server::OrderServiceServer;
use platform::{App, Config, Infra, NoExtra};

use crate::{api::OrderApi, events};

/// Builds the order service on its connections and binds its port.
pub async fn build(infra: Infra, config: Config<NoExtra>) -> anyhow::Result<App> {
    let api = OrderServiceServer::new(OrderApi::new(infra.pool.clone(), infra.outbox.clone()))
        .max_decoding_message_size(infra.settings().grpc_max_message_bytes);
    infra
        .server()
        .api(api)
        .consumer(events::consumer())
        .bind(config.grpc_addr)
        .await
}
