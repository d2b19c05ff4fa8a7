//! `WatchOrder`: changes are pushed as they commit, not polled.

use dbps::order::v1::{
    CancelOrderRequest, Order, OrderStatus, WatchOrderRequest,
    order_service_client::OrderServiceClient,
};
use tokio_stream::StreamExt;
use tonic::{Streaming, transport::Channel};

use crate::support::{Deployment, INVENTORY, ORDER, System, WAIT};

async fn watch(client: &OrderServiceClient<Channel>, order_id: &str) -> Streaming<Order> {
    let request = WatchOrderRequest {
        order_id: order_id.into(),
    };
    client
        .clone()
        .watch_order(request)
        .await
        .unwrap()
        .into_inner()
}

async fn next_status(stream: &mut Streaming<Order>) -> Option<OrderStatus> {
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("an update in time")
        .map(|order| order.unwrap().status())
}

async fn cancel(system: &System, order_id: &str) {
    let request = CancelOrderRequest {
        order_id: order_id.into(),
        reason: "watched".into(),
    };
    system.orders.clone().cancel_order(request).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_sees_pending_then_approved_and_the_stream_ends_on_cancel() {
    let mut system = System::start(Deployment::SharedDatabase).await;
    let customer = system.customer("watch@example.com").await;
    system.product("CLOCK", 700, 3).await;
    system.place(&customer, &[("CLOCK", 1)], "warm-up").await;
    // Hold the saga at PENDING while the watcher connects.
    system.stop_service(INVENTORY).await;
    let order = system.place(&customer, &[("CLOCK", 1)], "").await;

    let mut stream = watch(&system.orders, &order.order_id).await;
    assert_eq!(next_status(&mut stream).await, Some(OrderStatus::Pending));
    system.start_service(INVENTORY).await;
    assert_eq!(next_status(&mut stream).await, Some(OrderStatus::Approved));
    cancel(&system, &order.order_id).await;
    assert_eq!(next_status(&mut stream).await, Some(OrderStatus::Cancelled));
    assert_eq!(
        next_status(&mut stream).await,
        None,
        "the stream ends after CANCELLED"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn five_hundred_watchers_all_follow_their_orders_to_the_end() {
    let system = System::start(Deployment::SharedDatabase).await;
    let customer = system.customer("crowd@example.com").await;
    system.product("FAN", 100, 1_000).await;
    let mut orders = Vec::new();
    for i in 0..10 {
        let order = system
            .place(&customer, &[("FAN", 1)], &format!("crowd-{i}"))
            .await;
        system
            .wait_status(&order.order_id, OrderStatus::Approved)
            .await;
        orders.push(order.order_id);
    }

    // 500 streams over 5 connections, 50 on each order.
    let address = system.running[ORDER].as_ref().unwrap().addr;
    let mut watchers = Vec::new();
    for connection in 0..5 {
        let channel = Channel::from_shared(format!("http://{address}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let client = OrderServiceClient::new(channel);
        for watcher in 0..100 {
            let order_id = orders[(connection * 100 + watcher) % orders.len()].clone();
            let mut stream = watch(&client, &order_id).await;
            assert_eq!(next_status(&mut stream).await, Some(OrderStatus::Approved));
            watchers.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                while let Some(status) = next_status(&mut stream).await {
                    seen.push(status);
                }
                seen
            }));
        }
    }
    for order_id in &orders {
        cancel(&system, order_id).await;
    }
    for watcher in watchers {
        assert_eq!(watcher.await.unwrap(), [OrderStatus::Cancelled]);
    }
}
