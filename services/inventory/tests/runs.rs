//! Orders reserved and released in runs: several orders of one product
//! handed to the handlers together are decided exactly as one by one.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use dbps::{
    inventory::v1::{
        CreateProductRequest, GetProductRequest, ProductChanged, StockRejected,
        inventory_service_client::InventoryServiceClient,
    },
    order::v1::{OrderCancelled, OrderCreated, OrderLine},
};
use diesel::{
    QueryableByName,
    sql_types::{Bytea, Text},
};
use diesel_async::RunQueryDsl;
use inventory_service::{SERVICE, startup::build};
use prost::Message;
use testkit::{TestEnv, eventually};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn created(order_id: Uuid, sku: &str, quantity: i32) -> OrderCreated {
    OrderCreated {
        order_id: order_id.to_string(),
        customer_id: Uuid::now_v7().to_string(),
        lines: vec![OrderLine {
            sku: sku.into(),
            quantity,
            unit_price_cents: 100,
        }],
        ..Default::default()
    }
}

fn cancelled(order_id: Uuid) -> OrderCancelled {
    OrderCancelled {
        order_id: order_id.to_string(),
        reason: "changed my mind".into(),
        ..Default::default()
    }
}

/// The payloads of the `event_type` events in outbox order.
async fn written<E: Message + Default>(env: &TestEnv, event_type: &str) -> Vec<E> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bytea)]
        payload: Vec<u8>,
    }
    let mut conn = testkit::admin_connection(&env.database).await;
    let rows: Vec<Row> =
        diesel::sql_query("SELECT payload FROM inventory.outbox WHERE event_type = $1 ORDER BY id")
            .bind::<Text, _>(event_type)
            .load(&mut conn)
            .await
            .unwrap();
    rows.iter()
        .map(|row| E::decode(&*row.payload).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_of_orders_for_one_product_is_decided_as_one_by_one() {
    let env = TestEnv::new().await;
    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    InventoryServiceClient::new(app.channel())
        .create_product(CreateProductRequest {
            sku: "PEN".into(),
            name: "Pen".into(),
            price_cents: 100,
            initial_stock: 10,
        })
        .await
        .unwrap();
    // The queue exists now; let the events pile up while the service is
    // away, so that it takes them in large batches, with runs of several.
    app.stop().await;

    let [o1, o2, o3, o4, o5] = [(); 5].map(|()| Uuid::now_v7());
    env.publish(&created(o1, "PEN", 4)).await; // 6 left
    env.publish(&created(o2, "PEN", 5)).await; // 1 left
    env.publish(&created(o3, "PEN", 3)).await; // short: rejected
    env.publish(&created(o1, "PEN", 4)).await; // a replay: decided already
    env.publish(&created(o4, "PEN", 1)).await; // 0 left
    env.publish(&cancelled(o2)).await; // 5 back
    env.publish(&cancelled(o2)).await; // nothing more
    env.publish(&cancelled(o5)).await; // before its creation:
    env.publish(&created(o5, "PEN", 1)).await; // never reserved

    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let client = InventoryServiceClient::new(app.channel());
    eventually("every event to be applied", WAIT, || {
        let mut client = client.clone();
        async move {
            let pen = client
                .get_product(GetProductRequest { sku: "PEN".into() })
                .await
                .ok()?
                .into_inner();
            ((pen.available, pen.reserved) == (5, 5)).then_some(())
        }
    })
    .await;

    let states: Vec<(i64, i64, i64)> = written::<ProductChanged>(&env, "product.changed")
        .await
        .into_iter()
        .map(|p| (p.available, p.reserved, p.version))
        .collect();
    let (_, _, v) = states[0]; // the product's creation
    assert_eq!(
        states,
        vec![
            (10, 0, v),
            (6, 4, v + 1),
            (1, 9, v + 2),
            (0, 10, v + 3),
            (5, 5, v + 4),
        ]
    );
    let rejected: Vec<(String, String)> = written::<StockRejected>(&env, "stock.rejected")
        .await
        .into_iter()
        .map(|r| (r.order_id, r.reason))
        .collect();
    assert_eq!(
        rejected,
        vec![(
            o3.to_string(),
            "insufficient stock for PEN: 1 available, 3 ordered".to_owned()
        )]
    );
    let released = written::<dbps::inventory::v1::StockReleased>(&env, "stock.released").await;
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].order_id, o2.to_string());
}
