//! Wires the API, the projection and the composer to the shared plumbing.

use dbps::reporting::v1::reporting_service_server::ReportingServiceServer;
use platform::{App, Infra};

use crate::{api::ReportingApi, compose::Composer, config::Config, events};

/// Builds the reporting service on its connections and binds its port. It
/// publishes nothing, so it runs no outbox relay.
pub async fn build(infra: Infra, config: Config) -> anyhow::Result<App> {
    let composer = Composer::new(&config.extra, platform::tls::client(infra.settings())?)?;
    let api = ReportingServiceServer::new(ReportingApi::new(infra.db.pool().clone(), composer))
        .max_decoding_message_size(infra.settings().grpc_max_message_bytes);
    let max_age = config.extra.event_log_max_age.clone();
    infra
        .server()
        .api(api)
        // It writes no events: its consumer needs no outbox.
        .consumer(|_| events::consumer(max_age))
        .without_relay()
        .bind(config.grpc_addr)
        .await
}
