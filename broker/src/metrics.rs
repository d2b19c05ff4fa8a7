//! Prometheus-style metrics of the relay and the consumers, named after the
//! service (`order_relay_published_total`, …). Recorded through the `metrics`
//! facade: whatever recorder the process installs exports them.

use metrics::{Counter, Gauge, Histogram};

/// The relay's metrics.
#[derive(Clone)]
pub(crate) struct RelayMetrics {
    pub published: Counter,
    pub failed: Counter,
    pub nacked: Counter,
    pub confirm_seconds: Histogram,
    pub backlog: Gauge,
    pub oldest_age_seconds: Gauge,
}

impl RelayMetrics {
    pub(crate) fn new(service: &str) -> Self {
        RelayMetrics {
            published: metrics::counter!(format!("{service}_relay_published_total")),
            failed: metrics::counter!(format!("{service}_relay_failed_total")),
            nacked: metrics::counter!(format!("{service}_relay_nacked_total")),
            confirm_seconds: metrics::histogram!(format!(
                "{service}_relay_confirm_duration_seconds"
            )),
            backlog: metrics::gauge!(format!("{service}_outbox_backlog")),
            oldest_age_seconds: metrics::gauge!(format!(
                "{service}_outbox_oldest_unpublished_age_seconds"
            )),
        }
    }
}

/// One consumer queue's metrics.
#[derive(Clone)]
pub(crate) struct ConsumerMetrics {
    pub applied: Counter,
    pub duplicate: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    pub apply_seconds: Histogram,
    pub batch_size: Histogram,
    /// Deliveries this process holds and has not settled yet.
    pub unacked: Gauge,
}

impl ConsumerMetrics {
    pub(crate) fn new(service: &str, source: &str) -> Self {
        let deliveries = format!("{service}_consumer_deliveries_total");
        let outcome = |outcome: &'static str| metrics::counter!(deliveries.clone(), "source" => source.to_owned(), "outcome" => outcome);
        ConsumerMetrics {
            applied: outcome("applied"),
            duplicate: outcome("duplicate"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            apply_seconds: metrics::histogram!(format!("{service}_consumer_apply_duration_seconds"), "source" => source.to_owned()),
            batch_size: metrics::histogram!(format!("{service}_consumer_batch_size"), "source" => source.to_owned()),
            unacked: metrics::gauge!(format!("{service}_queue_messages_unacked"), "source" => source.to_owned()),
        }
    }
}

/// What the broker says of one consumer's queues, refreshed by
/// [`crate::consumer`]'s queue watch.
pub(crate) struct QueueGauges {
    pub ready: Gauge,
    pub consumers: Gauge,
}

impl QueueGauges {
    pub(crate) fn new(service: &str, source: &str) -> Self {
        QueueGauges {
            ready: metrics::gauge!(format!("{service}_queue_messages_ready"), "source" => source.to_owned()),
            consumers: metrics::gauge!(format!("{service}_queue_consumers"), "source" => source.to_owned()),
        }
    }

    /// The depth of `service`'s dead-letter queue.
    pub(crate) fn dead_letters(service: &str) -> Gauge {
        metrics::gauge!(format!("{service}_dlq_messages"))
    }
}
