//! P2: the relay draining an outbox backlog, against raw publishing of the
//! same payloads with publisher confirms, in windows of the relay's batch
//! size, to the same exchange and queue.

use std::time::{Duration, Instant};

use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use lapin::{
    BasicProperties,
    options::{QueueDeleteOptions, QueuePurgeOptions},
    types::{AMQPValue, FieldTable},
};
use testkit::{stack::Stack, workload};

use crate::{Options, Results, report, setup, throughput::round2};

/// The relay's default batch, and so the raw baseline's window.
const WINDOW: usize = 500;

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let rows = if options.quick { 20_000 } else { 100_000 };
    let mut stack = Stack::new("relay", &options.stack()).await?;
    // Only the order service's relay runs: nothing but it touches the outbox.
    stack.spawn("relay", "order", &["relay"], &[])?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stack.log_contains("relay", "outbox relay is the leader") {
        anyhow::ensure!(Instant::now() < deadline, "the relay did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let exchange = broker::topology::exchange(&stack.prefix, "order");
    let queue = format!("{}.bench.p2", stack.prefix);
    let channel = stack.amqp.channel().await?;
    setup::bound_quorum_queue(&channel, &queue, &exchange).await?;

    println!("\nP2 relay drain of a {rows}-row outbox backlog");
    let mut conn = setup::admin(&stack).await?;
    let payload = "\\x".to_owned() + &"ab".repeat(120);
    conn.batch_execute(&format!(
        "BEGIN;
         INSERT INTO orders.outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
         SELECT gen_random_uuid(), 'order', 'order-' || i, 'order.created', '{payload}'::bytea,
                jsonb_build_object('ce-specversion', '1.0', 'ce-id', gen_random_uuid()::text, 'ce-source', '/services/order',
                  'ce-type', 'order.v1.OrderCreated', 'ce-time', now()::text, 'ce-subject', 'order-' || i,
                  'traceparent', '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')
         FROM generate_series(1, {rows}) AS i;
         SELECT pg_notify('orders_outbox', '');
         COMMIT;"
    ))
    .await?;
    let started = Instant::now();
    loop {
        let left: Count =
            diesel::sql_query("SELECT count(*) AS n FROM orders.outbox WHERE published_at IS NULL")
                .get_result(&mut conn)
                .await?;
        if left.n == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the relay did not drain the backlog"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let relay_rate = rows as f64 / started.elapsed().as_secs_f64();
    channel
        .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
        .await?;

    // The same payloads and headers, published raw in the same windows.
    let payload_bytes = vec![0xab_u8; 120];
    let publisher = workload::confirm_channel(&stack.amqp).await?;
    let started = Instant::now();
    let messages = (0..rows).map(|i| (payload_bytes.as_slice(), relayed(i)));
    workload::publish_confirmed(&publisher, &exchange, "order.created", WINDOW, messages).await?;
    let raw_rate = rows as f64 / started.elapsed().as_secs_f64();
    let ratio = report("P2 relay drain, events/s", relay_rate, raw_rate, "events/s");
    results.insert("p2_events_per_s".into(), relay_rate.round().into());
    results.insert("p2_raw_events_per_s".into(), raw_rate.round().into());
    results.insert("p2_ratio".into(), round2(ratio).into());
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    drop(conn);
    stack.teardown().await
}

/// The properties and headers the relay gives the `i`th row of the backlog.
fn relayed(i: usize) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (key, value) in [
        ("ce-specversion", "1.0".to_owned()),
        ("ce-id", uuid::Uuid::new_v4().to_string()),
        ("ce-source", "/services/order".into()),
        ("ce-type", "order.v1.OrderCreated".into()),
        ("ce-time", "2026-01-01T00:00:00.000000Z".into()),
        ("ce-subject", format!("order-{i}")),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        ),
    ] {
        headers.insert(key.into(), AMQPValue::LongString(value.into()));
    }
    BasicProperties::default()
        .with_message_id(uuid::Uuid::new_v4().to_string().into())
        .with_content_type("application/protobuf".into())
        .with_type("order.created".into())
        .with_app_id("order".into())
        .with_timestamp(0)
        .with_delivery_mode(2)
        .with_headers(headers)
}
