//! `reporting-service rebuild`: the read models are only a projection of the
//! event log, so they can be dropped and built again.
//!
//! In one transaction every read-model table and the inbox are emptied; then
//! the event log (`<prefix>.reporting.log`, a RabbitMQ stream bound to every
//! event the service handles since it first started) is replayed from its
//! first entry through the same handlers. A live reporting service may keep
//! running meanwhile: both paths go through the inbox, so each event is
//! applied once, and the handlers converge whatever the order.

use std::time::Duration;

use diesel_async::SimpleAsyncConnection;
use platform::Infra;

use crate::{
    config::{Config, ReportingCommand},
    events,
};

/// Stop replaying once the log has been quiet this long.
const IDLE: Duration = Duration::from_secs(2);

/// Runs a reporting-only command.
pub async fn command(
    command: ReportingCommand,
    infra: Infra,
    config: Config,
) -> anyhow::Result<()> {
    match command {
        ReportingCommand::Rebuild => {
            let stats = rebuild(&infra, config.extra.event_log_max_age.clone(), IDLE).await?;
            tracing::info!(?stats, "read models rebuilt");
            Ok(())
        }
    }
}

/// Empties the read models and replays the event log into them.
pub async fn rebuild(
    infra: &Infra,
    event_log_max_age: Option<String>,
    idle: Duration,
) -> anyhow::Result<broker::ReplayStats> {
    let mut conn = infra.db.pool().get().await?;
    conn.batch_execute(
        "BEGIN;
         TRUNCATE customer_view, product_view, order_view, order_line_view, sales_by_sku, inbox;
         COMMIT;",
    )
    .await?;
    drop(conn);
    let config = infra.settings().consumer_config();
    let stats = events::consumer(event_log_max_age)
        .replay(infra.amqp(), infra.db.pool().clone(), &config, idle)
        .await?;
    Ok(stats)
}
