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
            ..Default::default()
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
        ..Default::default()
    };
    assert_invalid(
        client.get_customer_order_history(history("x")).await,
        &["customer_id"],
    );
    assert_invalid(
        client
            .get_customer_order_history(GetCustomerOrderHistoryRequest {
                customer_id: "x".into(),
                page_size: 1001,
                page_token: "***".into(),
            })
            .await,
        &["customer_id", "page_size", "page_token"],
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

#[tokio::test(flavor = "multi_thread")]
async fn the_history_comes_in_pages_newest_first() {
    let (env, _app, mut client) = spawn_app().await;
    let customer = Uuid::now_v7().to_string();
    let mut orders = Vec::new();
    for _ in 0..5 {
        let order = Uuid::now_v7().to_string();
        env.publish(&OrderCreated {
            order_id: order.clone(),
            customer_id: customer.clone(),
            total_cents: 100,
            ..Default::default()
        })
        .await;
        orders.push(order);
    }
    let page = |token: String| GetCustomerOrderHistoryRequest {
        customer_id: customer.clone(),
        page_size: 2,
        page_token: token,
    };
    eventually("five orders in the read model", WAIT, || {
        let (mut client, request) = (client.clone(), page(String::new()));
        async move {
            let first = client.get_customer_order_history(request).await.ok()?;
            (first.get_ref().orders.len() == 2 && !first.get_ref().next_page_token.is_empty())
                .then_some(())
        }
    })
    .await;
    // Wait until the oldest is there too, then walk the pages.
    eventually("the oldest order in the read model", WAIT, || {
        let mut client = client.clone();
        let request = GetCustomerOrderHistoryRequest {
            customer_id: customer.clone(),
            page_size: 10,
            page_token: String::new(),
        };
        async move {
            let all = client.get_customer_order_history(request).await.ok()?;
            (all.get_ref().orders.len() == 5).then_some(())
        }
    })
    .await;
    let mut seen = Vec::new();
    let mut token = String::new();
    for expected in [2, 2, 1] {
        let answer = client
            .get_customer_order_history(page(token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.orders.len(), expected);
        seen.extend(answer.orders.into_iter().map(|o| o.order_id));
        token = answer.next_page_token;
    }
    assert!(token.is_empty(), "no page after the last");
    orders.reverse();
    assert_eq!(seen, orders, "newest first, each order once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_call_that_outlives_the_server_deadline_is_cut_off() {
    let env = TestEnv::new().await;
    // Accepts connections and never answers: composition would wait for its
    // own 10 s timeout, but the server's deadline comes first.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = format!("http://{}", silent.local_addr().unwrap());
    let args = [
        "--customer-addr",
        &silent_addr,
        "--order-addr",
        &silent_addr,
        "--inventory-addr",
        &silent_addr,
        "--composition-timeout",
        "10s",
        "--grpc-timeout",
        "300ms",
    ];
    let config: Config = env.config_for(&SERVICE, &env.database, &args);
    let app = env.spawn(&SERVICE, config, build).await;
    let mut client = ReportingServiceClient::new(app.channel());
    let started = std::time::Instant::now();
    let status = client
        .get_customer_overview(GetCustomerOverviewRequest {
            customer_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    // tonic answers an expired server deadline with CANCELLED.
    assert_eq!(status.code(), Code::Cancelled, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(silent);
}
