//! What the customer service does with other services' events: loyalty
//! points follow the order's fate, exactly once per order.
//!
//! * `order.created`: credit 10 % of the total.
//! * `order.rejected` / `order.cancelled`: take that credit back.
//!
//! A per-order ledger ([`crate::db::ledger`], rules in
//! [`crate::domain::apply_points`]) makes replays and out-of-order arrivals
//! harmless. Each handler takes a run of events of one type inside the
//! consumer's transaction, after their IDs were recorded in the inbox, and
//! applies them with a fixed number of statements: lock the customers and
//! ledger entries involved, apply the rule event by event in memory, then
//! write the entries, the summed balance changes and the events at once.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use broker::{Consumer, HandlerError, Outbox, Received, TraceContext};
use chrono::Utc;
use dbps::order::v1::{OrderCancelled, OrderCreated, OrderRejected};
use diesel_async::AsyncPgConnection;
use futures_util::try_join;
use uuid::Uuid;

use crate::{
    db::{
        customers::{self, PointsChange},
        ledger,
    },
    domain::{PointsEvent, apply_points, points_for},
    wire,
};

/// The customer service's subscriptions.
pub fn consumer(outbox: Outbox) -> Consumer {
    let (on_rejected, on_cancelled) = (outbox.clone(), outbox.clone());
    Consumer::new("customer")
        .on_batch::<OrderCreated, _>(move |conn, run| {
            let moves = run
                .into_iter()
                .map(|Received { event, trace, .. }| Move {
                    points: PointsEvent::Credit(points_for(event.total_cents)),
                    order_id: event.order_id,
                    customer_id: event.customer_id,
                    trace,
                })
                .collect();
            Box::pin(move_points(conn, outbox.clone(), moves))
        })
        .on_batch::<OrderRejected, _>(move |conn, run| {
            let moves = reversals(run, |event| (event.order_id, event.customer_id));
            Box::pin(move_points(conn, on_rejected.clone(), moves))
        })
        .on_batch::<OrderCancelled, _>(move |conn, run| {
            let moves = reversals(run, |event| (event.order_id, event.customer_id));
            Box::pin(move_points(conn, on_cancelled.clone(), moves))
        })
}

/// The moves taking back the credit of a run of rejected or cancelled
/// orders; `ids` gives each event's (order, customer).
fn reversals<E>(run: Vec<Received<E>>, ids: impl Fn(E) -> (String, String)) -> Vec<Move> {
    run.into_iter()
        .map(|Received { event, trace, .. }| {
            let (order_id, customer_id) = ids(event);
            Move {
                points: PointsEvent::Reverse,
                order_id,
                customer_id,
                trace,
            }
        })
        .collect()
}

/// One event's move of an order's points, as received.
struct Move {
    order_id: String,
    customer_id: String,
    points: PointsEvent,
    trace: TraceContext,
}

/// Applies a run of moves as if one by one, in order.
///
/// An order or a customer may appear several times in a run: the rule is
/// applied in memory on top of the previous event's result, and each
/// `LoyaltyPointsChanged` carries the balance and version after its own
/// move. Only the final ledger entries and the summed balance changes are
/// written.
async fn move_points(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    moves: Vec<Move>,
) -> Result<(), HandlerError> {
    let mut parsed = Vec::with_capacity(moves.len());
    for m in moves {
        let order_id = parse(&m.order_id, "order_id")?;
        let customer_id = parse(&m.customer_id, "customer_id")?;
        parsed.push((order_id, customer_id, m.points, m.trace));
    }
    let customer_ids: Vec<Uuid> = parsed
        .iter()
        .map(|(_, customer_id, ..)| *customer_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let order_ids: Vec<Uuid> = parsed
        .iter()
        .map(|(order_id, ..)| *order_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let conn: &AsyncPgConnection = conn;
    // Every change of a customer's points locks the customer first. The
    // ledger read is pipelined behind the lock: the server runs it once the
    // locks are held, so it sees what the previous holders committed.
    let (mut points, mut entries) = try_join!(
        customers::lock_all(conn, &customer_ids),
        ledger::lock_all(conn, &order_ids)
    )?;
    if let Some(unknown) = customer_ids.iter().find(|id| !points.contains_key(id)) {
        return Err(HandlerError::Reject(format!("unknown customer {unknown}")));
    }
    let stored: HashSet<Uuid> = entries.keys().copied().collect();

    // order → its customer, for every entry that changes
    let mut touched: BTreeMap<Uuid, Uuid> = BTreeMap::new();
    let mut changes: BTreeMap<Uuid, PointsChange> = BTreeMap::new();
    let mut events = Vec::new();
    for (order_id, customer_id, event, trace) in &parsed {
        let Some((next, delta)) = apply_points(entries.get(order_id).copied(), *event) else {
            tracing::info!(%order_id, ?event, "points for this order already settled");
            continue;
        };
        entries.insert(*order_id, next);
        touched.insert(*order_id, *customer_id);
        if delta == 0 {
            continue;
        }
        // The rows are locked: each new balance is known without asking.
        let Some(balance) = points.get_mut(customer_id) else {
            continue; // checked above
        };
        balance.balance += delta;
        balance.version += 1;
        let change = changes.entry(*customer_id).or_insert(PointsChange {
            customer_id: *customer_id,
            delta: 0,
            changes: 0,
        });
        change.delta += delta;
        change.changes += 1;
        tracing::info!(%order_id, %customer_id, delta, balance = balance.balance, "loyalty points moved");
        let event = wire::points_changed(*customer_id, *order_id, delta, balance, Utc::now());
        events.push((event, trace));
    }

    let (mut created, mut updated) = (Vec::new(), Vec::new());
    for (order_id, customer_id) in touched {
        let Some(entry) = entries.get(&order_id).copied() else {
            continue; // inserted above
        };
        if stored.contains(&order_id) {
            updated.push((order_id, entry));
        } else {
            created.push((order_id, customer_id, entry));
        }
    }
    let changes: Vec<PointsChange> = changes.into_values().collect();
    // Independent writes, pipelined in one round trip.
    try_join!(
        ledger::insert_all(conn, &created),
        ledger::update_all(conn, &updated),
        customers::add_points_all(conn, &changes),
        outbox.enqueue_all(conn, events.iter().map(|(event, trace)| (event, *trace))),
    )?;
    Ok(())
}

fn parse(id: &str, field: &str) -> Result<Uuid, HandlerError> {
    Uuid::try_parse(id).map_err(|_| HandlerError::Reject(format!("{field} {id:?} is not a UUID")))
}
