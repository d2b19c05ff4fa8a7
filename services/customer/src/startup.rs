//! Wires the API and the event handlers to the shared plumbing.

use dbps::customer::v1::customer_service_server::CustomerServiceServer;
use platform::{App, Config, Infra, NoExtra};

use crate::{api::CustomerApi, events};

/// Builds the customer service on its connections and binds its port.
pub async fn build(infra: Infra, config: Config<NoExtra>) -> anyhow::Result<App> {
    let api = CustomerServiceServer::new(CustomerApi::new(infra.db.clone()))
        .max_decoding_message_size(infra.settings().grpc_max_message_bytes);
    infra
        .server()
        .api(api)
        .consumer(events::consumer)
        .bind(config.grpc_addr)
        .await
}
