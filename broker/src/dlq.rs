//! Operating on dead-letter queues: browse, replay, purge.
//!
//! Each consumer has one dead-letter queue, `<prefix>.<consumer>.dlq` (see
//! [`topology`]), where its queues put what it could not apply: undecodable
//! messages and those its handler rejected (reason `rejected`), and those that
//! kept failing until the queue's delivery limit (reason `delivery_limit`).
//! RabbitMQ records why in the `x-death` header, which [`deaths`] parses.
//!
//! * [`list`] browses without losing anything: it fetches every message with
//!   `basic.get` and without acknowledging any, then closes its channel, which
//!   returns them all to the queue with every header they had.
//! * [`replay`] puts dead letters back into the very queue they died in, and
//!   only there: published to the default exchange with their original routing
//!   key (the consumer routes on it) and that queue in the `BCC` header, with
//!   all their properties (`message_id` above all, so the consumer's inbox
//!   still deduplicates) and publisher confirms. Each is removed from the
//!   dead-letter queue only after its republish was confirmed, so a crash in
//!   between leaves a copy in both places, never in neither (the inbox absorbs
//!   the duplicate).
//! * [`purge`] empties a dead-letter queue.
//!
//! Browsing returns messages to the queue, which a quorum queue counts as a
//! redelivery (`x-delivery-count`; a replay does not carry it along). The
//! dead-letter queues declare no delivery limit, so on RabbitMQ 3.x this costs
//! nothing. RabbitMQ 4 gives quorum queues a default limit (20), and the
//! dead-letter queues have no dead-letter exchange of their own: there, a
//! message browsed that often may be dropped unless a policy lifts the limit.

use std::{collections::BTreeMap, time::Duration};

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties, Channel, Confirmation,
    message::Delivery,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueuePurgeOptions,
    },
    types::{AMQPValue, FieldArray, FieldTable, ShortString},
};

use crate::{Amqp, BrokerError, envelope::header_str, topology};

/// Header in which RabbitMQ records each dead-lettering of a message.
pub const X_DEATH: &str = "x-death";
/// Header naming the exchange a message was published to before it first died.
const X_FIRST_DEATH_EXCHANGE: &str = "x-first-death-exchange";
/// A quorum queue's count of a message's earlier deliveries; the dead-letter
/// queue's count says only how often the message was browsed, so a replay
/// does not carry it back.
const X_DELIVERY_COUNT: &str = "x-delivery-count";
/// Sender-selected distribution: extra routing keys, not passed on to consumers.
const BCC: &str = "BCC";
/// Longest wait for browsed messages to be back in their queue.
const RETURN_WAIT: Duration = Duration::from_secs(5);

/// Why RabbitMQ dead-lettered a message (`reason` of an `x-death` entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeathReason {
    /// Rejected or nacked without requeue: the consumer could not decode the
    /// message, or its handler refused the event.
    Rejected,
    /// Delivered as often as the queue's `x-delivery-limit` allows, failing
    /// every time.
    DeliveryLimit,
    /// Its time to live ran out.
    Expired,
    /// The queue was over its length limit.
    MaxLen,
    /// A reason this version does not know.
    Other(String),
}

impl DeathReason {
    /// Parses RabbitMQ's name of the reason.
    pub fn parse(reason: &str) -> Self {
        match reason {
            "rejected" => DeathReason::Rejected,
            "delivery_limit" => DeathReason::DeliveryLimit,
            "expired" => DeathReason::Expired,
            "maxlen" => DeathReason::MaxLen,
            other => DeathReason::Other(other.to_owned()),
        }
    }

    /// RabbitMQ's name of the reason.
    pub fn as_str(&self) -> &str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::DeliveryLimit => "delivery_limit",
            DeathReason::Expired => "expired",
            DeathReason::MaxLen => "maxlen",
            DeathReason::Other(other) => other,
        }
    }
}

