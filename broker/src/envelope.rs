//! What travels with an event besides its protobuf payload.
//!
//! AMQP properties: `message_id` = event UUID (the consumers' deduplication
//! key), `content_type` `application/protobuf`, `type` = routing key,
//! `timestamp`, `app_id` = publishing service, persistent delivery. Headers
//! (AMQP application properties): the CloudEvents attributes named as the
//! CloudEvents AMQP protocol binding names them, `cloudEvents_specversion`,
//! `cloudEvents_id`, `cloudEvents_source`, `cloudEvents_type`,
//! `cloudEvents_time`, `cloudEvents_subject` (its `datacontenttype` is the
//! AMQP `content-type` property), and the W3C `traceparent`. The headers are
//! built when the event is written to the outbox and stored with it, so the
//! relay publishes exactly what was committed.
//!
//! Releases before this one wrote the HTTP binding's `ce-` names; readers
//! ([`ce_attribute`]) accept both, so during a rolling upgrade (and for
//! outbox rows written before it) old and new events are read alike.

use chrono::{DateTime, Utc};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, ShortString},
};
use uuid::Uuid;

/// `content_type` of every event.
pub const CONTENT_TYPE: &str = "application/protobuf";
/// Header holding the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Prefix of the CloudEvents attributes in AMQP application properties.
pub const CLOUD_EVENTS_PREFIX: &str = "cloudEvents_";
/// The prefix earlier releases used (the HTTP binding's).
const LEGACY_PREFIX: &str = "ce-";
const DELIVERY_COUNT: &str = "x-delivery-count";

/// A W3C trace context (`traceparent`): which trace an event belongs to, so a
/// request, the events it causes and their effects can be followed end to end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: String,
    span_id: String,
    sampled: bool,
}

impl TraceContext {
    /// Starts a new trace.
    pub fn new_root() -> Self {
        TraceContext {
            trace_id: Uuid::new_v4().simple().to_string(),
            span_id: new_span_id(),
            sampled: true,
        }
    }

    /// Parses a `traceparent` header (version `00`); `None` if malformed.
    ///
    /// By hand rather than through OpenTelemetry's `TraceContextPropagator`:
    /// that one reads the IDs with `from_str_radix`, so it takes short ones
    /// (`00-abc-def-01`) that W3C Trace Context refuses, and it would make the
    /// SDK a dependency of every process that only forwards the header.
    pub fn parse(traceparent: &str) -> Option<Self> {
        let mut parts = traceparent.trim().split('-');
        let (version, trace_id, span_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        };
        let valid = version == "00"
            && parts.next().is_none()
            && hex(trace_id, 32)
            && hex(span_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0')
            && span_id.bytes().any(|b| b != b'0');
        valid.then(|| TraceContext {
            trace_id: trace_id.to_owned(),
            span_id: span_id.to_owned(),
            sampled: u8::from_str_radix(flags, 16).is_ok_and(|f| f & 1 == 1),
        })
    }

    /// The incoming context if it parses, else a new trace.
    pub fn continue_or_start(traceparent: Option<&str>) -> Self {
        traceparent
            .and_then(Self::parse)
            .map(|parent| parent.child())
            .unwrap_or_else(Self::new_root)
    }

    /// A new span in the same trace.
    pub fn child(&self) -> Self {
        TraceContext {
            trace_id: self.trace_id.clone(),
            span_id: new_span_id(),
            sampled: self.sampled,
        }
    }

    /// The 32 hex digit trace ID.
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// The trace context of the current `tracing` span, if an OpenTelemetry
    /// layer tracks it (otherwise `None`: tracing is off).
    pub fn from_current_span() -> Option<Self> {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = tracing::Span::current().context();
        let span = context.span();
        let span_context = span.span_context();
        span_context.is_valid().then(|| TraceContext {
            trace_id: span_context.trace_id().to_string(),
            span_id: span_context.span_id().to_string(),
            sampled: span_context.is_sampled(),
        })
    }

    /// This context as the (remote) parent of an OpenTelemetry span.
    pub fn otel_context(&self) -> opentelemetry::Context {
        use opentelemetry::trace::{
            SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
        };
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        let span_context = SpanContext::new(
            TraceId::from_hex(&self.trace_id).unwrap_or(TraceId::INVALID),
            SpanId::from_hex(&self.span_id).unwrap_or(SpanId::INVALID),
            flags,
            true,
            TraceState::default(),
        );
        opentelemetry::Context::new().with_remote_span_context(span_context)
    }

    /// The header value.
    pub fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!("00-{}-{}-{flags}", self.trace_id, self.span_id)
    }
}

