//! The reporting service alone, over real gRPC, Postgres and RabbitMQ: its
//! read models fed by publishing the other services' events directly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use dbps::{
    customer::v1::{CustomerRegistered, LoyaltyPointsChanged},
    inventory::v1::ProductChanged,
    order::v1::{OrderApproved, OrderCancelled, OrderCreated, OrderLine, OrderStatus},
    reporting::v1::{
        GetCustomerOrderHistoryRequest, GetCustomerOverviewRequest, GetSalesBySkuRequest,
        ListTopProductsRequest, reporting_service_client::ReportingServiceClient,
    },
};
use reporting_service::{SERVICE, config::Config, startup::build};
use testkit::{Running, TestEnv, assert_invalid, eventually};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

async fn spawn_app() -> (TestEnv, Running, ReportingServiceClient<Channel>) {
    let env = TestEnv::new().await;
    // Nothing listens on port 9: the composed overview will find every service away.
    let nowhere = "http://127.0.0.1:9";
    let args = [
        "--customer-addr",
        nowhere,
        "--order-addr",
        nowhere,
        "--inventory-addr",
        nowhere,
    ];
    let config: Config = env.config_for(&SERVICE, &env.database, &args);
    let app = env.spawn(&SERVICE, config, build).await;
    let client = ReportingServiceClient::new(app.channel());
    (env, app, client)
}

#[tokio::test(flavor = "multi_thread")]
async fn events_in_any_order_project_the_same_history_and_sales() {
    let (env, _app, mut client) = spawn_app().await;
    let customer = Uuid::now_v7().to_string();
    let order = Uuid::now_v7().to_string();
    // The cancellation and approval arrive before the order itself, and the
    // older balance after the newer one.
    env.publish(&OrderCancelled {
        order_id: order.clone(),
        customer_id: customer.clone(),
        reason: "late".into(),
        ..Default::default()
    })
    .await;
    env.publish(&OrderApproved {
        order_id: order.clone(),
        customer_id: customer.clone(),
        ..Default::default()
    })
    .await;
    env.publish(&OrderCreated {
        order_id: order.clone(),
        customer_id: customer.clone(),
        lines: vec![OrderLine {
            sku: "TEA".into(),
            quantity: 2,
            unit_price_cents: 450,
        }],
        total_cents: 900,
        ..Default::default()
    })
    .await;
    env.publish(&LoyaltyPointsChanged {
        customer_id: customer.clone(),
        balance: 0,
        version: 2,
        ..Default::default()
    })
    .await;
    env.publish(&LoyaltyPointsChanged {
        customer_id: customer.clone(),
        balance: 90,
        version: 1,
        ..Default::default()
    })
    .await;
    env.publish(&CustomerRegistered {
        customer_id: customer.clone(),
        name: "Ada".into(),
        ..Default::default()
    })
    .await;
    env.publish(&ProductChanged {
        sku: "TEA".into(),
        name: "Green tea".into(),
        version: 1,
        ..Default::default()
    })
    .await;

    let history = eventually("the history to be projected", WAIT, || {
        let mut client = client.clone();
        let request = GetCustomerOrderHistoryRequest {
            customer_id: customer.clone(),
        };
        async move {
            let history = client
                .get_customer_order_history(request)
                .await
                .ok()?
                .into_inner();
            (history.name == "Ada" && history.orders.first().is_some_and(|o| o.total_cents == 900))
                .then_some(history)
        }
    })
    .await;
    assert_eq!(history.orders[0].status(), OrderStatus::Cancelled);
    assert_eq!(history.loyalty_points, 0, "the newer balance wins");
    let sales = eventually("the product to be known", WAIT, || {
        let mut client = client.clone();
        async move {
            client
                .get_sales_by_sku(GetSalesBySkuRequest { sku: "TEA".into() })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    })
    .await;
    assert_eq!(
        (sales.name.as_str(), sales.units, sales.revenue_cents),
        ("Green tea", 0, 0),
        "cancelled: no sale"
    );
    let top = client
        .list_top_products(ListTopProductsRequest { limit: 5 })
        .await
        .unwrap()
        .into_inner();
    assert!(top.products.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_and_unknown_requests_are_refused_clearly() {
    let (_env, _app, mut client) = spawn_app().await;
    let history = |id: &str| GetCustomerOrderHistoryRequest {
        customer_id: id.into(),
    };
    assert_invalid(
        client.get_customer_order_history(history("x")).await,
        &["customer_id"],
    );
    let status = client
        .get_customer_order_history(history(&Uuid::now_v7().to_string()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_invalid(
        client
            .get_sales_by_sku(GetSalesBySkuRequest { sku: "a b".into() })
            .await,
        &["sku"],
    );
    let status = client
        .get_sales_by_sku(GetSalesBySkuRequest { sku: "NONE".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    for limit in [-1, 101] {
        assert_invalid(
            client
                .list_top_products(ListTopProductsRequest { limit })
                .await,
            &["limit"],
        );
    }
    assert_invalid(
        client
            .get_customer_overview(GetCustomerOverviewRequest {
                customer_id: "".into(),
            })
            .await,
        &["customer_id"],
    );

    // With every service away the overview is empty but answered, naming them.
    let overview = client
        .get_customer_overview(GetCustomerOverviewRequest {
            customer_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(overview.partial);
    assert_eq!(overview.unavailable, ["customer", "order"]);
}
