//! Queries on `loyalty_ledger`: one row per order whose points moved.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::loyalty_ledger;

/// Records that `points` were credited for `order_id`. False if the order
/// already has a ledger row (its points moved before).
pub async fn record_credit(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
    points: i64,
) -> QueryResult<bool> {
    let inserted = diesel::insert_into(loyalty_ledger::table)
        .values((
            loyalty_ledger::order_id.eq(order_id),
            loyalty_ledger::customer_id.eq(customer_id),
            loyalty_ledger::credited.eq(points),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}
