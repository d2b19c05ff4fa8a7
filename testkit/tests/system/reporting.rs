//! The read side: projections that match the sources, rebuild to the same
//! state, and an overview composed live that survives a missing service.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use dbps::{
    order::v1::{CancelOrderRequest, ListOrdersRequest, Order, OrderStatus, PlaceOrderRequest},
    reporting::v1::{
        GetCustomerOrderHistoryRequest, GetCustomerOverviewRequest, ListTopProductsRequest,
    },
};
use diesel::{QueryableByName, sql_types::Text};
use diesel_async::RunQueryDsl;
use platform::Infra;
use reporting_service::{SERVICE, config::Config, rebuild::rebuild};
use testkit::{
    eventually,
    workload::{Orders, Product, World},
};
use tonic::Code;

use crate::support::{Deployment, INVENTORY, REPORTING, System, WAIT};

async fn all_orders(system: &System, customer_id: &str) -> Vec<Order> {
    let request = ListOrdersRequest {
        customer_id: customer_id.into(),
        page_size: 1000,
        page_token: String::new(),
    };
    system
        .orders
        .clone()
        .list_orders(request)
        .await
        .unwrap()
        .into_inner()
        .orders
}

/// Every row of every read-model table, as text.
async fn read_model(system: &System) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = Text)]
        line: String,
    }
    let mut conn = testkit::admin_connection(&system.databases[REPORTING]).await;
    let mut all = Vec::new();
    for table in [
        "customer_view",
        "product_view",
        "order_view",
        "order_line_view",
        "sales_by_sku",
    ] {
        let query = format!("SELECT '{table} ' || t::text AS line FROM reporting.{table} t");
        let rows: Vec<Line> = diesel::sql_query(query).load(&mut conn).await.unwrap();
        all.extend(rows.into_iter().map(|row| row.line));
    }
    all.sort();
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn read_models_match_the_sources_after_a_burst_and_rebuild_identically() {
    let system = System::start(Deployment::SharedDatabase).await;
    let mut customers = Vec::new();
    for i in 0..5 {
        customers.push(system.customer(&format!("burst{i}@example.com")).await);
    }
    let skus = [
        ("A", 1_000, 400),
        ("B", 2_500, 150),
        ("C", 999, 60),
        ("D", 10_000, 25),
    ];
    for (sku, price, stock) in skus {
        system.product(sku, price, stock).await;
    }
    system
        .place(
            &customers[0],
            &[("A", 1), ("B", 1), ("C", 1), ("D", 1)],
            "warm-up",
        )
        .await;
    let world = World {
        customers: customers.clone(),
        products: skus
            .iter()
            .map(|&(sku, price_cents, initial_stock)| Product {
                sku: sku.into(),
                price_cents,
                initial_stock,
            })
            .collect(),
    };

    // 500 orders, 16 at a time, of 1 or 2 lines: stock runs out for some
    // SKUs, so some are rejected.
    let mut generator = Orders::seeded(42);
    let requests: Vec<_> = (0..500)
        .map(|i| PlaceOrderRequest {
            idempotency_key: format!("burst-{i}"),
            ..generator.draw(&world)
        })
        .collect();
    let started = Instant::now();
    for chunk in requests.chunks(16) {
        let mut placing = Vec::new();
        for request in chunk {
            let (orders, request) = (system.orders.clone(), request.clone());
            placing.push(tokio::spawn(async move {
                orders
                    .clone()
                    .place_order(request)
                    .await
                    .unwrap()
                    .into_inner()
            }));
        }
        for placed in placing {
            placed.await.unwrap();
        }
    }
    println!(
        "500 orders placed in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Every order decided; then cancel every seventh approved one.
    let decided = eventually("all orders to be decided", WAIT, || async {
        let mut orders = Vec::new();
        for customer in &customers {
            orders.extend(all_orders(&system, customer).await);
        }
        orders
            .iter()
            .all(|o| o.status() != OrderStatus::Pending)
            .then_some(orders)
    })
    .await;
    assert_eq!(decided.len(), 501);
    let approved: Vec<&Order> = decided
        .iter()
        .filter(|o| o.status() == OrderStatus::Approved)
        .collect();
    let rejected = decided.len() - approved.len();
    assert!(
        rejected > 0 && approved.len() > 100,
        "{} approved, {rejected} rejected",
        approved.len()
    );
    for order in approved.iter().step_by(7) {
        let request = CancelOrderRequest {
            order_id: order.order_id.clone(),
            reason: "burst".into(),
        };
        system.orders.clone().cancel_order(request).await.unwrap();
    }

    // What the sources say.
    let mut expected_history = BTreeMap::new();
    let mut expected_sales: BTreeMap<String, (i64, i64, i64)> = BTreeMap::new();
    for customer in &customers {
        let orders = all_orders(&system, customer).await;
        let mut history: Vec<(String, i32, i64)> = orders
            .iter()
            .map(|o| (o.order_id.clone(), o.status, o.total_cents))
            .collect();
        history.sort();
        for order in orders
            .iter()
            .filter(|o| o.status() == OrderStatus::Approved)
        {
            for line in &order.lines {
                let entry = expected_sales.entry(line.sku.clone()).or_default();
                entry.0 += i64::from(line.quantity);
                entry.1 += i64::from(line.quantity) * line.unit_price_cents;
                entry.2 += 1;
            }
        }
        expected_history.insert(customer.clone(), history);
    }
    let expected_points: HashMap<String, i64> = {
        let mut points = HashMap::new();
        for customer in &customers {
            // Settled once every credit and reversal has been applied.
            let orders = all_orders(&system, customer).await;
            let credited: i64 = orders
                .iter()
                .filter(|o| o.status() == OrderStatus::Approved)
                .map(|o| o.total_cents / 10)
                .sum();
            system.wait_points(customer, credited).await;
            points.insert(customer.clone(), credited);
        }
        points
    };

    // The read models converge on exactly that.
    let mut reporting = system.reporting.clone();
    eventually("the read models to match the sources", WAIT, || {
        let mut reporting = reporting.clone();
        let (customers, expected_history, expected_sales, expected_points) = (
            &customers,
            &expected_history,
            &expected_sales,
            &expected_points,
        );
        async move {
            for customer in customers {
                // One page holds a customer's whole burst.
                let request = GetCustomerOrderHistoryRequest {
                    customer_id: customer.clone(),
                    page_size: 1000,
                    ..Default::default()
                };
                let history = reporting
                    .get_customer_order_history(request)
                    .await
                    .ok()?
                    .into_inner();
                let mut seen: Vec<(String, i32, i64)> = history
                    .orders
                    .iter()
                    .map(|o| (o.order_id.clone(), o.status, o.total_cents))
                    .collect();
                seen.sort();
                if &seen != expected_history.get(customer)?
                    || history.loyalty_points != expected_points[customer]
                {
                    return None;
                }
            }
            let top = reporting
                .list_top_products(ListTopProductsRequest { limit: 100 })
                .await
                .ok()?
                .into_inner();
            let sales: BTreeMap<String, (i64, i64, i64)> = top
                .products
                .into_iter()
                .map(|s| (s.sku, (s.units, s.revenue_cents, s.orders)))
                .collect();
            (&sales == expected_sales).then_some(())
        }
    })
    .await;

    // Drop the read models and replay the event log: the same read models.
    let before = read_model(&system).await;
    let config: Config = system
        .env
        .config_for(&SERVICE, &system.databases[REPORTING], &[]);
    let infra = Infra::connect(&SERVICE, &config).await.unwrap();
    let stats = rebuild(&infra, None, Duration::from_secs(2)).await.unwrap();
    println!("rebuild: {stats:?}");
    assert!(stats.applied > 500, "{stats:?}");
    assert_eq!(read_model(&system).await, before);
    let top = reporting
        .list_top_products(ListTopProductsRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(top.products.len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_overview_is_composed_live_and_marks_a_stopped_service() {
    let mut system = System::start_with(Deployment::SharedDatabase, "300ms").await;
    let customer = system.customer("overview@example.com").await;
    system.product("TEA", 450, 10).await;
    let order = system.place(&customer, &[("TEA", 2)], "").await;

    let request = || GetCustomerOverviewRequest {
        customer_id: customer.clone(),
    };
    let overview = system
        .reporting
        .get_customer_overview(request())
        .await
        .unwrap()
        .into_inner();
    assert!(!overview.partial, "{overview:?}");
    assert_eq!(
        overview.customer.as_ref().map(|c| c.customer_id.as_str()),
        Some(customer.as_str())
    );
    assert_eq!(overview.recent_orders.len(), 1);
    assert_eq!(overview.recent_orders[0].order_id, order.order_id);
    assert_eq!(
        overview.product_names.get("TEA").map(String::as_str),
        Some("Product TEA")
    );

    system.stop_service(INVENTORY).await;
    let asked = Instant::now();
    let overview = system
        .reporting
        .get_customer_overview(request())
        .await
        .unwrap()
        .into_inner();
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    assert!(overview.partial);
    assert_eq!(overview.unavailable, ["inventory"]);
    assert!(overview.customer.is_some() && overview.recent_orders.len() == 1);
    assert!(overview.product_names.is_empty());

    let unknown = GetCustomerOverviewRequest {
        customer_id: uuid::Uuid::now_v7().to_string(),
    };
    let status = system
        .reporting
        .get_customer_overview(unknown)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let bad = GetCustomerOverviewRequest {
        customer_id: "nope".into(),
    };
    testkit::assert_invalid(
        system.reporting.get_customer_overview(bad).await,
        &["customer_id"],
    );
    let _ = &mut system;
}