fn new_span_id() -> String {
    Uuid::new_v4().simple().to_string()[..16].to_owned()
}

/// The CloudEvents and trace headers of one event, as stored in the outbox.
pub(crate) fn headers<E: dbps::Event>(
    event: &E,
    event_id: Uuid,
    time: DateTime<Utc>,
    trace: &TraceContext,
) -> serde_json::Value {
    serde_json::json!({
        "cloudEvents_specversion": "1.0",
        "cloudEvents_id": event_id.to_string(),
        "cloudEvents_source": format!("/services/{}", E::SOURCE),
        "cloudEvents_type": E::PROTO_NAME,
        "cloudEvents_time": time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "cloudEvents_subject": event.aggregate_id(),
        TRACEPARENT: trace.traceparent(),
    })
}

/// The CloudEvents attribute `name` (`id`, `type`, `time`, …) of a message:
/// its `cloudEvents_<name>` header, or the `ce-<name>` header that releases
/// before the AMQP binding's names wrote.
pub fn ce_attribute<'a>(properties: &'a BasicProperties, name: &str) -> Option<&'a str> {
    header_str(properties, &format!("{CLOUD_EVENTS_PREFIX}{name}"))
        .or_else(|| header_str(properties, &format!("{LEGACY_PREFIX}{name}")))
}

/// AMQP properties for an outbox row being published.
pub(crate) fn properties(
    source: &str,
    event_id: Uuid,
    event_type: &str,
    created_at: DateTime<Utc>,
    headers: &serde_json::Value,
) -> BasicProperties {
    let mut table = FieldTable::default();
    if let Some(map) = headers.as_object() {
        for (key, value) in map {
            if let Some(text) = value.as_str() {
                table.insert(key.as_str().into(), AMQPValue::LongString(text.into()));
            }
        }
    }
    BasicProperties::default()
        .with_message_id(event_id.to_string().into())
        .with_content_type(CONTENT_TYPE.into())
        .with_type(event_type.into())
        .with_app_id(source.into())
        .with_timestamp(u64::try_from(created_at.timestamp()).unwrap_or_default())
        .with_delivery_mode(2)
        .with_headers(table)
}

/// A header as text, if present and textual.
pub fn header_str<'a>(properties: &'a BasicProperties, key: &str) -> Option<&'a str> {
    let value = properties
        .headers()
        .as_ref()?
        .inner()
        .get(&ShortString::from(key))?;
    match value {
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok(),
        AMQPValue::ShortString(text) => Some(text.as_str()),
        _ => None,
    }
}

/// How many times the broker delivered this message before (quorum queues
/// count returns in `x-delivery-count`).
pub(crate) fn delivery_count(properties: &BasicProperties) -> u32 {
    let Some(value) = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(&ShortString::from(DELIVERY_COUNT)))
    else {
        return 0;
    };
    let count = match value {
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(count).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_keep_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.traceparent()).expect("own header parses");
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.traceparent(), root.traceparent());
    }

    #[test]
    fn cloud_events_attributes_are_read_under_both_names() {
        let mut new = FieldTable::default();
        new.insert(
            "cloudEvents_type".into(),
            AMQPValue::LongString("a.v1.A".into()),
        );
        let mut old = FieldTable::default();
        old.insert("ce-type".into(), AMQPValue::LongString("a.v1.A".into()));
        for headers in [new, old] {
            let properties = BasicProperties::default().with_headers(headers);
            assert_eq!(ce_attribute(&properties, "type"), Some("a.v1.A"));
            assert_eq!(ce_attribute(&properties, "time"), None);
        }
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-abc-def-01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad:?}");
        }
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            TraceContext::parse(good)
                .map(|t| t.traceparent())
                .as_deref(),
            Some(good)
        );
    }
}
