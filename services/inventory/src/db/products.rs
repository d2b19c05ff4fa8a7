//! Queries on `products`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use platform::db::statement;

use super::schema::products;
use crate::domain::MAX_STOCK;

/// A product row.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct Product {
    /// Key: 1 to 64 of `A-Z a-z 0-9 - _ .`.
    pub sku: String,
    /// Display name: 1 to 200 printable characters, trimmed.
    pub name: String,
    /// Price of one unit, in cents (0 to `MAX_PRICE_CENTS`).
    pub price_cents: i64,
    /// Units that can be ordered (0 to [`MAX_STOCK`]).
    pub available: i64,
    /// Units held for reserved orders, until a cancellation releases them.
    /// Never negative.
    pub reserved: i64,
    /// Grows by one with every change; carried by `product.changed` so that
    /// replicas can ignore stale states.
    pub version: i64,
    /// When the product was created or its stock last moved.
    pub updated_at: DateTime<Utc>,
}

/// A product to create.
#[derive(Insertable)]
#[diesel(table_name = products)]
pub struct NewProduct<'a> {
    /// A valid SKU, not yet taken.
    pub sku: &'a str,
    /// A valid display name, trimmed.
    pub name: &'a str,
    /// Price of one unit, in cents.
    pub price_cents: i64,
    /// Initial stock, in units; none is reserved and the version starts at 1.
    pub available: i64,
}

/// Inserts a product; a taken SKU is a unique violation.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    product: &NewProduct<'_>,
) -> QueryResult<Product> {
    diesel::insert_into(products::table)
        .values(product)
        .returning(Product::as_returning())
        .get_result(conn)
        .await
}

/// One product, if it exists.
pub async fn find(conn: &mut AsyncPgConnection, sku: &str) -> QueryResult<Option<Product>> {
    products::table
        .find(sku)
        .select(Product::as_select())
        .first(conn)
        .await
        .optional()
}

/// Up to `limit` products after `after`, by SKU.
pub async fn page(
    conn: &mut AsyncPgConnection,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<Product>> {
    let mut query = products::table
        .select(Product::as_select())
        .order(products::sku)
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(products::sku.gt(after));
    }
    query.load(conn).await
}

/// Adds `delta` to the available stock if the result stays within
/// `0..=MAX_STOCK`, in one conditional update (no read-then-write race).
/// `None` if the product is missing or the result would be out of range.
pub async fn adjust_available(
    conn: &mut AsyncPgConnection,
    sku: &str,
    delta: i64,
) -> QueryResult<Option<Product>> {
    diesel::update(
        products::table
            .find(sku)
            .filter((products::available + delta).between(0, MAX_STOCK)),
    )
    .set((
        products::available.eq(products::available + delta),
        products::version.eq(products::version + 1),
        products::updated_at.eq(diesel::dsl::now),
    ))
    .returning(Product::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Locks the products of `skus` that exist until the transaction ends, in
/// SKU order (every transaction locks products in that order, so concurrent
/// ones cannot deadlock); their rows by SKU. The stock they show can then be
/// decided on in memory: nobody else moves it before the commit. Takes a
/// shared connection so that it can be pipelined.
pub async fn lock_all(
    conn: &AsyncPgConnection,
    skus: &[&str],
) -> QueryResult<BTreeMap<String, Product>> {
    if skus.is_empty() {
        return Ok(BTreeMap::new());
    }
    let rows: Vec<Product> = products::table
        .filter(products::sku.eq_any(skus))
        .order(products::sku)
        .select(Product::as_select())
        .for_update()
        .load(&mut &*conn)
        .await?;
    Ok(rows.into_iter().map(|row| (row.sku.clone(), row)).collect())
}

/// Stores the stock, version and update time of products locked by
/// [`lock_all`] and changed in memory, in one statement (one row per SKU).
pub async fn store_stock_all(conn: &AsyncPgConnection, rows: &[&Product]) -> QueryResult<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let skus: Vec<&str> = rows.iter().map(|row| row.sku.as_str()).collect();
    let available: Vec<i64> = rows.iter().map(|row| row.available).collect();
    let reserved: Vec<i64> = rows.iter().map(|row| row.reserved).collect();
    let versions: Vec<i64> = rows.iter().map(|row| row.version).collect();
    let times: Vec<DateTime<Utc>> = rows.iter().map(|row| row.updated_at).collect();
    statement(
        "UPDATE products AS p
            SET available = d.available, reserved = d.reserved,
                version = d.version, updated_at = d.updated_at
           FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::timestamptz[])
                AS d(sku, available, reserved, version, updated_at)
          WHERE p.sku = d.sku",
    )
    .bind::<Array<Text>, _>(skus)
    .bind::<Array<BigInt>, _>(available)
    .bind::<Array<BigInt>, _>(reserved)
    .bind::<Array<BigInt>, _>(versions)
    .bind::<Array<Timestamptz>, _>(times)
    .execute(&mut &*conn)
    .await
    .map(|_| ())
}
