//! Exchange and queue names, and their declarations.
//!
//! * `<prefix>.<source>.events`: durable topic exchange of each publishing service.
//! * `<prefix>.<consumer>.<source>`: durable quorum queue of one consuming service
//!   for one source, bound to the routing keys it handles, with a delivery limit.
//! * `<prefix>.<consumer>.dlx` / `<prefix>.<consumer>.dlq`: where that consumer's
//!   rejected or over-delivered messages go (fanout exchange, quorum queue),
//!   dead-lettered at least once.
//! * `<prefix>.<consumer>.log`: optionally, a stream keeping every event the
//!   consumer handles, for replay.
//!
//! Declarations are idempotent, so every process declares what it uses on every
//! (re)connect and start order does not matter.

use lapin::{
    Channel, ExchangeKind,
    options::{
        ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
        QueueDeleteOptions,
    },
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

/// Declares `consumer`'s queue for `source` (and the exchange, dead-letter
/// exchange and dead-letter queue it needs) and binds it to `routing_keys`.
/// Returns the queue's name.
pub async fn declare_queue(
    channel: &Channel,
    prefix: &str,
    consumer: &str,
    source: &str,
    routing_keys: &[&str],
    delivery_limit: u32,
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
    declare_durable(channel, &dlq, quorum_args()).await?;
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
    let mut args = quorum_args();
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
        AMQPValue::LongLongInt(i64::from(delivery_limit)),
    );
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
