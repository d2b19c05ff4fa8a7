//! The order saga across three databases with no shared transaction:
//! reservation, approval, rejection, cancellation and their compensations.

use std::collections::{BTreeMap, BTreeSet};

use dbps::order::v1::{CancelOrderRequest, OrderApproved, OrderCancelled, OrderLine, OrderStatus};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Bool, Bytea, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use prost::Message;
use testkit::eventually;
use tonic::Code;
use uuid::Uuid;

use crate::support::{CUSTOMER, Deployment, INVENTORY, ORDER, REPORTING, System, WAIT};

/// The customer service's ledger entry of an order: (credited, reversed).
async fn ledger(system: &System, order_id: &str) -> Option<(i64, bool)> {
    #[derive(QueryableByName)]
    struct Entry {
        #[diesel(sql_type = BigInt)]
        credited: i64,
        #[diesel(sql_type = Bool)]
        reversed: bool,
    }
    let mut conn = testkit::admin_connection(&system.databases[CUSTOMER]).await;
    diesel::sql_query(
        "SELECT credited, reversed FROM customers.loyalty_ledger WHERE order_id = $1::uuid",
    )
    .bind::<Text, _>(order_id)
    .get_result::<Entry>(&mut conn)
    .await
    .ok()
    .map(|entry| (entry.credited, entry.reversed))
}

async fn wait_ledger(system: &System, order_id: &str, expected: (i64, bool)) {
    eventually(
        &format!("ledger of {order_id} to be {expected:?}"),
        WAIT,
        || async { (ledger(system, order_id).await == Some(expected)).then_some(()) },
    )
    .await;
}

async fn cancel(
    system: &System,
    order_id: &str,
    reason: &str,
) -> Result<dbps::order::v1::Order, tonic::Status> {
    let request = CancelOrderRequest {
        order_id: order_id.into(),
        reason: reason.into(),
    };
    system
        .orders
        .clone()
        .cancel_order(request)
        .await
        .map(tonic::Response::into_inner)
}

async fn approved_order_moves_stock_to_reserved(deployment: Deployment) {
    let system = System::start(deployment).await;
    let customer = system.customer("happy@example.com").await;
    system.product("BOOK", 1000, 5).await;
    let order = system.place(&customer, &[("BOOK", 2)], "").await;
    assert_eq!(order.status(), OrderStatus::Pending);

    system
        .wait_status(&order.order_id, OrderStatus::Approved)
        .await;
    system.wait_stock("BOOK", 3, 2).await;
    system.wait_points(&customer, 200).await;
}

async fn short_stock_rejects_and_reverses_points(deployment: Deployment) {
    let system = System::start(deployment).await;
    let customer = system.customer("short@example.com").await;
    system.product("PEN", 500, 1).await;
    system.product("INK", 100, 10).await;
    let order = system.place(&customer, &[("INK", 1), ("PEN", 2)], "").await;

    let rejected = system
        .wait_status(&order.order_id, OrderStatus::Rejected)
        .await;
    assert!(rejected.status_reason.contains("PEN"), "{rejected:?}");
    // Credited on order.created, taken back on order.rejected.
    wait_ledger(&system, &order.order_id, (110, true)).await;
    assert_eq!(system.points(&customer).await, 0);
    // All or nothing: INK was not held either.
    let (ink, pen) = (system.stock("INK").await, system.stock("PEN").await);
    assert_eq!(
        (ink.available, ink.reserved, pen.available, pen.reserved),
        (10, 0, 1, 0)
    );
}

