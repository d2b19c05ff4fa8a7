//! Tables of the `reporting` schema (see `migrations/`).

// @generated automatically by Diesel CLI.

diesel::table! {
    customer_view (customer_id) {
        customer_id -> Uuid,
        name -> Text,
        email -> Text,
        loyalty_points -> Int8,
        points_version -> Int8,
    }
}

diesel::table! {
    order_line_view (order_id, sku) {
        order_id -> Uuid,
        sku -> Text,
        quantity -> Int4,
        unit_price_cents -> Int8,
    }
}

diesel::table! {
    order_view (order_id) {
        order_id -> Uuid,
        customer_id -> Nullable<Uuid>,
        status -> Text,
        status_rank -> Int4,
        status_reason -> Text,
        stock -> Text,
        stock_rank -> Int4,
        total_cents -> Nullable<Int8>,
        line_count -> Nullable<Int4>,
        created_at -> Nullable<Timestamptz>,
        counted -> Bool,
    }
}

diesel::table! {
    product_view (sku) {
        sku -> Text,
        name -> Text,
        price_cents -> Int8,
        available -> Int8,
        reserved -> Int8,
        version -> Int8,
    }
}

diesel::table! {
    sales_by_sku (sku) {
        sku -> Text,
        units -> Int8,
        revenue_cents -> Int8,
        orders -> Int8,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    customer_view,
    order_line_view,
    order_view,
    product_view,
    sales_by_sku,
);
