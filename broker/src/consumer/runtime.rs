//! The loop behind one queue: consume, batch, apply, ack.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
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

use super::{
    ConsumerConfig, EventLog,
    apply::{Applier, Outcome, Work},
};
use crate::{
    Amqp, BrokerError,
    envelope::delivery_count,
    metrics::ConsumerMetrics,
    supervise::{Restarts, Up, backoff_delay, sleep_or_shutdown},
    topology,
};

/// Consumes one `<prefix>.<consumer>.<source>` queue.
pub(super) struct QueueWorker {
    pub(super) consumer: Arc<str>,
    pub(super) source: &'static str,
    pub(super) applier: Applier,
    pub(super) amqp: Amqp,
    pub(super) config: ConsumerConfig,
    pub(super) event_log: Option<EventLog>,
    pub(super) metrics: ConsumerMetrics,
    pub(super) wakes: Option<crate::Outbox>,
    /// Failed deliveries waiting for their delayed requeue: while there are
    /// any, a batch is acked delivery by delivery, never with `multiple`
    /// (which would ack them too).
    pub(super) held: Arc<AtomicUsize>,
}

impl QueueWorker {
    pub(super) async fn run(self, shutdown: CancellationToken, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let what = format!(
            "consumer {} lost its queue of {} events; reconnecting",
            self.consumer, self.source
        );
        let mut restarts = Restarts::new(what, Duration::from_secs(10));
        while let Err(error) = self
            .consume(&shutdown, &mut ready, restarts.attempt())
            .await
        {
            if !restarts.wait(error, &shutdown).await {
                return;
            }
        }
    }

