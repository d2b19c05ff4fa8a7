//! Events projected in runs: several events of one customer, product or
//! order handed to the handlers together leave the read models exactly as
//! applying them one by one would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use dbps::{
    customer::v1::{CustomerRegistered, LoyaltyPointsChanged},
    inventory::v1::ProductChanged,
    order::v1::{OrderApproved, OrderCancelled, OrderCreated, OrderLine, OrderStatus},
    reporting::v1::{
        GetCustomerOrderHistoryRequest, GetSalesBySkuRequest,
        reporting_service_client::ReportingServiceClient,
    },
};
use reporting_service::{SERVICE, config::Config, startup::build};
use testkit::{TestEnv, eventually};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

fn config(env: &TestEnv) -> Config {
    let nowhere = "http://127.0.0.1:9";
    let args = [
        "--customer-addr",
        nowhere,
        "--order-addr",
        nowhere,
        "--inventory-addr",
        nowhere,
    ];
    env.config_for(&SERVICE, &env.database, &args)
}

fn tea(version: i64, name: &str) -> ProductChanged {
    ProductChanged {
        sku: "TEA".into(),
        name: name.into(),
        price_cents: 100,
        version,
        ..Default::default()
    }
}

fn points(customer_id: &str, balance: i64, version: i64) -> LoyaltyPointsChanged {
    LoyaltyPointsChanged {
        customer_id: customer_id.into(),
        balance,
        version,
        ..Default::default()
    }
}

fn created(order_id: &str, customer_id: &str, quantity: i32) -> OrderCreated {
    OrderCreated {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        total_cents: i64::from(quantity) * 100,
        lines: vec![OrderLine {
            sku: "TEA".into(),
            quantity,
            unit_price_cents: 100,
        }],
        ..Default::default()
    }
}

fn approved(order_id: &str, customer_id: &str) -> OrderApproved {
    OrderApproved {
        order_id: order_id.into(),
        customer_id: customer_id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_with_repeated_keys_project_as_one_by_one() {
    let env = TestEnv::new().await;
    // Declare the queues, then let the events pile up while the service is
    // away, so that it takes them in large batches, with runs of several.
    env.spawn(&SERVICE, config(&env), build).await.stop().await;

    let customer = Uuid::now_v7().to_string();
    let (o1, o2) = (Uuid::now_v7().to_string(), Uuid::now_v7().to_string());
    for name in ["Ada", "Ada L."] {
        env.publish(&CustomerRegistered {
            customer_id: customer.clone(),
            name: name.into(),
            ..Default::default()
        })
        .await;
    }
    env.publish(&points(&customer, 300, 2)).await;
    env.publish(&points(&customer, 100, 1)).await;
    env.publish(&points(&customer, 400, 3)).await;
    env.publish(&points(&customer, 200, 2)).await;
    env.publish(&tea(1, "Tea")).await;
    env.publish(&tea(3, "Green tea")).await;
    env.publish(&tea(2, "Old tea")).await;
    env.publish(&created(&o1, &customer, 2)).await;
    env.publish(&created(&o2, &customer, 3)).await;
    env.publish(&approved(&o1, &customer)).await;
    env.publish(&approved(&o2, &customer)).await;
    env.publish(&approved(&o1, &customer)).await;
    env.publish(&OrderCancelled {
        order_id: o2.clone(),
        customer_id: customer.clone(),
        reason: "changed my mind".into(),
        ..Default::default()
    })
    .await;

    let app = env.spawn(&SERVICE, config(&env), build).await;
    let client = ReportingServiceClient::new(app.channel());
    let history = eventually("every event to be projected", WAIT, || {
        let mut client = client.clone();
        let request = GetCustomerOrderHistoryRequest {
            customer_id: customer.clone(),
            ..Default::default()
        };
        async move {
            let history = client
                .get_customer_order_history(request)
                .await
                .ok()?
                .into_inner();
            let done = history.orders.len() == 2
                && history
                    .orders
                    .iter()
                    .any(|o| o.status() == OrderStatus::Cancelled);
            done.then_some(history)
        }
    })
    .await;
    assert_eq!(history.name, "Ada L.", "the last registration wins");
    assert_eq!(history.loyalty_points, 400, "the newest balance wins");
    let statuses: Vec<(String, OrderStatus, i64)> = history
        .orders
        .iter()
        .map(|o| (o.order_id.clone(), o.status(), o.total_cents))
        .collect();
    assert_eq!(
        statuses,
        vec![
            (o2.clone(), OrderStatus::Cancelled, 300),
            (o1.clone(), OrderStatus::Approved, 200),
        ]
    );
    let sales = eventually("the sales to settle", WAIT, || {
        let mut client = client.clone();
        async move {
            let sales = client
                .get_sales_by_sku(GetSalesBySkuRequest { sku: "TEA".into() })
                .await
                .ok()?
                .into_inner();
            (sales.name == "Green tea").then_some(sales)
        }
    })
    .await;
    assert_eq!(
        (sales.units, sales.revenue_cents, sales.orders),
        (2, 200, 1),
        "only the approved order counts, once"
    );
}
