//! The clients: customers and products first, then orders at a steady rate,
//! every tenth cancelled right after it is placed. Each order has an
//! idempotency key, so a client retries safely, as a real client would
//! ([`workload::place`]: what it asks again, and how); an order counts as
//! accepted once the service said OK.
//!
//! Given several replicas of the order service, the clients alternate between
//! them, and a retry goes to the next replica (with the same key, so it never
//! doubles an order). Anything not retried is a client-visible error
//! (`Outcome::unexpected`).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use dbps::order::v1::{
    CancelOrderRequest, PlaceOrderRequest, order_service_client::OrderServiceClient,
};
use tokio::sync::Semaphore;
use tonic::{Code, transport::Channel};

use testkit::{
    stack::Stack,
    workload::{self, Orders, Shape, World},
};

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
    /// Of those, failures the client made up ([`workload::transport_failure`]).
    pub transport_failures: u64,
    /// Answers no client should ever get (INTERNAL, UNKNOWN, …), verbatim.
    pub unexpected: Vec<String>,
}

/// 20 customers `c<i>@<email_domain>.example` and 10 products
/// `<sku_prefix>-<i>`, stocked for about 75 % of `orders` (about three units
/// an order over ten SKUs), so some orders are rejected.
fn shape<'a>(email_domain: &'a str, sku_prefix: &'a str, orders: usize) -> Shape<'a> {
    const PRODUCTS: usize = 10;
    Shape {
        customers: 20,
        email_tag: "c",
        email_domain,
        products: PRODUCTS,
        sku_prefix,
        price_step: 137,
        stock: (orders as i64 * 3 * 3 / 4 / PRODUCTS as i64).max(5),
    }
}

/// Registers the customers and products (the clients retry orders until the
/// order service has heard of them).
pub async fn setup(stack: &Stack, orders: usize) -> anyhow::Result<World> {
    let shape = shape(&stack.prefix, "SKU", orders);
    World::create(
        stack.channel("customer")?,
        stack.channel("inventory")?,
        &shape,
    )
    .await
}

/// [`setup`] against given customer and inventory services, with customers
/// and SKUs named after `tag` (unique in the databases they share).
pub async fn setup_tagged(
    customer: Channel,
    inventory: Channel,
    tag: &str,
    orders: usize,
) -> anyhow::Result<World> {
    let sku_prefix = format!("{tag}-SKU");
    World::create(customer, inventory, &shape(tag, &sku_prefix, orders)).await
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
    let mut generator = Orders::seeded(7);
    let mut tasks = Vec::new();
    for i in 0..orders {
        ticker.tick().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let request = PlaceOrderRequest {
            idempotency_key: format!("load-{i}"),
            ..generator.draw(&world)
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

/// One client: place (retrying what a client should retry, each retry on
/// the next replica, starting with replica `first`), then maybe cancel.
pub async fn place(
    clients: &[OrderServiceClient<Channel>],
    first: usize,
    request: PlaceOrderRequest,
    cancel: bool,
    outcome: &Mutex<Outcome>,
) {
    let placed = workload::place(clients, first, &request).await;
    if let Ok(mut outcome) = outcome.lock() {
        outcome.unavailable += placed.retried;
        outcome.transport_failures += placed.transport_failures;
        match &placed.result {
            Ok(order_id) => outcome.accepted.push(Accepted {
                order_id: order_id.clone(),
                at: Instant::now(),
                sent: placed.sent,
            }),
            Err(status) => outcome.unexpected.push(format!(
                "PlaceOrder {}: {status:?}",
                request.idempotency_key
            )),
        }
    }
    let Ok(order_id) = placed.result else {
        return;
    };
    if cancel {
        let mut attempt = placed.replica;
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
                Err(status) if workload::retryable(&status) => {
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
