//! `order_view` and `order_line_view`: each order as its events describe it.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, Bool, Uuid as SqlUuid},
    upsert::excluded,
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use platform::db::statement;
use uuid::Uuid;

use super::{
    products::{self, SalesDelta},
    schema::{order_line_view, order_view},
};

/// An order as the read model knows it.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = order_view)]
pub struct OrderView {
    /// UUIDv7, so the ID order is the placing order.
    pub order_id: Uuid,
    /// The furthest status its events reached (statuses only move
    /// forward): `PENDING`, `APPROVED`, `REJECTED` or `CANCELLED`.
    pub status: String,
    /// Why it was rejected or cancelled; empty otherwise.
    pub status_reason: String,
    /// Inventory's answer: `RESERVED` or `REJECTED`, then maybe `RELEASED`;
    /// empty before any.
    pub stock: String,
    /// In cents; `None` until `order.created` is applied.
    pub total_cents: Option<i64>,
    /// Number of lines; `None` until `order.created` is applied.
    pub line_count: Option<i32>,
    /// When it was placed; `None` until `order.created` is applied.
    pub created_at: Option<DateTime<Utc>>,
}

/// One line of `order.created`.
pub struct Line<'a> {
    /// What was ordered; no other line of the order has it.
    pub sku: &'a str,
    /// Units ordered.
    pub quantity: i32,
    /// Price of one unit when the order was placed, in cents.
    pub unit_price_cents: i64,
}

/// What one `order.created` says.
pub struct Created<'a> {
    /// The order.
    pub order_id: Uuid,
    /// Who placed it.
    pub customer_id: Uuid,
    /// Sum over the lines of quantity × unit price, in cents.
    pub total_cents: i64,
    /// When it was placed, if the event says.
    pub created_at: Option<DateTime<Utc>>,
    /// Its lines, in order.
    pub lines: Vec<Line<'a>>,
}

