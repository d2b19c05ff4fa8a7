//! Applying a consumer's event log again, from its first entry.

use std::{collections::BTreeMap, time::Duration};

use futures_util::{FutureExt, StreamExt};
use lapin::options::BasicAckOptions;
use tokio_util::sync::CancellationToken;

use super::{
    Consumer, ConsumerConfig, ReplayStats,
    apply::{Applier, Outcome, Work},
};
use crate::{Amqp, BrokerError, event_log, pg::PgPool, topology};

impl Consumer {
    /// Applies every event of the consumer's event log (see
    /// [`Consumer::with_event_log`]) again, oldest first, through the same
    /// handlers and the same inbox: events the inbox already holds are
    /// skipped, so a replay after clearing the inbox and the state the
    /// handlers build rebuilds that state, and a replay beside the live
    /// consumer is harmless. Returns once no entry arrived for `idle`.
    pub async fn replay(
        self,
        amqp: &Amqp,
        pool: PgPool,
        config: &ConsumerConfig,
        idle: Duration,
    ) -> Result<ReplayStats, BrokerError> {
        let log = topology::event_log(&config.prefix, &self.name);
        let routes: BTreeMap<_, _> = self.routes.into_values().flatten().collect();
        let applier = Applier { routes, pool };

        let channel = amqp.channel().await?;
        let mut deliveries =
            event_log::subscribe(&channel, &log, event_log::Start::First, config.prefetch).await?;

        let never = CancellationToken::new();
        let mut stats = ReplayStats::default();
        while let Ok(next) = tokio::time::timeout(idle, deliveries.next()).await {
            let Some(first) = next else {
                return Err(BrokerError::ConsumerCancelled);
            };
            let mut batch = vec![first?];
            while batch.len() < config.max_batch {
                match deliveries.next().now_or_never() {
                    Some(Some(delivery)) => batch.push(delivery?),
                    _ => break,
                }
            }
            let mut work = Vec::with_capacity(batch.len());
            for delivery in batch {
                match applier.decode(&delivery) {
                    Ok(decoded) => work.push(Work { delivery, decoded }),
                    Err(reason) => {
                        tracing::warn!(routing_key = %delivery.routing_key, reason, "log entry cannot be applied; skipped");
                        stats.failed += 1;
                        delivery.acker.ack(BasicAckOptions::default()).await?;
                    }
                }
            }
            let outcomes = applier
                .apply_until_done(&work, &never)
                .await
                .unwrap_or_default();
            for (item, outcome) in work.iter().zip(outcomes) {
                match outcome {
                    Outcome::Applied => stats.applied += 1,
                    Outcome::Duplicate => stats.duplicates += 1,
                    Outcome::Rejected(reason) | Outcome::Failed(reason) => {
                        tracing::warn!(event_id = %item.decoded.event_id, reason, "log entry not applied; skipped");
                        stats.failed += 1;
                    }
                }
                item.delivery.acker.ack(BasicAckOptions::default()).await?;
            }
        }
        if let Err(error) = channel.close(200, "replay done".into()).await {
            tracing::debug!(%error, "channel already closed");
        }
        tracing::info!(?stats, log, "event log replayed");
        Ok(stats)
    }
}
