//! Tables of the `inventory` schema (see `migrations/`).

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
