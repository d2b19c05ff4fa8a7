//! `customer_view`: who a customer is and their loyalty balance.

use diesel::{prelude::*, upsert::excluded};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::customer_view;

/// A customer as the read model knows them.
#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable)]
#[diesel(table_name = customer_view)]
pub struct CustomerView {
    pub customer_id: Uuid,
    pub name: String,
    pub email: String,
    pub loyalty_points: i64,
}

/// Records name and email (keeping any balance already projected).
pub async fn registered(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    name: &str,
    email: &str,
) -> QueryResult<()> {
    diesel::insert_into(customer_view::table)
        .values((
            customer_view::customer_id.eq(customer_id),
            customer_view::name.eq(name),
            customer_view::email.eq(email),
        ))
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

/// Records a balance unless a newer one is already held.
pub async fn balance(
    conn: &mut AsyncPgConnection,
    customer_id: Uuid,
    points: i64,
    version: i64,
) -> QueryResult<()> {
    use diesel::query_dsl::methods::FilterDsl;
    diesel::insert_into(customer_view::table)
        .values((
            customer_view::customer_id.eq(customer_id),
            customer_view::loyalty_points.eq(points),
            customer_view::points_version.eq(version),
        ))
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
