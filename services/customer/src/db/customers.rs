//! Queries on `customers`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use platform::db::statement;
use uuid::Uuid;

use super::schema::customers;

/// A customer row (without the balance's version, which only events carry).
#[derive(Clone, Debug, Queryable, Selectable, Insertable)]
#[diesel(table_name = customers)]
pub struct Customer {
    /// UUIDv7, so the ID order is the registration order.
    pub customer_id: Uuid,
    /// Display name: 1 to 200 printable characters, trimmed.
    pub name: String,
    /// Lower-cased address, unique among customers.
    pub email: String,
    /// Points balance: credits of orders not reversed. Never negative.
    pub loyalty_points: i64,
    /// When the customer registered.
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
    /// Points held (`loyalty_points`). Never negative.
    pub balance: i64,
    /// Grows by one with every move of the balance (`points_version`);
    /// carried by `customer.points_changed`.
    pub version: i64,
}

/// Locks the rows of `customer_ids` until the transaction ends, in ID order
/// (so that concurrent lockers cannot deadlock); the points of those that
/// exist. Takes a shared connection so that the queries behind it can be
/// pipelined (they run after it, on the server).
pub async fn lock_all(
    conn: &AsyncPgConnection,
    customer_ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, Points>> {
    let rows: Vec<(Uuid, i64, i64)> = customers::table
        .filter(customers::customer_id.eq_any(customer_ids))
        .order(customers::customer_id)
        .select((
            customers::customer_id,
            customers::loyalty_points,
            customers::points_version,
        ))
        .for_update()
        .load(&mut &*conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, balance, version)| (id, Points { balance, version }))
        .collect())
}

/// A change of one customer's points: `delta` (possibly negative) in
/// `changes` steps, each bumping the balance's version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PointsChange {
    /// The customer whose balance moves.
    pub customer_id: Uuid,
    /// Points added to the balance; negative takes points back.
    pub delta: i64,
    /// Moves summed into `delta`: what the version grows by.
    pub changes: i64,
}

/// Applies the changes to customers locked by [`lock_all`], in one statement
/// (one change per customer).
pub async fn add_points_all(conn: &AsyncPgConnection, changes: &[PointsChange]) -> QueryResult<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = changes.iter().map(|c| c.customer_id).collect();
    let deltas: Vec<i64> = changes.iter().map(|c| c.delta).collect();
    let steps: Vec<i64> = changes.iter().map(|c| c.changes).collect();
    statement(
        "UPDATE customers AS c
            SET loyalty_points = c.loyalty_points + d.delta,
                points_version = c.points_version + d.steps
           FROM unnest($1::uuid[], $2::int8[], $3::int8[]) AS d(customer_id, delta, steps)
          WHERE c.customer_id = d.customer_id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<BigInt>, _>(deltas)
    .bind::<Array<BigInt>, _>(steps)
    .execute(&mut &*conn)
    .await
    .map(|_| ())
}
