//! Moving orders through their states, the one way every path does it:
//! lock the orders, let the state machine decide, update, write the events
//! and notify watchers, all in the caller's transaction.
//!
//! Many transitions go together with a fixed number of statements (the
//! consumer hands over a run of inventory answers at once): one lock of all
//! the orders (with their lines, pipelined), the decisions in memory in the
//! given order, then one update, one insert per event type and one query
//! sending every notification, pipelined. An order named twice is decided
//! the second time from the state the first left, in memory, as one by one.

use std::collections::BTreeSet;

use broker::{Outbox, TraceContext};
use chrono::Utc;
use diesel_async::AsyncPgConnection;
use futures_util::try_join;
use uuid::Uuid;

use crate::{
    db::orders::{self, OrderRow},
    domain::{Decision, OrderStatus, Transition},
    wire,
};

/// What a transition did.
#[derive(Debug)]
pub enum Outcome {
    /// The order moved; this is its new row.
    Moved(OrderRow),
    /// It had already happened (a replay); nothing changed.
    AlreadyThere(OrderRow),
    /// Not allowed from the order's status; nothing changed.
    Refused(OrderRow),
    /// No such order.
    Missing,
}

/// One transition to apply: `reason` is kept for rejections and
/// cancellations; the event it writes continues `trace`.
#[derive(Clone, Copy, Debug)]
pub struct Move<'a> {
    /// The order to move.
    pub order_id: Uuid,
    /// What happens to it.
    pub transition: Transition,
    /// The order's status reason if it moves, carried by `order.rejected`
    /// and `order.cancelled`; empty for an approval.
    pub reason: &'a str,
    /// The trace of the request or event that causes the move.
    pub trace: &'a TraceContext,
}

/// Applies `transition` to `order_id`.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    outbox: &Outbox,
    order_id: Uuid,
    transition: Transition,
    reason: &str,
    trace: &TraceContext,
) -> diesel::QueryResult<Outcome> {
    let one = Move {
        order_id,
        transition,
        reason,
        trace,
    };
    let mut outcomes = apply_all(conn, outbox, &[one]).await?;
    Ok(outcomes.pop().unwrap_or(Outcome::Missing))
}

/// Applies the moves in order, as if one by one; their outcomes, in the
/// same order.
pub async fn apply_all(
    conn: &mut AsyncPgConnection,
    outbox: &Outbox,
    moves: &[Move<'_>],
) -> diesel::QueryResult<Vec<Outcome>> {
    let ids: Vec<Uuid> = moves
        .iter()
        .map(|m| m.order_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let conn: &AsyncPgConnection = conn;
    // The lines ride along with the locks in the same round trip
    // (pipelined): the events below carry them, and they never change.
    let (mut current, lines) =
        try_join!(orders::lock_all(conn, &ids), orders::lines_of(conn, &ids))?;

    let mut outcomes = Vec::with_capacity(moves.len());
    let mut moved = BTreeSet::new();
    let mut notified = Vec::new();
    let (mut approved, mut rejected, mut cancelled) = (Vec::new(), Vec::new(), Vec::new());
    for m in moves {
        let Some(row) = current.get_mut(&m.order_id) else {
            outcomes.push(Outcome::Missing);
            continue;
        };
        let Some(status) = OrderStatus::parse(&row.status) else {
            outcomes.push(Outcome::Refused(row.clone()));
            continue;
        };
        let next = match status.decide(m.transition) {
            Decision::Move(next) => next,
            Decision::AlreadyThere => {
                outcomes.push(Outcome::AlreadyThere(row.clone()));
                continue;
            }
            Decision::Refuse => {
                outcomes.push(Outcome::Refused(row.clone()));
                continue;
            }
        };
        // The order is locked: its new state is known without asking.
        let now = Utc::now();
        row.status = next.as_str().to_owned();
        row.status_reason = m.reason.to_owned();
        row.updated_at = now;
        let order_lines = lines.get(&m.order_id).map_or(&[][..], Vec::as_slice);
        match next {
            OrderStatus::Approved => {
                approved.push((wire::approved(row, order_lines, now), m.trace))
            }
            OrderStatus::Rejected => {
                rejected.push((wire::rejected(row, order_lines, m.reason, now), m.trace))
            }
            OrderStatus::Cancelled => cancelled.push((
                wire::cancelled(row, order_lines, status, m.reason, now),
                m.trace,
            )),
            OrderStatus::Pending => {}
        }
        tracing::info!(order_id = %m.order_id, from = status.as_str(), to = next.as_str(), reason = m.reason, "order moved");
        moved.insert(m.order_id);
        notified.push(m.order_id);
        outcomes.push(Outcome::Moved(row.clone()));
    }

    // Each moved order's final row, whatever moves it took to get there.
    let rows: Vec<&OrderRow> = moved.iter().filter_map(|id| current.get(id)).collect();
    try_join!(
        orders::store_status_all(conn, &rows),
        outbox.enqueue_all(conn, approved.iter().map(|(e, t)| (e, *t))),
        outbox.enqueue_all(conn, rejected.iter().map(|(e, t)| (e, *t))),
        outbox.enqueue_all(conn, cancelled.iter().map(|(e, t)| (e, *t))),
        orders::notify_changed_all(conn, &notified),
    )?;
    Ok(outcomes)
}
