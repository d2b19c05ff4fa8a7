//! Exchange and queue names, and their declarations.
//!
//! * `<prefix>.<source>.events`: durable topic exchange of each publishing service.
//! * `<prefix>.<consumer>.<source>`: durable quorum queue of one consuming service
//!   for one source, bound to the routing keys it handles, with a delivery limit,
//!   replicated on up to [`QueueArgs::group_size`] nodes of a cluster, and by
//!   default with a single active consumer: every replica of the service
//!   subscribes, the broker delivers to one of them at a time and hands the
//!   queue to another when that one goes away, so one aggregate's events are
//!   applied in the order they were published.
//! * `<prefix>.<consumer>.dlx` / `<prefix>.<consumer>.dlq`: where that consumer's
//!   rejected or over-delivered messages go (fanout exchange, quorum queue),
//!   dead-lettered at least once.
//! * `<prefix>.<consumer>.log`: optionally, a stream keeping every event the
//!   consumer handles, for replay.
//!
//! Declarations are idempotent, so every process declares what it uses on every
//! (re)connect and start order does not matter. A queue that already exists
//! with other arguments (declared by an older release) is used as it is, with
//! a warning: RabbitMQ cannot change a queue's arguments in place.

use lapin::{
    Channel, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable},
};

use crate::BrokerError;

/// The topic exchange `source` publishes to.
pub fn exchange(prefix: &str, source: &str) -> String {
    format!("{prefix}.{source}.events")
}

/// The queue through which `consumer` receives events from `source`.
pub fn queue(prefix: &str, consumer: &str, source: &str) -> String {
    format!("{prefix}.{consumer}.{source}")
}

/// The dead-letter exchange of `consumer`'s queues.
pub fn dead_letter_exchange(prefix: &str, consumer: &str) -> String {
    format!("{prefix}.{consumer}.dlx")
}

/// The dead-letter queue of `consumer`.
pub fn dead_letter_queue(prefix: &str, consumer: &str) -> String {
    format!("{prefix}.{consumer}.dlq")
}

/// The event log of `consumer`: a stream of every event it handles, kept
/// for replay (e.g. rebuilding a read model).
pub fn event_log(prefix: &str, consumer: &str) -> String {
    format!("{prefix}.{consumer}.log")
}

