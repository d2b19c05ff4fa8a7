//! Idempotent event consumers.
//!
//! A service builds one [`Consumer`] naming itself and mapping each event type
//! it consumes to a handler: an async function of (transaction, the events of
//! one run, in delivery order). [`Consumer::run`] then keeps one quorum queue
//! per source service consumed, applying deliveries exactly once:
//!
//! 1. decode by routing key; an unknown type, a missing or non-UUID
//!    `message_id` or an undecodable payload is rejected straight to the
//!    dead-letter queue;
//! 2. in one transaction per batch of ready deliveries: insert their
//!    `message_id`s into `inbox` with one statement (those already there are
//!    duplicates, skipped), split the new ones into runs (consecutive
//!    deliveries of one event type, in delivery order; runs of different
//!    types are never merged, so every handler sees the events in the order
//!    they came) and hand each run to its type's handler at once, so that it
//!    can apply them with a few multi-row statements;
//! 3. commit, then ack. If a handler fails, the batch is applied again with a
//!    savepoint per delivery, each delivery a run of one, so the error rolls
//!    back that delivery's inbox row and writes only; its message is requeued
//!    after a backoff (meanwhile the deliveries behind it go on), until the
//!    queue's delivery limit dead-letters it;
//!    [`HandlerError::Reject`] dead-letters at once. If the
//!    database itself is unreachable the batch is retried as a whole, without
//!    spending the messages' delivery attempts.
//!
//! A handler must therefore give the same result for a run as for its
//! events one by one: when one aggregate appears twice in a run, it applies
//! the second event on top of the first (in memory, or by splitting its
//! statements there).

mod apply;
mod gauges;
mod replay;
mod runtime;

use std::{any::Any, collections::BTreeMap, marker::PhantomData, sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use diesel_async::AsyncPgConnection;
use futures_util::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Amqp, TraceContext, pg::PgPool};

/// A decoded event and what its envelope said about it.
#[derive(Clone, Debug)]
pub struct Received<E> {
    /// The event.
    pub event: E,
    /// Its ID (AMQP `message_id`), unique across all events.
    pub event_id: Uuid,
    /// When the producer recorded it (`ce-time`), if the header was present.
    pub occurred_at: Option<DateTime<Utc>>,
    /// Trace context to continue in events this handler writes.
    pub trace: TraceContext,
}

/// Why a handler did not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// A query failed: retried (requeued) until the delivery limit.
    #[error("database: {0}")]
    Database(#[from] diesel::result::Error),
    /// The event can never be applied (it contradicts this service's data):
    /// dead-lettered at once.
    #[error("rejected: {0}")]
    Reject(String),
}

/// The boxed future a handler returns, borrowing the transaction's connection.
pub type HandlerFuture<'c> = BoxFuture<'c, Result<(), HandlerError>>;

type BatchHandlerFn<E> =
    dyn for<'c> Fn(&'c mut AsyncPgConnection, Vec<Received<E>>) -> HandlerFuture<'c> + Send + Sync;

/// Tuning of a consumer's queues.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// Unacknowledged deliveries the broker may push to us per queue.
    pub prefetch: u16,
    /// Most deliveries applied in one transaction.
    pub max_batch: usize,
    /// Deliveries of one message before it is dead-lettered (`x-delivery-limit`).
    pub delivery_limit: u32,
    /// Longest wait before requeueing a failed message.
    pub max_retry_delay: Duration,
    /// Nodes each new queue is replicated on; `None`: min(3, the nodes the
    /// [`Amqp`] connection was given).
    pub quorum_group_size: Option<u32>,
    /// One active consumer per queue across all replicas (the default), so
    /// an aggregate's events are applied in publish order. Off, replicas
    /// compete for deliveries and the handlers' tolerance of reordering is
    /// all that keeps the effects right.
    pub single_active: bool,
}

impl ConsumerConfig {
    /// Defaults under `prefix`.
    pub fn new(prefix: &str) -> Self {
        ConsumerConfig {
            prefix: prefix.to_owned(),
            prefetch: 256,
            max_batch: 128,
            delivery_limit: 10,
            max_retry_delay: Duration::from_secs(2),
            quorum_group_size: None,
            single_active: true,
        }
    }

