//! A running system with customers and a catalog the order service knows.

use std::time::{Duration, Instant};

use dbps::{
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use testkit::stack::Stack;
use tonic::{Code, transport::Channel};

use crate::Options;

/// Customers and SKUs every service knows.
#[derive(Clone, Debug)]
pub struct World {
    pub customers: Vec<String>,
    pub skus: Vec<String>,
}

/// Customers and SKUs in a benchmark.
const CUSTOMERS: usize = 50;
const SKUS: usize = 20;

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

/// Registers customers and products with plenty of stock, then waits until
/// an order with every SKU goes through for the last customer.
pub async fn populate(stack: &Stack) -> anyhow::Result<World> {
    let mut inventory = InventoryServiceClient::new(stack.channel("inventory")?);
    let customers = stack.register_customers(CUSTOMERS, "b").await?;
    let mut skus = Vec::new();
    for i in 0..SKUS {
        let sku = format!("BENCH-{i}");
        let request = CreateProductRequest {
            sku: sku.clone(),
            name: format!("Product {i}"),
            price_cents: 100 + 7 * i as i64,
            initial_stock: 1_000_000_000,
        };
        inventory.create_product(request).await?;
        skus.push(sku);
    }
    let world = World { customers, skus };
    let last = world.customers.len() - 1;
    let lines = world
        .skus
        .iter()
        .map(|sku| LineItem {
            sku: sku.clone(),
            quantity: 1,
        })
        .collect();
    let request = PlaceOrderRequest {
        customer_id: world.customers[last].clone(),
        lines,
        idempotency_key: "warm-up".into(),
    };
    place_retrying(
        &mut OrderServiceClient::new(stack.channel("order")?),
        request,
    )
    .await?;
    Ok(world)
}

/// Places `request`, retrying while the order service's replicas catch up.
pub async fn place_retrying(
    client: &mut OrderServiceClient<Channel>,
    request: PlaceOrderRequest,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match client.place_order(request.clone()).await {
            Ok(order) => return Ok(order.into_inner().order_id),
            Err(status)
                if status.code() == Code::FailedPrecondition && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(status) => anyhow::bail!("PlaceOrder: {status:?}"),
        }
    }
}

/// A small deterministic generator.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// A typical order: one or two lines of one to three units.
pub fn order(world: &World, rng: &mut Lcg) -> PlaceOrderRequest {
    let customer_id = world.customers[rng.below(world.customers.len())].clone();
    let first = rng.below(world.skus.len());
    let mut lines = vec![LineItem {
        sku: world.skus[first].clone(),
        quantity: 1 + rng.below(3) as i32,
    }];
    if rng.below(2) == 0 {
        let second = (first + 1 + rng.below(world.skus.len() - 1)) % world.skus.len();
        lines.push(LineItem {
            sku: world.skus[second].clone(),
            quantity: 1 + rng.below(3) as i32,
        });
    }
    PlaceOrderRequest {
        customer_id,
        lines,
        idempotency_key: String::new(),
    }
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
