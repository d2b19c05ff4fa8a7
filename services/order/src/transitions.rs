//! Moving an order through its states, the one way every path does it:
//! lock the order, let the state machine decide, update, write the event and
//! notify watchers, all in the caller's transaction.

use broker::{Outbox, TraceContext};
use chrono::Utc;
use dbps::order::v1::{OrderApproved, OrderCancelled, OrderRejected};
use diesel_async::AsyncPgConnection;
use futures_util::try_join;
use platform::api::timestamp;
use uuid::Uuid;

use crate::{
    api::proto_lines,
    db::orders::{self, OrderRow},
    domain::{Decision, OrderStatus, Transition},
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

/// Applies `transition` to `order_id`; `reason` is kept for rejections and
/// cancellations.
pub async fn apply(
    conn: &mut AsyncPgConnection,
    outbox: &Outbox,
    order_id: Uuid,
    transition: Transition,
    reason: &str,
    trace: &TraceContext,
) -> diesel::QueryResult<Outcome> {
    // The lines ride along with the lock in the same round trip (pipelined):
    // the events below carry them, and they never change.
    let (current, lines) = {
        let conn: &AsyncPgConnection = conn;
        try_join!(orders::lock(conn, order_id), orders::lines(conn, order_id))?
    };
    let Some(current) = current else {
        return Ok(Outcome::Missing);
    };
    let Some(status) = OrderStatus::parse(&current.status) else {
        return Ok(Outcome::Refused(current));
    };
    let next = match status.decide(transition) {
        Decision::Move(next) => next,
        Decision::AlreadyThere => return Ok(Outcome::AlreadyThere(current)),
        Decision::Refuse => return Ok(Outcome::Refused(current)),
    };
    // The order is locked: its new state is known without asking, so the
    // update, the event and the notification go out in one round trip.
    let conn: &AsyncPgConnection = conn;
    let order_id_text = current.order_id.to_string();
    let customer_id = current.customer_id.to_string();
    let at = Some(timestamp(Utc::now()));
    let event = async {
        match next {
            OrderStatus::Approved => {
                let event = OrderApproved {
                    order_id: order_id_text,
                    customer_id,
                    total_cents: current.total_cents,
                    approved_at: at,
                    lines: proto_lines(&lines),
                };
                outbox.enqueue(conn, &event, trace).await.map(|_| ())
            }
            OrderStatus::Rejected => {
                let event = OrderRejected {
                    order_id: order_id_text,
                    customer_id,
                    reason: reason.to_owned(),
                    rejected_at: at,
                    lines: proto_lines(&lines),
                    total_cents: current.total_cents,
                };
                outbox.enqueue(conn, &event, trace).await.map(|_| ())
            }
            OrderStatus::Cancelled => {
                let event = OrderCancelled {
                    order_id: order_id_text,
                    customer_id,
                    reason: reason.to_owned(),
                    previous_status: status.to_proto().into(),
                    cancelled_at: at,
                    lines: proto_lines(&lines),
                    total_cents: current.total_cents,
                };
                outbox.enqueue(conn, &event, trace).await.map(|_| ())
            }
            OrderStatus::Pending => Ok(()),
        }
    };
    let (row, (), ()) = try_join!(
        orders::set_status(conn, order_id, next, reason),
        event,
        orders::notify_changed(conn, order_id),
    )?;
    tracing::info!(%order_id, from = status.as_str(), to = next.as_str(), reason, "order moved");
    Ok(Outcome::Moved(row))
}