/// Declares `consumer`'s event log (a RabbitMQ stream, entries older than
/// `max_age` dropped if given, e.g. `"30D"`) and binds it to `source`'s
/// `routing_keys`, so that from now on it keeps every such event.
pub async fn declare_event_log(
    channel: &Channel,
    prefix: &str,
    consumer: &str,
    source: &str,
    routing_keys: &[&str],
    max_age: Option<&str>,
) -> Result<String, BrokerError> {
    declare_exchange(channel, prefix, source).await?;
    let name = event_log(prefix, consumer);
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("stream".into()),
    );
    if let Some(max_age) = max_age {
        args.insert("x-max-age".into(), AMQPValue::LongString(max_age.into()));
    }
    declare_durable(channel, &name, args).await?;
    for key in routing_keys {
        channel
            .queue_bind(
                name.clone().into(),
                exchange(prefix, source).into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(name)
}

/// Declares `source`'s durable topic exchange.
pub async fn declare_exchange(
    channel: &Channel,
    prefix: &str,
    source: &str,
) -> Result<(), BrokerError> {
    channel
        .exchange_declare(
            exchange(prefix, source).into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// How a consumer's quorum queues are declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueArgs {
    /// Deliveries of a message before it is dead-lettered (`x-delivery-limit`).
    pub delivery_limit: u32,
    /// Nodes a new quorum queue is replicated on
    /// (`x-quorum-initial-group-size`); `None` or 1 leaves it to the broker
    /// (one node's cluster, or its default of every node).
    pub group_size: Option<u32>,
    /// Deliver to one consumer at a time (`x-single-active-consumer`), so
    /// events reach handlers in publish order even with many replicas.
    pub single_active: bool,
}

impl QueueArgs {
    /// Single active consumer, the broker's replication default.
    pub fn new(delivery_limit: u32) -> Self {
        QueueArgs {
            delivery_limit,
            group_size: None,
            single_active: true,
        }
    }

    fn quorum(&self) -> FieldTable {
        let mut args = quorum_args();
        if let Some(size) = self.group_size.filter(|size| *size > 1) {
            args.insert(
                "x-quorum-initial-group-size".into(),
                AMQPValue::LongLongInt(i64::from(size)),
            );
        }
        args
    }
}

/// Declares `consumer`'s queue for `source` (and the exchange, dead-letter
/// exchange and dead-letter queue it needs) and binds it to `routing_keys`.
/// Returns the queue's name. If a queue exists with other arguments the
/// broker refuses ([`is_precondition_failed`]) and closes the channel.
pub async fn declare_queue(
    channel: &Channel,
    prefix: &str,
    consumer: &str,
    source: &str,
    routing_keys: &[&str],
    queue_args: QueueArgs,
) -> Result<String, BrokerError> {
    declare_exchange(channel, prefix, source).await?;
    let dlx = dead_letter_exchange(prefix, consumer);
    channel
        .exchange_declare(
            dlx.clone().into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let dlq = dead_letter_queue(prefix, consumer);
    declare_durable(channel, &dlq, queue_args.quorum()).await?;
    channel
        .queue_bind(
            dlq.into(),
            dlx.clone().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    let name = queue(prefix, consumer, source);
    let mut args = queue_args.quorum();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(dlx.into()),
    );
    // Dead-letter at least once: the message leaves the queue only when the DLQ has it.
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(i64::from(queue_args.delivery_limit)),
    );
    if queue_args.single_active {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    declare_durable(channel, &name, args).await?;
    for key in routing_keys {
        channel
            .queue_bind(
                name.clone().into(),
                exchange(prefix, source).into(),
                (*key).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(name)
}

/// True when the broker refused a declaration because the queue or exchange
/// exists with other arguments (`PRECONDITION_FAILED`; the channel is closed).
pub fn is_precondition_failed(error: &BrokerError) -> bool {
    refused_with(error, AMQPSoftError::PRECONDITIONFAILED)
}

/// True when the broker answered that the queue or exchange does not exist
/// (`NOT_FOUND`; the channel is closed).
pub fn is_not_found(error: &BrokerError) -> bool {
    refused_with(error, AMQPSoftError::NOTFOUND)
}

fn refused_with(error: &BrokerError, code: AMQPSoftError) -> bool {
    matches!(
        error,
        BrokerError::Amqp(error)
            if matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp)
                if *amqp.kind() == AMQPErrorKind::Soft(code))
    )
}

/// Messages ready and consumers of queue `name`, declaring nothing
/// (`passive`); fails (and the broker closes the channel) if it does not exist.
pub async fn queue_depth(channel: &Channel, name: &str) -> Result<(u32, u32), BrokerError> {
    let declared = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((declared.message_count(), declared.consumer_count()))
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn declare_durable(
    channel: &Channel,
    name: &str,
    args: FieldTable,
) -> Result<(), BrokerError> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await?;
    Ok(())
}

/// Deletes every exchange and queue that `consumers` and `sources` would have
/// declared under `prefix`; deleting what does not exist is not an error.
/// For tests and for tearing a deployment down.
pub async fn teardown(
    channel: &Channel,
    prefix: &str,
    consumers: &[&str],
    sources: &[&str],
) -> Result<(), BrokerError> {
    for consumer in consumers {
        for source in sources {
            channel
                .queue_delete(
                    queue(prefix, consumer, source).into(),
                    QueueDeleteOptions::default(),
                )
                .await?;
        }
        for name in [
            dead_letter_queue(prefix, consumer),
            event_log(prefix, consumer),
        ] {
            channel
                .queue_delete(name.into(), QueueDeleteOptions::default())
                .await?;
        }
        channel
            .exchange_delete(
                dead_letter_exchange(prefix, consumer).into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    for source in sources {
        channel
            .exchange_delete(
                exchange(prefix, source).into(),
                ExchangeDeleteOptions::default(),
            )
            .await?;
    }
    Ok(())
}