impl std::fmt::Display for DeathReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One entry of `x-death`: how often a message died in one queue for one reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Death {
    /// Why.
    pub reason: DeathReason,
    /// How many times, in this queue for this reason.
    pub count: u64,
    /// The queue it died in.
    pub queue: String,
    /// The exchange it had been published to.
    pub exchange: String,
    /// The routing keys it had been published with.
    pub routing_keys: Vec<String>,
    /// When it first died so, in whole seconds (RabbitMQ counts later deaths
    /// in the same queue for the same reason in `count` and keeps this time).
    pub time: Option<DateTime<Utc>>,
}

/// Parses the `x-death` header of `properties`: most recent death first, as
/// RabbitMQ keeps it. Empty when the header is absent; entries without a
/// queue are skipped.
pub fn deaths(properties: &BasicProperties) -> Vec<Death> {
    let Some(AMQPValue::FieldArray(entries)) = header(properties, X_DEATH) else {
        return Vec::new();
    };
    entries
        .as_slice()
        .iter()
        .filter_map(|entry| match entry {
            AMQPValue::FieldTable(table) => death(table),
            _ => None,
        })
        .collect()
}

fn death(table: &FieldTable) -> Option<Death> {
    let field = |key: &str| table.inner().get(&ShortString::from(key));
    let queue = field("queue").and_then(text)?;
    Some(Death {
        reason: DeathReason::parse(&field("reason").and_then(text).unwrap_or_default()),
        count: field("count").and_then(integer).unwrap_or(0),
        queue,
        exchange: field("exchange").and_then(text).unwrap_or_default(),
        routing_keys: match field("routing-keys") {
            Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().filter_map(text).collect(),
            _ => Vec::new(),
        },
        time: match field("time") {
            Some(AMQPValue::Timestamp(seconds)) => i64::try_from(*seconds)
                .ok()
                .and_then(|seconds| DateTime::from_timestamp(seconds, 0)),
            _ => None,
        },
    })
}

fn header<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a AMQPValue> {
    properties
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(key))
}

fn text(value: &AMQPValue) -> Option<String> {
    match value {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_owned()),
        _ => None,
    }
}

