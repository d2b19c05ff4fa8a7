//! Writing events into the outbox, inside the caller's transaction, and
//! waking the relay once it committed.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use chrono::Utc;
use diesel::sql_types::{Array, Bytea, Jsonb, Text, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{TraceContext, envelope, pg, supervise::Restarts};

/// The NOTIFY channel a schema's relay listens on.
pub fn notify_channel(schema: &str) -> String {
    format!("{schema}_outbox")
}

/// One outbox row, as [`Outbox::entry`] prepares it.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The event's ID, its AMQP `message_id`.
    pub event_id: Uuid,
    /// What kind of aggregate it is about (`order`, `customer`, …).
    pub aggregate_type: &'static str,
    /// Which one.
    pub aggregate_id: String,
    /// The routing key.
    pub event_type: &'static str,
    /// The protobuf-encoded event.
    pub payload: Vec<u8>,
    /// The CloudEvents and trace headers.
    pub headers: serde_json::Value,
}

/// Writes events to a service's outbox.
///
/// Call [`Outbox::enqueue`] (or [`Outbox::enqueue_all`] for many events)
/// inside the same diesel transaction as the business
/// change the event describes, after locking or updating the aggregate's row:
/// the event then exists if and only if the change committed, and events of one
/// aggregate get outbox ids in commit order. After the commit, call
/// [`Outbox::committed`] to wake the relay at once; without it the relay finds
/// the events on its fallback poll.
///
/// Why after the commit and not `pg_notify` in the transaction: Postgres makes
/// every notifying transaction of a database take one lock until its commit
/// is flushed, so notifying writers commit one at a time and lose group commit.
/// Waking after the commit costs the same latency, no lock; a crash between
/// commit and wake-up only delays the events to the next poll.
#[derive(Clone, Debug)]
pub struct Outbox {
    source: Arc<str>,
    wake: Option<Arc<Wake>>,
}

#[derive(Debug)]
struct Wake {
    /// The relay of this process.
    local: Notify,
    /// The notifier task, which sends one NOTIFY for relays elsewhere.
    remote: Notify,
    /// Whether the relay of this process is the leader: then no relay
    /// elsewhere publishes, and the NOTIFY would only wake it a second time.
    leading: AtomicBool,
    channel: String,
}

impl Outbox {
    /// An outbox for service `source` whose tables live in `schema`.
    pub fn new(source: &str, schema: &str) -> Self {
        let wake = Wake {
            local: Notify::new(),
            remote: Notify::new(),
            leading: AtomicBool::new(false),
            channel: notify_channel(schema),
        };
        Outbox {
            source: source.into(),
            wake: Some(Arc::new(wake)),
        }
    }

    /// The same outbox that never wakes the relay: it then finds events only
    /// by its fallback poll (for measuring what waking is worth).
    pub fn without_notify(mut self) -> Self {
        self.wake = None;
        self
    }

    /// The publishing service's name.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Records `event` for publication and returns its ID (the AMQP
    /// `message_id`). Must run inside the caller's transaction; takes a
    /// shared connection so that it can be pipelined with the other writes.
    pub async fn enqueue<E: dbps::Event>(
        &self,
        conn: &AsyncPgConnection,
        event: &E,
        trace: &TraceContext,
    ) -> diesel::QueryResult<Uuid> {
        let ids = self.enqueue_all(conn, [(event, trace)]).await?;
        ids.into_iter()
            .next()
            .ok_or(diesel::result::Error::NotFound)
    }

