//! Stored products and stock decisions as the `inventory.v1` messages the
//! API answers with and the events carry.

use chrono::{DateTime, Utc};
use dbps::inventory::v1::{
    Product as ProductMessage, ProductChanged, StockLine, StockRejected, StockReleased,
    StockReserved,
};
use platform::fields::timestamp;
use uuid::Uuid;

use crate::db::products::Product;

/// The API view of a stored product.
pub fn product(row: Product) -> ProductMessage {
    ProductMessage {
        sku: row.sku,
        name: row.name,
        price_cents: row.price_cents,
        available: row.available,
        reserved: row.reserved,
    }
}

/// `product.changed`: the product's full state.
pub fn changed(row: &Product) -> ProductChanged {
    ProductChanged {
        sku: row.sku.clone(),
        name: row.name.clone(),
        price_cents: row.price_cents,
        available: row.available,
        reserved: row.reserved,
        version: row.version,
        changed_at: Some(timestamp(row.updated_at)),
    }
}

/// `stock.reserved`: every line of `order_id` held at `at`.
pub fn reserved(order_id: Uuid, lines: &[(String, i32)], at: DateTime<Utc>) -> StockReserved {
    StockReserved {
        order_id: order_id.to_string(),
        lines: stock_lines(lines),
        reserved_at: Some(timestamp(at)),
    }
}

/// `stock.rejected`: `sku` was short for `order_id`, as `reason` says.
pub fn rejected(order_id: Uuid, sku: String, reason: String, at: DateTime<Utc>) -> StockRejected {
    StockRejected {
        order_id: order_id.to_string(),
        reason,
        sku,
        rejected_at: Some(timestamp(at)),
    }
}

/// `stock.released`: the lines `order_id` held, given back at `at`.
pub fn released(order_id: Uuid, lines: &[(String, i32)], at: DateTime<Utc>) -> StockReleased {
    StockReleased {
        order_id: order_id.to_string(),
        lines: stock_lines(lines),
        released_at: Some(timestamp(at)),
    }
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
