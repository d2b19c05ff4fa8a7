//! The clients: customers and products first, then orders at a steady rate,
//! every tenth cancelled right after it is placed. Each order has an
//! idempotency key, so a client retries an UNAVAILABLE answer safely, as a
//! real client would; an order counts as accepted once the service said OK.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dbps::{
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        CancelOrderRequest, LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient,
    },
};
use tokio::sync::Semaphore;
use tonic::{Code, transport::Channel};

use testkit::stack::Stack;

/// Customers and products of a scenario.
#[derive(Clone, Debug)]
pub struct World {
    pub customers: Vec<String>,
    /// (sku, price, initial stock)
    pub products: Vec<(String, i64, i64)>,
}

/// An order the service accepted.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub order_id: String,
    pub at: Instant,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: Vec<Accepted>,
    /// UNAVAILABLE answers (retried).
    pub unavailable: u64,
    /// Answers no client should ever get (INTERNAL, UNKNOWN, …), verbatim.
    pub unexpected: Vec<String>,
}

const CUSTOMERS: usize = 20;
const PRODUCTS: usize = 10;

/// Registers the customers and products (the clients retry orders until the
/// order service has heard of them).
pub async fn setup(stack: &Stack, orders: usize) -> anyhow::Result<World> {
    let mut inventory = InventoryServiceClient::new(stack.channel("inventory")?);
    let customers = stack.register_customers(CUSTOMERS, "c").await?;
    // About three units an order over ten SKUs; stock for ~75 % of it, so
    // some orders are rejected.
    let stock = (orders as i64 * 3 * 3 / 4 / PRODUCTS as i64).max(5);
    let mut products = Vec::new();
    for i in 0..PRODUCTS {
        let sku = format!("SKU-{i}");
        let price = 100 + 137 * i as i64;
        let request = CreateProductRequest {
            sku: sku.clone(),
            name: format!("Product {i}"),
            price_cents: price,
            initial_stock: stock,
        };
        inventory.create_product(request).await?;
        products.push((sku, price, stock));
    }
    Ok(World {
        customers,
        products,
    })
}

/// A tiny deterministic generator, so every run places the same orders.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n as u64) as usize
    }
}

/// Places `orders` orders at `rate` per second, 32 in flight at most.
pub async fn run(
    client: OrderServiceClient<Channel>,
    world: World,
    orders: usize,
    rate: u32,
) -> anyhow::Result<Outcome> {
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let in_flight = Arc::new(Semaphore::new(32));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut rng = Lcg(7);
    let mut tasks = Vec::with_capacity(orders);
    for i in 0..orders {
        ticker.tick().await;
        let customer = world.customers[rng.below(world.customers.len())].clone();
        let mut lines = Vec::new();
        let first = rng.below(world.products.len());
        lines.push(LineItem {
            sku: world.products[first].0.clone(),
            quantity: 1 + rng.below(3) as i32,
        });
        if rng.below(2) == 0 {
            let second = (first + 1 + rng.below(world.products.len() - 1)) % world.products.len();
            lines.push(LineItem {
                sku: world.products[second].0.clone(),
                quantity: 1 + rng.below(3) as i32,
            });
        }
        let request = PlaceOrderRequest {
            customer_id: customer,
            lines,
            idempotency_key: format!("load-{i}"),
        };
        let permit = in_flight.clone().acquire_owned().await?;
        let (client, outcome) = (client.clone(), outcome.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            place(client, request, i % 10 == 0, &outcome).await;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let outcome = std::mem::take(&mut *outcome.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(outcome)
}

/// One client: place (retrying what a client should retry), then maybe cancel.
async fn place(
    mut client: OrderServiceClient<Channel>,
    request: PlaceOrderRequest,
    cancel: bool,
    outcome: &Mutex<Outcome>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pause = Duration::from_millis(20);
    let order_id = loop {
        match client.place_order(request.clone()).await {
            Ok(order) => break order.into_inner().order_id,
            Err(status) => {
                let retry = match status.code() {
                    // The order service has not heard of the customer or SKU yet.
                    Code::FailedPrecondition => true,
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
                        if let Ok(mut outcome) = outcome.lock() {
                            outcome.unavailable += 1;
                        }
                        true
                    }
                    _ => false,
                };
                if !retry || Instant::now() > deadline {
                    if let Ok(mut outcome) = outcome.lock() {
                        outcome.unexpected.push(format!(
                            "PlaceOrder {}: {status:?}",
                            request.idempotency_key
                        ));
                    }
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    };
    if let Ok(mut outcome) = outcome.lock() {
        outcome.accepted.push(Accepted {
            order_id: order_id.clone(),
            at: Instant::now(),
        });
    }
    if cancel {
        let request = CancelOrderRequest {
            order_id,
            reason: "fault suite".into(),
        };
        for _ in 0..20 {
            match client.cancel_order(request.clone()).await {
                // Cancelled, or already rejected: both fine.
                Ok(_) => return,
                Err(status) if status.code() == Code::FailedPrecondition => return,
                Err(status)
                    if matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded) =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(status) => {
                    if let Ok(mut outcome) = outcome.lock() {
                        outcome.unexpected.push(format!("CancelOrder: {status:?}"));
                    }
                    return;
                }
            }
        }
    }
}
