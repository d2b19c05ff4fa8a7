//! Wires the API and the event handlers to the shared plumbing.

use dbps::customer::v1::customer_service_server::CustomerServiceServer;
use platform::{App, Config, Infra, NoExtra};

use crate::{api::CustomerApi, events};

/// Builds the customer service on its connections and binds its port.
pub async fn build(infra: Infra, config: Config<NoExtra>) -> anyhow::Result<App> {
    let limit = infra.settings().grpc_max_message_bytes;
    let api = CustomerServiceServer::new(CustomerApi::new(infra.db.clone()));
    let app = infra.server().api(api.max_decoding_message_size(limit));
    app.consumer(events::consumer).bind(config.grpc_addr).await
}
