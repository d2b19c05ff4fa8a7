//! `customer_view`: who a customer is and their loyalty balance.

use std::collections::BTreeMap;

use diesel::{prelude::*, upsert::excluded};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::customer_view;

/// A customer as the read model knows them.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = customer_view)]
pub struct CustomerView {
    /// The customer.
    pub customer_id: Uuid,
    /// As registered; empty until `customer.registered` is applied.
    pub name: String,
    /// As registered (lower-cased); empty until `customer.registered` is
    /// applied.
    pub email: String,
    /// The balance of the newest `customer.points_changed` applied; 0 before
    /// any.
    pub loyalty_points: i64,
}

/// Records names and emails: (customer, name, email), in event order
/// (keeping any balance already projected). A customer registered twice in
/// the list keeps the last, as one by one.
pub async fn registered_all(
    conn: &mut AsyncPgConnection,
    customers: &[(Uuid, &str, &str)],
) -> QueryResult<()> {
    // One row per customer: an upsert may not touch a row twice.
    let last: BTreeMap<Uuid, (&str, &str)> = customers
        .iter()
        .map(|(id, name, email)| (*id, (*name, *email)))
        .collect();
    let rows: Vec<_> = last
        .into_iter()
        .map(|(id, (name, email))| {
            (
                customer_view::customer_id.eq(id),
                customer_view::name.eq(name),
                customer_view::email.eq(email),
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    diesel::insert_into(customer_view::table)
        .values(rows)
        .on_conflict(customer_view::customer_id)
        .do_update()
        .set((
            customer_view::name.eq(excluded(customer_view::name)),
            customer_view::email.eq(excluded(customer_view::email)),
        ))
        .execute(conn)
        .await
        .map(|_| ())
}

/// Records balances: (customer, points, version); each customer's newest
/// version, unless a newer one is already held.
pub async fn balance_all(
    conn: &mut AsyncPgConnection,
    balances: &[(Uuid, i64, i64)],
) -> QueryResult<()> {
    use diesel::query_dsl::methods::FilterDsl;
    // One row per customer, the newest: the one a one-by-one upsert keeps.
    let mut newest: BTreeMap<Uuid, (i64, i64)> = BTreeMap::new();
    for &(id, points, version) in balances {
        let held = newest.entry(id).or_insert((points, version));
        if version > held.1 {
            *held = (points, version);
        }
    }
    let rows: Vec<_> = newest
        .into_iter()
        .map(|(id, (points, version))| {
            (
                customer_view::customer_id.eq(id),
                customer_view::loyalty_points.eq(points),
                customer_view::points_version.eq(version),
            )
        })
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    diesel::insert_into(customer_view::table)
        .values(rows)
        .on_conflict(customer_view::customer_id)
        .do_update()
        .set((
            customer_view::loyalty_points.eq(excluded(customer_view::loyalty_points)),
            customer_view::points_version.eq(excluded(customer_view::points_version)),
        ))
        .filter(customer_view::points_version.lt(excluded(customer_view::points_version)))
        .execute(conn)
        .await
        .map(|_| ())
}

/// One customer, if projected.
pub async fn find(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
) -> QueryResult<Option<CustomerView>> {
    customer_view::table
        .find(customer_id)
        .select(CustomerView::as_select())
        .first(conn)
        .await
        .optional()
}