/// Records what `order.created` says of each order; status is left as later
/// events set it. An order created twice in the list keeps the last, as one
/// by one (its lines: the first of each SKU, as `order.created` carries the
/// same lines each time).
pub async fn created_all(conn: &mut AsyncPgConnection, orders: &[Created<'_>]) -> QueryResult<()> {
    // One row per order: an upsert may not touch a row twice.
    let last: BTreeMap<Uuid, &Created<'_>> = orders.iter().map(|o| (o.order_id, o)).collect();
    if last.is_empty() {
        return Ok(());
    }
    let views: Vec<_> = last
        .values()
        .map(|order| {
            (
                order_view::order_id.eq(order.order_id),
                order_view::customer_id.eq(order.customer_id),
                order_view::total_cents.eq(order.total_cents),
                order_view::line_count.eq(i32::try_from(order.lines.len()).unwrap_or(i32::MAX)),
                order_view::created_at.eq(order.created_at),
            )
        })
        .collect();
    let lines: Vec<_> = orders
        .iter()
        .flat_map(|order| {
            order.lines.iter().map(|line| {
                (
                    order_line_view::order_id.eq(order.order_id),
                    order_line_view::sku.eq(line.sku),
                    order_line_view::quantity.eq(line.quantity),
                    order_line_view::unit_price_cents.eq(line.unit_price_cents),
                )
            })
        })
        .collect();
    diesel::insert_into(order_view::table)
        .values(views)
        .on_conflict(order_view::order_id)
        .do_update()
        .set((
            order_view::customer_id.eq(excluded(order_view::customer_id)),
            order_view::total_cents.eq(excluded(order_view::total_cents)),
            order_view::line_count.eq(excluded(order_view::line_count)),
            order_view::created_at.eq(excluded(order_view::created_at)),
        ))
        .execute(conn)
        .await?;
    if !lines.is_empty() {
        diesel::insert_into(order_line_view::table)
            .values(lines)
            .on_conflict_do_nothing()
            .execute(conn)
            .await?;
    }
    Ok(())
}

/// Moves each order (order, customer, reason) to `status` unless it is
/// already as far or further. An order listed twice keeps the first, as
/// one by one (the second is not further than the first).
pub async fn status_all(
    conn: &mut AsyncPgConnection,
    orders: &[(Uuid, Uuid, &str)],
    status: &str,
    rank: i32,
) -> QueryResult<()> {
    // `filter` on an upsert is `ON CONFLICT ... DO UPDATE ... WHERE`.
    use diesel::query_dsl::methods::FilterDsl;
    let mut first: BTreeMap<Uuid, (Uuid, &str)> = BTreeMap::new();
    for &(order_id, customer_id, reason) in orders {
        first.entry(order_id).or_insert((customer_id, reason));
    }
    let rows: Vec<_> = first
        .into_iter()
        .map(|(order_id, (customer_id, reason))| {
            (
                order_view::order_id.eq(order_id),
                order_view::customer_id.eq(customer_id),
                order_view::status.eq(status),
                order_view::status_rank.eq(rank),
                order_view::status_reason.eq(reason),
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    diesel::insert_into(order_view::table)
        .values(rows)
        .on_conflict(order_view::order_id)
        .do_update()
        .set((
            order_view::customer_id.eq(excluded(order_view::customer_id)),
            order_view::status.eq(excluded(order_view::status)),
            order_view::status_rank.eq(excluded(order_view::status_rank)),
            order_view::status_reason.eq(excluded(order_view::status_reason)),
        ))
        .filter(order_view::status_rank.lt(excluded(order_view::status_rank)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Records inventory's answer `stock` for each order unless a later one is
/// already held.
pub async fn stock_all(
    conn: &mut AsyncPgConnection,
    order_ids: &[Uuid],
    stock: &str,
    rank: i32,
) -> QueryResult<()> {
    use diesel::query_dsl::methods::FilterDsl;
    // One row per order: an upsert may not touch a row twice.
    let unique: BTreeSet<Uuid> = order_ids.iter().copied().collect();
    let rows: Vec<_> = unique
        .into_iter()
        .map(|order_id| {
            (
                order_view::order_id.eq(order_id),
                order_view::stock.eq(stock),
                order_view::stock_rank.eq(rank),
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    diesel::insert_into(order_view::table)
        .values(rows)
        .on_conflict(order_view::order_id)
        .do_update()
        .set((
            order_view::stock.eq(excluded(order_view::stock)),
            order_view::stock_rank.eq(excluded(order_view::stock_rank)),
        ))
        .filter(order_view::stock_rank.lt(excluded(order_view::stock_rank)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Brings `sales_by_sku` in line with the orders: an order's lines count
/// exactly while it is APPROVED and its lines are known. Idempotent, and the
/// same whatever order the events came in; recounting once after a run is
/// the same as after each of its events, as only the current state counts.
pub async fn recount_all(conn: &mut AsyncPgConnection, order_ids: &[Uuid]) -> QueryResult<()> {
    let unique: BTreeSet<Uuid> = order_ids.iter().copied().collect();
    let rows: Vec<(Uuid, String, Option<i64>, bool)> = order_view::table
        .filter(order_view::order_id.eq_any(unique))
        .order(order_view::order_id)
        .select((
            order_view::order_id,
            order_view::status,
            order_view::total_cents,
            order_view::counted,
        ))
        .for_update()
        .load(conn)
        .await?;
    let flips: BTreeMap<Uuid, bool> = rows
        .into_iter()
        .filter_map(|(order_id, status, total, counted)| {
            let should_count = status == "APPROVED" && total.is_some();
            (should_count != counted).then_some((order_id, should_count))
        })
        .collect();
    if flips.is_empty() {
        return Ok(());
    }
    let lines: Vec<(Uuid, String, i32, i64)> = order_line_view::table
        .filter(order_line_view::order_id.eq_any(flips.keys()))
        .select((
            order_line_view::order_id,
            order_line_view::sku,
            order_line_view::quantity,
            order_line_view::unit_price_cents,
        ))
        .load(conn)
        .await?;
    let mut deltas: BTreeMap<String, SalesDelta> = BTreeMap::new();
    for (order_id, sku, quantity, unit_price) in lines {
        let sign = if flips.get(&order_id).copied().unwrap_or_default() {
            1
        } else {
            -1
        };
        let quantity = i64::from(quantity);
        let delta = deltas.entry(sku).or_default();
        delta.units += sign * quantity;
        delta.revenue_cents += sign * quantity * unit_price;
        delta.orders += sign;
    }
    products::count_sales(conn, &deltas).await?;
    let ids: Vec<Uuid> = flips.keys().copied().collect();
    let counted: Vec<bool> = flips.values().copied().collect();
    statement(
        "UPDATE order_view AS o SET counted = d.counted
           FROM unnest($1::uuid[], $2::bool[]) AS d(order_id, counted)
          WHERE o.order_id = d.order_id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Bool>, _>(counted)
    .execute(conn)
    .await?;
    Ok(())
}

/// A page of a customer's orders, newest first (order IDs are time-ordered
/// UUIDv7), older than `before` if given; at most `limit` rows.
pub async fn history(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    before: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<OrderView>> {
    let mut query = order_view::table
        .filter(order_view::customer_id.eq(customer_id))
        .order(order_view::order_id.desc())
        .limit(limit)
        .select(OrderView::as_select())
        .into_boxed();
    if let Some(before) = before {
        query = query.filter(order_view::order_id.lt(before));
    }
    query.load(conn).await
}
