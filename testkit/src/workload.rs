//! The workload the bench, the fault suite and the system tests drive: a
//! world of customers and products made through the services' gRPC APIs,
//! orders drawn from it by a seeded generator, placing with retry as a real
//! client would, and raw confirmed publishing for baselines and poison.
//!
//! [`place`] retries, with the same idempotency key (so it never doubles an
//! order), whatever a client should ask again: UNAVAILABLE (a replica or its
//! database or broker down), DEADLINE_EXCEEDED, CANCELLED, ABORTED (gRPC's
//! "retry at a higher level"), a [`transport_failure`], and
//! FAILED_PRECONDITION (the order service has not heard of the customer or
//! SKU yet). All but the last go to the next replica given.

use std::time::{Duration, Instant};

use dbps::{
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use lapin::{
    BasicProperties, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use rand::{RngExt, SeedableRng, rngs::StdRng};
use tonic::{Code, Status, transport::Channel};

/// Customers and products every service has been told of.
#[derive(Clone, Debug)]
pub struct World {
    /// Customer IDs.
    pub customers: Vec<String>,
    /// The catalog.
    pub products: Vec<Product>,
}

/// A product of a [`World`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Product {
    /// Its SKU.
    pub sku: String,
    /// Its price.
    pub price_cents: i64,
    /// Units in stock when it was created.
    pub initial_stock: i64,
}

/// What [`World::create`] makes.
#[derive(Clone, Copy, Debug)]
pub struct Shape<'a> {
    /// How many customers.
    pub customers: usize,
    /// Customer emails are `<email_tag><i>@<email_domain>.example`.
    pub email_tag: &'a str,
    /// See `email_tag`; unique per database, so worlds can share one.
    pub email_domain: &'a str,
    /// How many products.
    pub products: usize,
    /// SKUs are `<sku_prefix>-<i>`.
    pub sku_prefix: &'a str,
    /// Product `i` costs `100 + price_step * i` cents.
    pub price_step: i64,
    /// Units of each product in stock.
    pub stock: i64,
}

impl World {
    /// Registers the customers and creates the products of `shape` through
    /// the customer and inventory services. The order service hears of them
    /// later, through events; [`place`] retries until it has.
    pub async fn create(
        customer: Channel,
        inventory: Channel,
        shape: &Shape<'_>,
    ) -> anyhow::Result<World> {
        let customers = crate::stack::register_customers(
            customer,
            shape.customers,
            shape.email_tag,
            shape.email_domain,
        )
        .await?;
        let mut inventory = InventoryServiceClient::new(inventory);
        let mut products = Vec::with_capacity(shape.products);
        for i in 0..shape.products {
            let product = Product {
                sku: format!("{}-{i}", shape.sku_prefix),
                price_cents: 100 + shape.price_step * i as i64,
                initial_stock: shape.stock,
            };
            let request = CreateProductRequest {
                sku: product.sku.clone(),
                name: format!("Product {i}"),
                price_cents: product.price_cents,
                initial_stock: product.initial_stock,
            };
            inventory.create_product(request).await?;
            products.push(product);
        }
        Ok(World {
            customers,
            products,
        })
    }
}

/// Orders drawn from a world: the same seed, the same orders.
#[derive(Debug)]
pub struct Orders {
    rng: StdRng,
}

