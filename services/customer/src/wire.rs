//! Stored customers as the `customer.v1` messages the API answers with and
//! the events carry.

use chrono::{DateTime, Utc};
use dbps::customer::v1::{Customer, CustomerRegistered, LoyaltyPointsChanged};
use platform::fields::timestamp;
use uuid::Uuid;

use crate::db::customers::{Customer as Row, Points};

/// The API view of a stored customer.
pub fn customer(row: Row) -> Customer {
    Customer {
        customer_id: row.customer_id.to_string(),
        name: row.name,
        email: row.email,
        loyalty_points: row.loyalty_points,
        created_at: Some(timestamp(row.created_at)),
    }
}

/// `customer.registered` for a new customer.
pub fn registered(row: &Row) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: row.customer_id.to_string(),
        name: row.name.clone(),
        email: row.email.clone(),
        registered_at: Some(timestamp(row.created_at)),
    }
}

/// `customer.points_changed`: `delta` points for `order_id` left the
/// customer with `points`.
pub fn points_changed(
    customer_id: Uuid,
    order_id: Uuid,
    delta: i64,
    points: &Points,
    at: DateTime<Utc>,
) -> LoyaltyPointsChanged {
    LoyaltyPointsChanged {
        customer_id: customer_id.to_string(),
        order_id: order_id.to_string(),
        delta,
        balance: points.balance,
        changed_at: Some(timestamp(at)),
        version: points.version,
    }
}
