//! Two replicas of every service on the same databases and queues: what a
//! client writes through one replica it reads through the other, and the
//! handlers stay right when the replicas race for the same order's events.

use std::collections::BTreeMap;

use dbps::{
    customer::v1::customer_service_client::CustomerServiceClient,
    inventory::v1::inventory_service_client::InventoryServiceClient,
    order::v1::{
        CancelOrderRequest, LineItem, Order, OrderStatus, PlaceOrderRequest, WatchOrderRequest,
        order_service_client::OrderServiceClient,
    },
    reporting::v1::{
        GetCustomerOrderHistoryRequest, reporting_service_client::ReportingServiceClient,
    },
};
use futures_util::future::join_all;
use testkit::{Running, eventually};
use tokio_stream::StreamExt;
use tonic::{Streaming, transport::Channel};

use crate::support::{CUSTOMER, Deployment, INVENTORY, ORDER, REPORTING, System, WAIT};

/// The second replica of each service, with clients to it.
struct Second {
    _running: Vec<Running>,
    customers: CustomerServiceClient<Channel>,
    inventory: InventoryServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
    reporting: ReportingServiceClient<Channel>,
}

impl Second {
    async fn start(system: &System, flags: &[&str]) -> Second {
        let mut running = Vec::new();
        for service in [CUSTOMER, INVENTORY, ORDER, REPORTING] {
            running.push(system.spawn_replica(service, flags).await);
        }
        Second {
            customers: CustomerServiceClient::new(running[0].channel()),
            inventory: InventoryServiceClient::new(running[1].channel()),
            orders: OrderServiceClient::new(running[2].channel()),
            reporting: ReportingServiceClient::new(running[3].channel()),
            _running: running,
        }
    }
}

fn order_request(customer_id: &str, sku: &str, quantity: i32, key: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        customer_id: customer_id.into(),
        lines: vec![LineItem {
            sku: sku.into(),
            quantity,
        }],
        idempotency_key: key.into(),
    }
}

