//! `docs/asyncapi.yaml` against the code, both ways: the document must name
//! every event type the code defines ([`dbps::ALL_EVENTS`]) and no other,
//! each one's producer (its source's relay) and every consumer that binds it
//! (each service's [`broker::Consumer`]), and describe each payload field of
//! the compiled protobuf descriptors by name and number. Needs no servers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::collections::{BTreeMap, BTreeSet};

use broker::{Consumer, Outbox, topology};
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorSet, field_descriptor_proto::Type};
use serde_json::Value;

/// Exchange and queue names in the document carry this placeholder.
const PREFIX: &str = "{prefix}";

/// `docs/asyncapi.yaml`, or the document `ASYNCAPI_DOCUMENT` names.
fn document() -> Value {
    let path = std::env::var("ASYNCAPI_DOCUMENT").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/asyncapi.yaml").to_owned()
    });
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Follows `$ref`s (local JSON pointers) until a value that is none.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("only local references: {reference}"));
        value = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("dangling reference {reference}"));
    }
    value
}

fn text<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no text at {pointer} in {value}"))
}

fn entries<'a>(value: &'a Value, key: &str) -> Vec<(&'a String, &'a Value)> {
    value
        .get(key)
        .and_then(Value::as_object)
        .map(|map| map.iter().collect())
        .unwrap_or_default()
}

/// A message of the document: (source service, routing key, protobuf message).
fn message_key(doc: &Value, message: &Value) -> (String, String, String) {
    let message = resolve(doc, message);
    let routing_key = text(message, "/name");
    assert_eq!(
        text(message, "/bindings/amqp/messageType"),
        routing_key,
        "AMQP `type` of {routing_key}"
    );
    assert_eq!(
        text(message, "/contentType"),
        broker::envelope::CONTENT_TYPE
    );
    let headers = &message["headers"]["allOf"];
    let source = text(&headers[1], "/properties/cloudEvents_source/const")
        .strip_prefix("/services/")
        .expect("cloudEvents_source is /services/<source>");
    let proto = text(message, "/x-protobuf-message");
    assert_eq!(
        text(&headers[1], "/properties/cloudEvents_type/const"),
        proto,
        "cloudEvents_type of {routing_key}"
    );
    assert_eq!(
        resolve(doc, &headers[0]),
        &doc["components"]["schemas"]["EventHeaders"],
        "headers of {routing_key}"
    );
    let payload = resolve(doc, &message["payload"]);
    assert_eq!(
        text(payload, "/x-protobuf-message"),
        proto,
        "payload of {routing_key}"
    );
    (source.to_owned(), routing_key.to_owned(), proto.to_owned())
}

/// Fails naming what only one side has.
fn assert_same<T: Ord + std::fmt::Debug>(documented: &BTreeSet<T>, code: &BTreeSet<T>, what: &str) {
    let only_documented: Vec<_> = documented.difference(code).collect();
    let only_code: Vec<_> = code.difference(documented).collect();
    assert!(
        only_documented.is_empty() && only_code.is_empty(),
        "{what}: in docs/asyncapi.yaml only: {only_documented:?}; in the code only: {only_code:?}"
    );
}

fn all_events() -> BTreeSet<(String, String, String)> {
    dbps::ALL_EVENTS
        .iter()
        .map(|e| {
            (
                e.source.to_owned(),
                e.routing_key.to_owned(),
                e.proto_name.to_owned(),
            )
        })
        .collect()
}

fn consumers() -> Vec<Consumer> {
    vec![
        customer_service::events::consumer(Outbox::new("customer", "customers")),
        inventory_service::events::consumer(Outbox::new("inventory", "inventory")),
        order_service::events::consumer(Outbox::new("order", "orders")),
        reporting_service::events::consumer(None),
    ]
}

