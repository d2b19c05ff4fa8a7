//! Dead-letter queue tooling against the real servers: a message is really
//! dead-lettered (its handler fails until the delivery limit is spent), then
//! listed, replayed and purged with `broker::dlq`.
//!
//! Two consumers take `customer.registered` from the customer exchange:
//! `dlqprobe`, whose handler fails while its switch is on, and `dlqpeer`,
//! which always succeeds. Both count applications per customer in `seen`, so
//! an event applied twice (or replayed to the wrong consumer) shows.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use broker::{
    Amqp, Consumer, ConsumerConfig, HandlerError, Outbox, Received, Relay, RelayConfig,
    TraceContext,
    consumer::HandlerFuture,
    dlq::{self, DeathReason},
    pg::PgPool,
    topology,
};
use dbps::customer::v1::CustomerRegistered;
use diesel::{QueryableByName, sql_types::Integer, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use prost::Message;
use testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SCHEMA: &str = "dlqprobe";
const PROBE: &str = "dlqprobe";
const PEER: &str = "dlqpeer";
const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    env: TestEnv,
    url: String,
    pool: PgPool,
    amqp: Amqp,
    outbox: Outbox,
    /// While true, the probe's handler fails.
    failing: Arc<AtomicBool>,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new() -> Fixture {
        let env = TestEnv::new().await;
        env.track_consumer(PROBE);
        env.track_consumer(PEER);
        let url = env.admin_url_of(&env.database);
        let mut admin = testkit::admin_connection(&env.database).await;
        admin
            .batch_execute(
                "CREATE SCHEMA dlqprobe;
                 CREATE TABLE dlqprobe.seen (
                     consumer text NOT NULL,
                     customer_id text NOT NULL,
                     times int NOT NULL,
                     PRIMARY KEY (consumer, customer_id));",
            )
            .await
            .unwrap();
        platform::db::migrate(&url, SCHEMA, vec![&broker::pg::MIGRATIONS])
            .await
            .unwrap();
        let pool = platform::db::pool(&url, SCHEMA, 4).await.unwrap();
        let fixture = Fixture {
            amqp: Amqp::new(testkit::amqp_url(), "dlq-test"),
            outbox: Outbox::new("customer", SCHEMA),
            failing: Arc::new(AtomicBool::new(true)),
            shutdown: CancellationToken::new(),
            env,
            url,
            pool,
        };
        fixture.start().await;
        fixture
    }

    fn prefix(&self) -> &str {
        &self.env.prefix
    }

    /// Starts the relay and both consumers; returns once all are ready.
    async fn start(&self) {
        let mut config = ConsumerConfig::new(self.prefix());
        config.delivery_limit = 2;
        config.max_retry_delay = Duration::from_millis(100);
        let peer_pool = self.peer_pool().await;
        for (consumer, pool) in [(self.probe(), self.pool.clone()), (peer(), peer_pool)] {
            let (ready, is_ready) = tokio::sync::oneshot::channel();
            tokio::spawn(consumer.run(
                self.amqp.clone(),
                pool,
                config.clone(),
                self.shutdown.clone(),
                ready,
            ));
            is_ready.await.unwrap();
        }
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let relay = RelayConfig::new("customer", self.prefix(), &self.url, SCHEMA);
        tokio::spawn(Relay::new(relay, self.amqp.clone()).run(self.shutdown.clone(), ready));
        is_ready.await.unwrap();
    }

    /// The peer consumer's own schema, for its own inbox (the probe's would
    /// take the peer's applications for duplicates).
    async fn peer_pool(&self) -> PgPool {
        let mut admin = testkit::admin_connection(&self.env.database).await;
        admin.batch_execute("CREATE SCHEMA dlqpeer").await.unwrap();
        platform::db::migrate(&self.url, PEER, vec![&broker::pg::MIGRATIONS])
            .await
            .unwrap();
        platform::db::pool(&self.url, PEER, 2).await.unwrap()
    }

    fn probe(&self) -> Consumer {
        let failing = self.failing.clone();
        Consumer::new(PROBE).on::<CustomerRegistered, _>(
            move |conn: &mut AsyncPgConnection, event: Received<CustomerRegistered>| {
                let failing = AtomicBool::load(&failing, Ordering::SeqCst);
                record(conn, PROBE, event, failing)
            },
        )
    }

    /// Records an event through the outbox (real envelope and headers);
    /// returns its message ID.
    async fn publish(&self, customer_id: &str) -> Uuid {
        let conn = broker::pg::connect(&self.url, SCHEMA).await.unwrap();
        self.outbox
            .enqueue(&conn, &registered(customer_id), &TraceContext::new_root())
            .await
            .unwrap()
    }

    async fn times(&self, consumer: &str, customer_id: &str) -> Option<i32> {
        #[derive(QueryableByName)]
        struct Times {
            #[diesel(sql_type = Integer)]
            times: i32,
        }
        let mut conn = self.pool.get().await.unwrap();
        diesel::sql_query(
            "SELECT times FROM dlqprobe.seen WHERE consumer = $1 AND customer_id = $2",
        )
        .bind::<Text, _>(consumer)
        .bind::<Text, _>(customer_id)
        .get_result::<Times>(&mut conn)
        .await
        .ok()
        .map(|row| row.times)
    }

    async fn wait_applied(&self, consumer: &str, customer_id: &str) {
        eventually(
            &format!("{customer_id} to be applied by {consumer}"),
            WAIT,
            || self.times(consumer, customer_id),
        )
        .await;
    }

    async fn dead_letters(&self) -> u32 {
        let queue = topology::dead_letter_queue(self.prefix(), PROBE);
        dlq::message_count(&self.amqp, &queue)
            .await
            .unwrap()
            .expect("the DLQ is declared")
    }

    async fn wait_dead_letters(&self, n: u32) {
        eventually(&format!("{n} dead letters"), WAIT, || async {
            (self.dead_letters().await == n).then_some(())
        })
        .await;
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn peer() -> Consumer {
    Consumer::new(PEER).on::<CustomerRegistered, _>(
        |conn: &mut AsyncPgConnection, event: Received<CustomerRegistered>| {
            record(conn, PEER, event, false)
        },
    )
}

fn registered(customer_id: &str) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: customer_id.into(),
        name: "Probe".into(),
        ..Default::default()
    }
}