async fn next_status(stream: &mut Streaming<Order>) -> Option<OrderStatus> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an update in time")
        .map(|order| order.unwrap().status())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_writes_through_one_replica_and_reads_the_whole_flow_through_the_other() {
    let system = System::start(Deployment::DatabasePerService).await;
    let second = Second::start(&system, &[]).await;

    let customer = system.customer("replicas@example.com").await;
    system.product("LAMP", 2_000, 5).await;
    // The catalog and the customer reach the order service through events;
    // the first order waits for them.
    let first = system.place(&customer, &[("LAMP", 1)], "first").await;

    // The same idempotency key through both replicas at once: one order.
    let racing = join_all([
        system
            .orders
            .clone()
            .place_order(order_request(&customer, "LAMP", 2, "race")),
        second
            .orders
            .clone()
            .place_order(order_request(&customer, "LAMP", 2, "race")),
    ])
    .await;
    let ids: Vec<String> = racing
        .into_iter()
        .map(|placed| placed.unwrap().into_inner().order_id)
        .collect();
    assert_eq!(ids[0], ids[1], "one order for one idempotency key");
    let order_id = ids[0].clone();

    // Watch on the replica that did not take the order.
    let mut watch = second
        .orders
        .clone()
        .watch_order(WatchOrderRequest {
            order_id: order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = next_status(&mut watch).await;
    if seen == Some(OrderStatus::Pending) {
        seen = next_status(&mut watch).await;
    }
    assert_eq!(seen, Some(OrderStatus::Approved));
    system
        .wait_status(&first.order_id, OrderStatus::Approved)
        .await;

    // Points and stock read through the second replicas.
    let points = |client: CustomerServiceClient<Channel>| {
        let customer = customer.clone();
        async move {
            client
                .clone()
                .get_customer(dbps::customer::v1::GetCustomerRequest {
                    customer_id: customer,
                })
                .await
                .unwrap()
                .into_inner()
                .loyalty_points
        }
    };
    let stock = |client: InventoryServiceClient<Channel>| async move {
        let product = client
            .clone()
            .get_product(dbps::inventory::v1::GetProductRequest { sku: "LAMP".into() })
            .await
            .unwrap()
            .into_inner();
        (product.available, product.reserved)
    };
    eventually("600 points on the second replica", WAIT, || async {
        (points(second.customers.clone()).await == 600).then_some(())
    })
    .await;
    assert_eq!(stock(second.inventory.clone()).await, (2, 3));

    // Cancel through the first replica; the watcher on the second sees it.
    system
        .orders
        .clone()
        .cancel_order(CancelOrderRequest {
            order_id: order_id.clone(),
            reason: "changed my mind".into(),
        })
        .await
        .unwrap();
    assert_eq!(next_status(&mut watch).await, Some(OrderStatus::Cancelled));
    assert_eq!(next_status(&mut watch).await, None);
    eventually("points reversed, stock released", WAIT, || async {
        let done = points(second.customers.clone()).await == 200
            && stock(second.inventory.clone()).await == (4, 1);
        done.then_some(())
    })
    .await;

    // The read side, through its second replica.
    let history = eventually("both orders in the history", WAIT, || async {
        let history = second
            .reporting
            .clone()
            .get_customer_order_history(GetCustomerOrderHistoryRequest {
                customer_id: customer.clone(),
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        let statuses: BTreeMap<String, OrderStatus> = history
            .orders
            .iter()
            .map(|summary| (summary.order_id.clone(), summary.status()))
            .collect();
        (statuses.get(&order_id) == Some(&OrderStatus::Cancelled)
            && statuses.get(&first.order_id) == Some(&OrderStatus::Approved))
        .then_some(history)
    })
    .await;
    assert_eq!(history.orders.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_relay_and_consumer_take_over_when_a_replica_stops() {
    let mut system = System::start(Deployment::SharedDatabase).await;
    let second = Second::start(&system, &[]).await;
    let customer = system.customer("takeover@example.com").await;
    system.product("DESK", 10_000, 10).await;
    let before = system.place(&customer, &[("DESK", 1)], "before").await;
    system
        .wait_status(&before.order_id, OrderStatus::Approved)
        .await;

    // The first replicas were first to lead and to consume: stop them all.
    for service in [ORDER, INVENTORY, CUSTOMER] {
        system.stop_service(service).await;
    }
    let placed = second
        .orders
        .clone()
        .place_order(order_request(&customer, "DESK", 2, "after"))
        .await
        .unwrap()
        .into_inner();
    eventually(
        "the order approved by the second replicas",
        WAIT,
        || async {
            let order = second
                .orders
                .clone()
                .get_order(dbps::order::v1::GetOrderRequest {
                    order_id: placed.order_id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            (order.status() == OrderStatus::Approved).then_some(())
        },
    )
    .await;
}

/// Without single active consumers, the replicas of each service compete
/// for every queue, so an order's `order.created` and `order.cancelled` can
/// be applied in either order, by different replicas at the same moment.
/// The effects must still be exactly those of the final statuses.
#[tokio::test(flavor = "multi_thread")]
async fn handlers_stay_right_when_competing_replicas_apply_events_out_of_order() {
    const FLAGS: &[&str] = &["--consumer-single-active", "false"];
    const ORDERS: usize = 40;
    const STOCK: i64 = 25;
    let system = System::start_flagged(Deployment::SharedDatabase, FLAGS).await;
    let second = Second::start(&system, &[]).await;
    let customer = system.customer("racing@example.com").await;
    system.product("CHAIR", 1_000, STOCK).await;
    let warm_up = system.place(&customer, &[("CHAIR", 1)], "warm-up").await;

    // Place through both replicas, cancelling every other order at once, so
    // creations and cancellations of one order are in flight together.
    let placing = (0..ORDERS).map(|i| {
        let orders = if i % 2 == 0 {
            system.orders.clone()
        } else {
            second.orders.clone()
        };
        let other = if i % 2 == 0 {
            second.orders.clone()
        } else {
            system.orders.clone()
        };
        let request = order_request(&customer, "CHAIR", 1, &format!("race-{i}"));
        async move {
            // UNAVAILABLE (a pool wait that timed out under this burst) is
            // retryable: again, with the same idempotency key.
            let order = eventually("the order to be placed", WAIT, || {
                let (mut orders, request) = (orders.clone(), request.clone());
                async move {
                    match orders.place_order(request).await {
                        Ok(order) => Some(order.into_inner()),
                        Err(status) if status.code() == tonic::Code::Unavailable => None,
                        Err(status) => panic!("{status:?}"),
                    }
                }
            })
            .await;
            if i % 2 == 0 {
                // Cancelling may lose to a rejection: either ends the order.
                let _ = other
                    .clone()
                    .cancel_order(CancelOrderRequest {
                        order_id: order.order_id.clone(),
                        reason: "race".into(),
                    })
                    .await;
            }
            order.order_id
        }
    });
    let mut ids = join_all(placing).await;
    ids.push(warm_up.order_id);

    // Every order settles; then points and stock match the statuses.
    let settled = eventually("every order decided", WAIT, || async {
        let mut statuses = Vec::with_capacity(ids.len());
        for id in &ids {
            let status = system.order(id).await.status();
            if status == OrderStatus::Pending {
                return None;
            }
            statuses.push(status);
        }
        Some(statuses)
    })
    .await;
    let approved = settled
        .iter()
        .filter(|s| **s == OrderStatus::Approved)
        .count() as i64;
    assert!(approved <= STOCK, "{approved} approved for {STOCK} units");
    // 10 % of 1,000 cents per approved order.
    system.wait_points(&customer, 100 * approved).await;
    system.wait_stock("CHAIR", STOCK - approved, approved).await;
}
