//! `/metrics` scraped over HTTP while orders flow: every metric the README's
//! Observability table lists is there, under at least one service's prefix.
//! (One test per binary: the Prometheus recorder is process-wide.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)] // test code: a panic is a failed test; it names what is missing

use std::time::Duration;

use dbps::{
    customer::v1::{RegisterCustomerRequest, customer_service_client::CustomerServiceClient},
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use testkit::{Running, TestEnv, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICES: [&str; 4] = ["order", "customer", "inventory", "reporting"];

/// The metric names of the README's table (`_grpc_requests_total`, …).
fn documented() -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
        .expect("README.md");
    let table = readme
        .split("| Metric (`order_…`")
        .nth(1)
        .expect("the README's metrics table");
    let mut names = Vec::new();
    for line in table.lines().skip(2) {
        if !line.starts_with('|') {
            break;
        }
        let first_cell = line.split('|').nth(1).unwrap_or_default();
        names.extend(
            first_cell
                .split('`')
                .filter(|part| part.starts_with('_'))
                .map(str::to_owned),
        );
    }
    assert!(names.len() > 10, "the table was read: {names:?}");
    names
}

async fn scrape(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200") || response.starts_with("HTTP/1.0 200"));
    response
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_documented_metric_is_scraped_under_load() {
    use {
        customer_service as c, inventory_service as i, order_service as o, reporting_service as r,
    };
    let port = free_port();
    platform::metrics::install(format!("127.0.0.1:{port}").parse().unwrap()).unwrap();
    let env = TestEnv::new().await;
    let customer = env
        .spawn(&c::SERVICE, env.config(&c::SERVICE), c::startup::build)
        .await;
    let inventory = env
        .spawn(&i::SERVICE, env.config(&i::SERVICE), i::startup::build)
        .await;
    let order = env
        .spawn(&o::SERVICE, env.config(&o::SERVICE), o::startup::build)
        .await;
    let addr = |running: &Running| format!("http://{}", running.addr);
    let (ca, oa, ia) = (addr(&customer), addr(&order), addr(&inventory));
    let args = [
        "--customer-addr",
        &ca,
        "--order-addr",
        &oa,
        "--inventory-addr",
        &ia,
    ];
    let _reporting = env
        .spawn(
            &r::SERVICE,
            env.config_for(&r::SERVICE, &env.database, &args),
            r::startup::build,
        )
        .await;

    // Load: a customer, a product and orders flowing through the saga.
    let customer_id = CustomerServiceClient::new(customer.channel())
        .register_customer(RegisterCustomerRequest {
            name: "Metrics".into(),
            email: "metrics@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .customer_id;
    InventoryServiceClient::new(inventory.channel())
        .create_product(CreateProductRequest {
            sku: "GAUGE".into(),
            name: "Gauge".into(),
            price_cents: 100,
            initial_stock: 1000,
        })
        .await
        .unwrap();
    let orders = OrderServiceClient::new(order.channel());
    let placing = tokio::spawn(async move {
        for i in 0..200 {
            let request = PlaceOrderRequest {
                customer_id: customer_id.clone(),
                lines: vec![LineItem {
                    sku: "GAUGE".into(),
                    quantity: 1,
                }],
                idempotency_key: format!("m-{i}"),
            };
            // Early orders may find the order service not yet aware of the
            // customer or product: that is load too.
            let _ = orders.clone().place_order(request).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });

    let expected = documented();
    let missing = eventually(
        "every documented metric in /metrics",
        Duration::from_secs(60),
        || {
            let expected = expected.clone();
            async move {
                let body = scrape(port).await;
                let missing: Vec<String> = expected
                    .iter()
                    .filter(|name| {
                        !SERVICES
                            .iter()
                            .any(|service| body.contains(&format!("{service}{name}")))
                    })
                    .cloned()
                    .collect();
                if !missing.is_empty() {
                    eprintln!("not yet in /metrics: {missing:?}");
                }
                missing.is_empty().then_some(missing)
            }
        },
    )
    .await;
    assert!(missing.is_empty());
    placing.await.unwrap();
}
