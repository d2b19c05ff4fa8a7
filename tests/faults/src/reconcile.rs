//! What must hold once the system has settled, checked against the databases
//! (read as the superuser: the checker, not a service) and the queues:
//!
//! * every order a client was told was accepted exists and is decided;
//! * per order: its points credited once and reversed once iff it did not end
//!   APPROVED; inventory's decision matches the order's fate;
//! * per customer: points = 10 % (rounded down) of their APPROVED orders;
//! * per SKU: reserved = units of APPROVED orders, available + reserved =
//!   initial stock;
//! * the reporting read models agree: each order's status and total, units
//!   and orders sold per SKU, each customer's points, each SKU's stock;
//! * every outbox row published; every dead-letter queue as expected.
//!
//! Only the world's customers, their orders and the world's SKUs are looked
//! at, so scenarios can share databases. Each service's tables are read from
//! that service's own database ([`Databases`]): one database holding every
//! schema for `make faults`, four (multi-host URLs that follow a failover)
//! for the cluster suite.
//!
//! Missing effects count as lost, effects applied twice as doubled.

use std::collections::{BTreeMap, HashMap};

use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Bool, Int4, Nullable, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use testkit::stack::{SERVICES, Stack};

use testkit::workload::World;

use crate::load::Accepted;

/// The verdict of one check.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    pub lost: usize,
    pub doubled: usize,
    /// Outbox rows not yet published.
    pub unpublished: i64,
    /// Orders still PENDING.
    pub pending: usize,
    /// Messages per dead-letter queue.
    pub dead_letters: BTreeMap<String, u32>,
    /// The world's orders in the order service's database.
    pub stored: usize,
    /// Of those, how many per status.
    pub statuses: BTreeMap<String, usize>,
    /// What was wrong, first few of each kind.
    pub notes: Vec<String>,
}

impl Verdict {
    /// Nothing lost, nothing doubled, nothing in flight, DLQs as expected.
    pub fn clean(&self, expected_dead_letters: &BTreeMap<String, u32>) -> bool {
        self.lost == 0
            && self.doubled == 0
            && self.unpublished == 0
            && self.pending == 0
            && SERVICES.iter().all(|s| {
                self.dead_letters.get(*s).copied().unwrap_or(0)
                    == expected_dead_letters.get(*s).copied().unwrap_or(0)
            })
    }
}

#[derive(QueryableByName)]
struct OrderRow {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Text)]
    customer_id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = BigInt)]
    total_cents: i64,
}

#[derive(QueryableByName)]
struct LineRow {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Text)]
    sku: String,
    #[diesel(sql_type = Int4)]
    quantity: i32,
}

#[derive(QueryableByName)]
struct Ledger {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = BigInt)]
    credited: i64,
    #[diesel(sql_type = Bool)]
    reversed: bool,
}

#[derive(QueryableByName)]
struct Balance {
    #[diesel(sql_type = Text)]
    customer_id: String,
    #[diesel(sql_type = BigInt)]
    loyalty_points: i64,
}

#[derive(QueryableByName)]
struct Stock {
    #[diesel(sql_type = Text)]
    sku: String,
    #[diesel(sql_type = BigInt)]
    available: i64,
    #[diesel(sql_type = BigInt)]
    reserved: i64,
}

#[derive(QueryableByName)]
struct Reservation {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Text)]
    status: String,
}

#[derive(QueryableByName)]
struct OrderView {
    #[diesel(sql_type = Text)]
    order_id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<BigInt>)]
    total_cents: Option<i64>,
}

