//! Wires the API and the event handlers to the shared plumbing.

use dbps::order::v1::order_service_server::OrderServiceServer;
use platform::{App, Config, Infra, NoExtra};

use crate::{SERVICE, api::OrderApi, events, watch::Watchers};

/// Builds the order service on its connections and binds its port.
pub async fn build(infra: Infra, config: Config<NoExtra>) -> anyhow::Result<App> {
    let watchers = Watchers::new(infra.db.pool().clone());
    let listener = watchers.clone().listen(
        infra.database_url().to_owned(),
        SERVICE.schema,
        infra.shutdown_token(),
    );
    let api = OrderApi::new(infra.db.clone(), watchers, infra.shutdown_token());
    let api = OrderServiceServer::new(api)
        .max_decoding_message_size(infra.settings().grpc_max_message_bytes);
    infra
        .server()
        .api(api)
        .consumer(events::consumer)
        .background(listener)
        .bind(config.grpc_addr)
        .await
}