    /// Records several events of one type with one insert, in the given
    /// order (which is then their outbox order, as if enqueued one by one);
    /// returns their IDs in that order. Each event continues its own trace.
    /// Same rules as [`Outbox::enqueue`]; nothing is sent for no events.
    pub async fn enqueue_all<'a, E: dbps::Event + 'a>(
        &self,
        conn: &AsyncPgConnection,
        events: impl IntoIterator<Item = (&'a E, &'a TraceContext)>,
    ) -> diesel::QueryResult<Vec<Uuid>> {
        let entries: Vec<Entry> = events
            .into_iter()
            .map(|(event, trace)| self.entry(event, trace))
            .collect();
        let ids = entries.iter().map(|entry| entry.event_id).collect();
        if entries.is_empty() {
            return Ok(ids);
        }
        for entry in &entries {
            tracing::debug!(event_id = %entry.event_id, event_type = entry.event_type, aggregate_id = %entry.aggregate_id, "event enqueued");
        }
        // One statement kept prepared whatever the number of events (a
        // multi-row VALUES would be parsed again for each number).
        pg::statement(
            "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::jsonb[])",
        )
        .bind::<Array<SqlUuid>, _>(entries.iter().map(|e| e.event_id).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(entries.iter().map(|e| e.aggregate_type).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(entries.iter().map(|e| e.aggregate_id.as_str()).collect::<Vec<_>>())
        .bind::<Array<Text>, _>(entries.iter().map(|e| e.event_type).collect::<Vec<_>>())
        .bind::<Array<Bytea>, _>(entries.iter().map(|e| e.payload.as_slice()).collect::<Vec<_>>())
        .bind::<Array<Jsonb>, _>(entries.iter().map(|e| &e.headers).collect::<Vec<_>>())
        .execute(&mut &*conn)
        .await?;
        Ok(ids)
    }

    /// The outbox row for `event`, for a caller that inserts it within a
    /// statement of its own (e.g. one that writes a whole aggregate and its
    /// event in one round trip); [`Outbox::enqueue`] writes exactly this.
    pub fn entry<E: dbps::Event>(&self, event: &E, trace: &TraceContext) -> Entry {
        debug_assert_eq!(
            E::SOURCE,
            &*self.source,
            "event published by the wrong service"
        );
        let event_id = Uuid::now_v7();
        Entry {
            event_id,
            aggregate_type: E::AGGREGATE,
            aggregate_id: event.aggregate_id().to_owned(),
            event_type: E::TYPE,
            payload: event.encode_to_vec(),
            headers: envelope::headers(event, event_id, Utc::now(), &trace.child()),
        }
    }

    /// Wakes the relay after a transaction that enqueued events committed:
    /// the one in this process directly, others through a NOTIFY that the
    /// [`Outbox::run_notifier`] task sends (many commits, one NOTIFY).
    pub fn committed(&self) {
        if let Some(wake) = &self.wake {
            wake.local.notify_one();
            wake.remote.notify_one();
        }
    }

    /// Records whether this process's relay leads (see [`Wake::leading`]).
    pub(crate) fn set_leading(&self, leading: bool) {
        if let Some(wake) = &self.wake {
            wake.leading.store(leading, Ordering::Release);
        }
    }

    /// Resolves when [`Outbox::committed`] was called in this process since
    /// the last time; never if waking is off.
    pub(crate) async fn woken(&self) {
        match &self.wake {
            Some(wake) => wake.local.notified().await,
            None => std::future::pending().await,
        }
    }

    /// Sends a NOTIFY on the outbox's channel after commits, on a connection
    /// of its own, until `shutdown`: relays in other processes (a relay run as
    /// its own process, or the leader when this process's relay stands by)
    /// then wake as fast as this process's. Sends nothing while this
    /// process's relay leads.
    pub async fn run_notifier(
        self,
        database_url: String,
        schema: String,
        shutdown: CancellationToken,
    ) {
        let Some(wake) = self.wake else { return };
        let mut restarts = Restarts::new(
            "outbox notifier lost its connection",
            Duration::from_secs(10),
        );
        loop {
            let up = restarts.attempt();
            let notifying = async {
                let mut conn = pg::connect(&database_url, &schema).await?;
                up.mark();
                loop {
                    tokio::select! {
                        _ = wake.remote.notified() => {}
                        _ = shutdown.cancelled() => return Ok::<(), crate::BrokerError>(()),
                    }
                    if AtomicBool::load(&wake.leading, Ordering::Acquire) {
                        continue;
                    }
                    pg::statement("SELECT pg_notify($1, '')")
                        .bind::<Text, _>(&wake.channel)
                        .execute(&mut conn)
                        .await?;
                }
            };
            match notifying.await {
                Ok(()) => return,
                Err(error) => {
                    if !restarts.wait(error, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }
}
