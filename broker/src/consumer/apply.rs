//! Decoding deliveries and applying them exactly once: shared by the live
//! queue consumers and the event-log replay.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use diesel::ExpressionMethods;
use diesel_async::{AsyncConnection, RunQueryDsl};
use lapin::message::Delivery;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use uuid::Uuid;

use super::{HandlerError, Job, Meta, Route};
use crate::{
    BrokerError, TraceContext, backoff_delay,
    envelope::{TRACEPARENT, header_str},
    pg::{self, PgPool},
    schema::inbox,
    sleep_or_shutdown,
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
    job: Box<dyn Job>,
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
        let occurred_at = header_str(properties, "ce-time")
            .and_then(|time| DateTime::parse_from_rfc3339(time).ok())
            .map(|time| time.with_timezone(&Utc));
        let trace = TraceContext::continue_or_start(header_str(properties, TRACEPARENT));
        let meta = Meta {
            event_id,
            occurred_at,
            trace: trace.clone(),
        };
        let job = route
            .decode(&delivery.data, meta)
            .map_err(|error| format!("undecodable payload: {error}"))?;
        Ok(Decoded {
            event_id,
            occurred_at,
            trace,
            job,
        })
    }

    /// Applies the batch, waiting out database outages; `None` on shutdown.
    pub(super) async fn apply_until_done(
        &self,
        work: &[Work],
        shutdown: &CancellationToken,
    ) -> Option<Vec<Outcome>> {
        let mut attempt = 0;
        loop {
            match self.apply(work).await {
                Ok(outcomes) => return Some(outcomes),
                Err(error) => {
                    let delay = backoff_delay(attempt, Duration::from_secs(5));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, retry_in = ?delay, "database unavailable; batch waits");
                    if !sleep_or_shutdown(delay, shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    /// One transaction: per delivery a savepoint with the inbox insert and the
    /// handler. Errs only when the database is unreachable.
    async fn apply(&self, work: &[Work]) -> Result<Vec<Outcome>, BrokerError> {
        let mut conn = self.pool.get().await?;
        let result = conn
            .transaction::<_, Abort, _>(async |conn| {
                let mut outcomes = Vec::with_capacity(work.len());
                for item in work {
                    // A savepoint: a failing handler undoes only its own writes.
                    let applied = conn
                        .transaction::<_, HandlerError, _>(async |conn| {
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
                                // A span per event, a child of the span that
                                // wrote it: one trace from request to effect.
                                let span = tracing::info_span!(
                                    "apply",
                                    event_type = %item.delivery.routing_key,
                                    event_id = %item.decoded.event_id,
                                );
                                let _ = span.set_parent(item.decoded.trace.otel_context());
                                item.decoded.job.run(conn).instrument(span).await?;
                            }
                            Ok(fresh)
                        })
                        .await;
                    outcomes.push(match applied {
                        Ok(true) => Outcome::Applied,
                        Ok(false) => Outcome::Duplicate,
                        Err(HandlerError::Reject(reason)) => Outcome::Rejected(reason),
                        Err(HandlerError::Database(error)) if pg::is_connection_error(&error) => {
                            return Err(Abort::Unavailable(error));
                        }
                        Err(error @ HandlerError::Database(_)) => {
                            Outcome::Failed(error.to_string())
                        }
                    });
                }
                Ok(outcomes)
            })
            .await;
        match result {
            Ok(outcomes) => Ok(outcomes),
            Err(Abort::Unavailable(error)) => Err(error.into()),
            Err(Abort::Database(error)) => {
                Ok(vec![
                    Outcome::Failed(format!("transaction failed: {error}"));
                    work.len()
                ])
            }
        }
    }
}
