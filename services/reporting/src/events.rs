//! The projection: every event the other services publish, folded into the
//! read models. Every handler is idempotent and order-tolerant (statuses only
//! move forward, states carry versions, sales are recounted from the order's
//! current state), so replays, redeliveries and a rebuild beside the live
//! consumer all converge on the same read models.

use broker::{Consumer, HandlerError, Received, consumer::HandlerFuture};
use chrono::{DateTime, Utc};
use dbps::{
    customer::v1::{CustomerRegistered, LoyaltyPointsChanged},
    inventory::v1::{ProductChanged, StockRejected, StockReleased, StockReserved},
    order::v1::{OrderApproved, OrderCancelled, OrderCreated, OrderRejected},
};
use diesel_async::AsyncPgConnection;
use uuid::Uuid;

use crate::db::{
    customers,
    orders::{self, Line},
    products::{self, ProductState},
};

/// The reporting service's subscriptions: every event type, also kept in the
/// event log so the read models can be rebuilt.
pub fn consumer(event_log_max_age: Option<String>) -> Consumer {
    Consumer::new("reporting")
        .with_event_log(event_log_max_age)
        .on::<CustomerRegistered, _>(customer_registered)
        .on::<LoyaltyPointsChanged, _>(points_changed)
        .on::<ProductChanged, _>(product_changed)
        .on::<StockReserved, _>(|conn, r: Received<StockReserved>| {
            stock(conn, r.event.order_id, "RESERVED", 1)
        })
        .on::<StockRejected, _>(|conn, r: Received<StockRejected>| {
            stock(conn, r.event.order_id, "REJECTED", 1)
        })
        .on::<StockReleased, _>(|conn, r: Received<StockReleased>| {
            stock(conn, r.event.order_id, "RELEASED", 2)
        })
        .on::<OrderCreated, _>(order_created)
        .on::<OrderApproved, _>(|conn, r: Received<OrderApproved>| {
            order_status(
                conn,
                r.event.order_id,
                r.event.customer_id,
                "APPROVED",
                1,
                String::new(),
            )
        })
        .on::<OrderRejected, _>(|conn, r: Received<OrderRejected>| {
            order_status(
                conn,
                r.event.order_id,
                r.event.customer_id,
                "REJECTED",
                2,
                r.event.reason,
            )
        })
        .on::<OrderCancelled, _>(|conn, r: Received<OrderCancelled>| {
            order_status(
                conn,
                r.event.order_id,
                r.event.customer_id,
                "CANCELLED",
                2,
                r.event.reason,
            )
        })
}

fn customer_registered<'c>(
    conn: &'c mut AsyncPgConnection,
    r: Received<CustomerRegistered>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let id = parse(&r.event.customer_id)?;
        customers::registered(conn, id, &r.event.name, &r.event.email).await?;
        Ok(())
    })
}

fn points_changed<'c>(
    conn: &'c mut AsyncPgConnection,
    r: Received<LoyaltyPointsChanged>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let id = parse(&r.event.customer_id)?;
        customers::balance(conn, id, r.event.balance, r.event.version).await?;
        Ok(())
    })
}

fn product_changed<'c>(
    conn: &'c mut AsyncPgConnection,
    r: Received<ProductChanged>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let p = &r.event;
        let state = ProductState {
            sku: &p.sku,
            name: &p.name,
            price_cents: p.price_cents,
            available: p.available,
            reserved: p.reserved,
            version: p.version,
        };
        products::changed(conn, &state).await?;
        Ok(())
    })
}

fn stock<'c>(
    conn: &'c mut AsyncPgConnection,
    order_id: String,
    stock: &'static str,
    rank: i32,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        orders::stock(conn, parse(&order_id)?, stock, rank).await?;
        Ok(())
    })
}

fn order_created<'c>(
    conn: &'c mut AsyncPgConnection,
    r: Received<OrderCreated>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let order = &r.event;
        let order_id = parse(&order.order_id)?;
        let lines: Vec<Line> = order
            .lines
            .iter()
            .map(|line| Line {
                sku: &line.sku,
                quantity: line.quantity,
                unit_price_cents: line.unit_price_cents,
            })
            .collect();
        let created_at = order
            .created_at
            .as_ref()
            .and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, u32::try_from(t.nanos).ok()?));
        orders::created(
            conn,
            order_id,
            parse(&order.customer_id)?,
            order.total_cents,
            created_at,
            &lines,
        )
        .await?;
        orders::recount(conn, order_id).await?;
        Ok(())
    })
}

fn order_status<'c>(
    conn: &'c mut AsyncPgConnection,
    order_id: String,
    customer_id: String,
    status: &'static str,
    rank: i32,
    reason: String,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let order_id = parse(&order_id)?;
        orders::status(conn, order_id, parse(&customer_id)?, status, rank, &reason).await?;
        orders::recount(conn, order_id).await?;
        Ok(())
    })
}

fn parse(id: &str) -> Result<Uuid, HandlerError> {
    Uuid::try_parse(id).map_err(|_| HandlerError::Reject(format!("{id:?} is not a UUID")))
}
