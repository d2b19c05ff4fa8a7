//! The outbox and inbox tables (see `migrations/`). Unqualified: each service's
//! connections have `search_path` pinned to its own schema.

// @generated automatically by Diesel CLI.

diesel::table! {
    inbox (message_id) {
        message_id -> Uuid,
        event_type -> Text,
        applied_at -> Timestamptz,
    }
}

diesel::table! {
    outbox (id) {
        id -> Int8,
        event_id -> Uuid,
        aggregate_type -> Text,
        aggregate_id -> Text,
        event_type -> Text,
        payload -> Bytea,
        headers -> Jsonb,
        created_at -> Timestamptz,
        published_at -> Nullable<Timestamptz>,
        attempts -> Int4,
        next_attempt_at -> Nullable<Timestamptz>,
    }
}

diesel::allow_tables_to_appear_in_same_query!(inbox, outbox,);
