//! Tables of the `customers` schema (see `migrations/`).

// @generated automatically by Diesel CLI.

diesel::table! {
    customers (customer_id) {
        customer_id -> Uuid,
        name -> Text,
        email -> Text,
        loyalty_points -> Int8,
        created_at -> Timestamptz,
        points_version -> Int8,
    }
}

diesel::table! {
    loyalty_ledger (order_id) {
        order_id -> Uuid,
        customer_id -> Uuid,
        credited -> Int8,
        reversed -> Bool,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(loyalty_ledger -> customers (customer_id));

diesel::allow_tables_to_appear_in_same_query!(customers, loyalty_ledger,);
