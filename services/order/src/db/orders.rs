//! Queries on `orders` and `order_lines`.

use std::collections::HashMap;

use broker::outbox::Entry;
use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{
        Array, BigInt, Bytea, Integer, Jsonb, Nullable, Text, Timestamptz, Uuid as SqlUuid,
    },
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use platform::db::statement;
use uuid::Uuid;

use super::schema::{order_lines, orders};

/// An order row.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = orders)]
pub struct OrderRow {
    /// UUIDv7, so the ID order is the placing order.
    pub order_id: Uuid,
    /// Who placed it: a customer known from `customer.registered`.
    pub customer_id: Uuid,
    /// An [`OrderStatus`](crate::domain::OrderStatus) in its database
    /// spelling (`PENDING`, `APPROVED`, `REJECTED`, `CANCELLED`).
    pub status: String,
    /// Why it was rejected or cancelled; empty while pending or approved.
    pub status_reason: String,
    /// Sum over the lines of quantity × unit price, in cents.
    pub total_cents: i64,
    /// Chosen by the client: the same key of the same customer returns this
    /// order instead of placing another.
    pub idempotency_key: Option<String>,
    /// When it was placed.
    pub created_at: DateTime<Utc>,
    /// When its status last changed (at first, when it was placed).
    pub updated_at: DateTime<Utc>,
}

/// A line row.
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = order_lines)]
pub struct LineRow {
    /// The order it belongs to.
    pub order_id: Uuid,
    /// Position in the request, from 0.
    pub line_no: i32,
    /// What was ordered; no other line of the order has it.
    pub sku: String,
    /// Units, 1 to `MAX_QUANTITY`.
    pub quantity: i32,
    /// Price of one unit in the catalog when the order was placed, in cents.
    pub unit_price_cents: i64,
}

/// An order with its lines in line order.
#[derive(Clone, Debug)]
pub struct Order {
    /// The order itself.
    pub order: OrderRow,
    /// Its lines, by `line_no`.
    pub lines: Vec<LineRow>,
}

/// Writes a new order, its lines and its event in one statement (one round
/// trip, atomic without a `BEGIN` and `COMMIT` of its own), unless the
/// customer already used the order's idempotency key: false then, and
/// nothing is written. The lines' foreign key is checked at the end of the
/// statement, so they may refer to the order inserted beside them.
pub async fn insert_placed(
    conn: &AsyncPgConnection,
    order: &OrderRow,
    lines: &[LineRow],
    event: &Entry,
) -> QueryResult<bool> {
    #[derive(QueryableByName)]
    struct Placed {
        #[diesel(sql_type = BigInt)]
        placed: i64,
    }
    let placed: Placed = statement(
        "WITH placed AS (
             INSERT INTO orders (order_id, customer_id, status, status_reason, total_cents,
                                 idempotency_key, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (customer_id, idempotency_key) DO NOTHING
             RETURNING order_id
         ), lines AS (
             INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price_cents)
             SELECT placed.order_id, line.*
             FROM placed, unnest($9::int4[], $10::text[], $11::int4[], $12::int8[])
                          AS line(line_no, sku, quantity, unit_price_cents)
         ), event AS (
             INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
             SELECT $13, $14, $15, $16, $17, $18 FROM placed
         )
         SELECT count(*) AS placed FROM placed",
    )
    .bind::<SqlUuid, _>(order.order_id)
    .bind::<SqlUuid, _>(order.customer_id)
    .bind::<Text, _>(&order.status)
    .bind::<Text, _>(&order.status_reason)
    .bind::<BigInt, _>(order.total_cents)
    .bind::<Nullable<Text>, _>(&order.idempotency_key)
    .bind::<Timestamptz, _>(order.created_at)
    .bind::<Timestamptz, _>(order.updated_at)
    .bind::<Array<Integer>, _>(lines.iter().map(|line| line.line_no).collect::<Vec<_>>())
    .bind::<Array<Text>, _>(lines.iter().map(|line| line.sku.as_str()).collect::<Vec<_>>())
    .bind::<Array<Integer>, _>(lines.iter().map(|line| line.quantity).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(lines.iter().map(|line| line.unit_price_cents).collect::<Vec<_>>())
    .bind::<SqlUuid, _>(event.event_id)
    .bind::<Text, _>(event.aggregate_type)
    .bind::<Text, _>(&event.aggregate_id)
    .bind::<Text, _>(event.event_type)
    .bind::<Bytea, _>(&event.payload)
    .bind::<Jsonb, _>(&event.headers)
    .get_result(&mut &*conn)
    .await?;
    Ok(placed.placed == 1)
}

