//! The clients: customers and products first, then orders at a steady rate,
//! every tenth cancelled right after it is placed. Each order has an
//! idempotency key, so a client retries an UNAVAILABLE answer safely, as a
//! real client would; an order counts as accepted once the service said OK.
//!
//! Given several replicas of the order service, the clients alternate between
//! them, and a retry goes to the next replica (with the same key, so it never
//! doubles an order). Retried: UNAVAILABLE (replica or its database/broker
//! down), DEADLINE_EXCEEDED, CANCELLED and the client's own UNKNOWN or
//! INTERNAL transport errors (the connection died with the request in
//! flight, or a shutting-down server refused the stream with GOAWAY: the
//! key makes asking again safe), ABORTED (gRPC's
//! "retry at a higher level"), and FAILED_PRECONDITION
//! from PlaceOrder (the order service has not heard of the customer or SKU
//! yet). Anything else is a client-visible error (`Outcome::unexpected`).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use dbps::{
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{
        CancelOrderRequest, LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient,
    },
};
use tokio::sync::Semaphore;
use tonic::{Code, Status, transport::Channel};

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
    /// When the OK arrived.
    pub at: Instant,
    /// When the attempt that got the OK was sent.
    pub sent: Instant,
}

/// What the clients saw.
#[derive(Debug, Default)]
pub struct Outcome {
    pub accepted: Vec<Accepted>,
    /// Retryable answers (UNAVAILABLE and the like; retried).
    pub unavailable: u64,
    /// Of those, failures the client made up (see `transport_failure`).
    pub transport_failures: u64,
    /// Answers no client should ever get (INTERNAL, UNKNOWN, …), verbatim.
    pub unexpected: Vec<String>,
}

const CUSTOMERS: usize = 20;
const PRODUCTS: usize = 10;

/// Registers the customers and products (the clients retry orders until the
/// order service has heard of them).
pub async fn setup(stack: &Stack, orders: usize) -> anyhow::Result<World> {
    let customers = stack.register_customers(CUSTOMERS, "c").await?;
    let products = create_products(stack.channel("inventory")?, "SKU", orders).await?;
    Ok(World {
        customers,
        products,
    })
}

/// [`setup`] against given customer and inventory services, with customers
/// and SKUs named after `tag` (unique in the databases they share).
pub async fn setup_tagged(
    customer: Channel,
    inventory: Channel,
    tag: &str,
    orders: usize,
) -> anyhow::Result<World> {
    let customers = testkit::stack::register_customers(customer, CUSTOMERS, "c", tag).await?;
    let products = create_products(inventory, &format!("{tag}-SKU"), orders).await?;
    Ok(World {
        customers,
        products,
    })
}

/// `PRODUCTS` products `<sku_prefix>-<i>` stocked for about 75 % of `orders`,
/// so some orders are rejected.
async fn create_products(
    inventory: Channel,
    sku_prefix: &str,
    orders: usize,
) -> anyhow::Result<Vec<(String, i64, i64)>> {
    let mut inventory = InventoryServiceClient::new(inventory);
    // About three units an order over ten SKUs.
    let stock = (orders as i64 * 3 * 3 / 4 / PRODUCTS as i64).max(5);
    let mut products = Vec::new();
    for i in 0..PRODUCTS {
        let sku = format!("{sku_prefix}-{i}");
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
    Ok(products)
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
    run_until(vec![client], world, orders, rate, Arc::default()).await
}

/// Like [`run`] over several replicas (order `i` goes to replica `i mod n`
/// first), stopping early once `stop` is set.
pub async fn run_until(
    clients: Vec<OrderServiceClient<Channel>>,
    world: World,
    orders: usize,
    rate: u32,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(!clients.is_empty(), "no order service to place orders with");
    let clients: Arc<[OrderServiceClient<Channel>]> = clients.into();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let in_flight = Arc::new(Semaphore::new(32));
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut rng = Lcg(7);
    let mut tasks = Vec::new();
    for i in 0..orders {
        ticker.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
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
        let (clients, outcome) = (clients.clone(), outcome.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            place(&clients, i, request, i % 10 == 0, &outcome).await;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let outcome = std::mem::take(&mut *outcome.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    Ok(outcome)
}

/// Whether a client should ask again (see the module comment).
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted
    ) || transport_failure(status)
}

/// An UNKNOWN or INTERNAL the client made up itself (a server's status
/// carries no transport error as its source) because the connection failed
/// under the request: reset by a replica that died (UNKNOWN, outcome
/// unknown), or a stream the server refused with its GOAWAY while shutting
/// down gracefully (tonic's INTERNAL "h2 protocol error": never processed,
/// which gRPC clients elsewhere retry transparently). Asked again like
/// UNAVAILABLE, and counted apart.
fn transport_failure(status: &Status) -> bool {
    matches!(status.code(), Code::Unknown | Code::Internal)
        && std::error::Error::source(status)
            .is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// One client: place (retrying what a client should retry, each retry on
/// the next replica, starting with replica `first`), then maybe cancel.
pub async fn place(
    clients: &[OrderServiceClient<Channel>],
    first: usize,
    request: PlaceOrderRequest,
    cancel: bool,
    outcome: &Mutex<Outcome>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut pause = Duration::from_millis(20);
    let mut attempt = first;
    let order_id = loop {
        let mut client = clients[attempt % clients.len()].clone();
        let sent = Instant::now();
        match client.place_order(request.clone()).await {
            Ok(order) => break (order.into_inner().order_id, sent),
            Err(status) => {
                let retry = match status.code() {
                    // The order service has not heard of the customer or SKU yet.
                    Code::FailedPrecondition => true,
                    _ if retryable(&status) => {
                        if let Ok(mut outcome) = outcome.lock() {
                            outcome.unavailable += 1;
                            outcome.transport_failures += u64::from(transport_failure(&status));
                        }
                        attempt += 1;
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
    let (order_id, sent) = order_id;
    if let Ok(mut outcome) = outcome.lock() {
        outcome.accepted.push(Accepted {
            order_id: order_id.clone(),
            at: Instant::now(),
            sent,
        });
    }
    if cancel {
        let request = CancelOrderRequest {
            order_id,
            reason: "fault suite".into(),
        };
        for _ in 0..20 {
            let mut client = clients[attempt % clients.len()].clone();
            match client.cancel_order(request.clone()).await {
                // Cancelled, or already rejected: both fine.
                Ok(_) => return,
                Err(status) if status.code() == Code::FailedPrecondition => return,
                Err(status) if retryable(&status) => {
                    attempt += 1;
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
