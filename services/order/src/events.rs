//! What the order service does with other services' events: keep its
//! replicas of customers and the catalog, and move orders when inventory has
//! answered.
//!
//! Each handler takes a run of events of one type inside the consumer's
//! transaction, after their IDs were recorded in the inbox, and applies it
//! with multi-row statements; it commits with that record or not at all.

use broker::{Consumer, HandlerError, Outbox, Received, consumer::HandlerFuture};
use chrono::Utc;
use dbps::{
    customer::v1::CustomerRegistered,
    inventory::v1::{ProductChanged, StockRejected, StockReserved},
};
use diesel_async::AsyncPgConnection;
use platform::fields::from_timestamp;
use uuid::Uuid;

use crate::{
    db::replicas::{self, CatalogEntry},
    domain::Transition,
    transitions::{self, Move, Outcome},
};

/// The order service's subscriptions.
pub fn consumer(outbox: Outbox) -> Consumer {
    let on_rejected = outbox.clone();
    Consumer::new("order")
        .on_batch::<CustomerRegistered, _>(remember_customers)
        .on_batch::<ProductChanged, _>(update_catalog)
        .on_batch::<StockReserved, _>(move |conn, run| {
            let answers = run
                .into_iter()
                .map(|r| Answer {
                    order_id: r.event.order_id,
                    reason: String::new(),
                    trace: r.trace,
                })
                .collect();
            Box::pin(stock_answered(
                conn,
                outbox.clone(),
                Transition::StockReserved,
                answers,
            ))
        })
        .on_batch::<StockRejected, _>(move |conn, run| {
            let answers = run
                .into_iter()
                .map(|r| Answer {
                    order_id: r.event.order_id,
                    reason: r.event.reason,
                    trace: r.trace,
                })
                .collect();
            Box::pin(stock_answered(
                conn,
                on_rejected.clone(),
                Transition::StockRejected,
                answers,
            ))
        })
}

/// Inventory's answer about one order.
struct Answer {
    order_id: String,
    reason: String,
    trace: broker::TraceContext,
}

/// `stock.reserved` / `stock.rejected`: PENDING → APPROVED / REJECTED, for
/// every order of the run at once. For an order cancelled meanwhile nothing
/// happens here: inventory releases the stock when it sees `order.cancelled`.
async fn stock_answered(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    transition: Transition,
    answers: Vec<Answer>,
) -> Result<(), HandlerError> {
    let mut moves = Vec::with_capacity(answers.len());
    for answer in &answers {
        let order_id = Uuid::try_parse(&answer.order_id).map_err(|_| {
            HandlerError::Reject(format!("order_id {:?} is not a UUID", answer.order_id))
        })?;
        moves.push(Move {
            order_id,
            transition,
            reason: &answer.reason,
            trace: &answer.trace,
        });
    }
    let outcomes = transitions::apply_all(conn, &outbox, &moves).await?;
    for (m, outcome) in moves.iter().zip(outcomes) {
        match outcome {
            Outcome::Moved(_) | Outcome::AlreadyThere(_) => {}
            Outcome::Refused(order) => {
                tracing::info!(id = %m.order_id, status = %order.status, ?transition, "late or stale stock answer ignored");
            }
            // The whole run rolls back; applied again delivery by delivery,
            // only this one is dead-lettered.
            Outcome::Missing => {
                return Err(HandlerError::Reject(format!("no order {}", m.order_id)));
            }
        }
    }
    Ok(())
}

/// `customer.registered`: the customers may now place orders.
fn remember_customers<'c>(
    conn: &'c mut AsyncPgConnection,
    run: Vec<Received<CustomerRegistered>>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let mut customers = Vec::with_capacity(run.len());
        for r in &run {
            let customer_id = Uuid::try_parse(&r.event.customer_id).map_err(|_| {
                HandlerError::Reject(format!(
                    "customer_id {:?} is not a UUID",
                    r.event.customer_id
                ))
            })?;
            let registered_at =
                from_timestamp(r.event.registered_at.as_ref()).unwrap_or_else(Utc::now);
            customers.push((customer_id, registered_at));
        }
        replicas::add_customers(conn, &customers).await?;
        tracing::debug!(customers = customers.len(), "customers replicated");
        Ok(())
    })
}

/// `product.changed`: the newest price of a SKU wins; older states are ignored.
fn update_catalog<'c>(
    conn: &'c mut AsyncPgConnection,
    run: Vec<Received<ProductChanged>>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let entries: Vec<CatalogEntry<'_>> = run
            .iter()
            .map(|r| {
                let product = &r.event;
                CatalogEntry {
                    sku: &product.sku,
                    name: &product.name,
                    price_cents: product.price_cents,
                    version: product.version,
                    updated_at: from_timestamp(product.changed_at.as_ref())
                        .unwrap_or_else(Utc::now),
                }
            })
            .collect();
        let stored = replicas::upsert_products(conn, &entries).await?;
        tracing::debug!(states = entries.len(), stored, "catalog replicated");
        Ok(())
    })
}
