//! Reading a consumer's event log (`<prefix>.<consumer>.log`, a RabbitMQ
//! stream, see [`topology::declare_event_log`](crate::topology::declare_event_log)):
//! where to start, where it ends, and each entry's place in it.
//!
//! [`Consumer::replay`](crate::Consumer::replay) applies the log through the
//! consumer's handlers; [`LogReader`] hands out its entries as they are (for
//! exporting them) and stops at the entry that was last when it opened.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, ShortString},
};

use crate::{Amqp, BrokerError};

/// The header in which the broker gives each entry's offset.
const OFFSET_HEADER: &str = "x-stream-offset";

/// Where reading a log starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// The oldest entry the log still keeps.
    First,
    /// The first chunk the broker stored at or after this time (to the
    /// second; a chunk holds several entries, so a few stored just before it
    /// may come along).
    Since(DateTime<Utc>),
    /// The log's last chunk (its newest entries).
    Last,
}

/// Subscribes to the stream `log` on `channel` from `start`, `prefetch`
/// unacknowledged entries at a time (a stream consumer must acknowledge).
pub async fn subscribe(
    channel: &Channel,
    log: &str,
    start: Start,
    prefetch: u16,
) -> Result<lapin::Consumer, BrokerError> {
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let spec = match start {
        Start::First => AMQPValue::LongString("first".into()),
        Start::Last => AMQPValue::LongString("last".into()),
        Start::Since(time) => {
            AMQPValue::Timestamp(u64::try_from(time.timestamp()).unwrap_or_default())
        }
    };
    let mut args = FieldTable::default();
    args.insert(OFFSET_HEADER.into(), spec);
    Ok(channel
        .basic_consume(log.into(), "".into(), BasicConsumeOptions::default(), args)
        .await?)
}

/// The entry's offset in its stream, as the broker numbers them.
pub fn offset(delivery: &Delivery) -> Option<u64> {
    let value = delivery
        .properties
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(OFFSET_HEADER))?;
    match value {
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::Timestamp(n) => Some(*n),
        _ => None,
    }
}

/// The offset of the log's last entry, or `None` if it holds none.
///
/// AMQP 0-9-1 has no question for it (the broker counts a stream's messages
/// as 0), so this reads the log's last chunk (offset spec `last`), which the
/// broker sends at once: the highest offset once `quiet` passed without
/// another entry. A log that sends nothing within `wait` is empty.
pub async fn last_offset(
    amqp: &Amqp,
    log: &str,
    wait: Duration,
    quiet: Duration,
) -> Result<Option<u64>, BrokerError> {
    let channel = amqp.channel().await?;
    let mut entries = subscribe(&channel, log, Start::Last, 1000).await?;
    let mut last = None;
    let mut window = wait;
    while let Ok(next) = tokio::time::timeout(window, entries.next()).await {
        let Some(entry) = next else {
            return Err(BrokerError::ConsumerCancelled);
        };
        let entry = entry?;
        last = last.max(offset(&entry));
        entry.acker.ack(BasicAckOptions::default()).await?;
        window = quiet;
    }
    if let Err(error) = channel.close(200, "last offset found".into()).await {
        tracing::debug!(%error, "channel already closed");
    }
    Ok(last)
}

/// Reads a log from a [`Start`] up to the entry that was its last when the
/// reader opened, then ends: entries appended meanwhile are left for the next
/// read.
pub struct LogReader {
    channel: Channel,
    entries: lapin::Consumer,
    end: Option<u64>,
    idle: Duration,
    done: bool,
}

impl LogReader {
    /// Opens `log` at `start`. `idle` bounds the wait for any one entry: were
    /// the end not reached by then (the entries expired meanwhile, or `start`
    /// lies after the end), the read ends there.
    pub async fn open(
        amqp: &Amqp,
        log: &str,
        start: Start,
        idle: Duration,
    ) -> Result<LogReader, BrokerError> {
        let end = last_offset(amqp, log, idle, Duration::from_millis(300)).await?;
        let channel = amqp.channel().await?;
        let entries = subscribe(&channel, log, start, 500).await?;
        Ok(LogReader {
            channel,
            entries,
            end,
            idle,
            done: end.is_none(),
        })
    }

    /// The offset of the last entry this reader hands out, `None` for an
    /// empty log.
    pub fn end(&self) -> Option<u64> {
        self.end
    }

    /// The next entry, already acknowledged (reading a stream changes
    /// nothing), or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Delivery>, BrokerError> {
        if self.done {
            return Ok(None);
        }
        let Ok(next) = tokio::time::timeout(self.idle, self.entries.next()).await else {
            tracing::warn!(end = ?self.end, idle = ?self.idle, "no entry arrived before the end was reached; stopping");
            self.done = true;
            return Ok(None);
        };
        let Some(entry) = next else {
            return Err(BrokerError::ConsumerCancelled);
        };
        let entry = entry?;
        entry.acker.ack(BasicAckOptions::default()).await?;
        let at = offset(&entry);
        if let (Some(at), Some(end)) = (at, self.end) {
            if at > end {
                self.done = true;
                return Ok(None);
            }
            self.done = at == end;
        }
        Ok(Some(entry))
    }

    /// Closes the reader's channel.
    pub async fn close(self) {
        if let Err(error) = self.channel.close(200, "log read".into()).await {
            tracing::debug!(%error, "channel already closed");
        }
    }
}
