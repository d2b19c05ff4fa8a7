//! Decoding deliveries and applying them exactly once, run by run: shared by
//! the live queue consumers and the event-log replay.

use std::{
    collections::{BTreeMap, HashSet},
    sync::Arc,
    time::Duration,
};

use chrono::{DateTime, Utc};
use diesel::{
    ExpressionMethods,
    sql_types::{Array, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use lapin::message::Delivery;
use opentelemetry::trace::TraceContextExt;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::{Event, HandlerError, Meta, Route};
use crate::{
    BrokerError, TraceContext,
    envelope::{TRACEPARENT, header_str},
    pg::{self, PgPool},
    schema::inbox,
    supervise::Restarts,
};

/// Routes deliveries to handlers by routing key and applies them.
pub(super) struct Applier {
    pub(super) routes: BTreeMap<&'static str, Arc<dyn Route>>,
    pub(super) pool: PgPool,
}

/// A delivery that decoded, ready to apply.
pub(super) struct Work {
    pub(super) delivery: Delivery,
    pub(super) decoded: Decoded,
}

pub(super) struct Decoded {
    pub(super) event_id: Uuid,
    pub(super) occurred_at: Option<DateTime<Utc>>,
    trace: TraceContext,
    route: Arc<dyn Route>,
    event: Event,
}

/// What became of one delivery in a batch.
#[derive(Clone, Debug)]
pub(super) enum Outcome {
    Applied,
    Duplicate,
    Rejected(String),
    Failed(String),
}

/// Why a batch transaction was abandoned.
enum Abort {
    /// The database is unreachable: retry the whole batch later.
    Unavailable(diesel::result::Error),
    /// Any other failure of the transaction itself (e.g. at commit).
    Database(diesel::result::Error),
    /// A handler failed: the transaction rolls back.
    Handler(HandlerError),
}

impl From<diesel::result::Error> for Abort {
    fn from(error: diesel::result::Error) -> Self {
        if pg::is_connection_error(&error) {
            Abort::Unavailable(error)
        } else {
            Abort::Database(error)
        }
    }
}

impl Applier {
    pub(super) fn decode(&self, delivery: &Delivery) -> Result<Decoded, String> {
        let key = delivery.routing_key.as_str();
        let route = self
            .routes
            .get(key)
            .ok_or_else(|| format!("no handler for `{key}`"))?;
        let properties = &delivery.properties;
        let event_id = properties
            .message_id()
            .as_ref()
            .and_then(|id| Uuid::parse_str(id.as_str()).ok())
            .ok_or("missing or non-UUID message_id")?;
        let occurred_at = crate::envelope::ce_attribute(properties, "time")
            .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
            .map(|time| time.with_timezone(&Utc));
        let trace = TraceContext::continue_or_start(header_str(properties, TRACEPARENT));
        let meta = Meta {
            event_id,
            occurred_at,
            trace: trace.clone(),
        };
        let event = route
            .decode(&delivery.data, meta)
            .map_err(|error| format!("undecodable payload: {error}"))?;
        Ok(Decoded {
            event_id,
            occurred_at,
            trace,
            route: route.clone(),
            event,
        })
    }

    /// Applies the batch, waiting out database outages; `None` on shutdown.
    pub(super) async fn apply_until_done(
        &self,
        work: &[Work],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Outcome>> {
        let mut restarts =
            Restarts::new("database unavailable; batch waits", Duration::from_secs(5));
        loop {
            restarts.attempt();
            match self.apply(work).await {
                Ok(outcomes) => return Some(outcomes),
                Err(error) => {
                    if !restarts.wait(error, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Applies the batch in one transaction. Errs only when the database is
    /// unreachable.
    ///
    /// The fast path records every event in the inbox with one insert and
    /// hands those not seen before to their handlers run by run, with no
    /// savepoints. Should one handler fail, that transaction rolls back and
    /// the batch is applied again with a savepoint per delivery, each a run of
    /// one, so only the failing one is undone.
    async fn apply(&self, work: &[Work]) -> Result<Vec<Outcome>, BrokerError> {
        let mut conn = self.pool.get().await?;
        let fast = conn
            .transaction::<_, Abort, _>(async |conn| apply_all(conn, work).await)
            .await;
        match fast {
            Ok(outcomes) => return Ok(outcomes),
            Err(Abort::Unavailable(error)) => return Err(error.into()),
            // A lone delivery's transaction was its savepoint.
            Err(Abort::Handler(error)) if work.len() == 1 => {
                return Ok(vec![Outcome::failed(error)]);
            }
            Err(Abort::Handler(_)) => {}
            Err(Abort::Database(error)) => return Ok(failed_commit(&error, work.len())),
        }
        let careful = conn
            .transaction::<_, Abort, _>(async |conn| {
                let mut outcomes = Vec::with_capacity(work.len());
                for item in work {
                    let applied = conn
                        .transaction::<_, HandlerError, _>(async |conn| apply_one(conn, item).await)
                        .await;
                    outcomes.push(match applied {
                        Ok(fresh) => Outcome::fresh(fresh),
                        Err(HandlerError::Database(error)) if pg::is_connection_error(&error) => {
                            return Err(Abort::Unavailable(error));
                        }
                        Err(error) => Outcome::failed(error),
                    });
                }
                Ok(outcomes)
            })
            .await;
        match careful {
            Ok(outcomes) => Ok(outcomes),
            Err(Abort::Unavailable(error)) => Err(error.into()),
            Err(Abort::Handler(error)) => Ok(vec![Outcome::failed(error); work.len()]),
            Err(Abort::Database(error)) => Ok(failed_commit(&error, work.len())),
        }
    }
}

fn failed_commit(error: &diesel::result::Error, n: usize) -> Vec<Outcome> {
    vec![Outcome::Failed(format!("transaction failed: {error}")); n]
}

/// The fast path: one inbox insert for the batch, then the handler of each
/// run of new events. A repeated message ID within the batch counts once.
async fn apply_all(conn: &mut AsyncPgConnection, work: &[Work]) -> Result<Vec<Outcome>, Abort> {
    #[derive(diesel::QueryableByName)]
    struct Fresh {
        #[diesel(sql_type = SqlUuid)]
        message_id: Uuid,
    }
    let ids: Vec<Uuid> = work.iter().map(|item| item.decoded.event_id).collect();
    let types: Vec<&str> = work
        .iter()
        .map(|item| item.delivery.routing_key.as_str())
        .collect();
    // One statement kept prepared whatever the batch's size (a multi-row
    // VALUES would be parsed again for each size).
    let fresh: Vec<Fresh> = pg::statement(
        "INSERT INTO inbox (message_id, event_type)
         SELECT * FROM unnest($1::uuid[], $2::text[])
         ON CONFLICT DO NOTHING RETURNING message_id",
    )
    .bind::<Array<SqlUuid>, _>(ids)
    .bind::<Array<Text>, _>(types)
    .load(conn)
    .await?;
    let mut fresh: HashSet<Uuid> = fresh.into_iter().map(|row| row.message_id).collect();
    let mut outcomes = Vec::with_capacity(work.len());
    let mut new = Vec::with_capacity(fresh.len());
    for item in work {
        if fresh.remove(&item.decoded.event_id) {
            new.push(item);
            outcomes.push(Outcome::Applied);
        } else {
            outcomes.push(Outcome::Duplicate);
        }
    }
    // Only adjacent deliveries of one type form a run: a handler never sees
    // an event before one that came ahead of it.
    for run in new.chunk_by(|a, b| a.delivery.routing_key == b.delivery.routing_key) {
        run_handler(conn, run).await.map_err(|error| match error {
            HandlerError::Database(error) if pg::is_connection_error(&error) => {
                Abort::Unavailable(error)
            }
            error => Abort::Handler(error),
        })?;
    }
    Ok(outcomes)
}

/// The inbox insert and, for an event not seen before, its handler (a run of
/// one). True if applied, false if a duplicate.
async fn apply_one(conn: &mut AsyncPgConnection, item: &Work) -> Result<bool, HandlerError> {
    let fresh = diesel::insert_into(inbox::table)
        .values((
            inbox::message_id.eq(item.decoded.event_id),
            inbox::event_type.eq(item.delivery.routing_key.as_str()),
        ))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?
        == 1;
    if fresh {
        run_handler(conn, &[item]).await?;
    }
    Ok(fresh)
}

/// Runs the handler of a run (non-empty, one event type) in a span that
/// continues the trace of its first event and links to the others'.
async fn run_handler(conn: &mut AsyncPgConnection, run: &[&Work]) -> Result<(), HandlerError> {
    let Some(first) = run.first() else {
        return Ok(());
    };
    let span = tracing::info_span!(
        "apply",
        event_type = %first.delivery.routing_key,
        event_id = %first.decoded.event_id,
        events = run.len(),
    );
    let _ = span.set_parent(first.decoded.trace.otel_context());
    for item in &run[1..] {
        let context = item.decoded.trace.otel_context();
        span.add_link(context.span().span_context().clone());
    }
    let events: Vec<&Event> = run.iter().map(|item| &item.decoded.event).collect();
    first
        .decoded
        .route
        .run(conn, &events)
        .instrument(span)
        .await
}

impl Outcome {
    fn fresh(fresh: bool) -> Outcome {
        if fresh {
            Outcome::Applied
        } else {
            Outcome::Duplicate
        }
    }

    fn failed(error: HandlerError) -> Outcome {
        match error {
            HandlerError::Reject(reason) => Outcome::Rejected(reason),
            error @ HandlerError::Database(_) => Outcome::Failed(error.to_string()),
        }
    }
}
