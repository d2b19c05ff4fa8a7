//! The order service's copies of other services' data.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::{prelude::*, upsert::excluded};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{catalog, known_customers};

/// Records that a customer exists (idempotent).
pub async fn add_customer(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    registered_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(known_customers::table)
        .values((
            known_customers::customer_id.eq(customer_id),
            known_customers::registered_at.eq(registered_at),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await
        .map(|_| ())
}

/// Whether the customer is known here. (The reads take a shared connection
/// so that they can be pipelined.)
pub async fn customer_exists(conn: &AsyncPgConnection, customer_id: Uuid) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        known_customers::table.find(customer_id),
    ))
    .get_result(&mut &*conn)
    .await
}

/// A product state from `product.changed`.
#[derive(Insertable)]
#[diesel(table_name = catalog)]
pub struct CatalogEntry<'a> {
    pub sku: &'a str,
    pub name: &'a str,
    pub price_cents: i64,
    pub version: i64,
    pub updated_at: DateTime<Utc>,
}

/// Stores a product state unless a newer one is already here, so states that
/// arrive out of order never move the replica backwards. True if stored.
pub async fn upsert_product(
    conn: &mut AsyncPgConnection,
    entry: &CatalogEntry<'_>,
) -> QueryResult<bool> {
    // `filter` on an upsert is `ON CONFLICT ... DO UPDATE ... WHERE`.
    use diesel::query_dsl::methods::FilterDsl;
    let stored = diesel::insert_into(catalog::table)
        .values(entry)
        .on_conflict(catalog::sku)
        .do_update()
        .set((
            catalog::name.eq(excluded(catalog::name)),
            catalog::price_cents.eq(excluded(catalog::price_cents)),
            catalog::version.eq(excluded(catalog::version)),
            catalog::updated_at.eq(excluded(catalog::updated_at)),
        ))
        .filter(catalog::version.lt(excluded(catalog::version)))
        .execute(conn)
        .await?;
    Ok(stored == 1)
}

/// Current prices of `skus` (those the catalog knows).
pub async fn prices(conn: &AsyncPgConnection, skus: &[&str]) -> QueryResult<HashMap<String, i64>> {
    let rows: Vec<(String, i64)> = catalog::table
        .filter(catalog::sku.eq_any(skus))
        .select((catalog::sku, catalog::price_cents))
        .load(&mut &*conn)
        .await?;
    Ok(rows.into_iter().collect())
}
