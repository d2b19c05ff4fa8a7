//! What the customer service does with events of other services.
//!
//! Each handler runs inside the consumer's transaction, after the event's ID
//! was recorded in the inbox; it commits with that record or not at all.

use broker::{Consumer, HandlerError, Received, consumer::HandlerFuture};
use dbps::order::v1::OrderCreated;
use diesel_async::AsyncPgConnection;

use crate::{
    db::{customers, ledger},
    domain::points_for,
};

/// The customer service's subscriptions.
pub fn consumer() -> Consumer {
    Consumer::new("customer").on::<OrderCreated, _>(credit_points)
}

/// `order.created`: credit 10 % of the total to the customer, once per order.
fn credit_points<'c>(
    conn: &'c mut AsyncPgConnection,
    received: Received<OrderCreated>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        let order = received.event;
        let order_id = parse(&order.order_id, "order_id")?;
        let customer_id = parse(&order.customer_id, "customer_id")?;
        let points = points_for(order.total_cents);
        // Lock the customer first: every change of a customer's points takes
        // this lock before anything else.
        if !customers::lock(conn, customer_id).await? {
            return Err(HandlerError::Reject(format!(
                "unknown customer {customer_id}"
            )));
        }
        // The ledger row makes the credit once-only per order, whatever
        // events carry it.
        if !ledger::record_credit(conn, order_id, customer_id, points).await? {
            tracing::info!(%order_id, "points for this order were already credited");
            return Ok(());
        }
        let balance = customers::add_points(conn, customer_id, points).await?;
        tracing::info!(%order_id, %customer_id, points, balance, "loyalty points credited");
        Ok(())
    })
}

fn parse(id: &str, field: &str) -> Result<uuid::Uuid, HandlerError> {
    uuid::Uuid::try_parse(id)
        .map_err(|_| HandlerError::Reject(format!("{field} {id:?} is not a UUID")))
}
