//! Queries on `reservations` and `reservation_lines`.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
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

/// Inserts the order's row with `status` unless it has one; true if this
/// call inserted it (and so owns the decision). A concurrent claim of the
/// same order waits for this transaction and then finds the row taken.
pub async fn claim(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
    status: Status,
) -> QueryResult<bool> {
    let inserted = diesel::insert_into(reservations::table)
        .values((
            reservations::order_id.eq(order_id),
            reservations::status.eq(status.as_str()),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(inserted == 1)
}

/// The order's status, locking its row until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection, order_id: Uuid) -> QueryResult<Option<Status>> {
    let status: Option<String> = reservations::table
        .find(order_id)
        .select(reservations::status)
        .for_update()
        .first(conn)
        .await
        .optional()?;
    Ok(status.as_deref().and_then(Status::parse))
}

/// Records the decision (and the held lines, for a reservation). Takes a
/// shared connection: its writes are pipelined, with each other and with
/// whatever the caller joins them to.
pub async fn decide(
    conn: &AsyncPgConnection,
    order_id: Uuid,
    status: Status,
    reason: &str,
    lines: &[(String, i32)],
) -> QueryResult<()> {
    let decision = diesel::update(reservations::table.find(order_id))
        .set((
            reservations::status.eq(status.as_str()),
            reservations::reason.eq(reason),
            reservations::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut &*conn);
    let rows: Vec<_> = lines
        .iter()
        .map(|(sku, quantity)| {
            (
                reservation_lines::order_id.eq(order_id),
                reservation_lines::sku.eq(sku.as_str()),
                reservation_lines::quantity.eq(*quantity),
            )
        })
        .collect();
    if rows.is_empty() {
        decision.await?;
    } else {
        let held = diesel::insert_into(reservation_lines::table)
            .values(rows)
            .execute(&mut &*conn);
        futures_util::try_join!(decision, held)?;
    }
    Ok(())
}

/// The lines held for an order, by SKU.
pub async fn lines(
    conn: &mut AsyncPgConnection,
    order_id: Uuid,
) -> QueryResult<Vec<(String, i32)>> {
    reservation_lines::table
        .filter(reservation_lines::order_id.eq(order_id))
        .order(reservation_lines::sku)
        .select((reservation_lines::sku, reservation_lines::quantity))
        .load(conn)
        .await
}
