//! Tables of the `orders` schema (see `migrations/`).

// @generated automatically by Diesel CLI.

diesel::table! {
    catalog (sku) {
        sku -> Text,
        name -> Text,
        price_cents -> Int8,
        version -> Int8,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    known_customers (customer_id) {
        customer_id -> Uuid,
        registered_at -> Timestamptz,
    }
}

diesel::table! {
    order_lines (order_id, line_no) {
        order_id -> Uuid,
        line_no -> Int4,
        sku -> Text,
        quantity -> Int4,
        unit_price_cents -> Int8,
    }
}

diesel::table! {
    orders (order_id) {
        order_id -> Uuid,
        customer_id -> Uuid,
        status -> Text,
        status_reason -> Text,
        total_cents -> Int8,
        idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(order_lines -> orders (order_id));

diesel::allow_tables_to_appear_in_same_query!(catalog, known_customers, order_lines, orders,);
