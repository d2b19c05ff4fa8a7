//! Queries on `reservations` and `reservation_lines`.

use std::collections::{BTreeSet, HashMap, HashSet};

use diesel::{
    prelude::*,
    sql_types::{Array, Integer, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use platform::db::statement;
use uuid::Uuid;

use super::schema::{reservation_lines, reservations};

/// Where inventory stands with an order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Being decided in the current transaction.
    Pending,
    /// Every line is held.
    Reserved,
    /// Nothing was reserved.
    Rejected,
    /// It was reserved, then given back.
    Released,
    /// Cancelled before inventory decided: never reserve it.
    Cancelled,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Reserved => "RESERVED",
            Status::Rejected => "REJECTED",
            Status::Released => "RELEASED",
            Status::Cancelled => "CANCELLED",
        }
    }

    fn parse(text: &str) -> Option<Status> {
        [
            Status::Pending,
            Status::Reserved,
            Status::Rejected,
            Status::Released,
            Status::Cancelled,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// Inserts a row with `status` for each order that has none; those this
/// call inserted (and so owns the decision of). A concurrent claim of the
/// same order waits for this transaction and then finds the row taken.
/// Takes a shared connection so that it can be pipelined.
pub async fn claim_all(
    conn: &AsyncPgConnection,
    order_ids: &[Uuid],
    status: Status,
) -> QueryResult<HashSet<Uuid>> {
    if order_ids.is_empty() {
        return Ok(HashSet::new());
    }
    // In ID order, so that concurrent claims cannot deadlock.
    let unique: BTreeSet<Uuid> = order_ids.iter().copied().collect();
    #[derive(QueryableByName)]
    struct Claimed {
        #[diesel(sql_type = SqlUuid)]
        order_id: Uuid,
    }
    // Arrays, so one prepared statement serves any number of orders.
    let claimed: Vec<Claimed> = statement(
        "INSERT INTO reservations (order_id, status)
         SELECT order_id, $2 FROM unnest($1::uuid[]) AS claim(order_id)
         ON CONFLICT DO NOTHING RETURNING order_id",
    )
    .bind::<Array<SqlUuid>, _>(unique.into_iter().collect::<Vec<_>>())
    .bind::<Text, _>(status.as_str())
    .load(&mut &*conn)
    .await?;
    Ok(claimed.into_iter().map(|row| row.order_id).collect())
}

/// The statuses of the orders that have a row, locking those rows until
/// the transaction ends (in ID order).
pub async fn lock_all(
    conn: &AsyncPgConnection,
    order_ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, Status>> {
    let rows: Vec<(Uuid, String)> = reservations::table
        .filter(reservations::order_id.eq_any(order_ids))
        .order(reservations::order_id)
        .select((reservations::order_id, reservations::status))
        .for_update()
        .load(&mut &*conn)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, status)| Some((id, Status::parse(&status)?)))
        .collect())
}

/// What was decided for one order (and the held lines, for a reservation).
#[derive(Clone, Debug)]
pub struct Decision {
    /// The order, whose row this transaction claimed or locked.
    pub order_id: Uuid,
    /// What was decided: reserved, rejected or released.
    pub status: Status,
    /// Why: the shortage of a rejection, the cancellation's reason of a
    /// release; empty for a reservation.
    pub reason: String,
    /// (SKU, units) held by a reservation; empty for any other decision.
    pub lines: Vec<(String, i32)>,
}

/// Records decisions, one per order, claimed or locked by this
/// transaction: one update for all, one insert for all held lines. Takes a
/// shared connection: its writes are pipelined, with each other and with
/// whatever the caller joins them to.
pub async fn decide_all(conn: &AsyncPgConnection, decisions: &[Decision]) -> QueryResult<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = decisions.iter().map(|d| d.order_id).collect();
    let statuses: Vec<&str> = decisions.iter().map(|d| d.status.as_str()).collect();
    let reasons: Vec<&str> = decisions.iter().map(|d| d.reason.as_str()).collect();
    let decided = statement(
        "UPDATE reservations AS r
            SET status = d.status, reason = d.reason, updated_at = now()
           FROM unnest($1::uuid[], $2::text[], $3::text[]) AS d(order_id, status, reason)
          WHERE r.order_id = d.order_id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Text>, _>(statuses)
    .bind::<Array<Text>, _>(reasons)
    .execute(&mut &*conn);
    let held: Vec<(Uuid, &str, i32)> = decisions
        .iter()
        .flat_map(|d| {
            d.lines
                .iter()
                .map(|(sku, quantity)| (d.order_id, sku.as_str(), *quantity))
        })
        .collect();
    if held.is_empty() {
        decided.await?;
    } else {
        let held = statement(
            "INSERT INTO reservation_lines (order_id, sku, quantity)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[])",
        )
        .bind::<Array<SqlUuid>, _>(held.iter().map(|h| h.0).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(held.iter().map(|h| h.1).collect::<Vec<_>>())
        .bind::<Array<Integer>, _>(held.iter().map(|h| h.2).collect::<Vec<_>>())
        .execute(&mut &*conn);
        futures_util::try_join!(decided, held)?;
    }
    Ok(())
}

/// The lines held for each of the orders, by SKU.
pub async fn lines_of(
    conn: &AsyncPgConnection,
    order_ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, Vec<(String, i32)>>> {
    let rows: Vec<(Uuid, String, i32)> = reservation_lines::table
        .filter(reservation_lines::order_id.eq_any(order_ids))
        .order((reservation_lines::order_id, reservation_lines::sku))
        .select((
            reservation_lines::order_id,
            reservation_lines::sku,
            reservation_lines::quantity,
        ))
        .load(&mut &*conn)
        .await?;
    let mut by_order: HashMap<Uuid, Vec<(String, i32)>> = HashMap::new();
    for (order_id, sku, quantity) in rows {
        by_order.entry(order_id).or_default().push((sku, quantity));
    }
    Ok(by_order)
}
