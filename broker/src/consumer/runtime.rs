//! The loop behind one queue: consume, batch, apply, ack.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use diesel::ExpressionMethods;
use diesel_async::{AsyncConnection, RunQueryDsl};
use futures_util::{FutureExt, StreamExt};
use lapin::{
    message::Delivery,
    options::{
        BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{ConsumerConfig, HandlerError, Job, Meta, Route};
use crate::{
    Amqp, BrokerError, TraceContext, backoff_delay,
    envelope::{TRACEPARENT, delivery_count, header_str},
    pg::{self, PgPool},
    schema::inbox,
    sleep_or_shutdown, topology,
};

/// Consumes one `<prefix>.<consumer>.<source>` queue.
pub(super) struct QueueWorker {
    pub(super) consumer: Arc<str>,
    pub(super) source: &'static str,
    pub(super) routes: BTreeMap<&'static str, Arc<dyn Route>>,
    pub(super) amqp: Amqp,
    pub(super) pool: PgPool,
    pub(super) config: ConsumerConfig,
}

/// A delivery that decoded, ready to apply.
struct Work {
    delivery: Delivery,
    decoded: Decoded,
}

struct Decoded {
    event_id: Uuid,
    occurred_at: Option<DateTime<Utc>>,
    job: Box<dyn Job>,
}

/// What became of one delivery in a batch.
#[derive(Clone, Debug)]
enum Outcome {
    Applied,
    Duplicate,
    Rejected(String),
    Failed(String),
}

/// Why a batch transaction was abandoned.
enum Abort {
    /// The database is unreachable: retry the whole batch later.
    Unavailable(diesel::result::Error),
    /// Any other failure of the transaction itself (e.g. at commit).
    Database(diesel::result::Error),
}

impl From<diesel::result::Error> for Abort {
    fn from(error: diesel::result::Error) -> Self {
        if pg::is_connection_error(&error) {
            Abort::Unavailable(error)
        } else {
            Abort::Database(error)
        }
    }
}

impl QueueWorker {
    pub(super) async fn run(self, shutdown: CancellationToken, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut attempt = 0;
        loop {
            match self.consume(&shutdown, &mut ready, &mut attempt).await {
                Ok(()) => return,
                Err(error) => {
                    let delay = backoff_delay(attempt, Duration::from_secs(10));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, retry_in = ?delay, consumer = %self.consumer, source = self.source, "consumer lost its queue; reconnecting");
                    if !sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn consume(
        &self,
        shutdown: &CancellationToken,
        ready: &mut Option<oneshot::Sender<()>>,
        attempt: &mut u32,
    ) -> Result<(), BrokerError> {
        let config = &self.config;
        let channel = self.amqp.channel().await?;
        let keys: Vec<&str> = self.routes.keys().copied().collect();
        let queue = topology::declare_queue(
            &channel,
            &config.prefix,
            &self.consumer,
            self.source,
            &keys,
            config.delivery_limit,
        )
        .await?;
        channel
            .basic_qos(config.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        *attempt = 0;
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        tracing::info!(%queue, "consuming");

        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                next = deliveries.next() => match next {
                    Some(delivery) => delivery?,
                    None => return Err(BrokerError::ConsumerCancelled),
                },
            };
            // Whatever else has already arrived joins the same transaction.
            let mut batch = vec![first];
            let mut failed = None;
            while batch.len() < config.max_batch {
                match deliveries.next().now_or_never() {
                    Some(Some(Ok(delivery))) => batch.push(delivery),
                    Some(Some(Err(error))) => {
                        failed = Some(error);
                        break;
                    }
                    Some(None) | None => break,
                }
            }
            self.process(batch, shutdown).await?;
            if let Some(error) = failed {
                return Err(error.into());
            }
        }
        // Deliveries prefetched but not yet applied return to the queue.
        if let Err(error) = channel.close(200, "consumer shutting down".into()).await {
            tracing::debug!(%error, "channel already closed");
        }
        Ok(())
    }

    async fn process(
        &self,
        batch: Vec<Delivery>,
        shutdown: &CancellationToken,
    ) -> Result<(), BrokerError> {
        let mut work = Vec::with_capacity(batch.len());
        for delivery in batch {
            match self.decode(&delivery) {
                Ok(decoded) => work.push(Work { delivery, decoded }),
                Err(reason) => {
                    tracing::error!(
                        routing_key = %delivery.routing_key,
                        message_id = ?delivery.properties.message_id(),
                        reason,
                        "message cannot be applied; dead-lettered"
                    );
                    delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
            }
        }
        if work.is_empty() {
            return Ok(());
        }

        let Some(outcomes) = self.apply_until_done(&work, shutdown).await else {
            // Shutting down while the database is away: the deliveries return
            // to the queue when the channel closes.
            return Ok(());
        };

        let mut retry = Vec::new();
        for (item, outcome) in work.iter().zip(outcomes) {
            match outcome {
                Outcome::Applied => {
                    let lag_ms = item
                        .decoded
                        .occurred_at
                        .map(|at| (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1e3);
                    tracing::debug!(event_id = %item.decoded.event_id, event_type = %item.delivery.routing_key, lag_ms, "event applied");
                    item.delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Outcome::Duplicate => {
                    tracing::debug!(event_id = %item.decoded.event_id, "duplicate delivery skipped");
                    item.delivery.acker.ack(BasicAckOptions::default()).await?;
                }
                Outcome::Rejected(reason) => {
                    tracing::error!(event_id = %item.decoded.event_id, event_type = %item.delivery.routing_key, reason, "handler rejected the event; dead-lettered");
                    item.delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
                Outcome::Failed(error) => {
                    tracing::warn!(event_id = %item.decoded.event_id, event_type = %item.delivery.routing_key, error, "handler failed; will be redelivered");
                    retry.push(&item.delivery);
                }
            }
        }
        if let Some(attempts) = retry.iter().map(|d| delivery_count(&d.properties)).max() {
            // Requeue after a pause; the queue's delivery limit bounds the retries.
            sleep_or_shutdown(
                backoff_delay(attempts, self.config.max_retry_delay),
                shutdown,
            )
            .await;
            for delivery in retry {
                delivery
                    .acker
                    .nack(BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    })
                    .await?;
            }
        }
        Ok(())
    }

    fn decode(&self, delivery: &Delivery) -> Result<Decoded, String> {
        let key = delivery.routing_key.as_str();
        let route = self
            .routes
            .get(key)
            .ok_or_else(|| format!("no handler for `{key}`"))?;
        let properties = &delivery.properties;
        let event_id = properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok())
            .ok_or("missing or non-UUID message_id")?;
        let occurred_at = header_str(properties, "ce-time")
            .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
            .map(|time| time.with_timezone(&Utc));
        let trace = TraceContext::continue_or_start(header_str(properties, TRACEPARENT));
        let job = route
            .decode(
                &delivery.data,
                Meta {
                    event_id,
                    occurred_at,
                    trace,
                },
            )
            .map_err(|error| format!("undecodable payload: {error}"))?;
        Ok(Decoded {
            event_id,
            occurred_at,
            job,
        })
    }

    /// Applies the batch, waiting out database outages; `None` on shutdown.
    async fn apply_until_done(
        &self,
        work: &[Work],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Outcome>> {
        let mut attempt = 0;
        loop {
            match self.apply(work).await {
                Ok(outcomes) => return Some(outcomes),
                Err(error) => {
                    let delay = backoff_delay(attempt, Duration::from_secs(5));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, retry_in = ?delay, "database unavailable; batch waits");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// One transaction: per delivery a savepoint with the inbox insert and the
    /// handler. Errs only when the database is unreachable.
    async fn apply(&self, work: &[Work]) -> Result<Vec<Outcome>, BrokerError> {
        let mut conn = self.pool.get().await?;
        let result = conn
            .transaction::<_, Abort, _>(async |conn| {
                let mut outcomes = Vec::with_capacity(work.len());
                for item in work {
                    // A savepoint: a failing handler undoes only its own writes.
                    let applied = conn
                        .transaction::<_, HandlerError, _>(async |conn| {
                            let fresh = diesel::insert_into(inbox::table)
                                .values((
                                    inbox::message_id.eq(item.decoded.event_id),
                                    inbox::event_type.eq(item.delivery.routing_key.as_str()),
                                ))
                                .on_conflict_do_nothing()
                                .execute(conn)
                                .await?
                                == 1;
                            if fresh {
                                item.decoded.job.run(conn).await?;
                            }
                            Ok(fresh)
                        })
                        .await;
                    outcomes.push(match applied {
                        Ok(true) => Outcome::Applied,
                        Ok(false) => Outcome::Duplicate,
                        Err(HandlerError::Reject(reason)) => Outcome::Rejected(reason),
                        Err(HandlerError::Database(error)) if pg::is_connection_error(&error) => {
                            return Err(Abort::Unavailable(error));
                        }
                        Err(error @ HandlerError::Database(_)) => {
                            Outcome::Failed(error.to_string())
                        }
                    });
                }
                Ok(outcomes)
            })
            .await;
        match result {
            Ok(outcomes) => Ok(outcomes),
            Err(Abort::Unavailable(error)) => Err(error.into()),
            Err(Abort::Database(error)) => {
                Ok(vec![
                    Outcome::Failed(format!("transaction failed: {error}"));
                    work.len()
                ])
            }
        }
    }
}
