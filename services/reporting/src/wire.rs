//! Read-model rows as the `reporting.v1` messages the API answers with.

use dbps::{
    order::v1::OrderStatus,
    reporting::v1::{CustomerOrderHistory, OrderSummary, SkuSales},
};
use platform::fields::timestamp;

use crate::db::{customers::CustomerView, orders::OrderView, products::Sales};

/// One customer's page of order history.
pub fn history(
    customer: CustomerView,
    orders: Vec<OrderView>,
    next_page_token: String,
) -> CustomerOrderHistory {
    CustomerOrderHistory {
        customer_id: customer.customer_id.to_string(),
        name: customer.name,
        loyalty_points: customer.loyalty_points,
        orders: orders.into_iter().map(summary).collect(),
        next_page_token,
    }
}

/// One order as the history lists it.
pub fn summary(order: OrderView) -> OrderSummary {
    OrderSummary {
        order_id: order.order_id.to_string(),
        status: OrderStatus::from_str_name(&format!("ORDER_STATUS_{}", order.status))
            .unwrap_or_default()
            .into(),
        status_reason: order.status_reason,
        total_cents: order.total_cents.unwrap_or_default(),
        line_count: order.line_count.unwrap_or_default(),
        created_at: order.created_at.map(timestamp),
        stock: order.stock,
    }
}

/// What a SKU sold.
pub fn sales(sales: Sales) -> SkuSales {
    SkuSales {
        sku: sales.sku,
        name: sales.name,
        units: sales.units,
        revenue_cents: sales.revenue_cents,
        orders: sales.orders,
    }
}
