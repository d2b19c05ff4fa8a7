//! `dbps events export`: the reporting consumer's event log as JSON lines,
//! one CloudEvents JSON object per event, its protobuf payload decoded to
//! JSON by reflection over the contracts' descriptors.

use std::{
    fs::File,
    io::{BufWriter, Write},
    time::Duration,
};

use anyhow::Context;
use base64::Engine;
use broker::{
    Amqp, dlq,
    envelope::{self, ce_attribute},
    event_log::{self, LogReader, Start},
    topology,
};
use chrono::{DateTime, SecondsFormat, Utc};
use lapin::message::Delivery;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde::Serialize;

use crate::{args::ExportArgs, secret::redact};

/// The consumer whose log holds every event.
const CONSUMER: &str = "reporting";

/// Writes the log as JSON lines to `--output` or `out`.
pub async fn run(
    args: &ExportArgs,
    amqp: &Amqp,
    amqp_url: &str,
    prefix: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let log = topology::event_log(prefix, CONSUMER);
    if dlq::message_count(amqp, &log)
        .await
        .with_context(|| format!("cannot reach RabbitMQ at {}", redact(amqp_url)))?
        .is_none()
    {
        anyhow::bail!(
            "the event log {log} does not exist \
             (has the reporting service run under --amqp-prefix {prefix}?)"
        );
    }
    let start = match args.since {
        Some(since) => Start::Since(since),
        None => Start::First,
    };
    let decoder = Decoder::new()?;
    let idle = Duration::from_secs(args.idle_secs);
    let mut reader = LogReader::open(amqp, &log, start, idle)
        .await
        .with_context(|| format!("cannot read {log}"))?;
    let result = match &args.output {
        Some(path) => {
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let mut file = BufWriter::new(file);
            let written = export(&mut reader, &decoder, args.since, &mut file).await;
            let flushed = file
                .flush()
                .with_context(|| format!("cannot write {}", path.display()));
            written.and_then(|count| {
                flushed?;
                writeln!(
                    out,
                    "exported {count} events from {log} to {}",
                    path.display()
                )?;
                Ok(())
            })
        }
        None => export(&mut reader, &decoder, args.since, out)
            .await
            .map(|_| ()),
    };
    reader.close().await;
    result
}

