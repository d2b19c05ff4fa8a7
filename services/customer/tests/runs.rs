//! Order events applied in runs: several events of one customer handed to
//! the handler together leave exactly what applying them one by one would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use customer_service::{SERVICE, startup::build};
use dbps::{
    customer::v1::{
        GetCustomerRequest, LoyaltyPointsChanged, RegisterCustomerRequest,
        customer_service_client::CustomerServiceClient,
    },
    order::v1::{OrderCancelled, OrderCreated, OrderRejected},
};
use diesel::{
    QueryableByName,
    sql_types::{Bytea, Text},
};
use diesel_async::RunQueryDsl;
use prost::Message;
use testkit::{TestEnv, eventually};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn created(order_id: Uuid, customer_id: &str, total_cents: i64) -> OrderCreated {
    OrderCreated {
        order_id: order_id.to_string(),
        customer_id: customer_id.into(),
        total_cents,
        ..Default::default()
    }
}

/// The customer's `LoyaltyPointsChanged` events in outbox order.
async fn points_events(env: &TestEnv) -> Vec<LoyaltyPointsChanged> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bytea)]
        payload: Vec<u8>,
    }
    let mut conn = testkit::admin_connection(&env.database).await;
    let rows: Vec<Row> =
        diesel::sql_query("SELECT payload FROM customers.outbox WHERE event_type = $1 ORDER BY id")
            .bind::<Text, _>(<LoyaltyPointsChanged as dbps::Event>::TYPE)
            .load(&mut conn)
            .await
            .unwrap();
    rows.iter()
        .map(|row| LoyaltyPointsChanged::decode(&*row.payload).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_one_customers_events_moves_points_as_one_by_one() {
    let env = TestEnv::new().await;
    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let customer_id = CustomerServiceClient::new(app.channel())
        .register_customer(RegisterCustomerRequest {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    // The queues exist now; let the events pile up while the service is
    // away, so that it takes them in large batches, with runs of several.
    app.stop().await;

    let [o1, o2, o3, o4] = [(); 4].map(|()| Uuid::now_v7());
    env.publish(&created(o1, &customer_id, 1_000)).await;
    env.publish(&created(o2, &customer_id, 2_000)).await;
    env.publish(&created(o3, &customer_id, 3_000)).await;
    // The same order again, under another message ID: credited once.
    env.publish(&created(o1, &customer_id, 1_000)).await;
    env.publish(&OrderCancelled {
        order_id: o2.to_string(),
        customer_id: customer_id.clone(),
        ..Default::default()
    })
    .await;
    // A reversal before its credit: the credit then moves nothing.
    env.publish(&OrderRejected {
        order_id: o4.to_string(),
        customer_id: customer_id.clone(),
        ..Default::default()
    })
    .await;
    env.publish(&created(o4, &customer_id, 4_000)).await;
    env.publish(&created(o2, &customer_id, 2_000)).await;

    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let mut client = CustomerServiceClient::new(app.channel());
    eventually("every event to be applied", WAIT, || {
        let mut client = client.clone();
        let customer_id = customer_id.clone();
        async move {
            let customer = client
                .get_customer(GetCustomerRequest { customer_id })
                .await
                .ok()?
                .into_inner();
            (customer.loyalty_points == 400).then_some(())
        }
    })
    .await;

    let moves: Vec<(String, i64, i64, i64)> = points_events(&env)
        .await
        .into_iter()
        .map(|e| (e.order_id, e.delta, e.balance, e.version))
        .collect();
    assert_eq!(
        moves,
        vec![
            (o1.to_string(), 100, 100, 1),
            (o2.to_string(), 200, 300, 2),
            (o3.to_string(), 300, 600, 3),
            (o2.to_string(), -200, 400, 4),
        ]
    );
    let customer = client
        .get_customer(GetCustomerRequest { customer_id })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(customer.loyalty_points, 400);
}