#[test]
fn every_event_type_is_documented_and_every_documented_message_is_an_event() {
    let doc = document();
    let documented: BTreeSet<_> = entries(&doc["components"], "messages")
        .into_iter()
        .map(|(_, message)| message_key(&doc, message))
        .collect();
    assert_same(
        &documented,
        &all_events(),
        "event types (source, routing key, message)",
    );
    for event in dbps::ALL_EVENTS {
        let message = entries(&doc["components"], "messages")
            .into_iter()
            .map(|(_, m)| m)
            .find(|m| m["name"] == event.routing_key)
            .unwrap();
        assert_eq!(text(message, "/x-aggregate"), event.aggregate);
    }
}

#[test]
fn each_event_is_sent_by_its_source_on_its_exchange() {
    let doc = document();
    let mut sent = BTreeSet::new();
    for (id, operation) in entries(&doc, "operations") {
        if operation["action"] != "send" {
            continue;
        }
        let service = text(operation, "/x-service");
        let channel = resolve(&doc, &operation["channel"]);
        let bindings = resolve(&doc, &channel["bindings"]);
        assert_eq!(text(bindings, "/amqp/is"), "routingKey", "{id}");
        assert_eq!(text(bindings, "/amqp/exchange/type"), "topic", "{id}");
        assert_eq!(bindings["amqp"]["exchange"]["durable"], true, "{id}");
        assert_eq!(
            text(bindings, "/amqp/exchange/name"),
            topology::exchange(PREFIX, service),
            "{id} publishes on its own service's exchange"
        );
        let messages = operation["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 1, "{id}: one event type per channel");
        let (source, routing_key, proto) = message_key(&doc, &messages[0]);
        assert_eq!(source, service, "{id}");
        assert_eq!(text(channel, "/address"), routing_key, "{id}: address");
        let operation_bindings = resolve(&doc, &operation["bindings"]);
        assert_eq!(operation_bindings["amqp"]["deliveryMode"], 2, "{id}");
        assert!(
            sent.insert((source, routing_key, proto)),
            "{id}: sent twice"
        );
    }
    assert_same(
        &sent,
        &all_events(),
        "send operations (source, routing key, message)",
    );
}

#[test]
fn each_consumer_receives_exactly_what_its_queues_bind() {
    let doc = document();
    let mut documented: BTreeSet<(String, String, String)> = BTreeSet::new();
    for (id, operation) in entries(&doc, "operations") {
        if operation["action"] != "receive" {
            continue;
        }
        let consumer = text(operation, "/x-service");
        let channel = resolve(&doc, &operation["channel"]);
        let bindings = resolve(&doc, &channel["bindings"]);
        assert_eq!(text(bindings, "/amqp/is"), "queue", "{id}");
        assert_eq!(bindings["amqp"]["queue"]["durable"], true, "{id}");
        assert_eq!(channel["x-queue-arguments"]["x-queue-type"], "quorum");
        let operation_messages: BTreeSet<_> = operation["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| message_key(&doc, m))
            .collect();
        let channel_messages: BTreeSet<_> = entries(channel, "messages")
            .into_iter()
            .map(|(_, m)| message_key(&doc, m))
            .collect();
        assert_eq!(operation_messages, channel_messages, "{id}");
        for (source, routing_key, _) in operation_messages {
            let queue = topology::queue(PREFIX, consumer, &source);
            assert_eq!(text(channel, "/address"), queue, "{id}: {routing_key}");
            assert_eq!(text(bindings, "/amqp/queue/name"), queue, "{id}");
            assert!(
                documented.insert((consumer.to_owned(), source, routing_key)),
                "{id}: received twice"
            );
        }
    }

    let mut subscribed = BTreeSet::new();
    for consumer in consumers() {
        for (source, routing_key) in consumer.subscriptions() {
            subscribed.insert((
                consumer.name().to_owned(),
                source.to_owned(),
                routing_key.to_owned(),
            ));
        }
    }
    assert_same(
        &documented,
        &subscribed,
        "receive operations (consumer, source, routing key)",
    );
    // The relay publishes with `mandatory`: an event type nobody binds would
    // never leave the outbox.
    for event in dbps::ALL_EVENTS {
        assert!(
            subscribed
                .iter()
                .any(|(_, source, key)| source == event.source && key == event.routing_key),
            "nobody consumes {}",
            event.routing_key
        );
    }
}

#[test]
fn payload_schemas_describe_every_protobuf_field_by_name_and_number() {
    let doc = document();
    let set = FileDescriptorSet::decode(dbps::FILE_DESCRIPTOR_SET).unwrap();
    let mut messages: BTreeMap<String, &DescriptorProto> = BTreeMap::new();
    let mut enums: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut event_files_messages = BTreeSet::new();
    for file in &set.file {
        let package = file.package();
        for message in &file.message_type {
            let name = format!("{package}.{}", message.name());
            if file.name().ends_with("/events.proto") {
                event_files_messages.insert(name.clone());
            }
            messages.insert(name, message);
        }
        for e in &file.enum_type {
            enums.insert(
                format!("{package}.{}", e.name()),
                e.value.iter().map(|v| v.name().to_owned()).collect(),
            );
        }
    }

    let mut described = BTreeSet::new();
    for (id, schema) in entries(&doc["components"], "schemas") {
        if let Some(name) = schema.get("x-protobuf-enum").and_then(Value::as_str) {
            let values: Vec<String> =
                serde_json::from_value(schema["enum"].clone()).expect("enum values");
            assert_eq!(Some(&values), enums.get(name), "schema {id}");
            continue;
        }
        let Some(name) = schema.get("x-protobuf-message").and_then(Value::as_str) else {
            continue;
        };
        assert_eq!(id, name, "schemas are named after their message");
        let message = messages
            .get(name)
            .unwrap_or_else(|| panic!("schema {id}: no message {name} in proto/"));
        described.insert(name.to_owned());
        let properties = schema["properties"].as_object().expect("properties");
        let documented: BTreeMap<&str, u64> = properties
            .iter()
            .map(|(field, p)| {
                let number = p["x-protobuf-field"].as_u64();
                (field.as_str(), number.expect("x-protobuf-field"))
            })
            .collect();
        let actual: BTreeMap<&str, u64> = message
            .field
            .iter()
            .map(|f| (f.name(), u64::try_from(f.number()).unwrap()))
            .collect();
        assert_eq!(documented, actual, "fields of {name} (name → number)");
        for field in &message.field {
            let property = &properties[field.name()];
            let at = format!("{name}.{}", field.name());
            let repeated = field.label() == prost_types::field_descriptor_proto::Label::Repeated;
            let item = if repeated {
                assert_eq!(property["type"], "array", "{at}: repeated");
                &property["items"]
            } else {
                assert_ne!(property["type"], "array", "{at}: not repeated");
                property
            };
            let type_name = field.type_name().trim_start_matches('.');
            let target = resolve(&doc, item);
            match field.r#type() {
                Type::Message if type_name == "google.protobuf.Timestamp" => {
                    assert_eq!(target["x-protobuf-type"], type_name, "{at}");
                    assert_eq!(target["format"], "date-time", "{at}");
                }
                Type::Message => assert_eq!(target["x-protobuf-message"], type_name, "{at}"),
                Type::Enum => assert_eq!(target["x-protobuf-enum"], type_name, "{at}"),
                Type::String => assert_eq!(target["type"], "string", "{at}"),
                Type::Bool => assert_eq!(target["type"], "boolean", "{at}"),
                Type::Int32 | Type::Sint32 | Type::Sfixed32 | Type::Uint32 | Type::Fixed32 => {
                    assert_eq!(target["type"], "integer", "{at}");
                    assert_eq!(target["format"], "int32", "{at}");
                }
                Type::Int64 | Type::Sint64 | Type::Sfixed64 | Type::Uint64 | Type::Fixed64 => {
                    assert_eq!(target["type"], "integer", "{at}");
                    assert_eq!(target["format"], "int64", "{at}");
                }
                other => panic!("{at}: add a check for {other:?}"),
            }
        }
    }
    let missing: Vec<_> = event_files_messages.difference(&described).collect();
    assert!(
        missing.is_empty(),
        "messages of events.proto without a schema in docs/asyncapi.yaml: {missing:?}"
    );
}
