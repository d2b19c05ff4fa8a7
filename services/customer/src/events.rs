//! What the customer service does with other services' events: loyalty
//! points follow the order's fate, exactly once per order.
//!
//! * `order.created`: credit 10 % of the total.
//! * `order.rejected` / `order.cancelled`: take that credit back.
//!
//! A per-order ledger ([`crate::db::ledger`], rules in
//! [`crate::domain::apply_points`]) makes replays and out-of-order arrivals
//! harmless. Each handler runs inside the consumer's transaction, after the
//! event's ID was recorded in the inbox.

use broker::{Consumer, HandlerError, Outbox, Received, TraceContext};
use chrono::Utc;
use dbps::{
    customer::v1::LoyaltyPointsChanged,
    order::v1::{OrderCancelled, OrderCreated, OrderRejected},
};
use diesel_async::AsyncPgConnection;
use futures_util::try_join;
use platform::api::timestamp;
use uuid::Uuid;

use crate::{
    db::{customers, ledger},
    domain::{PointsEvent, apply_points, points_for},
};

/// The customer service's subscriptions.
pub fn consumer(outbox: Outbox) -> Consumer {
    let (on_rejected, on_cancelled) = (outbox.clone(), outbox.clone());
    Consumer::new("customer")
        .on::<OrderCreated, _>(move |conn, received: Received<OrderCreated>| {
            let points = PointsEvent::Credit(points_for(received.event.total_cents));
            let Received { event, trace, .. } = received;
            Box::pin(move_points(
                conn,
                outbox.clone(),
                event.order_id,
                event.customer_id,
                points,
                trace,
            ))
        })
        .on::<OrderRejected, _>(move |conn, received| {
            let Received { event, trace, .. } = received;
            Box::pin(move_points(
                conn,
                on_rejected.clone(),
                event.order_id,
                event.customer_id,
                PointsEvent::Reverse,
                trace,
            ))
        })
        .on::<OrderCancelled, _>(move |conn, received| {
            let Received { event, trace, .. } = received;
            Box::pin(move_points(
                conn,
                on_cancelled.clone(),
                event.order_id,
                event.customer_id,
                PointsEvent::Reverse,
                trace,
            ))
        })
}

async fn move_points(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    order_id: String,
    customer_id: String,
    event: PointsEvent,
    trace: TraceContext,
) -> Result<(), HandlerError> {
    let order_id = parse(&order_id, "order_id")?;
    let customer_id = parse(&customer_id, "customer_id")?;
    let conn: &AsyncPgConnection = conn;
    // Every change of a customer's points locks the customer first. The
    // ledger read is pipelined behind the lock: the server runs it once the
    // lock is held, so it sees what the previous holder committed.
    let (points, current) = try_join!(
        customers::lock(conn, customer_id),
        ledger::lock(conn, order_id)
    )?;
    let Some(points) = points else {
        return Err(HandlerError::Reject(format!(
            "unknown customer {customer_id}"
        )));
    };
    let Some((next, delta)) = apply_points(current, event) else {
        tracing::info!(%order_id, ?event, "points for this order already settled");
        return Ok(());
    };
    let entry = async {
        match current {
            None => ledger::insert(conn, order_id, customer_id, next).await,
            Some(_) => ledger::update(conn, order_id, next).await,
        }
    };
    if delta == 0 {
        entry.await?;
        return Ok(());
    }
    // The row is locked: the new balance is known without asking.
    let changed = LoyaltyPointsChanged {
        customer_id: customer_id.to_string(),
        order_id: order_id.to_string(),
        delta,
        balance: points.balance + delta,
        changed_at: Some(timestamp(Utc::now())),
        version: points.version + 1,
    };
    // Three independent writes in one round trip.
    try_join!(
        entry,
        customers::add_points(conn, customer_id, delta),
        outbox.enqueue(conn, &changed, &trace),
    )?;
    tracing::info!(%order_id, %customer_id, delta, balance = changed.balance, "loyalty points moved");
    Ok(())
}

fn parse(id: &str, field: &str) -> Result<Uuid, HandlerError> {
    Uuid::try_parse(id).map_err(|_| HandlerError::Reject(format!("{field} {id:?} is not a UUID")))
}
