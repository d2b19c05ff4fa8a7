//! Writing events into the outbox, inside the caller's transaction.

use std::sync::Arc;

use chrono::Utc;
use diesel::{ExpressionMethods, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::{TraceContext, envelope, schema::outbox};

/// The NOTIFY channel a schema's relay listens on.
pub fn notify_channel(schema: &str) -> String {
    format!("{schema}_outbox")
}

/// Writes events to a service's outbox.
///
/// Call [`Outbox::enqueue`] inside the same diesel transaction as the business
/// change the event describes, after locking or updating the aggregate's row:
/// the event then exists if and only if the change committed, and events of one
/// aggregate get outbox ids in commit order.
#[derive(Clone, Debug)]
pub struct Outbox {
    source: Arc<str>,
    channel: Option<Arc<str>>,
}

impl Outbox {
    /// An outbox for service `source` whose tables live in `schema`; each
    /// enqueue wakes the relay with `pg_notify` on commit.
    pub fn new(source: &str, schema: &str) -> Self {
        Outbox {
            source: source.into(),
            channel: Some(notify_channel(schema).into()),
        }
    }

    /// The same outbox without `pg_notify`: the relay then finds events only
    /// by its fallback poll (for measuring what NOTIFY is worth).
    pub fn without_notify(mut self) -> Self {
        self.channel = None;
        self
    }

    /// The publishing service's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Records `event` for publication and returns its ID (the AMQP
    /// `message_id`). Must run inside the caller's transaction.
    pub async fn enqueue<E: dbps::Event>(
        &self,
        conn: &mut AsyncPgConnection,
        event: &E,
        trace: &TraceContext,
    ) -> diesel::QueryResult<Uuid> {
        debug_assert_eq!(
            E::SOURCE,
            &*self.source,
            "event published by the wrong service"
        );
        let event_id = Uuid::now_v7();
        let headers = envelope::headers(event, event_id, Utc::now(), &trace.child());
        diesel::insert_into(outbox::table)
            .values((
                outbox::event_id.eq(event_id),
                outbox::aggregate_type.eq(E::AGGREGATE),
                outbox::aggregate_id.eq(event.aggregate_id()),
                outbox::event_type.eq(E::TYPE),
                outbox::payload.eq(event.encode_to_vec()),
                outbox::headers.eq(headers),
            ))
            .execute(conn)
            .await?;
        if let Some(channel) = &self.channel {
            // Delivered at commit, and only if the transaction commits.
            diesel::sql_query("SELECT pg_notify($1, '')")
                .bind::<Text, _>(&**channel)
                .execute(conn)
                .await?;
        }
        tracing::debug!(%event_id, event_type = E::TYPE, aggregate_id = event.aggregate_id(), "event enqueued");
        Ok(event_id)
    }
}
