//! P4: the customer service applying a backlog of `order.created` (inbox
//! insert + points + ack, in batched transactions) against a raw consumer
//! that only receives and acks the same messages from a queue of the same
//! kind with the same prefetch.

use std::time::{Duration, Instant};

use dbps::{
    Event,
    customer::v1::{CustomerRegistered, LoyaltyPointsChanged},
    order::v1::{OrderCreated, OrderLine},
};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Double},
};
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use lapin::{
    options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions},
    types::FieldTable,
};
use prost::Message;
use testkit::{stack::Stack, workload};

use crate::{Options, Results, report, setup, throughput::round2};

/// The services' default prefetch.
const PREFETCH: u16 = 256;

#[derive(QueryableByName)]
struct Span {
    #[diesel(sql_type = BigInt)]
    n: i64,
    #[diesel(sql_type = Double)]
    seconds: f64,
}

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let messages = if options.quick { 5_000 } else { 20_000 };
    let mut stack = Stack::new("consumer", &options.stack()).await?;
    // The events the customer service writes go where they go in the full
    // system (reporting's queue), not back to its relay as unroutable.
    let channel = stack.amqp.channel().await?;
    broker::topology::declare_queue(
        &channel,
        &stack.prefix,
        "reporting",
        "customer",
        &[CustomerRegistered::TYPE, LoyaltyPointsChanged::TYPE],
        broker::topology::QueueArgs::new(10),
    )
    .await?;
    stack.spawn("customer", "customer", &[], &[])?;
    stack.wait_serving("customer").await?;
    let ids = stack.register_customers(50, "p4-").await?;
    // Pile the messages up while the consumer is away.
    stack.kill("customer").await?;
    let payloads: Vec<Vec<u8>> = (0..messages)
        .map(|i| {
            OrderCreated {
                order_id: uuid::Uuid::now_v7().to_string(),
                customer_id: ids[i % ids.len()].clone(),
                lines: vec![OrderLine {
                    sku: "SKU".into(),
                    quantity: 1,
                    unit_price_cents: 1000,
                }],
                total_cents: 1000,
                created_at: None,
            }
            .encode_to_vec()
        })
        .collect();
    let exchange = broker::topology::exchange(&stack.prefix, "order");
    let publisher = workload::confirm_channel(&stack.amqp).await?;
    let backlog = || {
        payloads
            .iter()
            .map(|payload| (payload, workload::persistent()))
    };
    workload::publish_confirmed(&publisher, &exchange, OrderCreated::TYPE, 500, backlog()).await?;

    println!("\nP4 consumer apply of {messages} order.created");
    stack.spawn(
        "customer",
        "customer",
        &[],
        &[("METRICS_ADDR", "127.0.0.1:19092")],
    )?;
    let mut conn = setup::admin(&stack).await?;
    let started = Instant::now();
    let span = loop {
        let span: Span = diesel::sql_query(
            "SELECT count(*) AS n, coalesce(extract(epoch FROM max(applied_at) - min(applied_at)), 0)::float8 AS seconds
             FROM customers.inbox WHERE event_type = 'order.created'",
        )
        .get_result(&mut conn)
        .await?;
        if span.n as usize >= messages {
            break span;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the consumer did not drain the queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let apply_rate = messages as f64 / span.seconds.max(1e-3);

    // Raw: the same messages, a quorum queue, the same prefetch, receive and ack.
    let queue = format!("{}.bench.p4", stack.prefix);
    let channel = stack.amqp.channel().await?;
    setup::quorum_queue(&channel, &queue).await?;
    workload::publish_confirmed(&publisher, "", &queue, 500, backlog()).await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut received = 0;
    let mut first = None;
    while received < messages {
        let Some(delivery) = deliveries.next().await else {
            anyhow::bail!("raw consumer cancelled")
        };
        let delivery = delivery?;
        first.get_or_insert_with(Instant::now);
        delivery.acker.ack(BasicAckOptions::default()).await?;
        received += 1;
    }
    let raw_rate = messages as f64
        / first
            .map(|f| f.elapsed().as_secs_f64())
            .unwrap_or(1.0)
            .max(1e-3);
    let ratio = report(
        "P4 consumer apply, events/s",
        apply_rate,
        raw_rate,
        "events/s",
    );
    results.insert("p4_events_per_s".into(), apply_rate.round().into());
    results.insert("p4_raw_events_per_s".into(), raw_rate.round().into());
    results.insert("p4_ratio".into(), round2(ratio).into());
    drop(deliveries);
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    drop(conn);
    stack.teardown().await
}
