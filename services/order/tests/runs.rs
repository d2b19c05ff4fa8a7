//! Inventory answers applied in runs: several answers about one order handed
//! to the handler together move it exactly as one by one would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use dbps::{
    customer::v1::CustomerRegistered,
    inventory::v1::{ProductChanged, StockRejected, StockReserved},
    order::v1::{
        GetOrderRequest, LineItem, OrderStatus, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Text},
};
use diesel_async::RunQueryDsl;
use order_service::{SERVICE, startup::build};
use testkit::{TestEnv, eventually};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// Places an order, retrying while the replicas catch up; its ID.
async fn place(client: &OrderServiceClient<Channel>, customer_id: &str) -> String {
    let request = PlaceOrderRequest {
        customer_id: customer_id.into(),
        lines: vec![LineItem {
            sku: "BOOK".into(),
            quantity: 1,
        }],
        idempotency_key: String::new(),
    };
    eventually("the order to be accepted", WAIT, || {
        let mut client = client.clone();
        let request = request.clone();
        async move {
            match client.place_order(request).await {
                Ok(order) => Some(order.into_inner().order_id),
                Err(status) if status.code() == Code::FailedPrecondition => None,
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await
}

fn reserved(order_id: &str) -> StockReserved {
    StockReserved {
        order_id: order_id.into(),
        ..Default::default()
    }
}

fn rejected(order_id: &str) -> StockRejected {
    StockRejected {
        order_id: order_id.into(),
        reason: "no BOOK".into(),
        sku: "BOOK".into(),
        ..Default::default()
    }
}

/// How many `event_type` events the service wrote about `order_id`.
async fn written(env: &TestEnv, event_type: &str, order_id: &str) -> i64 {
    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    let mut conn = testkit::admin_connection(&env.database).await;
    diesel::sql_query(
        "SELECT count(*) AS n FROM orders.outbox WHERE event_type = $1 AND aggregate_id = $2",
    )
    .bind::<Text, _>(event_type)
    .bind::<Text, _>(order_id)
    .get_result::<Count>(&mut conn)
    .await
    .unwrap()
    .n
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_answers_about_the_same_orders_moves_each_once() {
    let env = TestEnv::new().await;
    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let client = OrderServiceClient::new(app.channel());
    let customer = Uuid::now_v7().to_string();
    env.publish(&CustomerRegistered {
        customer_id: customer.clone(),
        ..Default::default()
    })
    .await;
    env.publish(&ProductChanged {
        sku: "BOOK".into(),
        name: "Book".into(),
        price_cents: 100,
        version: 1,
        ..Default::default()
    })
    .await;
    let [o1, o2, o3, marker] = [
        place(&client, &customer).await,
        place(&client, &customer).await,
        place(&client, &customer).await,
        place(&client, &customer).await,
    ];
    // Let the answers pile up while the service is away, so that it takes
    // them in large batches, with runs of several.
    app.stop().await;
    env.publish(&reserved(&o1)).await;
    env.publish(&reserved(&o2)).await;
    env.publish(&reserved(&o1)).await; // a replay: already there
    env.publish(&rejected(&o3)).await;
    env.publish(&rejected(&o3)).await; // a replay
    env.publish(&rejected(&o1)).await; // contradicts: refused
    // Inventory's events share one queue, consumed in order: once this one
    // is applied, all the above are.
    env.publish(&reserved(&marker)).await;

    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let client = OrderServiceClient::new(app.channel());
    for (order_id, status) in [
        (&o1, OrderStatus::Approved),
        (&o2, OrderStatus::Approved),
        (&o3, OrderStatus::Rejected),
        (&marker, OrderStatus::Approved),
    ] {
        eventually(&format!("{order_id} to be {status:?}"), WAIT, || {
            let mut client = client.clone();
            async move {
                let order = client
                    .get_order(GetOrderRequest {
                        order_id: order_id.clone(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                (order.status() == status).then_some(())
            }
        })
        .await;
    }
    let counts = [
        written(&env, "order.approved", &o1).await,
        written(&env, "order.approved", &o2).await,
        written(&env, "order.rejected", &o3).await,
        written(&env, "order.rejected", &o1).await,
    ];
    assert_eq!(counts, [1, 1, 1, 0]);
}