    /// The arguments of this consumer's queues on a cluster of `nodes`.
    pub fn queue_args(&self, nodes: usize) -> crate::topology::QueueArgs {
        let nodes = u32::try_from(nodes).unwrap_or(u32::MAX);
        crate::topology::QueueArgs {
            delivery_limit: self.delivery_limit,
            group_size: Some(self.quorum_group_size.unwrap_or(nodes.min(3))),
            single_active: self.single_active,
        }
    }
}

/// The event handlers of one consuming service.
pub struct Consumer {
    name: String,
    /// source service → routing key → route
    routes: BTreeMap<&'static str, BTreeMap<&'static str, Arc<dyn Route>>>,
    event_log: Option<EventLog>,
    wakes: Option<crate::Outbox>,
}

/// Keep an event log (see [`Consumer::with_event_log`]).
#[derive(Clone, Debug)]
pub(crate) struct EventLog {
    pub(crate) max_age: Option<String>,
}

/// What a replay did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Events applied.
    pub applied: u64,
    /// Events already applied (skipped by the inbox).
    pub duplicates: u64,
    /// Events that could not be applied (undecodable, rejected, failing).
    pub failed: u64,
}

impl Consumer {
    /// A consumer named after its service (`customer` → queues
    /// `<prefix>.customer.<source>`).
    pub fn new(name: impl Into<String>) -> Self {
        Consumer {
            name: name.into(),
            routes: BTreeMap::new(),
            event_log: None,
            wakes: None,
        }
    }

    /// Handles runs of events of type `E` with `handler`, inside the
    /// transaction that also records the events in the inbox.
    ///
    /// A run is every new delivery of type `E` that came in a row within one
    /// batch, in delivery order (after a handler failure, each delivery alone).
    /// The handler applies them all or fails; it must give the same result as
    /// applying them one at a time in that order, including when one
    /// aggregate appears several times.
    ///
    /// ```ignore
    /// fn credit<'c>(conn: &'c mut AsyncPgConnection, run: Vec<Received<OrderCreated>>) -> HandlerFuture<'c> {
    ///     Box::pin(async move { /* multi-row diesel queries on conn */ Ok(()) })
    /// }
    /// Consumer::new("customer").on_batch::<OrderCreated, _>(credit);
    /// ```
    pub fn on_batch<E, H>(mut self, handler: H) -> Self
    where
        E: dbps::Event + Clone,
        H: for<'c> Fn(&'c mut AsyncPgConnection, Vec<Received<E>>) -> HandlerFuture<'c>
            + Send
            + Sync
            + 'static,
    {
        let route: Arc<dyn Route> = Arc::new(TypedRoute::<E> {
            handler: Box::new(handler),
            _event: PhantomData,
        });
        let previous = self
            .routes
            .entry(E::SOURCE)
            .or_default()
            .insert(E::TYPE, route);
        debug_assert!(previous.is_none(), "two handlers for {}", E::TYPE);
        self
    }

    /// Handles events of type `E` one at a time with `handler`: a run's
    /// events are applied in turn, each with its own round trips. For
    /// handlers where that costs little; see [`Consumer::on_batch`].
    pub fn on<E, H>(self, handler: H) -> Self
    where
        E: dbps::Event + Clone,
        H: for<'c> Fn(&'c mut AsyncPgConnection, Received<E>) -> HandlerFuture<'c>
            + Send
            + Sync
            + 'static,
    {
        let handler = Arc::new(handler);
        self.on_batch::<E, _>(move |conn, run| {
            let handler = handler.clone();
            Box::pin(async move {
                for received in run {
                    handler(conn, received).await?;
                }
                Ok(())
            })
        })
    }

    /// Also keeps every event this consumer handles in its event log, the
    /// stream `<prefix>.<name>.log` (entries older than `max_age`, e.g.
    /// `"30D"`, are dropped; `None` keeps all), so that [`Consumer::replay`]
    /// can apply them all again. The log is declared and bound when the
    /// consumer starts; it holds the events published from then on.
    pub fn with_event_log(mut self, max_age: Option<String>) -> Self {
        self.event_log = Some(EventLog { max_age });
        self
    }

    /// After a batch that applied events commits, wakes the relay of
    /// `outbox` (handlers that write events write them there).
    pub fn wakes(mut self, outbox: crate::Outbox) -> Self {
        self.wakes = Some(outbox);
        self
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The services whose events this consumer receives.
    pub fn sources(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.routes.keys().copied()
    }

    /// Every (source service, routing key) this consumer handles: the
    /// bindings of its queues, `<prefix>.<name>.<source>`.
    pub fn subscriptions(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.routes
            .iter()
            .flat_map(|(source, keys)| keys.keys().map(move |key| (*source, *key)))
    }

    /// Consumes every source's queue until `shutdown`, reconnecting with
    /// backoff whenever the broker is lost. `ready` fires once every queue has
    /// been declared and is being consumed.
    pub async fn run(
        self,
        amqp: Amqp,
        pool: PgPool,
        config: ConsumerConfig,
        shutdown: CancellationToken,
        ready: oneshot::Sender<()>,
    ) {
        let name: Arc<str> = self.name.into();
        let mut workers = Vec::new();
        let mut readies = Vec::new();
        let sources: Vec<&'static str> = self.routes.keys().copied().collect();
        for (source, routes) in self.routes {
            let (queue_ready, queue_ready_rx) = oneshot::channel();
            readies.push(queue_ready_rx);
            let worker = runtime::QueueWorker {
                consumer: name.clone(),
                source,
                applier: apply::Applier {
                    routes,
                    pool: pool.clone(),
                },
                amqp: amqp.clone(),
                config: config.clone(),
                event_log: self.event_log.clone(),
                metrics: crate::metrics::ConsumerMetrics::new(&name, source),
                wakes: self.wakes.clone(),
                held: Default::default(),
            };
            workers.push(tokio::spawn(worker.run(shutdown.clone(), queue_ready)));
        }
        workers.push(tokio::spawn(gauges::watch(
            amqp.clone(),
            config.prefix.clone(),
            name.clone(),
            sources,
            shutdown.clone(),
        )));
        tokio::spawn(async move {
            for queue_ready in readies {
                if queue_ready.await.is_err() {
                    return;
                }
            }
            let _ = ready.send(());
        });
        for worker in workers {
            if let Err(error) = worker.await {
                tracing::error!(%error, "consumer worker panicked");
            }
        }
    }
}

