//! The inventory side of the order saga.
//!
//! * `order.created`: reserve every line, all or nothing → `stock.reserved`,
//!   or `stock.rejected` naming the first SKU short of stock.
//! * `order.cancelled`: give a reservation back → `stock.released`; if the
//!   cancellation comes first, remember it so the order is never reserved.
//!
//! Every stock movement also publishes the product's new state. Each handler
//! runs inside the consumer's transaction, after the event's ID was recorded
//! in the inbox, and an order is decided once however often its events come.

use std::collections::BTreeMap;

use broker::{Consumer, HandlerError, Outbox, Received, TraceContext};
use chrono::Utc;
use dbps::{
    inventory::v1::{StockLine, StockRejected, StockReleased, StockReserved},
    order::v1::{OrderCancelled, OrderCreated},
};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection};
use futures_util::{future::try_join_all, try_join};
use platform::api::timestamp;
use uuid::Uuid;

use crate::{
    api::changed,
    db::{
        products::{self, Product},
        reservations::{self, Status},
    },
};

/// The inventory service's subscriptions.
pub fn consumer(outbox: Outbox) -> Consumer {
    let releasing = outbox.clone();
    Consumer::new("inventory")
        .on::<OrderCreated, _>(move |conn, received| {
            Box::pin(reserve(conn, outbox.clone(), received))
        })
        .on::<OrderCancelled, _>(move |conn, received| {
            Box::pin(release(conn, releasing.clone(), received))
        })
}

/// Why a reservation could not be made.
enum Shortage {
    Short { sku: String, reason: String },
    Database(DieselError),
}

impl From<DieselError> for Shortage {
    fn from(error: DieselError) -> Self {
        Shortage::Database(error)
    }
}

async fn reserve(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    received: Received<OrderCreated>,
) -> Result<(), HandlerError> {
    let order_id = parse_order_id(&received.event.order_id)?;
    if !reservations::claim(conn, order_id, Status::Pending).await? {
        tracing::info!(%order_id, "order already decided (replay, or cancelled first)");
        return Ok(());
    }
    // One line per SKU, in SKU order: every transaction locks products in the
    // same order, so concurrent reservations cannot deadlock.
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for line in &received.event.lines {
        if line.quantity <= 0 {
            return Err(HandlerError::Reject(format!(
                "line {} has quantity {}",
                line.sku, line.quantity
            )));
        }
        *wanted.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
    }

    // All or nothing: a savepoint that a shortage rolls back.
    let taken = conn
        .transaction::<_, Shortage, _>(async |conn| {
            let mut taken = Vec::with_capacity(wanted.len());
            for (sku, &quantity) in &wanted {
                match products::reserve(conn, sku, quantity).await? {
                    Some(product) => taken.push(product),
                    None => {
                        let reason = match products::find(conn, sku).await? {
                            Some(product) => format!(
                                "insufficient stock for {sku}: {} available, {quantity} ordered",
                                product.available
                            ),
                            None => format!("unknown sku {sku}"),
                        };
                        return Err(Shortage::Short {
                            sku: sku.clone(),
                            reason,
                        });
                    }
                }
            }
            Ok(taken)
        })
        .await;

    let trace = &received.trace;
    match taken {
        Ok(taken) => {
            let held: Vec<(String, i32)> = wanted
                .iter()
                .map(|(sku, quantity)| (sku.clone(), i32::try_from(*quantity).unwrap_or(i32::MAX)))
                .collect();
            let event = StockReserved {
                order_id: order_id.to_string(),
                lines: stock_lines(&held),
                reserved_at: Some(timestamp(Utc::now())),
            };
            // Independent writes: pipelined, one round trip.
            let shared: &AsyncPgConnection = conn;
            try_join!(
                reservations::decide(shared, order_id, Status::Reserved, "", &held),
                outbox.enqueue(shared, &event, trace),
                publish_products(shared, &outbox, &taken, trace),
            )?;
            tracing::info!(%order_id, "stock reserved");
        }
        Err(Shortage::Short { sku, reason }) => {
            let event = StockRejected {
                order_id: order_id.to_string(),
                reason: reason.clone(),
                sku,
                rejected_at: Some(timestamp(Utc::now())),
            };
            let shared: &AsyncPgConnection = conn;
            try_join!(
                reservations::decide(shared, order_id, Status::Rejected, &reason, &[]),
                outbox.enqueue(shared, &event, trace),
            )?;
            tracing::info!(%order_id, reason, "stock rejected");
        }
        Err(Shortage::Database(error)) => return Err(error.into()),
    }
    Ok(())
}

async fn release(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    received: Received<OrderCancelled>,
) -> Result<(), HandlerError> {
    let order_id = parse_order_id(&received.event.order_id)?;
    if reservations::claim(conn, order_id, Status::Cancelled).await? {
        tracing::info!(%order_id, "cancelled before inventory saw the order; it will not be reserved");
        return Ok(());
    }
    match reservations::lock(conn, order_id).await? {
        Some(Status::Reserved) => {}
        status => {
            tracing::info!(%order_id, ?status, "nothing held for the cancelled order");
            return Ok(());
        }
    }
    let held = reservations::lines(conn, order_id).await?;
    let mut returned = Vec::with_capacity(held.len());
    for (sku, quantity) in &held {
        returned.push(products::release(conn, sku, i64::from(*quantity)).await?);
    }
    let event = StockReleased {
        order_id: order_id.to_string(),
        lines: stock_lines(&held),
        released_at: Some(timestamp(Utc::now())),
    };
    let shared: &AsyncPgConnection = conn;
    let reason = &received.event.reason;
    try_join!(
        reservations::decide(shared, order_id, Status::Released, reason, &[]),
        outbox.enqueue(shared, &event, &received.trace),
        publish_products(shared, &outbox, &returned, &received.trace),
    )?;
    tracing::info!(%order_id, "stock released");
    Ok(())
}

/// Enqueues every product's new state, pipelined.
async fn publish_products(
    conn: &AsyncPgConnection,
    outbox: &Outbox,
    products: &[Product],
    trace: &TraceContext,
) -> Result<(), DieselError> {
    let events: Vec<_> = products.iter().map(changed).collect();
    try_join_all(
        events
            .iter()
            .map(|event| outbox.enqueue(conn, event, trace)),
    )
    .await?;
    Ok(())
}

fn stock_lines(lines: &[(String, i32)]) -> Vec<StockLine> {
    lines
        .iter()
        .map(|(sku, quantity)| StockLine {
            sku: sku.clone(),
            quantity: *quantity,
        })
        .collect()
}

fn parse_order_id(text: &str) -> Result<Uuid, HandlerError> {
    Uuid::try_parse(text)
        .map_err(|_| HandlerError::Reject(format!("order_id {text:?} is not a UUID")))
}
