//! The inventory side of the order saga.
//!
//! * `order.created`: reserve every line, all or nothing → `stock.reserved`,
//!   or `stock.rejected` naming the first SKU short of stock.
//! * `order.cancelled`: give a reservation back → `stock.released`; if the
//!   cancellation comes first, remember it so the order is never reserved.
//!
//! Every stock movement also publishes the product's new state. Each handler
//! takes a run of events of one type inside the consumer's transaction,
//! after their IDs were recorded in the inbox, and an order is decided once
//! however often its events come.
//!
//! A run is applied with a fixed number of statements: claim (or lock) every
//! order's reservation row and lock every product involved, in SKU order;
//! decide each order in memory in delivery order against the locked stock,
//! which the earlier orders of the run have already moved (so nothing is
//! oversold: the rows stay locked until the commit); then write the
//! reservations, the products' final stock and every event with multi-row
//! statements. An order that appears twice in a run is decided by its first
//! event only: the claim is the first event's, and a second release finds
//! it already released, in memory.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use broker::{Consumer, HandlerError, Outbox, Received, TraceContext};
use chrono::Utc;
use dbps::{
    inventory::v1::ProductChanged,
    order::v1::{OrderCancelled, OrderCreated},
};
use diesel_async::AsyncPgConnection;
use futures_util::try_join;
use uuid::Uuid;

use crate::{
    db::{
        products::{self, Product},
        reservations::{self, Decision, Status},
    },
    wire,
};

/// The inventory service's subscriptions.
pub fn consumer(outbox: Outbox) -> Consumer {
    let releasing = outbox.clone();
    Consumer::new("inventory")
        .on_batch::<OrderCreated, _>(move |conn, run| Box::pin(reserve(conn, outbox.clone(), run)))
        .on_batch::<OrderCancelled, _>(move |conn, run| {
            Box::pin(release(conn, releasing.clone(), run))
        })
}

/// Reserves every order of the run, each all or nothing.
async fn reserve(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    run: Vec<Received<OrderCreated>>,
) -> Result<(), HandlerError> {
    let mut orders = Vec::with_capacity(run.len());
    for received in &run {
        let order_id = parse_order_id(&received.event.order_id)?;
        orders.push((order_id, wanted(&received.event)?, &received.trace));
    }
    let ids: Vec<Uuid> = orders.iter().map(|(id, ..)| *id).collect();
    let skus: Vec<&str> = orders
        .iter()
        .flat_map(|(_, wanted, _)| wanted.keys().map(String::as_str))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let shared: &AsyncPgConnection = conn;
    // The product locks are pipelined behind the claims: for orders already
    // decided they lock a little more than needed, one round trip less.
    let (mut claimed, mut stock) = try_join!(
        reservations::claim_all(shared, &ids, Status::Pending),
        products::lock_all(shared, &skus),
    )?;

    let now = Utc::now();
    let mut decisions = Vec::new();
    let (mut reserved, mut rejected) = (Vec::new(), Vec::new());
    let mut moved: Vec<(ProductChanged, &TraceContext)> = Vec::new();
    let mut touched = BTreeSet::new();
    for (order_id, wanted, trace) in orders {
        // Only the first event of an order decides it.
        if !claimed.remove(&order_id) {
            tracing::info!(%order_id, "order already decided (replay, or cancelled first)");
            continue;
        }
        if let Some((sku, reason)) = shortage(&stock, &wanted) {
            tracing::info!(%order_id, reason, "stock rejected");
            rejected.push((wire::rejected(order_id, sku, reason.clone(), now), trace));
            decisions.push(Decision {
                order_id,
                status: Status::Rejected,
                reason,
                lines: Vec::new(),
            });
            continue;
        }
        for (sku, &quantity) in &wanted {
            let Some(product) = stock.get_mut(sku) else {
                continue; // shortage() found every SKU
            };
            product.available -= quantity;
            product.reserved += quantity;
            product.version += 1;
            product.updated_at = now;
            moved.push((wire::changed(product), trace));
            touched.insert(sku.clone());
        }
        let held: Vec<(String, i32)> = wanted
            .iter()
            .map(|(sku, quantity)| (sku.clone(), i32::try_from(*quantity).unwrap_or(i32::MAX)))
            .collect();
        tracing::info!(%order_id, "stock reserved");
        reserved.push((wire::reserved(order_id, &held, now), trace));
        decisions.push(Decision {
            order_id,
            status: Status::Reserved,
            reason: String::new(),
            lines: held,
        });
    }

    let rows: Vec<&Product> = touched.iter().filter_map(|sku| stock.get(sku)).collect();
    // Independent writes: pipelined, one round trip.
    try_join!(
        reservations::decide_all(shared, &decisions),
        products::store_stock_all(shared, &rows),
        outbox.enqueue_all(shared, reserved.iter().map(|(e, t)| (e, *t))),
        outbox.enqueue_all(shared, rejected.iter().map(|(e, t)| (e, *t))),
        outbox.enqueue_all(shared, moved.iter().map(|(e, t)| (e, *t))),
    )?;
    Ok(())
}