    async fn consume(
        &self,
        shutdown: &CancellationToken,
        ready: &mut Option<oneshot::Sender<()>>,
        up: Up,
    ) -> Result<(), BrokerError> {
        let config = &self.config;
        let mut channel = self.amqp.channel().await?;
        let keys: Vec<&str> = self.applier.routes.keys().copied().collect();
        let declared = topology::declare_queue(
            &channel,
            &config.prefix,
            &self.consumer,
            self.source,
            &keys,
            config.queue_args(self.amqp.nodes()),
        )
        .await;
        let queue = match declared {
            Ok(queue) => queue,
            Err(error) if topology::is_precondition_failed(&error) => {
                // Declared by an earlier release with other arguments; the
                // broker closed the channel. Use the queue as it is.
                let queue = topology::queue(&config.prefix, &self.consumer, self.source);
                tracing::warn!(%queue, %error, "queue exists with other arguments; using it as it is (delete it to take the new ones)");
                channel = self.amqp.channel().await?;
                topology::queue_depth(&channel, &queue).await?;
                queue
            }
            Err(error) => return Err(error),
        };
        if let Some(log) = &self.event_log {
            topology::declare_event_log(
                &channel,
                &config.prefix,
                &self.consumer,
                self.source,
                &keys,
                log.max_age.as_deref(),
            )
            .await?;
        }
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
        up.mark();
        // Deliveries held by an earlier channel went back with it.
        self.metrics.unacked.set(0.0);
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
            self.metrics.unacked.increment(batch.len() as f64);
            self.process(batch, shutdown).await?;
            if let Some(error) = failed {
                return Err(error.into());
            }
        }
        // Deliveries prefetched but not yet applied return to the queue.
        self.metrics.unacked.set(0.0);
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
            match self.applier.decode(&delivery) {
                Ok(decoded) => work.push(Work { delivery, decoded }),
                Err(reason) => {
                    tracing::error!(
                        routing_key = %delivery.routing_key,
                        message_id = ?delivery.properties.message_id(),
                        reason,
                        "message cannot be applied; dead-lettered"
                    );
                    self.metrics.dead_lettered.increment(1);
                    self.metrics.unacked.decrement(1.0);
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

        self.metrics.batch_size.record(work.len() as f64);
        let started = std::time::Instant::now();
        let applied = self.applier.apply_until_done(&work, shutdown).await;
        self.metrics
            .apply_seconds
            .record(started.elapsed().as_secs_f64());
        let Some(outcomes) = applied else {
            // Shutting down while the database is away: the deliveries return
            // to the queue when the channel closes.
            return Ok(());
        };

        // The batch is committed; nothing is acked yet. The fault suite crashes
        // here to prove redelivery is absorbed.
        #[cfg(feature = "failpoints")]
        fail::fail_point!("consumer-after-commit", |_| {
            tracing::error!("failpoint consumer-after-commit: exiting before the ack");
            std::process::exit(86)
        });

        if let Some(outbox) = &self.wakes
            && outcomes.iter().any(|o| matches!(o, Outcome::Applied))
        {
            outbox.committed();
        }

        // The common case, every delivery applied or a duplicate and none
        // held back from an earlier batch: one ack with `multiple` for the
        // batch (the deliveries behind it have higher tags and are untouched).
        let ack_at_once = AtomicUsize::load(&self.held, Ordering::Acquire) == 0
            && outcomes
                .iter()
                .all(|outcome| matches!(outcome, Outcome::Applied | Outcome::Duplicate));
        let ack_one = BasicAckOptions { multiple: false };
        let mut retry = Vec::new();
        for (item, outcome) in work.iter().zip(outcomes) {
            match outcome {
                Outcome::Applied => {
                    self.metrics.applied.increment(1);
                    let lag_ms = item
                        .decoded
                        .occurred_at
                        .map(|at| (Utc::now() - at).num_microseconds().unwrap_or(0) as f64 / 1e3);
                    tracing::debug!(event_id = %item.decoded.event_id, event_type = %item.delivery.routing_key, lag_ms, "event applied");
                    self.metrics.unacked.decrement(1.0);
                    if !ack_at_once {
                        item.delivery.acker.ack(ack_one).await?;
                    }
                }
                Outcome::Duplicate => {
                    self.metrics.duplicate.increment(1);
                    tracing::debug!(event_id = %item.decoded.event_id, "duplicate delivery skipped");
                    self.metrics.unacked.decrement(1.0);
                    if !ack_at_once {
                        item.delivery.acker.ack(ack_one).await?;
                    }
                }
                Outcome::Rejected(reason) => {
                    self.metrics.dead_lettered.increment(1);
                    tracing::error!(event_id = %item.decoded.event_id, event_type = %item.delivery.routing_key, reason, "handler rejected the event; dead-lettered");
                    self.metrics.unacked.decrement(1.0);
                    item.delivery
                        .acker
                        .reject(BasicRejectOptions { requeue: false })
                        .await?;
                }
                Outcome::Failed(error) => {
                    self.metrics.retried.increment(1);
                    tracing::warn!(event_id = %item.decoded.event_id, event_type = %item.delivery.routing_key, error, "handler failed; will be redelivered");
                    retry.push(&item.delivery);
                }
            }
        }
        if ack_at_once && let Some(last) = work.last() {
            last.delivery
                .acker
                .ack(BasicAckOptions { multiple: true })
                .await?;
        }
        for delivery in retry {
            // Requeue after a pause that grows with the attempts, without
            // holding up the deliveries behind it: the failing message stays
            // unacked (within the prefetch) until its nack. The queue's
            // delivery limit bounds the attempts, then dead-letters it.
            let delay = backoff_delay(
                delivery_count(&delivery.properties),
                self.config.max_retry_delay,
            );
            let acker = delivery.acker.clone();
            let shutdown = shutdown.clone();
            let unacked = self.metrics.unacked.clone();
            let held = self.held.clone();
            held.fetch_add(1, Ordering::AcqRel);
            tokio::spawn(async move {
                sleep_or_shutdown(delay, &shutdown).await;
                unacked.decrement(1.0);
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                if let Err(error) = acker.nack(requeue).await {
                    // The channel is gone: the broker requeues it anyway.
                    tracing::debug!(%error, "could not nack a failed delivery");
                }
                held.fetch_sub(1, Ordering::AcqRel);
            });
        }
        Ok(())
    }
}
