//! Queries on `loyalty_ledger`: one row per order whose points moved.
//!
//! A row says what was credited for the order and whether that credit is
//! reversed. The balance is the sum of credits not reversed. A reversal that
//! arrives before its credit leaves a row with nothing credited and the
//! reversal already recorded, so the late credit changes nothing.
//!
//! The queries take a shared connection so that they can be pipelined.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::loyalty_ledger;
use crate::domain::Ledger;

/// The order's entry, if any, locked until the transaction ends.
pub async fn lock(conn: &AsyncPgConnection, order_id: Uuid) -> QueryResult<Option<Ledger>> {
    let entry: Option<(i64, bool)> = loyalty_ledger::table
        .find(order_id)
        .select((loyalty_ledger::credited, loyalty_ledger::reversed))
        .for_update()
        .first(&mut &*conn)
        .await
        .optional()?;
    Ok(entry.map(|(credited, reversed)| Ledger { credited, reversed }))
}

/// Creates the order's entry.
pub async fn insert(
    conn: &AsyncPgConnection,
    order_id: Uuid,
    customer_id: Uuid,
    entry: Ledger,
) -> QueryResult<()> {
    diesel::insert_into(loyalty_ledger::table)
        .values((
            loyalty_ledger::order_id.eq(order_id),
            loyalty_ledger::customer_id.eq(customer_id),
            loyalty_ledger::credited.eq(entry.credited),
            loyalty_ledger::reversed.eq(entry.reversed),
        ))
        .execute(&mut &*conn)
        .await
        .map(|_| ())
}

/// Replaces the order's entry.
pub async fn update(conn: &AsyncPgConnection, order_id: Uuid, entry: Ledger) -> QueryResult<()> {
    diesel::update(loyalty_ledger::table.find(order_id))
        .set((
            loyalty_ledger::credited.eq(entry.credited),
            loyalty_ledger::reversed.eq(entry.reversed),
            loyalty_ledger::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut &*conn)
        .await
        .map(|_| ())
}