/// The order's quantity per SKU, in SKU order.
fn wanted(order: &OrderCreated) -> Result<BTreeMap<String, i64>, HandlerError> {
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for line in &order.lines {
        if line.quantity <= 0 {
            return Err(HandlerError::Reject(format!(
                "line {} has quantity {}",
                line.sku, line.quantity
            )));
        }
        *wanted.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
    }
    Ok(wanted)
}

/// The first SKU (in SKU order) whose stock cannot cover the order, and why;
/// `None` if every line can be reserved.
fn shortage(
    stock: &BTreeMap<String, Product>,
    wanted: &BTreeMap<String, i64>,
) -> Option<(String, String)> {
    wanted.iter().find_map(|(sku, &quantity)| {
        let reason = match stock.get(sku) {
            Some(product) if product.available >= quantity => return None,
            Some(product) => format!(
                "insufficient stock for {sku}: {} available, {quantity} ordered",
                product.available
            ),
            None => format!("unknown sku {sku}"),
        };
        Some((sku.clone(), reason))
    })
}

/// Gives back what every cancelled order of the run holds.
async fn release(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    run: Vec<Received<OrderCancelled>>,
) -> Result<(), HandlerError> {
    let mut cancels = Vec::with_capacity(run.len());
    for received in &run {
        let order_id = parse_order_id(&received.event.order_id)?;
        cancels.push((order_id, &received.event.reason, &received.trace));
    }
    let ids: Vec<Uuid> = cancels.iter().map(|(id, ..)| *id).collect();
    let shared: &AsyncPgConnection = conn;
    // The lock runs after the claim (pipelined): it sees the rows the claim
    // just inserted, as CANCELLED.
    let (claimed, statuses) = try_join!(
        reservations::claim_all(shared, &ids, Status::Cancelled),
        reservations::lock_all(shared, &ids),
    )?;
    let mut releasing: Vec<(Uuid, &String, &TraceContext)> = Vec::new();
    let mut released = HashSet::new();
    for (order_id, reason, trace) in cancels {
        if claimed.contains(&order_id) {
            tracing::info!(%order_id, "cancelled before inventory saw the order; it will not be reserved");
            continue;
        }
        match statuses.get(&order_id) {
            // A second cancellation in the run finds it released.
            Some(Status::Reserved) if released.insert(order_id) => {
                releasing.push((order_id, reason, trace));
            }
            status => {
                tracing::info!(%order_id, ?status, "nothing held for the cancelled order");
            }
        }
    }
    if releasing.is_empty() {
        return Ok(());
    }

    let ids: Vec<Uuid> = releasing.iter().map(|(id, ..)| *id).collect();
    let held = reservations::lines_of(shared, &ids).await?;
    let skus: Vec<&str> = held
        .values()
        .flatten()
        .map(|(sku, _)| sku.as_str())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut stock = products::lock_all(shared, &skus).await?;

    let now = Utc::now();
    let mut decisions = Vec::with_capacity(releasing.len());
    let mut events = Vec::with_capacity(releasing.len());
    let mut moved: Vec<(ProductChanged, &TraceContext)> = Vec::new();
    let mut touched = BTreeSet::new();
    for (order_id, reason, trace) in releasing {
        let lines = held.get(&order_id).map_or(&[][..], Vec::as_slice);
        for (sku, quantity) in lines {
            let Some(product) = stock.get_mut(sku) else {
                continue; // products are never deleted
            };
            product.available += i64::from(*quantity);
            product.reserved -= i64::from(*quantity);
            product.version += 1;
            product.updated_at = now;
            moved.push((wire::changed(product), trace));
            touched.insert(sku.clone());
        }
        tracing::info!(%order_id, "stock released");
        events.push((wire::released(order_id, lines, now), trace));
        decisions.push(Decision {
            order_id,
            status: Status::Released,
            reason: reason.clone(),
            lines: Vec::new(),
        });
    }
    let rows: Vec<&Product> = touched.iter().filter_map(|sku| stock.get(sku)).collect();
    try_join!(
        reservations::decide_all(shared, &decisions),
        products::store_stock_all(shared, &rows),
        outbox.enqueue_all(shared, events.iter().map(|(e, t)| (e, *t))),
        outbox.enqueue_all(shared, moved.iter().map(|(e, t)| (e, *t))),
    )?;
    Ok(())
}

fn parse_order_id(text: &str) -> Result<Uuid, HandlerError> {
    Uuid::try_parse(text)
        .map_err(|_| HandlerError::Reject(format!("order_id {text:?} is not a UUID")))
}
