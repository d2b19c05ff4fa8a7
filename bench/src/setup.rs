//! A running system with customers and a catalog the order service knows,
//! made with `testkit::workload`, and the raw baselines' queues.

use dbps::order::v1::{LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use testkit::{
    stack::Stack,
    workload::{self, Shape, World},
};

use crate::Options;

/// Starts every service (with `extra` environment per service) and fills the
/// world; returns once the order service accepts orders for all of it.
pub async fn start(
    options: &Options,
    run: &str,
    extra: &[(&str, &str, &str)],
) -> anyhow::Result<(Stack, World)> {
    let mut stack = Stack::new(run, &options.stack()).await?;
    stack.start_all(extra).await?;
    let world = populate(&stack).await?;
    Ok((stack, world))
}

/// Registers 50 customers and 20 products `BENCH-<i>` with plenty of stock,
/// then waits until an order with every SKU goes through for the last
/// customer.
pub async fn populate(stack: &Stack) -> anyhow::Result<World> {
    let shape = Shape {
        customers: 50,
        email_tag: "b",
        email_domain: &stack.prefix,
        products: 20,
        sku_prefix: "BENCH",
        price_step: 7,
        stock: 1_000_000_000,
    };
    let world = World::create(
        stack.channel("customer")?,
        stack.channel("inventory")?,
        &shape,
    )
    .await?;
    let lines = world
        .products
        .iter()
        .map(|product| LineItem {
            sku: product.sku.clone(),
            quantity: 1,
        })
        .collect();
    let request = PlaceOrderRequest {
        customer_id: world.customers[world.customers.len() - 1].clone(),
        lines,
        idempotency_key: "warm-up".into(),
    };
    let client = OrderServiceClient::new(stack.channel("order")?);
    if let Err(status) = workload::place(&[client], 0, &request).await.result {
        anyhow::bail!("PlaceOrder: {status:?}");
    }
    Ok(world)
}

/// A superuser connection to the run's database.
pub async fn admin(stack: &Stack) -> anyhow::Result<AsyncPgConnection> {
    Ok(AsyncPgConnection::establish(&stack.admin_url()).await?)
}

/// Declares a durable quorum queue, the kind every consumer has, for a raw
/// baseline.
pub async fn quorum_queue(channel: &lapin::Channel, name: &str) -> anyhow::Result<()> {
    let mut args = lapin::types::FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    let options = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel.queue_declare(name.into(), options, args).await?;
    Ok(())
}

/// A quorum queue `name` that takes every event of `exchange`.
pub async fn bound_quorum_queue(
    channel: &lapin::Channel,
    name: &str,
    exchange: &str,
) -> anyhow::Result<()> {
    quorum_queue(channel, name).await?;
    channel
        .queue_bind(
            name.into(),
            exchange.into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    Ok(())
}
