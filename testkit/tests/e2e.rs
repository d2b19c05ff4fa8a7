//! The whole system: three services, each on its own role and schema, talking
//! only through RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // test code: a panic is a failed test; it reports latency

use std::time::{Duration, Instant};

use dbps::{
    customer::v1::{
        GetCustomerRequest, RegisterCustomerRequest, customer_service_client::CustomerServiceClient,
    },
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use diesel::{QueryableByName, sql_types::Double};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use testkit::{Running, TestEnv, eventually};
use tonic::{Code, transport::Channel};

const WAIT: Duration = Duration::from_secs(30);

/// Where each service keeps its data.
enum Deployment {
    /// One database, a schema per service (the default).
    SharedDatabase,
    /// A database per service: the services must not notice the difference.
    DatabasePerService,
}

struct System {
    env: TestEnv,
    databases: [String; 3],
    _running: Vec<Running>,
    customers: CustomerServiceClient<Channel>,
    inventory: InventoryServiceClient<Channel>,
    orders: OrderServiceClient<Channel>,
}

async fn start(deployment: Deployment) -> System {
    let env = TestEnv::new().await;
    let databases = match deployment {
        Deployment::SharedDatabase => [
            env.database.clone(),
            env.database.clone(),
            env.database.clone(),
        ],
        Deployment::DatabasePerService => [
            env.extra_database("customer").await,
            env.extra_database("inventory").await,
            env.extra_database("order").await,
        ],
    };
    use {customer_service as c, inventory_service as i, order_service as o};
    let customer = env
        .spawn(
            &c::SERVICE,
            env.config_in(&c::SERVICE, &databases[0], &[]),
            c::startup::build,
        )
        .await;
    let inventory = env
        .spawn(
            &i::SERVICE,
            env.config_in(&i::SERVICE, &databases[1], &[]),
            i::startup::build,
        )
        .await;
    let order = env
        .spawn(
            &o::SERVICE,
            env.config_in(&o::SERVICE, &databases[2], &[]),
            o::startup::build,
        )
        .await;
    System {
        customers: CustomerServiceClient::new(customer.channel()),
        inventory: InventoryServiceClient::new(inventory.channel()),
        orders: OrderServiceClient::new(order.channel()),
        _running: vec![customer, inventory, order],
        databases,
        env,
    }
}

/// Register → product → order → points, as a user would drive it.
async fn order_earns_points(mut system: System) {
    let customer = system
        .customers
        .register_customer(RegisterCustomerRequest {
            name: "Ada".into(),
            email: "ada@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    system
        .inventory
        .create_product(CreateProductRequest {
            sku: "BOOK-1".into(),
            name: "A book".into(),
            price_cents: 3333,
            initial_stock: 10,
        })
        .await
        .unwrap();

    // The order service learns of both through events: retry (same key)
    // until its replicas have caught up.
    let request = PlaceOrderRequest {
        customer_id: customer.customer_id.clone(),
        lines: vec![LineItem {
            sku: "BOOK-1".into(),
            quantity: 3,
        }],
        idempotency_key: "e2e-1".into(),
    };
    let orders = system.orders.clone();
    let order = eventually(
        "the order service to know customer and product",
        WAIT,
        || {
            let mut orders = orders.clone();
            let request = request.clone();
            async move {
                match orders.place_order(request).await {
                    Ok(order) => Some(order.into_inner()),
                    Err(status) if status.code() == Code::FailedPrecondition => None,
                    Err(status) => panic!("{status:?}"),
                }
            }
        },
    )
    .await;
    let committed = Instant::now();
    assert_eq!(order.total_cents, 9_999);

    // Tight poll: this measures propagation, not the poll interval.
    let deadline = committed + WAIT;
    let points = loop {
        let current = system
            .customers
            .get_customer(GetCustomerRequest {
                customer_id: customer.customer_id.clone(),
            })
            .await
            .unwrap()
            .into_inner()
            .loyalty_points;
        if current != 0 || Instant::now() > deadline {
            break current;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let observed = committed.elapsed();
    assert_eq!(points, 999, "10 % of 9,999 cents, rounded down");

    // The same measure from the databases' clocks: outbox row written in the
    // order's transaction → inbox row written in the credit's transaction.
    let lag_ms =
        applied_after_ms(&system.databases[2], &system.databases[0], &order.order_id).await;
    println!(
        "order.created commit → points applied: {lag_ms:.1} ms (database clocks); visible to a client polling every 1 ms after {:.1} ms",
        observed.as_secs_f64() * 1e3
    );
    let _ = &system.env;
}

/// Milliseconds between the outbox row of `order_id`'s `order.created` and
/// the customer service's inbox row for the same event.
async fn applied_after_ms(order_db: &str, customer_db: &str, order_id: &str) -> f64 {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        event_id: uuid::Uuid,
        #[diesel(sql_type = Double)]
        created: f64,
    }
    #[derive(QueryableByName)]
    struct Applied {
        #[diesel(sql_type = Double)]
        applied: f64,
    }
    let mut orders = testkit::admin_connection(order_db).await;
    let row: Row = diesel::sql_query(
        "SELECT event_id, extract(epoch FROM created_at)::float8 AS created
         FROM orders.outbox WHERE aggregate_id = $1 AND event_type = 'order.created'",
    )
    .bind::<diesel::sql_types::Text, _>(order_id)
    .get_result(&mut orders)
    .await
    .unwrap();
    let mut customers = testkit::admin_connection(customer_db).await;
    let applied: Applied =
        diesel::sql_query("SELECT extract(epoch FROM applied_at)::float8 AS applied FROM customers.inbox WHERE message_id = $1")
            .bind::<diesel::sql_types::Uuid, _>(row.event_id)
            .get_result(&mut customers)
            .await
            .unwrap();
    (applied.applied - row.created) * 1e3
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_credits_ten_percent_of_its_total_as_loyalty_points() {
    order_earns_points(start(Deployment::SharedDatabase).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_flow_works_with_a_database_per_service() {
    order_earns_points(start(Deployment::DatabasePerService).await).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_role_cannot_touch_another_services_schema() {
    let system = start(Deployment::SharedDatabase).await;
    let database = &system.databases[0];
    let mut as_order = AsyncPgConnection::establish(&system.env.url_as("order_svc", database))
        .await
        .unwrap();
    for statement in [
        "SELECT * FROM customers.customers",
        "UPDATE customers.customers SET loyalty_points = 1000000",
        "SELECT * FROM customers.outbox",
        "INSERT INTO inventory.inbox (message_id, event_type) VALUES (gen_random_uuid(), 'x')",
        "SELECT * FROM inventory.products",
    ] {
        let error = as_order
            .batch_execute(statement)
            .await
            .expect_err(statement)
            .to_string();
        assert!(
            error.contains("permission denied for schema"),
            "{statement}: {error}"
        );
    }
    let mut as_customer =
        AsyncPgConnection::establish(&system.env.url_as("customer_svc", database))
            .await
            .unwrap();
    let error = as_customer
        .batch_execute("DELETE FROM orders.orders")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("permission denied for schema orders"),
        "{error}"
    );
    // Its own schema is the only one on its search path.
    as_order
        .batch_execute("SELECT count(*) FROM orders")
        .await
        .unwrap();
}
