//! Stored orders as the protobuf messages the API answers with and the
//! events carry: the one place rows become `order.v1` messages.

use chrono::{DateTime, Utc};
use dbps::order::v1::{
    Order, OrderApproved, OrderCancelled, OrderCreated, OrderLine, OrderRejected,
    OrderStatus as ProtoStatus,
};
use platform::fields::timestamp;

use crate::{
    db::orders::{LineRow, Order as Stored, OrderRow},
    domain::OrderStatus,
};

/// The API view of a stored order.
pub fn order(stored: Stored) -> Order {
    let status = OrderStatus::parse(&stored.order.status)
        .map(status)
        .unwrap_or_default();
    Order {
        order_id: stored.order.order_id.to_string(),
        customer_id: stored.order.customer_id.to_string(),
        lines: lines(&stored.lines),
        total_cents: stored.order.total_cents,
        status: status.into(),
        status_reason: stored.order.status_reason,
        created_at: Some(timestamp(stored.order.created_at)),
        updated_at: Some(timestamp(stored.order.updated_at)),
    }
}

/// The protobuf status of a domain status.
pub fn status(status: OrderStatus) -> ProtoStatus {
    match status {
        OrderStatus::Pending => ProtoStatus::Pending,
        OrderStatus::Approved => ProtoStatus::Approved,
        OrderStatus::Rejected => ProtoStatus::Rejected,
        OrderStatus::Cancelled => ProtoStatus::Cancelled,
    }
}

/// The proto lines of stored lines (the API's and the events' view).
pub fn lines(lines: &[LineRow]) -> Vec<OrderLine> {
    lines
        .iter()
        .map(|line| OrderLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
        })
        .collect()
}

/// `order.created`: the whole order as accepted.
pub fn created(stored: &Stored) -> OrderCreated {
    OrderCreated {
        order_id: stored.order.order_id.to_string(),
        customer_id: stored.order.customer_id.to_string(),
        lines: lines(&stored.lines),
        total_cents: stored.order.total_cents,
        created_at: Some(timestamp(stored.order.created_at)),
    }
}

/// `order.approved` for `row`, moved at `at`.
pub fn approved(row: &OrderRow, order_lines: &[LineRow], at: DateTime<Utc>) -> OrderApproved {
    OrderApproved {
        order_id: row.order_id.to_string(),
        customer_id: row.customer_id.to_string(),
        total_cents: row.total_cents,
        approved_at: Some(timestamp(at)),
        lines: lines(order_lines),
    }
}

/// `order.rejected` for `row`, moved at `at` for `reason`.
pub fn rejected(
    row: &OrderRow,
    order_lines: &[LineRow],
    reason: &str,
    at: DateTime<Utc>,
) -> OrderRejected {
    OrderRejected {
        order_id: row.order_id.to_string(),
        customer_id: row.customer_id.to_string(),
        reason: reason.to_owned(),
        rejected_at: Some(timestamp(at)),
        lines: lines(order_lines),
        total_cents: row.total_cents,
    }
}

/// `order.cancelled` for `row`, moved at `at` from `previous` for `reason`.
pub fn cancelled(
    row: &OrderRow,
    order_lines: &[LineRow],
    previous: OrderStatus,
    reason: &str,
    at: DateTime<Utc>,
) -> OrderCancelled {
    OrderCancelled {
        order_id: row.order_id.to_string(),
        customer_id: row.customer_id.to_string(),
        reason: reason.to_owned(),
        previous_status: status(previous).into(),
        cancelled_at: Some(timestamp(at)),
        lines: lines(order_lines),
        total_cents: row.total_cents,
    }
}
