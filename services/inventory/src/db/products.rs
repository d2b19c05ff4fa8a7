//! Queries on `products`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::schema::products;
use crate::domain::MAX_STOCK;

/// A product row.
#[derive(Clone, Debug, Queryable, Selectable)]
#[diesel(table_name = products)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub available: i64,
    pub reserved: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// A product to create.
#[derive(Insertable)]
#[diesel(table_name = products)]
pub struct NewProduct<'a> {
    pub sku: &'a str,
    pub name: &'a str,
    pub price_cents: i64,
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

/// Moves `quantity` from available to reserved if that many are available, in
/// one conditional update: the database, not a read before the write, decides,
/// so concurrent reservations can never oversell. `None` if not enough (or no
/// such product).
pub async fn reserve(
    conn: &mut AsyncPgConnection,
    sku: &str,
    quantity: i64,
) -> QueryResult<Option<Product>> {
    diesel::update(
        products::table
            .find(sku)
            .filter(products::available.ge(quantity)),
    )
    .set((
        products::available.eq(products::available - quantity),
        products::reserved.eq(products::reserved + quantity),
        products::version.eq(products::version + 1),
        products::updated_at.eq(diesel::dsl::now),
    ))
    .returning(Product::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Moves `quantity` from reserved back to available.
pub async fn release(
    conn: &mut AsyncPgConnection,
    sku: &str,
    quantity: i64,
) -> QueryResult<Product> {
    diesel::update(products::table.find(sku))
        .set((
            products::available.eq(products::available + quantity),
            products::reserved.eq(products::reserved - quantity),
            products::version.eq(products::version + 1),
            products::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Product::as_returning())
        .get_result(conn)
        .await
}