#[derive(QueryableByName)]
struct Sales {
    #[diesel(sql_type = Text)]
    sku: String,
    #[diesel(sql_type = BigInt)]
    units: i64,
    #[diesel(sql_type = BigInt)]
    orders: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

fn note(verdict: &mut Verdict, kind: &str, text: String) {
    if verdict.notes.iter().filter(|n| n.starts_with(kind)).count() < 3 {
        verdict.notes.push(format!("{kind}: {text}"));
    }
}

/// Where each service's schema lives: a superuser URL per service.
#[derive(Clone, Debug)]
pub struct Databases {
    pub order: String,
    pub customer: String,
    pub inventory: String,
    pub reporting: String,
}

impl Databases {
    /// Every schema in one database.
    pub fn single(url: &str) -> Databases {
        Databases {
            order: url.to_owned(),
            customer: url.to_owned(),
            inventory: url.to_owned(),
            reporting: url.to_owned(),
        }
    }
}

/// Checks everything once.
pub async fn check(stack: &Stack, world: &World, accepted: &[Accepted]) -> anyhow::Result<Verdict> {
    let mut verdict =
        check_databases(&Databases::single(&stack.admin_url()), world, accepted).await?;
    // Bounded: a broker that is restarting must not stall the checker.
    let counting = dead_letters(&stack.amqp, &stack.prefix);
    if let Ok(Ok(counts)) = tokio::time::timeout(std::time::Duration::from_secs(5), counting).await
    {
        verdict.dead_letters = counts;
    }
    Ok(verdict)
}

/// Messages in each consumer's dead-letter queue.
pub async fn dead_letters(
    amqp: &broker::Amqp,
    prefix: &str,
) -> anyhow::Result<BTreeMap<String, u32>> {
    let mut counts = BTreeMap::new();
    for consumer in SERVICES {
        let queue = broker::topology::dead_letter_queue(prefix, consumer);
        // A consumer that never started has no dead-letter queue: none.
        let ready = broker::dlq::message_count(amqp, &queue).await?;
        counts.insert(consumer.to_owned(), ready.unwrap_or(0));
    }
    Ok(counts)
}

/// The checks of the databases (not the queues) once.
pub async fn check_databases(
    databases: &Databases,
    world: &World,
    accepted: &[Accepted],
) -> anyhow::Result<Verdict> {
    let customers = &world.customers;
    let skus: Vec<String> = world.products.iter().map(|p| p.sku.clone()).collect();
    let mut verdict = Verdict::default();

    let mut conn = AsyncPgConnection::establish(&databases.order).await?;
    let orders: Vec<OrderRow> = diesel::sql_query(
        "SELECT order_id::text, customer_id::text, status, total_cents FROM orders.orders
         WHERE customer_id = ANY($1::text[]::uuid[])",
    )
    .bind::<Array<Text>, _>(customers)
    .load(&mut conn)
    .await?;
    let lines: Vec<LineRow> = diesel::sql_query(
        "SELECT l.order_id::text, l.sku, l.quantity
         FROM orders.order_lines l JOIN orders.orders o USING (order_id)
         WHERE o.customer_id = ANY($1::text[]::uuid[])",
    )
    .bind::<Array<Text>, _>(customers)
    .load(&mut conn)
    .await?;
    verdict.unpublished += unpublished(&mut conn, "orders").await?;
    drop(conn);
    let order_ids: Vec<&str> = orders.iter().map(|o| o.order_id.as_str()).collect();

    let mut conn = AsyncPgConnection::establish(&databases.customer).await?;
    let ledger: HashMap<String, (i64, bool)> = diesel::sql_query(
        "SELECT order_id::text, credited, reversed FROM customers.loyalty_ledger
         WHERE customer_id = ANY($1::text[]::uuid[])",
    )
    .bind::<Array<Text>, _>(customers)
    .load::<Ledger>(&mut conn)
    .await?
    .into_iter()
    .map(|l| (l.order_id, (l.credited, l.reversed)))
    .collect();
    let balances: HashMap<String, i64> = diesel::sql_query(
        "SELECT customer_id::text, loyalty_points FROM customers.customers
         WHERE customer_id = ANY($1::text[]::uuid[])",
    )
    .bind::<Array<Text>, _>(customers)
    .load::<Balance>(&mut conn)
    .await?
    .into_iter()
    .map(|b| (b.customer_id, b.loyalty_points))
    .collect();
    verdict.unpublished += unpublished(&mut conn, "customers").await?;
    drop(conn);

    let mut conn = AsyncPgConnection::establish(&databases.inventory).await?;
    let stock: HashMap<String, (i64, i64)> = diesel::sql_query(
        "SELECT sku, available, reserved FROM inventory.products WHERE sku = ANY($1)",
    )
    .bind::<Array<Text>, _>(&skus)
    .load::<Stock>(&mut conn)
    .await?
    .into_iter()
    .map(|s| (s.sku, (s.available, s.reserved)))
    .collect();
    let reservations: HashMap<String, String> = diesel::sql_query(
        "SELECT order_id::text, status FROM inventory.reservations
         WHERE order_id = ANY($1::text[]::uuid[])",
    )
    .bind::<Array<Text>, _>(&order_ids)
    .load::<Reservation>(&mut conn)
    .await?
    .into_iter()
    .map(|r| (r.order_id, r.status))
    .collect();
    verdict.unpublished += unpublished(&mut conn, "inventory").await?;
    drop(conn);

    let mut conn = AsyncPgConnection::establish(&databases.reporting).await?;
    let order_views: HashMap<String, (String, Option<i64>)> = diesel::sql_query(
        "SELECT order_id::text, status, total_cents FROM reporting.order_view
         WHERE order_id = ANY($1::text[]::uuid[])",
    )
    .bind::<Array<Text>, _>(&order_ids)
    .load::<OrderView>(&mut conn)
    .await?
    .into_iter()
    .map(|v| (v.order_id, (v.status, v.total_cents)))
    .collect();
    let sales: HashMap<String, (i64, i64)> = diesel::sql_query(
        "SELECT sku, units, orders FROM reporting.sales_by_sku WHERE sku = ANY($1)",
    )
    .bind::<Array<Text>, _>(&skus)
    .load::<Sales>(&mut conn)
    .await?
    .into_iter()
    .map(|s| (s.sku, (s.units, s.orders)))
    .collect();
    let customer_views: HashMap<String, i64> = diesel::sql_query(
        "SELECT customer_id::text, loyalty_points FROM reporting.customer_view
         WHERE customer_id = ANY($1::text[]::uuid[])",
    )
    .bind::<Array<Text>, _>(customers)
    .load::<Balance>(&mut conn)
    .await?
    .into_iter()
    .map(|b| (b.customer_id, b.loyalty_points))
    .collect();
    let product_views: HashMap<String, (i64, i64)> = diesel::sql_query(
        "SELECT sku, available, reserved FROM reporting.product_view WHERE sku = ANY($1)",
    )
    .bind::<Array<Text>, _>(&skus)
    .load::<Stock>(&mut conn)
    .await?
    .into_iter()
    .map(|s| (s.sku, (s.available, s.reserved)))
    .collect();
    drop(conn);

    verdict.stored = orders.len();
    for order in &orders {
        *verdict.statuses.entry(order.status.clone()).or_default() += 1;
    }
    // Accepted orders exist and are decided.
    let by_id: HashMap<&str, &OrderRow> = orders.iter().map(|o| (o.order_id.as_str(), o)).collect();
    for order in accepted {
        if !by_id.contains_key(order.order_id.as_str()) {
            verdict.lost += 1;
            note(
                &mut verdict,
                "accepted order missing",
                order.order_id.clone(),
            );
        }
    }
    // Every stored order (also one whose OK a client never saw): its effects.
    let mut points: HashMap<&str, i64> = HashMap::new();
    let mut approved_orders: HashMap<&str, bool> = HashMap::new();
    for order in &orders {
        let approved = order.status == "APPROVED";
        approved_orders.insert(&order.order_id, approved);
        if order.status == "PENDING" {
            verdict.pending += 1;
            continue;
        }
        let credit = order.total_cents / 10;
        if approved {
            *points.entry(&order.customer_id).or_default() += credit;
        }
        match ledger.get(&order.order_id) {
            None => {
                verdict.lost += 1;
                note(&mut verdict, "no points credited", order.order_id.clone());
            }
            Some((credited, _)) if *credited != credit => {
                verdict.doubled += 1;
                note(
                    &mut verdict,
                    "wrong credit",
                    format!("{} {credited} != {credit}", order.order_id),
                );
            }
            Some((_, reversed)) if *reversed == approved => {
                verdict.lost += 1;
                note(
                    &mut verdict,
                    "reversal wrong",
                    format!("{} {} reversed={reversed}", order.order_id, order.status),
                );
            }
            Some(_) => {}
        }
        match order_views.get(&order.order_id) {
            Some((status, total))
                if *status == order.status && *total == Some(order.total_cents) => {}
            view => {
                verdict.lost += 1;
                note(
                    &mut verdict,
                    "reporting order_view",
                    format!("{} {} vs {view:?}", order.order_id, order.status),
                );
            }
        }
        let decision = reservations.get(&order.order_id).map(String::as_str);
        let consistent = match order.status.as_str() {
            "APPROVED" => decision == Some("RESERVED"),
            "REJECTED" => decision == Some("REJECTED"),
            _ => matches!(decision, Some("RELEASED" | "CANCELLED" | "REJECTED")),
        };
        if !consistent {
            verdict.lost += 1;
            note(
                &mut verdict,
                "inventory disagrees",
                format!("{} {} vs {decision:?}", order.order_id, order.status),
            );
        }
    }
    for customer in &world.customers {
        let expected = points.get(customer.as_str()).copied().unwrap_or(0);
        let actual = balances.get(customer).copied().unwrap_or(0);
        let reported = customer_views.get(customer).copied().unwrap_or(0);
        if reported != actual {
            verdict.lost += 1;
            note(
                &mut verdict,
                "reporting customer_view",
                format!("{customer} {reported} != {actual}"),
            );
        }
        if actual > expected {
            verdict.doubled += 1;
            note(
                &mut verdict,
                "points too high",
                format!("{customer} {actual} > {expected}"),
            );
        } else if actual < expected {
            verdict.lost += 1;
            note(
                &mut verdict,
                "points too low",
                format!("{customer} {actual} < {expected}"),
            );
        }
    }
    let mut reserved: HashMap<&str, i64> = HashMap::new();
    let mut sold_in: HashMap<&str, i64> = HashMap::new();
    for line in &lines {
        if approved_orders
            .get(line.order_id.as_str())
            .copied()
            .unwrap_or(false)
        {
            *reserved.entry(&line.sku).or_default() += i64::from(line.quantity);
            *sold_in.entry(&line.sku).or_default() += 1;
        }
    }
    for product in &world.products {
        let (sku, initial) = (&product.sku, &product.initial_stock);
        let (available, held) = stock.get(sku).copied().unwrap_or((0, 0));
        let expected = reserved.get(sku.as_str()).copied().unwrap_or(0);
        let expected_sales = (expected, sold_in.get(sku.as_str()).copied().unwrap_or(0));
        let reported = sales.get(sku).copied().unwrap_or((0, 0));
        if reported.0 > expected_sales.0 || reported.1 > expected_sales.1 {
            verdict.doubled += 1;
            note(
                &mut verdict,
                "reporting sales",
                format!("{sku}: (units, orders) {reported:?} > {expected_sales:?}"),
            );
        } else if reported != expected_sales {
            verdict.lost += 1;
            note(
                &mut verdict,
                "reporting sales",
                format!("{sku}: (units, orders) {reported:?} < {expected_sales:?}"),
            );
        }
        let view = product_views.get(sku).copied();
        if view != Some((available, held)) {
            verdict.lost += 1;
            note(
                &mut verdict,
                "reporting product_view",
                format!("{sku}: {view:?} != {:?}", (available, held)),
            );
        }
        if held > expected || available + held > *initial {
            verdict.doubled += 1;
            note(
                &mut verdict,
                "stock",
                format!("{sku}: {available} + {held} reserved, expected {expected} of {initial}"),
            );
        } else if held < expected || available + held < *initial {
            verdict.lost += 1;
            note(
                &mut verdict,
                "stock",
                format!("{sku}: {available} + {held} reserved, expected {expected} of {initial}"),
            );
        }
    }
    Ok(verdict)
}

async fn unpublished(conn: &mut AsyncPgConnection, schema: &str) -> anyhow::Result<i64> {
    let count: Count = diesel::sql_query(format!(
        "SELECT count(*) AS n FROM {schema}.outbox WHERE published_at IS NULL"
    ))
    .get_result(conn)
    .await?;
    Ok(count.n)
}