/// Counts an application of `event` by `consumer` (both consumers count in
/// the probe's table), or fails if `failing`.
fn record<'c>(
    conn: &'c mut AsyncPgConnection,
    consumer: &'static str,
    event: Received<CustomerRegistered>,
    failing: bool,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        if failing {
            return Err(HandlerError::Database(diesel::result::Error::NotFound));
        }
        diesel::sql_query(
            "INSERT INTO dlqprobe.seen AS seen VALUES ($1, $2, 1)
             ON CONFLICT (consumer, customer_id) DO UPDATE SET times = seen.times + 1",
        )
        .bind::<Text, _>(consumer)
        .bind::<Text, _>(&event.event.customer_id)
        .execute(conn)
        .await?;
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_is_listed_with_its_headers_and_replayed_exactly_once() {
    let fx = Fixture::new().await;
    let id = fx.publish("ada").await;
    let other = fx.publish("bob").await;
    fx.wait_applied(PEER, "ada").await;
    fx.wait_applied(PEER, "bob").await;
    fx.wait_dead_letters(2).await;

    // Browsing loses nothing, however often.
    let first = dlq::list(&fx.amqp, fx.prefix(), PROBE).await.unwrap();
    let again = dlq::list(&fx.amqp, fx.prefix(), PROBE).await.unwrap();
    assert!(first.declared);
    assert_eq!(first.messages.len(), 2);
    assert_eq!(again.messages.len(), 2);
    assert_eq!(fx.dead_letters().await, 2);

    let letter = first
        .messages
        .iter()
        .find(|m| m.has_id(&id.to_string()))
        .expect("ada's event is dead-lettered");
    assert_eq!(letter.routing_key, "customer.registered");
    assert_eq!(
        letter.source_exchange,
        topology::exchange(fx.prefix(), "customer")
    );
    let death = letter.last_death().expect("x-death recorded");
    assert_eq!(death.reason, DeathReason::DeliveryLimit);
    assert_eq!(death.count, 1);
    assert_eq!(death.queue, topology::queue(fx.prefix(), PROBE, "customer"));
    assert!(death.time.is_some());
    assert_eq!(letter.ce_type(), Some("customer.v1.CustomerRegistered"));
    assert_eq!(letter.ce_attribute("id"), Some(id.to_string().as_str()));
    assert_eq!(
        letter.header("cloudEvents_id"),
        Some(id.to_string().as_str())
    );
    assert!(letter.header("traceparent").is_some());
    assert_eq!(letter.payload, registered("ada").encode_to_vec());
    // The second browse saw the same message, headers and all.
    let seen_again = again
        .messages
        .iter()
        .find(|m| m.has_id(&id.to_string()))
        .unwrap();
    assert_eq!(seen_again.deaths, letter.deaths);
    assert_eq!(
        seen_again.header("traceparent"),
        letter.header("traceparent")
    );

    // The handler works again: replay just ada's event.
    fx.failing.store(false, Ordering::SeqCst);
    let report = dlq::replay(&fx.amqp, fx.prefix(), PROBE, Some(&id.to_string()))
        .await
        .unwrap();
    assert_eq!(report.skipped, vec![]);
    assert_eq!(report.replayed.len(), 1);
    assert_eq!(report.replayed[0].message_id, Some(id.to_string()));
    assert_eq!(
        report.replayed[0].queue,
        topology::queue(fx.prefix(), PROBE, "customer")
    );
    fx.wait_applied(PROBE, "ada").await;

    // Only the failed consumer got it again, and only that one message.
    assert_eq!(fx.times(PEER, "ada").await, Some(1));
    assert_eq!(fx.times(PROBE, "bob").await, None);
    assert_eq!(fx.dead_letters().await, 1);
    let left = dlq::list(&fx.amqp, fx.prefix(), PROBE).await.unwrap();
    assert_eq!(left.messages.len(), 1);
    assert!(left.messages[0].has_id(&other.to_string()));

    // A second copy of the same event (the relay publishes at least once) is
    // absorbed by the inbox: the effect stays counted once.
    let again = dlq::replay(&fx.amqp, fx.prefix(), PROBE, Some(&id.to_string()))
        .await
        .unwrap();
    assert!(again.replayed.is_empty(), "nothing left with that id");
    fx.env
        .publish_bytes(
            "customer",
            "customer.registered",
            id,
            &registered("ada").encode_to_vec(),
        )
        .await;
    fx.publish("marker").await;
    fx.wait_applied(PROBE, "marker").await;
    assert_eq!(fx.times(PROBE, "ada").await, Some(1));

    // Replaying everything empties the queue.
    let report = dlq::replay(&fx.amqp, fx.prefix(), PROBE, None)
        .await
        .unwrap();
    assert_eq!(report.replayed.len(), 1);
    fx.wait_applied(PROBE, "bob").await;
    assert_eq!(fx.dead_letters().await, 0);
    assert_eq!(fx.times(PEER, "bob").await, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_and_failed_messages_are_told_apart_and_purge_empties() {
    let fx = Fixture::new().await;
    // Undecodable: rejected straight away, by both consumers.
    let poison = Uuid::now_v7();
    fx.env
        .publish_bytes("customer", "customer.registered", poison, b"\xff\xff nope")
        .await;
    let failed = fx.publish("carol").await;
    fx.wait_dead_letters(2).await;

    let listing = dlq::list(&fx.amqp, fx.prefix(), PROBE).await.unwrap();
    let reason = |id: Uuid| {
        listing
            .messages
            .iter()
            .find(|m| m.has_id(&id.to_string()))
            .and_then(|m| m.last_death())
            .map(|d| d.reason.clone())
    };
    assert_eq!(reason(poison), Some(DeathReason::Rejected));
    assert_eq!(reason(failed), Some(DeathReason::DeliveryLimit));
    let poisoned = listing
        .messages
        .iter()
        .find(|m| m.has_id(&poison.to_string()))
        .unwrap();
    assert_eq!(poisoned.payload.len(), 7);
    assert_eq!(poisoned.ce_type(), None);

    assert_eq!(
        dlq::purge(&fx.amqp, fx.prefix(), PROBE).await.unwrap(),
        Some(2)
    );
    assert_eq!(fx.dead_letters().await, 0);
    assert!(
        dlq::list(&fx.amqp, fx.prefix(), PROBE)
            .await
            .unwrap()
            .messages
            .is_empty()
    );
    // The peer rejected the poison too: its own DLQ is untouched.
    let peer = dlq::list(&fx.amqp, fx.prefix(), PEER).await.unwrap();
    assert_eq!(peer.messages.len(), 1);
    assert_eq!(
        dlq::purge(&fx.amqp, fx.prefix(), PEER).await.unwrap(),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn queues_that_were_never_declared_are_reported_not_created() {
    let fx = Fixture::new().await;
    let listing = dlq::list(&fx.amqp, fx.prefix(), "nobody").await.unwrap();
    assert!(!listing.declared);
    assert!(listing.messages.is_empty());
    assert_eq!(
        dlq::purge(&fx.amqp, fx.prefix(), "nobody").await.unwrap(),
        None
    );
    let report = dlq::replay(&fx.amqp, fx.prefix(), "nobody", None)
        .await
        .unwrap();
    assert!(!report.declared);
    let queue = topology::dead_letter_queue(fx.prefix(), "nobody");
    assert_eq!(dlq::message_count(&fx.amqp, &queue).await.unwrap(), None);
}
