//! The first slice: an order credits loyalty points, and no service can
//! reach into another's schema.

use std::time::{Duration, Instant};

use dbps::customer::v1::GetCustomerRequest;
use diesel::{QueryableByName, sql_types::Double};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};

use crate::support::{CUSTOMER, Deployment, ORDER, System, WAIT};

/// Register → product → order → points, as a user would drive it.
async fn order_earns_points(deployment: Deployment) {
    let system = System::start(deployment).await;
    let customer = system.customer("ada@example.com").await;
    system.product("BOOK-1", 3333, 10).await;
    let order = system.place(&customer, &[("BOOK-1", 3)], "e2e-1").await;
    let committed = Instant::now();
    assert_eq!(order.total_cents, 9_999);

    // Tight poll: this measures propagation, not the poll interval.
    let mut customers = system.customers.clone();
    let deadline = committed + WAIT;
    let points = loop {
        let request = GetCustomerRequest {
            customer_id: customer.clone(),
        };
        let current = customers
            .get_customer(request)
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
    let lag_ms = applied_after_ms(
        &system.databases[ORDER],
        &system.databases[CUSTOMER],
        &order.order_id,
    )
    .await;
    println!(
        "{deployment:?}: order.created commit → points applied: {lag_ms:.1} ms (database clocks); \
         visible to a client polling every 1 ms after {:.1} ms",
        observed.as_secs_f64() * 1e3
    );
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
    let applied: Applied = diesel::sql_query(
        "SELECT extract(epoch FROM applied_at)::float8 AS applied FROM customers.inbox WHERE message_id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(row.event_id)
    .get_result(&mut customers)
    .await
    .unwrap();
    (applied.applied - row.created) * 1e3
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_credits_ten_percent_of_its_total_as_loyalty_points() {
    order_earns_points(Deployment::SharedDatabase).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_flow_works_with_a_database_per_service() {
    order_earns_points(Deployment::DatabasePerService).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_role_cannot_touch_another_services_schema() {
    let system = System::start(Deployment::SharedDatabase).await;
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
        "SELECT * FROM reporting.order_view",
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
    let mut as_reporting =
        AsyncPgConnection::establish(&system.env.url_as("reporting_svc", database))
            .await
            .unwrap();
    let error = as_reporting
        .batch_execute("SELECT * FROM orders.orders")
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
