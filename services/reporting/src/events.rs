//! The projection: every event the other services publish, folded into the
//! read models. Every handler is idempotent and order-tolerant (statuses only
//! move forward, states carry versions, sales are recounted from the order's
//! current state), so replays, redeliveries and a rebuild beside the live
//! consumer all converge on the same read models.
//!
//! Each handler takes a run of events of one type and writes it with one
//! upsert per table (one row per key: an upsert may not touch a row twice,
//! so a key that appears twice in a run is merged in memory into the row a
//! one-by-one application would have left), then recounts the sales of the
//! orders the run touched.

use broker::{Consumer, HandlerError, Received, consumer::HandlerFuture};
use dbps::{
    customer::v1::{CustomerRegistered, LoyaltyPointsChanged},
    inventory::v1::{ProductChanged, StockRejected, StockReleased, StockReserved},
    order::v1::{OrderApproved, OrderCancelled, OrderCreated, OrderRejected},
};
use diesel_async::AsyncPgConnection;
use platform::fields::from_timestamp;
use uuid::Uuid;

use crate::db::{
    customers,
    orders::{self, Created, Line},
    products::{self, ProductState},
};

/// The reporting service's subscriptions: every event type, also kept in the
/// event log so the read models can be rebuilt.
pub fn consumer(event_log_max_age: Option<String>) -> Consumer {
    Consumer::new("reporting")
        .with_event_log(event_log_max_age)
        .on_batch::<CustomerRegistered, _>(customers_registered)
        .on_batch::<LoyaltyPointsChanged, _>(points_changed)
        .on_batch::<ProductChanged, _>(products_changed)
        .on_batch::<StockReserved, _>(|conn, run: Vec<Received<StockReserved>>| {
            let ids = run.into_iter().map(|r| r.event.order_id).collect();
            stock(conn, ids, "RESERVED", 1)
        })
        .on_batch::<StockRejected, _>(|conn, run: Vec<Received<StockRejected>>| {
            let ids = run.into_iter().map(|r| r.event.order_id).collect();
            stock(conn, ids, "REJECTED", 1)
        })
        .on_batch::<StockReleased, _>(|conn, run: Vec<Received<StockReleased>>| {
            let ids = run.into_iter().map(|r| r.event.order_id).collect();
            stock(conn, ids, "RELEASED", 2)
        })
        .on_batch::<OrderCreated, _>(orders_created)
        .on_batch::<OrderApproved, _>(|conn, run: Vec<Received<OrderApproved>>| {
            let moves = run
                .into_iter()
                .map(|r| (r.event.order_id, r.event.customer_id, String::new()))
                .collect();
            order_status(conn, moves, "APPROVED", 1)
        })
        .on_batch::<OrderRejected, _>(|conn, run: Vec<Received<OrderRejected>>| {
            let moves = run
                .into_iter()
                .map(|r| (r.event.order_id, r.event.customer_id, r.event.reason))
                .collect();
            order_status(conn, moves, "REJECTED", 2)
        })
        .on_batch::<OrderCancelled, _>(|conn, run: Vec<Received<OrderCancelled>>| {
            let moves = run
                .into_iter()
                .map(|r| (r.event.order_id, r.event.customer_id, r.event.reason))
                .collect();
            order_status(conn, moves, "CANCELLED", 2)
        })
}

fn customers_registered<'c>(
    conn: &'c mut AsyncPgConnection,
    run: Vec<Received<CustomerRegistered>>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let mut rows = Vec::with_capacity(run.len());
        for r in &run {
            rows.push((
                parse(&r.event.customer_id)?,
                r.event.name.as_str(),
                r.event.email.as_str(),
            ));
        }
        customers::registered_all(conn, &rows).await?;
        Ok(())
    })
}

fn points_changed<'c>(
    conn: &'c mut AsyncPgConnection,
    run: Vec<Received<LoyaltyPointsChanged>>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let mut rows = Vec::with_capacity(run.len());
        for r in &run {
            rows.push((
                parse(&r.event.customer_id)?,
                r.event.balance,
                r.event.version,
            ));
        }
        customers::balance_all(conn, &rows).await?;
        Ok(())
    })
}

fn products_changed<'c>(
    conn: &'c mut AsyncPgConnection,
    run: Vec<Received<ProductChanged>>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let states: Vec<ProductState<'_>> = run
            .iter()
            .map(|r| {
                let p = &r.event;
                ProductState {
                    sku: &p.sku,
                    name: &p.name,
                    price_cents: p.price_cents,
                    available: p.available,
                    reserved: p.reserved,
                    version: p.version,
                }
            })
            .collect();
        products::changed_all(conn, &states).await?;
        Ok(())
    })
}

fn stock<'c>(
    conn: &'c mut AsyncPgConnection,
    order_ids: Vec<String>,
    stock: &'static str,
    rank: i32,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let ids = order_ids
            .iter()
            .map(|id| parse(id))
            .collect::<Result<Vec<_>, _>>()?;
        orders::stock_all(conn, &ids, stock, rank).await?;
        Ok(())
    })
}

fn orders_created<'c>(
    conn: &'c mut AsyncPgConnection,
    run: Vec<Received<OrderCreated>>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let mut created = Vec::with_capacity(run.len());
        for r in &run {
            let order = &r.event;
            created.push(Created {
                order_id: parse(&order.order_id)?,
                customer_id: parse(&order.customer_id)?,
                total_cents: order.total_cents,
                created_at: from_timestamp(order.created_at.as_ref()),
                lines: order
                    .lines
                    .iter()
                    .map(|line| Line {
                        sku: &line.sku,
                        quantity: line.quantity,
                        unit_price_cents: line.unit_price_cents,
                    })
                    .collect(),
            });
        }
        orders::created_all(conn, &created).await?;
        let ids: Vec<Uuid> = created.iter().map(|order| order.order_id).collect();
        orders::recount_all(conn, &ids).await?;
        Ok(())
    })
}

/// Moves each (order, customer, reason) to `status`.
fn order_status<'c>(
    conn: &'c mut AsyncPgConnection,
    moves: Vec<(String, String, String)>,
    status: &'static str,
    rank: i32,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let mut rows = Vec::with_capacity(moves.len());
        for (order_id, customer_id, reason) in &moves {
            rows.push((parse(order_id)?, parse(customer_id)?, reason.as_str()));
        }
        orders::status_all(conn, &rows, status, rank).await?;
        let ids: Vec<Uuid> = rows.iter().map(|(order_id, ..)| *order_id).collect();
        orders::recount_all(conn, &ids).await?;
        Ok(())
    })
}

fn parse(id: &str) -> Result<Uuid, HandlerError> {
    Uuid::try_parse(id).map_err(|_| HandlerError::Reject(format!("{id:?} is not a UUID")))
}