/// The orders of `order_ids` that exist, locked until the transaction ends
/// (every change of an order takes this lock first), in ID order so that
/// concurrent lockers cannot deadlock.
pub async fn lock_all(
    conn: &AsyncPgConnection,
    order_ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, OrderRow>> {
    let rows: Vec<OrderRow> = orders::table
        .filter(orders::order_id.eq_any(order_ids))
        .order(orders::order_id)
        .select(OrderRow::as_select())
        .for_update()
        .load(&mut &*conn)
        .await?;
    Ok(rows.into_iter().map(|row| (row.order_id, row)).collect())
}

/// The lines of `order_ids`, each order's in line order. Lines never change
/// once inserted, so this needs no lock and can be pipelined with
/// [`lock_all`].
pub async fn lines_of(
    conn: &AsyncPgConnection,
    order_ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, Vec<LineRow>>> {
    let lines: Vec<LineRow> = order_lines::table
        .filter(order_lines::order_id.eq_any(order_ids))
        .order((order_lines::order_id, order_lines::line_no))
        .select(LineRow::as_select())
        .load(&mut &*conn)
        .await?;
    let mut by_order: HashMap<Uuid, Vec<LineRow>> = HashMap::new();
    for line in lines {
        by_order.entry(line.order_id).or_default().push(line);
    }
    Ok(by_order)
}

/// Stores the status, reason and update time of orders locked by
/// [`lock_all`], in one statement (one row per order).
pub async fn store_status_all(conn: &AsyncPgConnection, rows: &[&OrderRow]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|row| row.order_id).collect();
    let statuses: Vec<&str> = rows.iter().map(|row| row.status.as_str()).collect();
    let reasons: Vec<&str> = rows.iter().map(|row| row.status_reason.as_str()).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|row| row.updated_at).collect();
    statement(
        "UPDATE orders AS o
            SET status = d.status, status_reason = d.reason, updated_at = d.updated_at
           FROM unnest($1::uuid[], $2::text[], $3::text[], $4::timestamptz[])
                AS d(order_id, status, reason, updated_at)
          WHERE o.order_id = d.order_id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Text>, _>(statuses)
    .bind::<Array<Text>, _>(reasons)
    .bind::<Array<Timestamptz>, _>(times)
    .execute(&mut &*conn)
    .await
    .map(|_| ())
}

/// The NOTIFY channel that tells watchers an order changed; its payload is
/// the order ID.
pub const CHANGES_CHANNEL: &str = "orders_order_changed";

/// Tells every order service process, once the transaction commits, that
/// each of the orders changed (their watchers then read them again): one
/// notification per entry, in one statement.
pub async fn notify_changed_all(conn: &AsyncPgConnection, order_ids: &[Uuid]) -> QueryResult<()> {
    if order_ids.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = order_ids.iter().map(Uuid::to_string).collect();
    statement(
        "SELECT pg_notify($1, id) FROM unnest($2::text[]) WITH ORDINALITY AS n(id, i) ORDER BY i",
    )
    .bind::<Text, _>(CHANGES_CHANNEL)
    .bind::<Array<Text>, _>(ids)
    .execute(&mut &*conn)
    .await
    .map(|_| ())
}

/// The order a customer placed with `key`, if any.
pub async fn find_by_key(
    conn: &AsyncPgConnection,
    customer_id: Uuid,
    key: &str,
) -> QueryResult<Option<Order>> {
    let row = orders::table
        .filter(orders::customer_id.eq(customer_id))
        .filter(orders::idempotency_key.eq(key))
        .select(OrderRow::as_select())
        .first(&mut &*conn)
        .await
        .optional()?;
    with_lines_one(conn, row).await
}

/// One order, if it exists.
pub async fn find(conn: &mut AsyncPgConnection, order_id: Uuid) -> QueryResult<Option<Order>> {
    let row = orders::table
        .find(order_id)
        .select(OrderRow::as_select())
        .first(conn)
        .await
        .optional()?;
    with_lines_one(conn, row).await
}

/// Up to `limit` orders before `before`, newest first, optionally of one customer.
pub async fn page(
    conn: &mut AsyncPgConnection,
    customer_id: Option<Uuid>,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<Order>> {
    let mut query = orders::table
        .select(OrderRow::as_select())
        .order(orders::order_id.desc())
        .limit(limit)
        .into_boxed();
    if let Some(customer_id) = customer_id {
        query = query.filter(orders::customer_id.eq(customer_id));
    }
    if let Some(before) = before {
        query = query.filter(orders::order_id.lt(before));
    }
    let rows = query.load(conn).await?;
    with_lines(conn, rows).await
}

async fn with_lines_one(
    conn: &AsyncPgConnection,
    row: Option<OrderRow>,
) -> QueryResult<Option<Order>> {
    Ok(match row {
        Some(row) => with_lines(conn, vec![row]).await?.pop(),
        None => None,
    })
}

/// Loads the lines of `rows` in one query.
async fn with_lines(conn: &AsyncPgConnection, rows: Vec<OrderRow>) -> QueryResult<Vec<Order>> {
    let ids: Vec<Uuid> = rows.iter().map(|row| row.order_id).collect();
    let lines: Vec<LineRow> = order_lines::table
        .filter(order_lines::order_id.eq_any(&ids))
        .order((order_lines::order_id, order_lines::line_no))
        .select(LineRow::as_select())
        .load(&mut &*conn)
        .await?;
    let mut by_order: HashMap<Uuid, Vec<LineRow>> = HashMap::new();
    for line in lines {
        by_order.entry(line.order_id).or_default().push(line);
    }
    Ok(rows
        .into_iter()
        .map(|order| {
            let lines = by_order.remove(&order.order_id).unwrap_or_default();
            Order { order, lines }
        })
        .collect())
}