/// Decodes one event type and runs its handler over a run of them.
trait Route: Send + Sync {
    /// The event as a `Received<E>` of the route's `E`.
    fn decode(&self, payload: &[u8], meta: Meta) -> Result<Event, prost::DecodeError>;

    /// Runs the handler over `run`, events this route decoded. Re-runnable
    /// (the events are cloned), so a batch can be retried whole after the
    /// database comes back, or delivery by delivery after a failure.
    fn run<'c>(&'c self, conn: &'c mut AsyncPgConnection, run: &[&Event]) -> HandlerFuture<'c>;
}

/// A decoded event of a route's type, type-erased to travel in a batch.
type Event = Box<dyn Any + Send + Sync>;

/// Envelope fields every route needs.
#[derive(Clone, Debug)]
struct Meta {
    event_id: Uuid,
    occurred_at: Option<DateTime<Utc>>,
    trace: TraceContext,
}

struct TypedRoute<E> {
    handler: Box<BatchHandlerFn<E>>,
    _event: PhantomData<fn() -> E>,
}

impl<E: dbps::Event + Clone> Route for TypedRoute<E> {
    fn decode(&self, payload: &[u8], meta: Meta) -> Result<Event, prost::DecodeError> {
        let event = E::decode(payload)?;
        Ok(Box::new(Received {
            event,
            event_id: meta.event_id,
            occurred_at: meta.occurred_at,
            trace: meta.trace,
        }))
    }

    fn run<'c>(&'c self, conn: &'c mut AsyncPgConnection, run: &[&Event]) -> HandlerFuture<'c> {
        // The applier only groups events under the route that decoded them.
        let events: Option<Vec<Received<E>>> = run
            .iter()
            .map(|event| event.downcast_ref::<Received<E>>().cloned())
            .collect();
        match events {
            Some(events) => (self.handler)(conn, events),
            None => Box::pin(std::future::ready(Err(HandlerError::Reject(format!(
                "an event of another type in a run of {}",
                E::TYPE
            ))))),
        }
    }
}