fn integer(value: &AMQPValue) -> Option<u64> {
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// A message in a dead-letter queue, with everything it carried.
#[derive(Clone, Debug)]
pub struct DeadLetter {
    /// Its AMQP `message_id` (the event ID, the consumers' deduplication key).
    pub message_id: Option<String>,
    /// The routing key it was published with (the event type).
    pub routing_key: String,
    /// The exchange it was originally published to (`<prefix>.<source>.events`).
    pub source_exchange: String,
    /// Every time it died, most recent first (`x-death`).
    pub deaths: Vec<Death>,
    /// All its properties and headers, exactly as the dead-letter queue holds them.
    pub properties: BasicProperties,
    /// Its payload.
    pub payload: Vec<u8>,
}

impl DeadLetter {
    fn from_delivery(delivery: &Delivery) -> Self {
        let properties = delivery.properties.clone();
        let deaths = deaths(&properties);
        let source_exchange = header_str(&properties, X_FIRST_DEATH_EXCHANGE)
            .map(str::to_owned)
            .or_else(|| deaths.last().map(|death| death.exchange.clone()))
            .unwrap_or_else(|| delivery.exchange.as_str().to_owned());
        DeadLetter {
            message_id: properties
                .message_id()
                .as_ref()
                .map(|id| id.as_str().to_owned()),
            routing_key: delivery.routing_key.as_str().to_owned(),
            source_exchange,
            deaths,
            properties,
            payload: delivery.data.clone(),
        }
    }

    /// Its most recent death, if RabbitMQ recorded any.
    pub fn last_death(&self) -> Option<&Death> {
        self.deaths.first()
    }

    /// The queue it last died in: where [`replay`] puts it back.
    pub fn died_in(&self) -> Option<&str> {
        self.last_death().map(|death| death.queue.as_str())
    }

    /// A header as text, if present and textual.
    pub fn header(&self, key: &str) -> Option<&str> {
        header_str(&self.properties, key)
    }

    /// Its CloudEvents type (`cloudEvents_type`, or `ce-type` from an
    /// earlier release: the protobuf message name).
    pub fn ce_type(&self) -> Option<&str> {
        self.ce_attribute("type")
    }

    /// Its CloudEvents attribute `name` (`id`, `time`, …), under either
    /// header name.
    pub fn ce_attribute(&self, name: &str) -> Option<&str> {
        crate::envelope::ce_attribute(&self.properties, name)
    }

    /// Whether its `message_id` is `id`.
    pub fn has_id(&self, id: &str) -> bool {
        self.message_id.as_deref() == Some(id)
    }
}

/// What a dead-letter queue holds, as [`list`] found it.
#[derive(Clone, Debug)]
pub struct Listing {
    /// The dead-letter queue's name.
    pub queue: String,
    /// False when the queue does not exist (its consumer never started under
    /// this prefix); `messages` is then empty.
    pub declared: bool,
    /// Its messages, oldest first.
    pub messages: Vec<DeadLetter>,
}

/// Browses `consumer`'s dead-letter queue under `prefix` without removing
/// anything: every message is fetched unacknowledged, then the channel is
/// closed and they all return to the queue. Returns once they are back (or
/// after a few seconds if something else takes them meanwhile).
pub async fn list(amqp: &Amqp, prefix: &str, consumer: &str) -> Result<Listing, BrokerError> {
    let queue = topology::dead_letter_queue(prefix, consumer);
    if message_count(amqp, &queue).await?.is_none() {
        return Ok(Listing {
            queue,
            declared: false,
            messages: Vec::new(),
        });
    }
    let channel = amqp.channel().await?;
    let mut messages = Vec::new();
    let taken = async {
        while let Some(message) = get(&channel, &queue).await? {
            messages.push(DeadLetter::from_delivery(&message));
        }
        Ok::<_, BrokerError>(())
    }
    .await;
    // Unacknowledged, they all go back to the queue.
    close(&channel, "browsed").await;
    taken?;
    wait_until_back(amqp, &queue, messages.len()).await?;
    Ok(Listing {
        queue,
        declared: true,
        messages,
    })
}

/// A dead letter put back into its queue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayed {
    /// Its `message_id`.
    pub message_id: Option<String>,
    /// Its routing key (event type).
    pub routing_key: String,
    /// The queue it went back to.
    pub queue: String,
}

/// A dead letter [`replay`] left where it was, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Its `message_id`.
    pub message_id: Option<String>,
    /// Why it stayed.
    pub reason: String,
}

/// What [`replay`] did to one dead-letter queue.
#[derive(Clone, Debug, Default)]
pub struct ReplayReport {
    /// The dead-letter queue.
    pub queue: String,
    /// False when the queue does not exist; nothing was done.
    pub declared: bool,
    /// Dead letters republished (confirmed) and removed from the queue.
    pub replayed: Vec<Replayed>,
    /// Dead letters that stayed in the queue: no recorded death, a death queue
    /// that is not this consumer's, or a republish the broker did not confirm.
    pub skipped: Vec<Skipped>,
}

/// Republishes dead letters of `consumer` to the queue each died in, with all
/// its properties and headers, waits for the broker's confirm, and only then
/// removes it from the dead-letter queue. With `only`, just the first dead
/// letter whose `message_id` is `only`; otherwise every message the queue
/// held when the replay began (ones that die again meanwhile wait for the
/// next replay).
pub async fn replay(
    amqp: &Amqp,
    prefix: &str,
    consumer: &str,
    only: Option<&str>,
) -> Result<ReplayReport, BrokerError> {
    let queue = topology::dead_letter_queue(prefix, consumer);
    let mut report = ReplayReport {
        queue: queue.clone(),
        ..Default::default()
    };
    let Some(present) = message_count(amqp, &queue).await? else {
        return Ok(report);
    };
    report.declared = true;
    let channel = amqp.channel().await?;
    let mut passed_over = 0;
    let result = async {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for _ in 0..present {
            let Some(message) = get(&channel, &queue).await? else {
                break;
            };
            let letter = DeadLetter::from_delivery(&message);
            if only.is_some_and(|id| !letter.has_id(id)) {
                passed_over += 1;
                continue;
            }
            match republish(&channel, prefix, consumer, &letter).await? {
                Ok(target) => {
                    message.acker.ack(BasicAckOptions::default()).await?;
                    tracing::info!(message_id = ?letter.message_id, queue = target, "dead letter replayed");
                    report.replayed.push(Replayed {
                        message_id: letter.message_id,
                        routing_key: letter.routing_key,
                        queue: target,
                    });
                }
                Err(reason) => report.skipped.push(Skipped {
                    message_id: letter.message_id,
                    reason,
                }),
            }
            if only.is_some() {
                break;
            }
        }
        Ok::<_, BrokerError>(())
    }
    .await;
    // What was not acknowledged returns to the dead-letter queue.
    close(&channel, "replayed").await;
    result?;
    wait_until_back(amqp, &queue, passed_over + report.skipped.len()).await?;
    Ok(report)
}