/// Writes every entry up to the reader's end; returns how many.
async fn export(
    reader: &mut LogReader,
    decoder: &Decoder,
    since: Option<DateTime<Utc>>,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut count = 0;
    while let Some(entry) = reader.next().await? {
        let line = decoder.line(&entry);
        // The broker starts a `--since` read at a chunk: drop what came along
        // from before.
        if let (Some(since), Some(time)) = (since, line.time_value)
            && time < since
        {
            continue;
        }
        let mut text = serde_json::to_vec(&line)?;
        text.push(b'\n');
        match out.write_all(&text) {
            Ok(()) => count += 1,
            // The reader has had enough (`dbps events export | head`).
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(count)
}

/// One event, in the CloudEvents JSON format (plus two extensions: the
/// routing key and the entry's offset in the log).
#[derive(Debug, Serialize)]
struct Line {
    specversion: &'static str,
    id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<String>,
    datacontenttype: &'static str,
    routingkey: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<serde_json::Value>,
    /// The payload as it was, when it could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
    #[serde(skip)]
    time_value: Option<DateTime<Utc>>,
}

/// Turns log entries into [`Line`]s.
struct Decoder {
    pool: DescriptorPool,
}

impl Decoder {
    fn new() -> anyhow::Result<Self> {
        let pool = DescriptorPool::decode(dbps::FILE_DESCRIPTOR_SET)
            .context("the contracts' descriptors do not decode")?;
        Ok(Decoder { pool })
    }

    fn line(&self, entry: &Delivery) -> Line {
        let properties = &entry.properties;
        let routing_key = entry.routing_key.as_str().to_owned();
        let kind = ce_attribute(properties, "type")
            .map(str::to_owned)
            // Entries without a CloudEvents `type` header: by routing key.
            .or_else(|| {
                dbps::ALL_EVENTS
                    .iter()
                    .find(|event| event.routing_key == routing_key)
                    .map(|event| event.proto_name.to_owned())
            })
            .unwrap_or_else(|| routing_key.clone());
        let id = ce_attribute(properties, "id")
            .map(str::to_owned)
            .or_else(|| properties.message_id().as_ref().map(|id| id.to_string()))
            .unwrap_or_default();
        // `<prefix>.<source>.events`, the publisher's exchange.
        let exchange = entry.exchange.as_str();
        let source = ce_attribute(properties, "source")
            .map(str::to_owned)
            .or_else(|| {
                properties
                    .app_id()
                    .as_ref()
                    .map(|app| format!("/services/{app}"))
            })
            .or_else(|| {
                let name = exchange.strip_suffix(".events")?;
                let (_, source) = name.rsplit_once('.')?;
                Some(format!("/services/{source}"))
            })
            .unwrap_or_default();
        let time_value = ce_attribute(properties, "time")
            .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
            .map(|time| time.with_timezone(&Utc))
            .or_else(|| {
                let seconds = i64::try_from((*properties.timestamp())?).ok()?;
                DateTime::from_timestamp(seconds, 0)
            });
        let (data, data_base64) = match self.decode(&kind, &entry.data) {
            Ok(json) => (Some(json), None),
            Err(reason) => {
                tracing::warn!(
                    id,
                    kind,
                    reason,
                    "payload not decoded; exported as data_base64"
                );
                let raw = base64::engine::general_purpose::STANDARD.encode(&entry.data);
                (None, Some(raw))
            }
        };
        Line {
            specversion: "1.0",
            id,
            source,
            subject: ce_attribute(properties, "subject").map(str::to_owned),
            time: time_value.map(|time| time.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
            datacontenttype: if data.is_some() {
                "application/json"
            } else {
                envelope::CONTENT_TYPE
            },
            kind,
            routingkey: routing_key,
            offset: event_log::offset(entry),
            data,
            data_base64,
            time_value,
        }
    }

    /// The payload as protobuf's canonical JSON.
    fn decode(&self, name: &str, payload: &[u8]) -> Result<serde_json::Value, String> {
        let descriptor = self
            .pool
            .get_message_by_name(name)
            .ok_or_else(|| format!("no contract names the type {name}"))?;
        let message =
            DynamicMessage::decode(descriptor, payload).map_err(|error| error.to_string())?;
        message
            .serialize_with_options(serde_json::value::Serializer, &SerializeOptions::new())
            .map_err(|error| error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use dbps::{Event, order::v1::OrderApproved};
    use prost_reflect::prost::Message;

    use super::*;

    #[test]
    fn every_event_decodes_to_canonical_json() {
        let decoder = Decoder::new().unwrap();
        let event = OrderApproved {
            order_id: "o-1".into(),
            customer_id: "c-1".into(),
            total_cents: 900,
            approved_at: Some(prost_reflect::prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            lines: vec![dbps::order::v1::OrderLine {
                sku: "TEA".into(),
                quantity: 2,
                unit_price_cents: 450,
            }],
        };
        let json = decoder
            .decode(OrderApproved::PROTO_NAME, &event.encode_to_vec())
            .unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "orderId": "o-1",
                "customerId": "c-1",
                "totalCents": "900",
                "approvedAt": "2023-11-14T22:13:20Z",
                "lines": [{"sku": "TEA", "quantity": 2, "unitPriceCents": "450"}],
            })
        );
        for event in dbps::ALL_EVENTS {
            assert!(
                decoder.pool.get_message_by_name(event.proto_name).is_some(),
                "{} is not in the descriptors",
                event.proto_name
            );
        }
        assert!(decoder.decode("nope.v1.Nope", b"").is_err());
    }
}
