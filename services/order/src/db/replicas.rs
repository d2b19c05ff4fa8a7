//! The order service's copies of other services' data.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use diesel::{prelude::*, upsert::excluded};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{catalog, known_customers};

/// Records that customers exist: (customer, registered at). Idempotent; a
/// customer listed twice keeps the first, as one by one.
pub async fn add_customers(
    conn: &mut AsyncPgConnection,
    customers: &[(Uuid, DateTime<Utc>)],
) -> QueryResult<()> {
    if customers.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = customers
        .iter()
        .map(|(customer_id, registered_at)| {
            (
                known_customers::customer_id.eq(*customer_id),
                known_customers::registered_at.eq(*registered_at),
            )
        })
        .collect();
    diesel::insert_into(known_customers::table)
        .values(rows)
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
    /// The product.
    pub sku: &'a str,
    /// Display name.
    pub name: &'a str,
    /// Price of one unit, in cents: what new orders are priced at.
    pub price_cents: i64,
    /// Inventory's version of the product: only a higher one replaces the
    /// entry held.
    pub version: i64,
    /// When inventory changed the product.
    pub updated_at: DateTime<Utc>,
}

/// Stores product states, each SKU's newest, unless a newer one is
/// already here, so states that arrive out of order never move the replica
/// backwards. The number of SKUs stored.
pub async fn upsert_products(
    conn: &mut AsyncPgConnection,
    entries: &[CatalogEntry<'_>],
) -> QueryResult<usize> {
    // `filter` on an upsert is `ON CONFLICT ... DO UPDATE ... WHERE`.
    use diesel::query_dsl::methods::FilterDsl;
    // One row per SKU, the newest (an upsert may not touch a row twice):
    // the one a one-by-one application keeps.
    let mut newest: BTreeMap<&str, &CatalogEntry<'_>> = BTreeMap::new();
    for entry in entries {
        let held = newest.entry(entry.sku).or_insert(entry);
        if entry.version > held.version {
            *held = entry;
        }
    }
    if newest.is_empty() {
        return Ok(0);
    }
    let rows: Vec<&CatalogEntry<'_>> = newest.into_values().collect();
    diesel::insert_into(catalog::table)
        .values(rows)
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
        .await
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