/// Publishes `letter` back to the queue it died in; `Ok(Err(reason))` when it
/// cannot or the broker does not confirm it, `Ok(Ok(queue))` once confirmed.
async fn republish(
    channel: &Channel,
    prefix: &str,
    consumer: &str,
    letter: &DeadLetter,
) -> Result<Result<String, String>, BrokerError> {
    let Some(target) = letter.died_in() else {
        return Ok(Err("no x-death header: nowhere to return it to".into()));
    };
    let own = format!("{prefix}.{consumer}.");
    if !target.starts_with(&own) || target == topology::dead_letter_queue(prefix, consumer) {
        return Ok(Err(format!(
            "it died in `{target}`, not in one of {own}* queues"
        )));
    }
    let confirmation = channel
        .basic_publish(
            "".into(),
            letter.routing_key.as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &letter.payload,
            replay_properties(&letter.properties, target),
        )
        .await?
        .await?;
    Ok(match confirmation {
        Confirmation::Ack(None) => Ok(target.to_owned()),
        Confirmation::Ack(Some(_)) => Err(format!("queue `{target}` does not exist")),
        Confirmation::Nack(_) => Err(format!("the broker refused it for `{target}`")),
        Confirmation::NotRequested => Err("publisher confirms are off".into()),
    })
}

/// `properties` for a republish to `queue` through the default exchange:
/// unchanged but for `BCC` = `queue` (the default exchange routes it there
/// alone, and the consumer still sees the original routing key) and without
/// the dead-letter queue's delivery count.
fn replay_properties(properties: &BasicProperties, queue: &str) -> BasicProperties {
    let mut headers: BTreeMap<ShortString, AMQPValue> = properties
        .headers()
        .as_ref()
        .map(|headers| headers.inner().clone())
        .unwrap_or_default();
    headers.remove(&ShortString::from(X_DELIVERY_COUNT));
    headers.insert(
        BCC.into(),
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(queue.into())])),
    );
    properties.clone().with_headers(FieldTable::from(headers))
}

/// Empties `consumer`'s dead-letter queue; returns how many messages it
/// removed, `None` when the queue does not exist. Messages another client
/// holds unacknowledged at that moment (a browse in progress) stay.
pub async fn purge(amqp: &Amqp, prefix: &str, consumer: &str) -> Result<Option<u32>, BrokerError> {
    let queue = topology::dead_letter_queue(prefix, consumer);
    if message_count(amqp, &queue).await?.is_none() {
        return Ok(None);
    }
    let channel = amqp.channel().await?;
    let purged = channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await;
    close(&channel, "purged").await;
    Ok(Some(purged?))
}

/// Messages ready in `queue` (not counting those delivered and not yet
/// acknowledged); `None` when the queue does not exist.
pub async fn message_count(amqp: &Amqp, queue: &str) -> Result<Option<u32>, BrokerError> {
    let channel = amqp.channel().await?;
    match topology::queue_depth(&channel, queue).await {
        Ok((ready, _consumers)) => {
            close(&channel, "counted").await;
            Ok(Some(ready))
        }
        // The broker closed the channel with the error.
        Err(error) if topology::is_not_found(&error) => Ok(None),
        Err(error) => Err(error),
    }
}

