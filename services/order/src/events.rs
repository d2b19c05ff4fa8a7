//! What the order service does with other services' events: keep its
//! replicas of customers and the catalog, and move orders when inventory has
//! answered.
//!
//! Each handler runs inside the consumer's transaction, after the event's ID
//! was recorded in the inbox; it commits with that record or not at all.

use broker::{Consumer, HandlerError, Outbox, Received, consumer::HandlerFuture};
use chrono::{DateTime, Utc};
use dbps::{
    customer::v1::CustomerRegistered,
    inventory::v1::{ProductChanged, StockRejected, StockReserved},
};
use diesel_async::AsyncPgConnection;

use crate::{
    db::replicas::{self, CatalogEntry},
    domain::Transition,
    transitions::{self, Outcome},
};

/// The order service's subscriptions.
pub fn consumer(outbox: Outbox) -> Consumer {
    let on_rejected = outbox.clone();
    Consumer::new("order")
        .on::<CustomerRegistered, _>(remember_customer)
        .on::<ProductChanged, _>(update_catalog)
        .on::<StockReserved, _>(move |conn, received| {
            let order_id = received.event.order_id.clone();
            Box::pin(stock_answered(
                conn,
                outbox.clone(),
                order_id,
                Transition::StockReserved,
                String::new(),
                received.trace,
            ))
        })
        .on::<StockRejected, _>(move |conn, received| {
            let Received { event, trace, .. } = received;
            Box::pin(stock_answered(
                conn,
                on_rejected.clone(),
                event.order_id,
                Transition::StockRejected,
                event.reason,
                trace,
            ))
        })
}

/// `stock.reserved` / `stock.rejected`: PENDING → APPROVED / REJECTED. For an
/// order cancelled meanwhile nothing happens here: inventory releases the
/// stock when it sees `order.cancelled`.
async fn stock_answered(
    conn: &mut AsyncPgConnection,
    outbox: Outbox,
    order_id: String,
    transition: Transition,
    reason: String,
    trace: broker::TraceContext,
) -> Result<(), HandlerError> {
    let id = uuid::Uuid::try_parse(&order_id)
        .map_err(|_| HandlerError::Reject(format!("order_id {order_id:?} is not a UUID")))?;
    match transitions::apply(conn, &outbox, id, transition, &reason, &trace).await? {
        Outcome::Moved(_) | Outcome::AlreadyThere(_) => Ok(()),
        Outcome::Refused(order) => {
            tracing::info!(%id, status = %order.status, ?transition, "late or stale stock answer ignored");
            Ok(())
        }
        Outcome::Missing => Err(HandlerError::Reject(format!("no order {id}"))),
    }
}

/// `customer.registered`: the customer may now place orders.
fn remember_customer<'c>(
    conn: &'c mut AsyncPgConnection,
    received: Received<CustomerRegistered>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let customer_id = uuid::Uuid::try_parse(&received.event.customer_id).map_err(|_| {
            HandlerError::Reject(format!(
                "customer_id {:?} is not a UUID",
                received.event.customer_id
            ))
        })?;
        let registered_at = time(received.event.registered_at.as_ref()).unwrap_or_else(Utc::now);
        replicas::add_customer(conn, customer_id, registered_at).await?;
        tracing::debug!(%customer_id, "customer replicated");
        Ok(())
    })
}

/// `product.changed`: the newest price of a SKU wins; older states are ignored.
fn update_catalog<'c>(
    conn: &'c mut AsyncPgConnection,
    received: Received<ProductChanged>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let product = &received.event;
        let entry = CatalogEntry {
            sku: &product.sku,
            name: &product.name,
            price_cents: product.price_cents,
            version: product.version,
            updated_at: time(product.changed_at.as_ref()).unwrap_or_else(Utc::now),
        };
        let stored = replicas::upsert_product(conn, &entry).await?;
        tracing::debug!(sku = %product.sku, version = product.version, stored, "catalog replicated");
        Ok(())
    })
}

fn time(timestamp: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let timestamp = timestamp?;
    DateTime::from_timestamp(timestamp.seconds, u32::try_from(timestamp.nanos).ok()?)
}
