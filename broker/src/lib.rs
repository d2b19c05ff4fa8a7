//! Everything that crosses RabbitMQ, and the Postgres tables that make it safe.
//!
//! A service never talks AMQP itself. It hands this crate events and handlers:
//!
//! ```text
//!  gRPC write ──► one diesel transaction ──► business rows + outbox row (+ pg_notify)
//!                                                   │ commit
//!  relay (leader by advisory lock) ◄── NOTIFY / poll┘
//!     │ publish pipelined, confirms + mandatory, mark confirmed rows
//!     ▼
//!  <prefix>.<source>.events (topic) ──► <prefix>.<consumer>.<source> (quorum queue)
//!                                                   │ manual ack, prefetch
//!  consumer runtime: one transaction per batch ◄────┘
//!     inbox insert (duplicate = skip) + handlers run by run, commit, then ack
//!     undecodable → dead-letter queue at once; failing → retried, then dead-lettered
//! ```
//!
//! * [`outbox`]: [`Outbox::enqueue`] / [`Outbox::enqueue_all`] write events inside the caller's transaction.
//! * [`relay`]: [`Relay`] publishes the outbox; one active relay per service.
//! * [`consumer`]: [`Consumer`] maps event types to handlers and applies runs of events exactly once.
//! * [`topology`]: exchange and queue names and declarations.
//! * [`event_log`]: reading a consumer's event log (a stream) from a start to its end.
//! * [`envelope`]: AMQP properties, CloudEvents headers and [`TraceContext`].
//! * [`amqp`]: [`Amqp`], the one connection a process shares, reopened after loss.
//! * [`pg`]: connections pinned to a schema, the outbox/inbox migrations, and
//!   [`pg::statement`], hand-written SQL that stays prepared.
//! * [`supervise`]: the one backoff and restart loop of every long-lived task.
//! * [`dlq`]: browsing, replaying and dropping dead-lettered messages.
//! * `error`: [`BrokerError`]; `metrics`: the relay's and consumers' Prometheus
//!   series; `schema`: the diesel tables `outbox` and `inbox` (generated).
//!
//! Delivery is at least once by construction; effects are exactly once because
//! the inbox row and the handler's writes commit together.

#![warn(missing_docs, unreachable_pub)]

pub mod amqp;
pub mod consumer;
pub mod dlq;
pub mod envelope;
mod error;
pub mod event_log;
mod metrics;
pub mod outbox;
pub mod pg;
pub mod relay;
mod schema;
pub mod supervise;
pub mod topology;

pub use amqp::Amqp;
pub use consumer::{Consumer, ConsumerConfig, HandlerError, Received, ReplayStats};
pub use envelope::TraceContext;
pub use error::BrokerError;
pub use outbox::Outbox;
pub use relay::{Relay, RelayConfig};