async fn cancelling_an_approved_order_releases_stock_and_points(deployment: Deployment) -> System {
    let system = System::start(deployment).await;
    let customer = system.customer("cancel@example.com").await;
    system.product("LAMP", 2500, 4).await;
    let order = system.place(&customer, &[("LAMP", 3)], "").await;
    system
        .wait_status(&order.order_id, OrderStatus::Approved)
        .await;
    system.wait_stock("LAMP", 1, 3).await;

    let cancelled = cancel(&system, &order.order_id, "changed my mind")
        .await
        .unwrap();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert_eq!(cancelled.status_reason, "changed my mind");
    system.wait_stock("LAMP", 4, 0).await;
    wait_ledger(&system, &order.order_id, (750, true)).await;
    assert_eq!(system.points(&customer).await, 0);

    // The published approval and cancellation carry the order's lines and
    // total, enough for analytics and replay without order.created.
    let lines = vec![OrderLine {
        sku: "LAMP".into(),
        quantity: 3,
        unit_price_cents: 2500,
    }];
    let approved = OrderApproved::decode(
        &*published_payload(&system, "order.approved", &order.order_id).await,
    )
    .unwrap();
    assert_eq!(
        (approved.lines, approved.total_cents),
        (lines.clone(), 7500)
    );
    let cancelled = OrderCancelled::decode(
        &*published_payload(&system, "order.cancelled", &order.order_id).await,
    )
    .unwrap();
    assert_eq!(cancelled.previous_status(), OrderStatus::Approved);
    assert_eq!((cancelled.lines, cancelled.total_cents), (lines, 7500));

    // Nothing can happen to a cancelled order any more.
    let status = cancel(&system, &order.order_id, "").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    system
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_with_stock_is_approved_and_its_stock_reserved() {
    approved_order_moves_stock_to_reserved(Deployment::SharedDatabase).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_with_stock_is_approved_with_a_database_per_service() {
    approved_order_moves_stock_to_reserved(Deployment::DatabasePerService).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn short_stock_rejects_the_order_naming_the_sku_and_reverses_its_points() {
    short_stock_rejects_and_reverses_points(Deployment::SharedDatabase).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn short_stock_rejects_with_a_database_per_service() {
    short_stock_rejects_and_reverses_points(Deployment::DatabasePerService).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_after_approval_releases_the_stock_and_reverses_the_points() {
    cancelling_an_approved_order_releases_stock_and_points(Deployment::SharedDatabase).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_after_approval_works_with_a_database_per_service() {
    cancelling_an_approved_order_releases_stock_and_points(Deployment::DatabasePerService).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_reservation_of_a_cancelled_order_is_released_not_resurrected() {
    let mut system = System::start(Deployment::SharedDatabase).await;
    let customer = system.customer("late@example.com").await;
    system.product("DESK", 10_000, 2).await;
    system.place(&customer, &[("DESK", 1)], "warm-up").await; // replicas are ready
    system.stop_service(INVENTORY).await;

    // Inventory is away: the order stays PENDING and is cancelled.
    let order = system.place(&customer, &[("DESK", 1)], "").await;
    cancel(&system, &order.order_id, "too slow").await.unwrap();

    // Inventory comes back: it reserves (order.created), answers
    // stock.reserved, then releases (order.cancelled).
    system.start_service(INVENTORY).await;
    let reserved_id = eventually(
        "inventory to publish stock.reserved for the order",
        WAIT,
        || async {
            outbox_event_id(
                &system.databases[INVENTORY],
                "inventory",
                "stock.reserved",
                &order.order_id,
            )
            .await
        },
    )
    .await;
    // The order service has applied that late stock.reserved ...
    eventually(
        "the order service to apply the late stock.reserved",
        WAIT,
        || async {
            inbox_has(&system.databases[ORDER], "orders", reserved_id)
                .await
                .then_some(())
        },
    )
    .await;
    // ... and the order stays cancelled, the stock comes back.
    assert_eq!(
        system.order(&order.order_id).await.status(),
        OrderStatus::Cancelled
    );
    system.wait_stock("DESK", 1, 1).await; // the warm-up order still holds one
}

/// Two inventory replicas compete for `order.created` (no single active
/// consumer), each taking one delivery at a time, so reservations of the same
/// SKU run in concurrent transactions: only the products' row locks keep them
/// from deciding on the same stock.
#[tokio::test(flavor = "multi_thread")]
async fn sixty_four_orders_for_ten_units_approve_exactly_ten() {
    const FLAGS: &[&str] = &[
        "--consumer-single-active",
        "false",
        "--consumer-prefetch",
        "1",
    ];
    let system = System::start_flagged(Deployment::SharedDatabase, FLAGS).await;
    let _second_inventory = system.spawn_replica(INVENTORY, &[]).await;
    let customer = system.customer("rush@example.com").await;
    system.product("GPU", 100, 10).await;
    system.product("WARM", 1, 1).await;
    system.place(&customer, &[("WARM", 1)], "warm-up").await;
    system.wait_points(&customer, 0).await;

    let mut placing = Vec::new();
    for i in 0..64 {
        let orders = system.orders.clone();
        let customer = customer.clone();
        placing.push(tokio::spawn(async move {
            let request = dbps::order::v1::PlaceOrderRequest {
                customer_id: customer,
                lines: vec![dbps::order::v1::LineItem {
                    sku: "GPU".into(),
                    quantity: 1,
                }],
                idempotency_key: format!("rush-{i}"),
            };
            orders
                .clone()
                .place_order(request)
                .await
                .unwrap()
                .into_inner()
                .order_id
        }));
    }
    let mut ids = Vec::new();
    for placed in placing {
        ids.push(placed.await.unwrap());
    }
    let statuses: Vec<OrderStatus> = eventually("all 64 orders to be decided", WAIT, || async {
        let mut statuses = Vec::new();
        for id in &ids {
            statuses.push(system.order(id).await.status());
        }
        statuses
            .iter()
            .all(|s| *s != OrderStatus::Pending)
            .then_some(statuses)
    })
    .await;
    let approved = statuses
        .iter()
        .filter(|s| **s == OrderStatus::Approved)
        .count();
    let rejected = statuses
        .iter()
        .filter(|s| **s == OrderStatus::Rejected)
        .count();
    assert_eq!((approved, rejected), (10, 54));
    system.wait_stock("GPU", 0, 10).await;
    // Every order was credited 10 points; the 54 rejected ones were reversed.
    for id in &ids {
        let expected =
            if statuses[ids.iter().position(|i| i == id).unwrap()] == OrderStatus::Approved {
                (10, false)
            } else {
                (10, true)
            };
        wait_ledger(&system, id, expected).await;
    }
    assert_eq!(
        system.points(&customer).await,
        100,
        "the approved orders' 10 %"
    );
}

/// What the system holds, everywhere, for comparison before and after.
async fn state(system: &System) -> BTreeMap<String, Vec<String>> {
    let mut state = BTreeMap::new();
    for (database, query) in [
        (
            CUSTOMER,
            "SELECT customer_id || ' ' || loyalty_points FROM customers.customers",
        ),
        (
            CUSTOMER,
            "SELECT order_id || ' ' || credited || ' ' || reversed FROM customers.loyalty_ledger",
        ),
        (
            INVENTORY,
            "SELECT sku || ' ' || available || ' ' || reserved FROM inventory.products",
        ),
        (
            INVENTORY,
            "SELECT order_id || ' ' || status FROM inventory.reservations",
        ),
        (
            ORDER,
            "SELECT order_id || ' ' || status || ' ' || status_reason FROM orders.orders",
        ),
        (
            ORDER,
            "SELECT sku || ' ' || price_cents FROM orders.catalog",
        ),
        (
            REPORTING,
            "SELECT order_id || ' ' || status || ' ' || stock || ' ' || total_cents FROM reporting.order_view",
        ),
        (
            REPORTING,
            "SELECT sku || ' ' || units || ' ' || revenue_cents || ' ' || orders FROM reporting.sales_by_sku",
        ),
        (
            REPORTING,
            "SELECT customer_id || ' ' || loyalty_points FROM reporting.customer_view",
        ),
    ] {
        state.insert(
            query.to_owned(),
            lines(&system.databases[database], query).await,
        );
    }
    state
}

/// The rows of `query` (`SELECT <text expression> FROM ...`), sorted.
async fn lines(database: &str, query: &str) -> Vec<String> {
    #[derive(QueryableByName)]
    struct Line {
        #[diesel(sql_type = Text)]
        line: String,
    }
    let query = query
        .replacen("SELECT ", "SELECT (", 1)
        .replacen(" FROM ", ") AS line FROM ", 1);
    let mut conn = testkit::admin_connection(database).await;
    let rows: Vec<Line> = diesel::sql_query(query).load(&mut conn).await.unwrap();
    let mut lines: Vec<String> = rows.into_iter().map(|row| row.line).collect();
    lines.sort();
    lines
}

/// Every event every service published: (source, event ID, routing key, payload).
async fn published(system: &System) -> Vec<(&'static str, Uuid, String, Vec<u8>)> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        event_id: Uuid,
        #[diesel(sql_type = Text)]
        event_type: String,
        #[diesel(sql_type = Bytea)]
        payload: Vec<u8>,
    }
    let mut events = Vec::new();
    for (database, source, schema) in [
        (CUSTOMER, "customer", "customers"),
        (INVENTORY, "inventory", "inventory"),
        (ORDER, "order", "orders"),
    ] {
        let mut conn = testkit::admin_connection(&system.databases[database]).await;
        let rows: Vec<Row> = diesel::sql_query(format!(
            "SELECT event_id, event_type, payload FROM {schema}.outbox ORDER BY id"
        ))
        .load(&mut conn)
        .await
        .unwrap();
        events.extend(
            rows.into_iter()
                .map(|row| (source, row.event_id, row.event_type, row.payload)),
        );
    }
    events
}

async fn outbox_event_id(
    database: &str,
    schema: &str,
    event_type: &str,
    aggregate_id: &str,
) -> Option<Uuid> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Uuid)]
        event_id: Uuid,
    }
    let mut conn = testkit::admin_connection(database).await;
    diesel::sql_query(format!(
        "SELECT event_id FROM {schema}.outbox WHERE event_type = $1 AND aggregate_id = $2 AND published_at IS NOT NULL"
    ))
    .bind::<Text, _>(event_type)
    .bind::<Text, _>(aggregate_id)
    .get_result::<Row>(&mut conn)
    .await
    .ok()
    .map(|row| row.event_id)
}

/// The payload of the order service's `event_type` event about `order_id`,
/// once the broker has confirmed its publication.
async fn published_payload(system: &System, event_type: &str, order_id: &str) -> Vec<u8> {
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = Bytea)]
        payload: Vec<u8>,
    }
    eventually(
        &format!("{event_type} of {order_id} to be published"),
        WAIT,
        || async {
            let mut conn = testkit::admin_connection(&system.databases[ORDER]).await;
            diesel::sql_query(
                "SELECT payload FROM orders.outbox \
             WHERE event_type = $1 AND aggregate_id = $2 AND published_at IS NOT NULL",
            )
            .bind::<Text, _>(event_type)
            .bind::<Text, _>(order_id)
            .get_result::<Row>(&mut conn)
            .await
            .ok()
            .map(|row| row.payload)
        },
    )
    .await
}

