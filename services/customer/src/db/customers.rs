//! Queries on `customers`.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::customers;

/// A customer row (without the balance's version, which only events carry).
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = customers)]
pub struct Customer {
    pub customer_id: Uuid,
    pub name: String,
    pub email: String,
    pub loyalty_points: i64,
    pub created_at: DateTime<Utc>,
}

/// Inserts a customer; a taken email is a unique violation.
pub async fn insert(conn: &mut AsyncPgConnection, customer: &Customer) -> QueryResult<Customer> {
    diesel::insert_into(customers::table)
        .values(customer)
        .returning(Customer::as_returning())
        .get_result(conn)
        .await
}

/// One customer, if it exists.
pub async fn find(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
) -> QueryResult<Option<Customer>> {
    customers::table
        .find(customer_id)
        .select(Customer::as_select())
        .first(conn)
        .await
        .optional()
}

/// Up to `limit` customers after `after` in registration (UUIDv7) order.
pub async fn page(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<Customer>> {
    let mut query = customers::table
        .select(Customer::as_select())
        .order(customers::customer_id)
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(customers::customer_id.gt(after));
    }
    query.load(conn).await
}

/// Locks the customer's row until the transaction ends; false if unknown.
pub async fn lock(conn: &mut AsyncPgConnection, customer_id: Uuid) -> QueryResult<bool> {
    let found: Option<Uuid> = customers::table
        .find(customer_id)
        .select(customers::customer_id)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    Ok(found.is_some())
}

/// Adds `delta` (possibly negative) points to a customer locked by [`lock`];
/// returns the new balance and its version.
pub async fn add_points(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    delta: i64,
) -> QueryResult<(i64, i64)> {
    diesel::update(customers::table.find(customer_id))
        .set((
            customers::loyalty_points.eq(customers::loyalty_points + delta),
            customers::points_version.eq(customers::points_version + 1),
        ))
        .returning((customers::loyalty_points, customers::points_version))
        .get_result(conn)
        .await
}
