//! Tables of the `inventory` schema (see `migrations/`).

// @generated automatically by Diesel CLI.

diesel::table! {
    products (sku) {
        sku -> Text,
        name -> Text,
        price_cents -> Int8,
        available -> Int8,
        reserved -> Int8,
        version -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::table! {
    reservation_lines (order_id, sku) {
        order_id -> Uuid,
        sku -> Text,
        quantity -> Int4,
    }
}

diesel::table! {
    reservations (order_id) {
        order_id -> Uuid,
        status -> Text,
        reason -> Text,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(reservation_lines -> reservations (order_id));

diesel::allow_tables_to_appear_in_same_query!(products, reservation_lines, reservations,);
