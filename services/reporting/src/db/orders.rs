//! `order_view` and `order_line_view`: each order as its events describe it.

use chrono::{DateTime, Utc};
use diesel::{prelude::*, upsert::excluded};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::{
    products,
    schema::{order_line_view, order_view},
};

/// An order as the read model knows it.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = order_view)]
pub struct OrderView {
    pub order_id: Uuid,
    pub status: String,
    pub status_reason: String,
    pub stock: String,
    pub total_cents: Option<i64>,
    pub line_count: Option<i32>,
    pub created_at: Option<DateTime<Utc>>,
}

/// One line of `order.created`.
pub struct Line<'a> {
    pub sku: &'a str,
    pub quantity: i32,
    pub unit_price_cents: i64,
}

/// Records what `order.created` says; status is left as later events set it.
pub async fn created(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
    total_cents: i64,
    created_at: Option<DateTime<Utc>>,
    lines: &[Line<'_>],
) -> QueryResult<()> {
    diesel::insert_into(order_view::table)
        .values((
            order_view::order_id.eq(order_id),
            order_view::customer_id.eq(customer_id),
            order_view::total_cents.eq(total_cents),
            order_view::line_count.eq(i32::try_from(lines.len()).unwrap_or(i32::MAX)),
            order_view::created_at.eq(created_at),
        ))
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
    let rows: Vec<_> = lines
        .iter()
        .map(|line| {
            (
                order_line_view::order_id.eq(order_id),
                order_line_view::sku.eq(line.sku),
                order_line_view::quantity.eq(line.quantity),
                order_line_view::unit_price_cents.eq(line.unit_price_cents),
            )
        })
        .collect();
    diesel::insert_into(order_line_view::table)
        .values(rows)
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(())
}

/// Moves the order to `status` unless it is already as far or further.
pub async fn status(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
    status: &str,
    rank: i32,
    reason: &str,
) -> QueryResult<()> {
    // `filter` on an upsert is `ON CONFLICT ... DO UPDATE ... WHERE`.
    use diesel::query_dsl::methods::FilterDsl;
    diesel::insert_into(order_view::table)
        .values((
            order_view::order_id.eq(order_id),
            order_view::customer_id.eq(customer_id),
            order_view::status.eq(status),
            order_view::status_rank.eq(rank),
            order_view::status_reason.eq(reason),
        ))
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

/// Records inventory's answer unless a later one is already held.
pub async fn stock(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    stock: &str,
    rank: i32,
) -> QueryResult<()> {
    use diesel::query_dsl::methods::FilterDsl;
    diesel::insert_into(order_view::table)
        .values((
            order_view::order_id.eq(order_id),
            order_view::stock.eq(stock),
            order_view::stock_rank.eq(rank),
        ))
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

/// Brings `sales_by_sku` in line with the order: its lines count exactly
/// while it is APPROVED and its lines are known. Idempotent, and the same
/// whatever order its events came in.
pub async fn recount(conn: &mut AsyncPgConnection, order_id: Uuid) -> QueryResult<()> {
    let row: Option<(String, Option<i64>, bool)> = order_view::table
        .find(order_id)
        .select((
            order_view::status,
            order_view::total_cents,
            order_view::counted,
        ))
        .for_update()
        .first(conn)
        .await
        .optional()?;
    let Some((status, total, counted)) = row else {
        return Ok(());
    };
    let should_count = status == "APPROVED" && total.is_some();
    if should_count == counted {
        return Ok(());
    }
    let sign = if should_count { 1 } else { -1 };
    let lines: Vec<(String, i32, i64)> = order_line_view::table
        .filter(order_line_view::order_id.eq(order_id))
        .select((
            order_line_view::sku,
            order_line_view::quantity,
            order_line_view::unit_price_cents,
        ))
        .load(conn)
        .await?;
    for (sku, quantity, unit_price) in lines {
        let quantity = i64::from(quantity);
        products::count_sale(conn, &sku, quantity, quantity * unit_price, sign).await?;
    }
    diesel::update(order_view::table.find(order_id))
        .set(order_view::counted.eq(should_count))
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