async fn inbox_has(database: &str, schema: &str, message_id: Uuid) -> bool {
    let mut conn: AsyncPgConnection = testkit::admin_connection(database).await;
    #[derive(QueryableByName)]
    struct Found {
        #[diesel(sql_type = Bool)]
        found: bool,
    }
    diesel::sql_query(format!(
        "SELECT EXISTS (SELECT 1 FROM {schema}.inbox WHERE message_id = $1) AS found"
    ))
    .bind::<diesel::sql_types::Uuid, _>(message_id)
    .get_result::<Found>(&mut conn)
    .await
    .map(|f| f.found)
    .unwrap_or(false)
}

/// The schemas whose service consumes `event_type`.
fn consumers_of(event_type: &str) -> &'static [(usize, &'static str)] {
    const ORDERS: (usize, &str) = (ORDER, "orders");
    const CUSTOMERS: (usize, &str) = (CUSTOMER, "customers");
    const INVENTORIES: (usize, &str) = (INVENTORY, "inventory");
    const READ: (usize, &str) = (REPORTING, "reporting");
    match event_type {
        "customer.registered" | "product.changed" | "stock.reserved" | "stock.rejected" => {
            &[ORDERS, READ]
        }
        "order.created" | "order.cancelled" => &[CUSTOMERS, INVENTORIES, READ],
        "order.rejected" => &[CUSTOMERS, READ],
        _ => &[READ],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_every_event_twice_changes_nothing() {
    let system =
        cancelling_an_approved_order_releases_stock_and_points(Deployment::SharedDatabase).await;
    // Let the last effects (reporting) settle, then take the picture.
    let before = eventually("the read models to settle", WAIT, || async {
        let first = state(&system).await;
        let view = &first["SELECT order_id || ' ' || status || ' ' || stock || ' ' || total_cents FROM reporting.order_view"];
        (view.len() == 1 && view[0].contains("CANCELLED") && view[0].contains("RELEASED")).then_some(first)
    })
    .await;

    // Every event twice more: as the same message (the inboxes absorb it),
    // and as a new message (the handlers themselves must absorb it).
    let events = published(&system).await;
    let types: BTreeSet<&str> = events.iter().map(|(_, _, t, _)| t.as_str()).collect();
    assert!(types.len() >= 7, "{types:?}");
    let mut fresh = Vec::new();
    for (source, event_id, event_type, payload) in &events {
        system
            .env
            .publish_bytes(source, event_type, *event_id, payload)
            .await;
        let copy = Uuid::now_v7();
        system
            .env
            .publish_bytes(source, event_type, copy, payload)
            .await;
        fresh.push((event_type.clone(), copy));
    }
    for (event_type, message_id) in &fresh {
        for (database, schema) in consumers_of(event_type) {
            eventually(
                &format!("{schema} to see the replayed {event_type}"),
                WAIT,
                || async {
                    inbox_has(&system.databases[*database], schema, *message_id)
                        .await
                        .then_some(())
                },
            )
            .await;
        }
    }
    assert_eq!(state(&system).await, before);
}
