//! One trace from the gRPC request to the effect in another service: the
//! caller's `traceparent` is stored with the outbox row, carried in the AMQP
//! headers, and continued by the consumer's span.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use dbps::{
    customer::v1::{
        GetCustomerRequest, RegisterCustomerRequest, customer_service_client::CustomerServiceClient,
    },
    inventory::v1::ProductChanged,
    order::v1::{LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use testkit::{TestEnv, eventually};
use tracing_subscriber::layer::SubscriberExt;

const WAIT: Duration = Duration::from_secs(30);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv: &&KeyValue| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumers_span_continues_the_trace_of_the_request_that_wrote_the_event() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let env = TestEnv::new().await;
    use {customer_service as c, order_service as o};
    let customer_service = env
        .spawn(&c::SERVICE, env.config(&c::SERVICE), c::startup::build)
        .await;
    let order_service = env
        .spawn(&o::SERVICE, env.config(&o::SERVICE), o::startup::build)
        .await;
    let mut customers = CustomerServiceClient::new(customer_service.channel());
    let orders = OrderServiceClient::new(order_service.channel());

    let request = RegisterCustomerRequest {
        name: "Ada".into(),
        email: "ada@example.com".into(),
    };
    let customer = customers
        .register_customer(request)
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    env.publish(&ProductChanged {
        sku: "TEA".into(),
        name: "Tea".into(),
        price_cents: 500,
        version: 1,
        ..Default::default()
    })
    .await;

    // The caller's trace context travels in the `traceparent` metadata.
    let place = PlaceOrderRequest {
        customer_id: customer.clone(),
        lines: vec![LineItem {
            sku: "TEA".into(),
            quantity: 2,
        }],
        idempotency_key: "traced".into(),
    };
    eventually("the order to be accepted", WAIT, || {
        let (mut orders, place) = (orders.clone(), place.clone());
        async move {
            let mut request = tonic::Request::new(place);
            let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
            request
                .metadata_mut()
                .insert("traceparent", traceparent.parse().unwrap());
            orders.place_order(request).await.ok()
        }
    })
    .await;
    eventually("the points to be credited", WAIT, || {
        let mut customers = customers.clone();
        let customer = customer.clone();
        async move {
            let request = GetCustomerRequest {
                customer_id: customer,
            };
            (customers
                .get_customer(request)
                .await
                .ok()?
                .into_inner()
                .loyalty_points
                == 100)
                .then_some(())
        }
    })
    .await;

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let placed = spans
        .iter()
        .find(|s| {
            s.name == "grpc"
                && attribute(s, "method").is_some_and(|m| m.ends_with("/PlaceOrder"))
                && s.span_context.trace_id().to_string() == TRACE_ID
        })
        .expect("the PlaceOrder span continues the caller's trace");
    assert_eq!(placed.parent_span_id.to_string(), CALLER_SPAN);
    let applied = spans
        .iter()
        .find(|s| {
            s.name == "apply" && attribute(s, "event_type").as_deref() == Some("order.created")
        })
        .expect("the customer service applied order.created in a span");
    assert_eq!(
        applied.span_context.trace_id().to_string(),
        TRACE_ID,
        "the consumer's span is in the producer's trace"
    );
}