async fn get(channel: &Channel, queue: &str) -> Result<Option<Delivery>, BrokerError> {
    Ok(channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: false })
        .await?
        .map(|message| message.delivery))
}

async fn close(channel: &Channel, why: &str) {
    if let Err(error) = channel.close(200, why.into()).await {
        tracing::debug!(%error, "channel already closed");
    }
}

/// Waits until `queue` holds at least `expected` ready messages again: a
/// quorum queue takes back the messages of a closed channel asynchronously,
/// and whoever looks next should find them there.
async fn wait_until_back(amqp: &Amqp, queue: &str, expected: usize) -> Result<(), BrokerError> {
    if expected == 0 {
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + RETURN_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        let ready = message_count(amqp, queue).await?.unwrap_or(0);
        if usize::try_from(ready).unwrap_or(usize::MAX) >= expected {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            tracing::warn!(
                queue,
                ready,
                expected,
                "browsed messages are not all back yet"
            );
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long(text: &str) -> AMQPValue {
        AMQPValue::LongString(text.into())
    }

    fn entry(reason: &str, count: i64, queue: &str, time: u64) -> AMQPValue {
        let mut table = FieldTable::default();
        table.insert("reason".into(), long(reason));
        table.insert("count".into(), AMQPValue::LongLongInt(count));
        table.insert("queue".into(), long(queue));
        table.insert("exchange".into(), long("p.order.events"));
        table.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![long("order.created")])),
        );
        table.insert("time".into(), AMQPValue::Timestamp(time));
        AMQPValue::FieldTable(table)
    }

    fn with_deaths(entries: Vec<AMQPValue>) -> BasicProperties {
        let mut headers = FieldTable::default();
        headers.insert(X_DEATH.into(), AMQPValue::FieldArray(entries.into()));
        headers.insert("ce-type".into(), long("order.v1.OrderCreated"));
        headers.insert(X_DELIVERY_COUNT.into(), AMQPValue::LongLongInt(3));
        BasicProperties::default()
            .with_message_id("m-1".into())
            .with_headers(headers)
    }

    #[test]
    fn x_death_parses_most_recent_first() {
        let properties = with_deaths(vec![
            entry("delivery_limit", 2, "p.customer.order", 1_700_000_100),
            entry("rejected", 1, "p.customer.order", 1_700_000_000),
            AMQPValue::LongString("not a table".into()),
        ]);
        let parsed = deaths(&properties);
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[0].reason, DeathReason::DeliveryLimit);
        assert_eq!(parsed[0].count, 2);
        assert_eq!(parsed[0].queue, "p.customer.order");
        assert_eq!(parsed[0].exchange, "p.order.events");
        assert_eq!(parsed[0].routing_keys, vec!["order.created".to_owned()]);
        assert_eq!(parsed[0].time.map(|t| t.timestamp()), Some(1_700_000_100));
        assert_eq!(parsed[1].reason, DeathReason::Rejected);
    }

    #[test]
    fn reasons_round_trip_and_unknown_ones_are_kept() {
        for name in ["rejected", "delivery_limit", "expired", "maxlen", "new_one"] {
            assert_eq!(DeathReason::parse(name).as_str(), name);
        }
        assert_eq!(
            DeathReason::parse("new_one"),
            DeathReason::Other("new_one".into())
        );
        assert!(deaths(&BasicProperties::default()).is_empty());
    }

    #[test]
    fn replay_properties_keep_everything_but_the_delivery_count() {
        let original = with_deaths(vec![entry("rejected", 1, "p.customer.order", 1)]);
        let replayed = replay_properties(&original, "p.customer.order");
        assert_eq!(replayed.message_id(), original.message_id());
        assert_eq!(
            header_str(&replayed, "ce-type"),
            Some("order.v1.OrderCreated")
        );
        assert_eq!(deaths(&replayed), deaths(&original));
        assert!(header(&replayed, X_DELIVERY_COUNT).is_none());
        assert_eq!(
            header(&replayed, BCC),
            Some(&AMQPValue::FieldArray(FieldArray::from(vec![long(
                "p.customer.order"
            )])))
        );
    }
}
