//! Queries on `loyalty_ledger`: one row per order whose points moved.
//!
//! A row says what was credited for the order and whether that credit is
//! reversed. The balance is the sum of credits not reversed. A reversal that
//! arrives before its credit leaves a row with nothing credited and the
//! reversal already recorded, so the late credit changes nothing.
//!
//! The queries take a shared connection so that they can be pipelined.

use std::collections::HashMap;

use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bool, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use platform::db::statement;
use uuid::Uuid;

use super::schema::loyalty_ledger;
use crate::domain::Ledger;

/// The entries of `order_ids` that exist, locked until the transaction
/// ends (in order ID order, so that concurrent lockers cannot deadlock).
pub async fn lock_all(
    conn: &AsyncPgConnection,
    order_ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, Ledger>> {
    let rows: Vec<(Uuid, i64, bool)> = loyalty_ledger::table
        .filter(loyalty_ledger::order_id.eq_any(order_ids))
        .order(loyalty_ledger::order_id)
        .select((
            loyalty_ledger::order_id,
            loyalty_ledger::credited,
            loyalty_ledger::reversed,
        ))
        .for_update()
        .load(&mut &*conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(order_id, credited, reversed)| (order_id, Ledger { credited, reversed }))
        .collect())
}

/// Creates entries: (order, its customer, entry), one per order.
pub async fn insert_all(
    conn: &AsyncPgConnection,
    entries: &[(Uuid, Uuid, Ledger)],
) -> QueryResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    // Arrays, so one prepared statement serves any number of entries.
    statement(
        "INSERT INTO loyalty_ledger (order_id, customer_id, credited, reversed)
         SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::int8[], $4::bool[])",
    )
    .bind::<Array<SqlUuid>, _>(entries.iter().map(|(id, _, _)| *id).collect::<Vec<_>>())
    .bind::<Array<SqlUuid>, _>(entries.iter().map(|(_, id, _)| *id).collect::<Vec<_>>())
    .bind::<Array<BigInt>, _>(
        entries
            .iter()
            .map(|(_, _, e)| e.credited)
            .collect::<Vec<_>>(),
    )
    .bind::<Array<Bool>, _>(
        entries
            .iter()
            .map(|(_, _, e)| e.reversed)
            .collect::<Vec<_>>(),
    )
    .execute(&mut &*conn)
    .await
    .map(|_| ())
}

/// Replaces entries locked by [`lock_all`], one statement for all (one
/// entry per order).
pub async fn update_all(conn: &AsyncPgConnection, entries: &[(Uuid, Ledger)]) -> QueryResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = entries.iter().map(|(id, _)| *id).collect();
    let credited: Vec<i64> = entries.iter().map(|(_, e)| e.credited).collect();
    let reversed: Vec<bool> = entries.iter().map(|(_, e)| e.reversed).collect();
    statement(
        "UPDATE loyalty_ledger AS l
            SET credited = d.credited, reversed = d.reversed, updated_at = now()
           FROM unnest($1::uuid[], $2::int8[], $3::bool[]) AS d(order_id, credited, reversed)
          WHERE l.order_id = d.order_id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<BigInt>, _>(credited)
    .bind::<Array<Bool>, _>(reversed)
    .execute(&mut &*conn)
    .await
    .map(|_| ())
}
