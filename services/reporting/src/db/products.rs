//! `product_view` and `sales_by_sku`.

use std::collections::BTreeMap;

use diesel::{prelude::*, upsert::excluded};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::{product_view, sales_by_sku};

/// A product state from `product.changed`.
#[derive(Insertable)]
#[diesel(table_name = product_view)]
pub struct ProductState<'a> {
    /// The product.
    pub sku: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Price of one unit, in cents.
    pub price_cents: i64,
    /// Units that could be ordered.
    pub available: i64,
    /// Units held for reserved orders.
    pub reserved: i64,
    /// Inventory's version of the product: only a higher one replaces the
    /// state held.
    pub version: i64,
}

/// Stores product states, each SKU's newest, unless a newer one is already
/// held.
pub async fn changed_all(
    conn: &mut AsyncPgConnection,
    states: &[ProductState<'_>],
) -> QueryResult<()> {
    use diesel::query_dsl::methods::FilterDsl;
    // One row per SKU, the newest: the one a one-by-one upsert keeps.
    let mut newest: BTreeMap<&str, &ProductState<'_>> = BTreeMap::new();
    for state in states {
        let held = newest.entry(state.sku).or_insert(state);
        if state.version > held.version {
            *held = state;
        }
    }
    if newest.is_empty() {
        return Ok(());
    }
    let rows: Vec<&ProductState<'_>> = newest.into_values().collect();
    diesel::insert_into(product_view::table)
        .values(rows)
        .on_conflict(product_view::sku)
        .do_update()
        .set((
            product_view::name.eq(excluded(product_view::name)),
            product_view::price_cents.eq(excluded(product_view::price_cents)),
            product_view::available.eq(excluded(product_view::available)),
            product_view::reserved.eq(excluded(product_view::reserved)),
            product_view::version.eq(excluded(product_view::version)),
        ))
        .filter(product_view::version.lt(excluded(product_view::version)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Sales moved by orders starting or stopping to count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SalesDelta {
    /// Units sold; negative when orders stop counting.
    pub units: i64,
    /// Revenue, in cents (units × unit price); negative when orders stop
    /// counting.
    pub revenue_cents: i64,
    /// Orders that start counting, less those that stop.
    pub orders: i64,
}

/// Adds each SKU's delta to its sales, in one statement.
pub async fn count_sales(
    conn: &mut AsyncPgConnection,
    deltas: &BTreeMap<String, SalesDelta>,
) -> QueryResult<()> {
    let rows: Vec<_> = deltas
        .iter()
        .map(|(sku, delta)| {
            (
                sales_by_sku::sku.eq(sku.as_str()),
                sales_by_sku::units.eq(delta.units),
                sales_by_sku::revenue_cents.eq(delta.revenue_cents),
                sales_by_sku::orders.eq(delta.orders),
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    diesel::insert_into(sales_by_sku::table)
        .values(rows)
        .on_conflict(sales_by_sku::sku)
        .do_update()
        .set((
            sales_by_sku::units.eq(sales_by_sku::units + excluded(sales_by_sku::units)),
            sales_by_sku::revenue_cents
                .eq(sales_by_sku::revenue_cents + excluded(sales_by_sku::revenue_cents)),
            sales_by_sku::orders.eq(sales_by_sku::orders + excluded(sales_by_sku::orders)),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// A SKU's sales and name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sales {
    /// The SKU.
    pub sku: String,
    /// From its newest product state; empty if none is known here.
    pub name: String,
    /// Units sold by approved orders that were not cancelled.
    pub units: i64,
    /// Their revenue, in cents, at the prices the orders were placed at.
    pub revenue_cents: i64,
    /// Approved orders, not cancelled, with a line of the SKU.
    pub orders: i64,
}

/// One SKU's sales (zero if none yet); `None` if the SKU is unknown here.
pub async fn sales(conn: &mut AsyncPgConnection, sku: &str) -> QueryResult<Option<Sales>> {
    let name: Option<String> = product_view::table
        .find(sku)
        .select(product_view::name)
        .first(conn)
        .await
        .optional()?;
    let counts: Option<(i64, i64, i64)> = sales_by_sku::table
        .find(sku)
        .select((
            sales_by_sku::units,
            sales_by_sku::revenue_cents,
            sales_by_sku::orders,
        ))
        .first(conn)
        .await
        .optional()?;
    if name.is_none() && counts.is_none() {
        return Ok(None);
    }
    let (units, revenue_cents, orders) = counts.unwrap_or_default();
    Ok(Some(Sales {
        sku: sku.to_owned(),
        name: name.unwrap_or_default(),
        units,
        revenue_cents,
        orders,
    }))
}

/// The `limit` SKUs with the most revenue.
pub async fn top(conn: &mut AsyncPgConnection, limit: i64) -> QueryResult<Vec<Sales>> {
    let rows: Vec<(String, i64, i64, i64, Option<String>)> = sales_by_sku::table
        .left_join(product_view::table.on(product_view::sku.eq(sales_by_sku::sku)))
        .filter(sales_by_sku::orders.gt(0))
        .order((sales_by_sku::revenue_cents.desc(), sales_by_sku::sku))
        .limit(limit)
        .select((
            sales_by_sku::sku,
            sales_by_sku::units,
            sales_by_sku::revenue_cents,
            sales_by_sku::orders,
            product_view::name.nullable(),
        ))
        .load(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(sku, units, revenue_cents, orders, name)| Sales {
            sku,
            name: name.unwrap_or_default(),
            units,
            revenue_cents,
            orders,
        })
        .collect())
}