impl Orders {
    /// A generator seeded with `seed`.
    pub fn seeded(seed: u64) -> Orders {
        Orders {
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A typical order: a random customer, one line or two (half each, of
    /// different SKUs) of one to three units; no idempotency key. Panics on
    /// a world without customers or products.
    pub fn draw(&mut self, world: &World) -> PlaceOrderRequest {
        let rng = &mut self.rng;
        let skus = world.products.len();
        let customer_id = world.customers[rng.random_range(0..world.customers.len())].clone();
        let first = rng.random_range(0..skus);
        let mut lines = vec![LineItem {
            sku: world.products[first].sku.clone(),
            quantity: rng.random_range(1..=3),
        }];
        if skus > 1 && rng.random_bool(0.5) {
            let second = (first + rng.random_range(1..skus)) % skus;
            lines.push(LineItem {
                sku: world.products[second].sku.clone(),
                quantity: rng.random_range(1..=3),
            });
        }
        PlaceOrderRequest {
            customer_id,
            lines,
            idempotency_key: String::new(),
        }
    }
}

/// How long [`place`] keeps asking.
pub const PLACE_DEADLINE: Duration = Duration::from_secs(120);

/// How [`place`] went.
#[derive(Debug)]
pub struct Placed {
    /// The order's ID, or the answer [`place`] gave up on.
    pub result: Result<String, Status>,
    /// When the last attempt was sent.
    pub sent: Instant,
    /// Retryable answers on the way ([`retryable`]; FAILED_PRECONDITION is
    /// not counted).
    pub retried: u64,
    /// Of those, [`transport_failure`]s.
    pub transport_failures: u64,
    /// Index into the clients of the replica asked last.
    pub replica: usize,
}

/// Places `request` with `clients[first]`, retrying (see the module
/// comment) for up to [`PLACE_DEADLINE`], backing off from 20 ms to 1 s;
/// a retry after a [`retryable`] answer goes to the next client. Panics if
/// `clients` is empty.
pub async fn place(
    clients: &[OrderServiceClient<Channel>],
    first: usize,
    request: &PlaceOrderRequest,
) -> Placed {
    let deadline = Instant::now() + PLACE_DEADLINE;
    let mut pause = Duration::from_millis(20);
    let mut attempt = first;
    let (mut retried, mut transport_failures) = (0, 0);
    loop {
        let replica = attempt % clients.len();
        let mut client = clients[replica].clone();
        let sent = Instant::now();
        let result = match client.place_order(request.clone()).await {
            Ok(order) => Ok(order.into_inner().order_id),
            Err(status) => {
                let retry = match status.code() {
                    Code::FailedPrecondition => true,
                    _ if retryable(&status) => {
                        retried += 1;
                        transport_failures += u64::from(transport_failure(&status));
                        attempt += 1;
                        true
                    }
                    _ => false,
                };
                if retry && Instant::now() <= deadline {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                    continue;
                }
                Err(status)
            }
        };
        return Placed {
            result,
            sent,
            retried,
            transport_failures,
            replica,
        };
    }
}

/// Whether a client should ask again, with the same idempotency key:
/// UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, ABORTED or a
/// [`transport_failure`].
pub fn retryable(status: &Status) -> bool {
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
/// which gRPC clients elsewhere retry transparently).
pub fn transport_failure(status: &Status) -> bool {
    matches!(status.code(), Code::Unknown | Code::Internal)
        && std::error::Error::source(status)
            .is_some_and(|source| source.is::<tonic::transport::Error>())
}

/// A channel of `amqp` in confirm mode, for [`publish_confirmed`].
pub async fn confirm_channel(amqp: &broker::Amqp) -> anyhow::Result<lapin::Channel> {
    let channel = amqp.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Properties of a persistent message with a fresh (version 7) message ID.
pub fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_message_id(uuid::Uuid::now_v7().to_string().into())
        .with_delivery_mode(2)
}

/// Publishes `messages` (payload, properties) to `exchange` under
/// `routing_key`, mandatory, on a [`confirm_channel`], then waits for the
/// broker's confirms every `window` messages and at the end; fails unless
/// it confirms every one routed to a queue.
pub async fn publish_confirmed<P: AsRef<[u8]>>(
    channel: &lapin::Channel,
    exchange: &str,
    routing_key: &str,
    window: usize,
    messages: impl IntoIterator<Item = (P, BasicProperties)>,
) -> anyhow::Result<()> {
    let window = window.max(1);
    let mut confirms = Vec::with_capacity(window);
    for (payload, properties) in messages {
        let options = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        confirms.push(
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    options,
                    payload.as_ref(),
                    properties,
                )
                .await?,
        );
        if confirms.len() == window {
            routed(&mut confirms, routing_key).await?;
        }
    }
    routed(&mut confirms, routing_key).await
}

/// Waits for `confirms`, which must all be plain acks.
async fn routed(confirms: &mut Vec<PublisherConfirm>, routing_key: &str) -> anyhow::Result<()> {
    for confirm in confirms.drain(..) {
        let confirmation = confirm.await?;
        anyhow::ensure!(
            matches!(confirmation, lapin::Confirmation::Ack(None)),
            "{routing_key} not confirmed routed: {confirmation:?}"
        );
    }
    Ok(())
}
