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

/// A customer's points balance and its version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Queryable)]
pub struct Points {
    pub balance: i64,
    pub version: i64,
}

/// Locks the customer's row until the transaction ends; its points, or `None`
/// if unknown. Takes a shared connection so that the queries behind it can be
/// pipelined (they run after it, on the server).
pub async fn lock(conn: &AsyncPgConnection, customer_id: Uuid) -> QueryResult<Option<Points>> {
    customers::table
        .find(customer_id)
        .select((customers::loyalty_points, customers::points_version))
        .for_update()
        .first(&mut &*conn)
        .await
        .optional()
}

/// Adds `delta` (possibly negative) points to a customer locked by [`lock`],
/// bumping the balance's version.
pub async fn add_points(
    conn: &AsyncPgConnection,
    customer_id: Uuid,
    delta: i64,
) -> QueryResult<()> {
    diesel::update(customers::table.find(customer_id))
        .set((
            customers::loyalty_points.eq(customers::loyalty_points + delta),
            customers::points_version.eq(customers::points_version + 1),
        ))
        .execute(&mut &*conn)
        .await
        .map(|_| ())
}
