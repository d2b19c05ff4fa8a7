//! The outbox → relay → RabbitMQ → consumer pipeline against the real servers.
//!
//! A probe consumer records each `customer.registered` it applies in `seen`,
//! counting applications, so an event applied twice would show `times = 2`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use broker::{
    Amqp, Consumer, ConsumerConfig, HandlerError, Outbox, Received, Relay, RelayConfig,
    TraceContext, consumer::HandlerFuture, pg::PgPool, topology,
};
use dbps::customer::v1::CustomerRegistered;
use diesel::{QueryableByName, sql_types::BigInt, sql_types::Integer, sql_types::Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use prost::Message;
use testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

const SCHEMA: &str = "probe";
const WAIT: Duration = Duration::from_secs(20);

struct Probe {
    env: TestEnv,
    url: String,
    pool: PgPool,
    amqp: Amqp,
    outbox: Outbox,
    shutdown: CancellationToken,
}

impl Probe {
    async fn new() -> Probe {
        let env = TestEnv::new().await;
        env.track_consumer("probe");
        let url = env.admin_url_of(&env.database);
        let mut admin = testkit::admin_connection(&env.database).await;
        admin
            .batch_execute(
                "CREATE SCHEMA probe;
                 CREATE TABLE probe.seen (customer_id text PRIMARY KEY, times int NOT NULL);",
            )
            .await
            .unwrap();
        platform::db::migrate(&url, SCHEMA, vec![&broker::pg::MIGRATIONS])
            .await
            .unwrap();
        let pool = platform::db::pool(&url, SCHEMA, 4).await.unwrap();
        Probe {
            amqp: Amqp::new(testkit::amqp_url(), "probe"),
            outbox: Outbox::new("customer", SCHEMA),
            shutdown: CancellationToken::new(),
            env,
            url,
            pool,
        }
    }

    fn consumer_config(&self) -> ConsumerConfig {
        let mut config = ConsumerConfig::new(&self.env.prefix);
        config.delivery_limit = 3;
        config.max_retry_delay = Duration::from_millis(200);
        config
    }

    fn consumer(&self) -> Consumer {
        Consumer::new("probe")
            .with_event_log(None)
            .on::<CustomerRegistered, _>(record)
    }

    /// Starts the probe consumer; returns once its queue is consumed.
    async fn start_consumer(&self) {
        self.spawn_consumer(self.shutdown.clone()).await;
    }

    /// Starts a probe consumer that `stop` stops; returns once its queue is
    /// consumed, with the task to await for its end.
    async fn spawn_consumer(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let consumer = self.consumer();
        let task = tokio::spawn(consumer.run(
            self.amqp.clone(),
            self.pool.clone(),
            self.consumer_config(),
            stop,
            ready,
        ));
        is_ready.await.unwrap();
        task
    }

    /// Starts a relay; cancel the returned token to stop it.
    async fn start_relay(&self) -> CancellationToken {
        self.start_relay_with(self.relay_config()).await
    }

    fn relay_config(&self) -> RelayConfig {
        RelayConfig::new("customer", &self.env.prefix, &self.url, SCHEMA)
    }

    async fn start_relay_with(&self, config: RelayConfig) -> CancellationToken {
        let stop = self.shutdown.child_token();
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let relay = Relay::new(config, self.amqp.clone()).woken_by(self.outbox.clone());
        tokio::spawn(relay.run(stop.clone(), ready));
        is_ready.await.unwrap();
        stop
    }

    async fn conn(&self) -> AsyncPgConnection {
        broker::pg::connect(&self.url, SCHEMA).await.unwrap()
    }

    /// Enqueues an event and wakes the relay (as a writer does after its
    /// commit; inside an explicit transaction the wake-up comes early and the
    /// relay's poll or the next wake-up finds the row).
    async fn enqueue(&self, conn: &mut AsyncPgConnection, customer_id: &str) {
        self.outbox
            .enqueue(conn, &registered(customer_id), &TraceContext::new_root())
            .await
            .unwrap();
        self.outbox.committed();
    }

    async fn times(&self, customer_id: &str) -> Option<i32> {
        #[derive(QueryableByName)]
        struct Times {
            #[diesel(sql_type = Integer)]
            times: i32,
        }
        let mut conn = self.pool.get().await.unwrap();
        diesel::sql_query("SELECT times FROM seen WHERE customer_id = $1")
            .bind::<Text, _>(customer_id)
            .get_result::<Times>(&mut conn)
            .await
            .ok()
            .map(|row| row.times)
    }

    async fn wait_applied(&self, customer_id: &str) {
        eventually(&format!("{customer_id} to be applied"), WAIT, || {
            self.times(customer_id)
        })
        .await;
    }

    async fn unpublished(&self) -> i64 {
        #[derive(QueryableByName)]
        struct Count {
            #[diesel(sql_type = BigInt)]
            n: i64,
        }
        let mut conn = self.pool.get().await.unwrap();
        diesel::sql_query("SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
            .get_result::<Count>(&mut conn)
            .await
            .unwrap()
            .n
    }

    /// Publishes raw bytes as if a producer had, bypassing the outbox.
    async fn publish_raw(&self, message_id: &str, payload: &[u8]) {
        let channel = self.amqp.channel().await.unwrap();
        channel
            .basic_publish(
                topology::exchange(&self.env.prefix, "customer").into(),
                "customer.registered".into(),
                BasicPublishOptions::default(),
                payload,
                BasicProperties::default().with_message_id(message_id.into()),
            )
            .await
            .unwrap();
    }

    /// A queue of the test's own (gone with `channel`'s connection) with
    /// `args`, bound to `routing_key`; its name.
    async fn bound_queue(
        &self,
        channel: &lapin::Channel,
        name: &str,
        routing_key: &str,
        args: FieldTable,
    ) -> String {
        topology::declare_exchange(channel, &self.env.prefix, "customer")
            .await
            .unwrap();
        let queue = format!("{}.{name}", self.env.prefix);
        let exclusive = QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        };
        channel
            .queue_declare(queue.as_str().into(), exclusive, args)
            .await
            .unwrap();
        channel
            .queue_bind(
                queue.as_str().into(),
                topology::exchange(&self.env.prefix, "customer").into(),
                routing_key.into(),
                lapin::options::QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        queue
    }

    async fn dead_letters(&self) -> u32 {
        let channel = self.amqp.channel().await.unwrap();
        channel
            .queue_declare(
                topology::dead_letter_queue(&self.env.prefix, "probe").into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn registered(customer_id: &str) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: customer_id.into(),
        name: "Probe".into(),
        ..Default::default()
    }
}

/// The probe's handler: counts applications; fails for `fail-*` IDs.
fn record<'c>(
    conn: &'c mut AsyncPgConnection,
    event: Received<CustomerRegistered>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        if event.event.customer_id.starts_with("fail-") {
            return Err(HandlerError::Database(diesel::result::Error::NotFound));
        }
        diesel::sql_query(
            "INSERT INTO seen VALUES ($1, 1) ON CONFLICT (customer_id) DO UPDATE SET times = seen.times + 1",
        )
        .bind::<Text, _>(&event.event.customer_id)
        .execute(conn)
        .await?;
        Ok(())
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_row_committed_late_with_smaller_id_is_still_published() {
    let probe = Probe::new().await;
    probe.start_consumer().await;
    probe.start_relay().await;

    let mut early = probe.conn().await;
    let mut late = probe.conn().await;
    early.batch_execute("BEGIN").await.unwrap();
    probe.enqueue(&mut early, "smaller-id").await; // takes id 1, not committed yet
    late.batch_execute("BEGIN").await.unwrap();
    probe.enqueue(&mut late, "larger-id").await; // takes id 2
    late.batch_execute("COMMIT").await.unwrap();
    probe.outbox.committed();

    probe.wait_applied("larger-id").await;
    assert_eq!(probe.times("smaller-id").await, None);
    early.batch_execute("COMMIT").await.unwrap();
    probe.outbox.committed();
    probe.wait_applied("smaller-id").await;
    // Marks follow the confirms a little later, off the publish path.
    eventually("both rows to be marked", WAIT, || async {
        (probe.unpublished().await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn relay_killed_between_confirm_and_mark_republishes_and_the_duplicate_is_absorbed() {
    let probe = Probe::new().await;
    probe.start_consumer().await;
    // Marks held back for a minute: whatever the broker confirms stays
    // unmarked while this relay lives.
    let mut slow_marks = probe.relay_config();
    slow_marks.mark_every = Duration::from_secs(60);
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let relay = Relay::new(slow_marks, probe.amqp.clone()).woken_by(probe.outbox.clone());
    let relay = tokio::spawn(relay.run(probe.shutdown.child_token(), ready));
    is_ready.await.unwrap();
    let mut conn = probe.conn().await;
    probe.enqueue(&mut conn, "once").await;
    probe.wait_applied("once").await;
    assert_eq!(probe.unpublished().await, 1, "confirmed but not yet marked");

    // Killed mid-round: no shutdown, no settling, the mark never written.
    relay.abort();
    assert!(relay.await.unwrap_err().is_cancelled());
    assert_eq!(probe.unpublished().await, 1);

    probe.start_relay().await;
    eventually("the row to be published again and marked", WAIT, || async {
        (probe.unpublished().await == 0).then_some(())
    })
    .await;
    // The queue is FIFO and consumed in order: once a later event is applied,
    // the redelivered one has been seen too.
    probe.enqueue(&mut conn, "after").await;
    probe.wait_applied("after").await;
    assert_eq!(probe.times("once").await, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_message_delivered_twice_is_applied_once() {
    let probe = Probe::new().await;
    probe.start_consumer().await;
    let payload = registered("twice").encode_to_vec();
    let message_id = uuid::Uuid::now_v7().to_string();
    probe.publish_raw(&message_id, &payload).await;
    probe.publish_raw(&message_id, &payload).await;
    probe
        .publish_raw(
            &uuid::Uuid::now_v7().to_string(),
            &registered("marker").encode_to_vec(),
        )
        .await;

    probe.wait_applied("marker").await;
    assert_eq!(probe.times("twice").await, Some(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_handler_in_a_batch_undoes_only_its_own_writes() {
    let probe = Probe::new().await;
    // Declare the queue, then let a backlog build up while no one consumes,
    // so that the next consumer takes it in few large batches.
    let stop = probe.shutdown.child_token();
    let first = probe.spawn_consumer(stop.clone()).await;
    stop.cancel();
    first.await.unwrap();
    let duplicate = uuid::Uuid::now_v7().to_string();
    for i in 0..40 {
        let (message_id, customer_id) = match i {
            10 => (uuid::Uuid::now_v7().to_string(), "fail-in-batch".to_owned()),
            20 | 30 => (duplicate.clone(), "duplicate".to_owned()),
            _ => (uuid::Uuid::now_v7().to_string(), format!("batched-{i}")),
        };
        probe
            .publish_raw(&message_id, &registered(&customer_id).encode_to_vec())
            .await;
    }

    probe.start_consumer().await;
    for i in (0..40).filter(|i| ![10, 20, 30].contains(i)) {
        probe.wait_applied(&format!("batched-{i}")).await;
    }
    eventually("the failing one to be dead-lettered", WAIT, || async {
        (probe.dead_letters().await == 1).then_some(())
    })
    .await;
    for i in (0..40).filter(|i| ![10, 20, 30].contains(i)) {
        assert_eq!(probe.times(&format!("batched-{i}")).await, Some(1));
    }
    assert_eq!(probe.times("duplicate").await, Some(1));
    assert_eq!(probe.times("fail-in-batch").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_are_dead_lettered_while_good_ones_flow() {
    let probe = Probe::new().await;
    probe.start_consumer().await;
    probe
        .publish_raw(&uuid::Uuid::now_v7().to_string(), b"\xff\xff not protobuf")
        .await;
    probe
        .publish_raw("not-a-uuid", &registered("no-id").encode_to_vec())
        .await;
    probe
        .publish_raw(
            &uuid::Uuid::now_v7().to_string(),
            &registered("fail-always").encode_to_vec(),
        )
        .await;
    probe
        .publish_raw(
            &uuid::Uuid::now_v7().to_string(),
            &registered("good").encode_to_vec(),
        )
        .await;

    probe.wait_applied("good").await;
    // Undecodable and unidentifiable: at once. Always failing: after the
    // delivery limit (3) is spent.
    eventually("three dead letters", WAIT, || async {
        (probe.dead_letters().await == 3).then_some(())
    })
    .await;
    assert_eq!(probe.times("no-id").await, None);
    assert_eq!(probe.times("fail-always").await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_no_queue_wants_is_retried_without_holding_up_the_rest() {
    let probe = Probe::new().await;
    probe.start_consumer().await;
    probe.start_relay().await;
    let mut conn = probe.conn().await;
    // Nobody consumes customer.points_changed here: the broker returns it.
    let unwanted = dbps::customer::v1::LoyaltyPointsChanged {
        customer_id: "c".into(),
        ..Default::default()
    };
    probe
        .outbox
        .enqueue(&conn, &unwanted, &TraceContext::new_root())
        .await
        .unwrap();
    probe.enqueue(&mut conn, "behind-it").await;

    probe.wait_applied("behind-it").await;
    #[derive(QueryableByName)]
    struct Pending {
        #[diesel(sql_type = Integer)]
        attempts: i32,
    }
    // The relay marks what it published right after the broker confirmed it,
    // which may be after the consumer applied it.
    let attempts = eventually("only the unroutable event to be left", WAIT, || async {
        let mut conn = probe.pool.get().await.unwrap();
        let pending: Vec<Pending> =
            diesel::sql_query("SELECT attempts FROM outbox WHERE published_at IS NULL")
                .load(&mut conn)
                .await
                .unwrap();
        match pending.as_slice() {
            [only] => Some(only.attempts),
            _ => None,
        }
    })
    .await;
    assert!(attempts >= 1);

    // Once a queue wants it, the next retry publishes it, exactly once.
    let channel = probe.amqp.channel().await.unwrap();
    let queue = probe
        .bound_queue(
            &channel,
            "points",
            "customer.points_changed",
            FieldTable::default(),
        )
        .await;
    eventually(
        "the once unroutable event to be published",
        WAIT,
        || async { (probe.unpublished().await == 0).then_some(()) },
    )
    .await;
    let (ready, _) = topology::queue_depth(&channel, &queue).await.unwrap();
    assert_eq!(ready, 1, "published once");
}

#[tokio::test(flavor = "multi_thread")]
async fn replaying_the_event_log_rebuilds_what_the_handlers_built() {
    let probe = Probe::new().await;
    probe.start_consumer().await;
    probe.start_relay().await;
    let mut conn = probe.conn().await;
    for id in ["a", "b", "c"] {
        probe.enqueue(&mut conn, id).await;
    }
    probe.wait_applied("c").await;

    // A replay over what is already applied changes nothing.
    let stats = probe
        .consumer()
        .replay(
            &probe.amqp,
            probe.pool.clone(),
            &probe.consumer_config(),
            WAIT / 10,
        )
        .await
        .unwrap();
    assert_eq!((stats.applied, stats.duplicates), (0, 3));

    // Drop the state and the inbox: the replay builds the same state again.
    conn.batch_execute("TRUNCATE seen, inbox").await.unwrap();
    let stats = probe
        .consumer()
        .replay(
            &probe.amqp,
            probe.pool.clone(),
            &probe.consumer_config(),
            WAIT / 10,
        )
        .await
        .unwrap();
    assert_eq!((stats.applied, stats.duplicates, stats.failed), (3, 0, 0));
    for id in ["a", "b", "c"] {
        assert_eq!(probe.times(id).await, Some(1));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_relay_vacuums_the_dead_entries_its_marks_leave_behind() {
    #[derive(QueryableByName)]
    struct Vacuums {
        #[diesel(sql_type = BigInt)]
        vacuums: i64,
    }
    let probe = Probe::new().await;
    probe.start_consumer().await;
    let mut config = RelayConfig::new("customer", &probe.env.prefix, &probe.url, SCHEMA);
    config.vacuum_after_rows = 500;
    probe.start_relay_with(config).await;

    // A burst as one transaction: 600 events, each marked once published.
    let mut conn = probe.conn().await;
    probe.enqueue(&mut conn, "burst").await;
    conn.batch_execute(
        "INSERT INTO outbox (event_id, aggregate_type, aggregate_id, event_type, payload, headers)
         SELECT gen_random_uuid(), aggregate_type, aggregate_id, event_type, payload, headers
         FROM outbox, generate_series(1, 599)",
    )
    .await
    .unwrap();
    probe.outbox.committed();

    eventually("the relay to vacuum the outbox", WAIT, || async {
        let mut conn = probe.pool.get().await.unwrap();
        let stats: Vacuums = diesel::sql_query(
            "SELECT vacuum_count AS vacuums FROM pg_stat_user_tables
             WHERE schemaname = current_schema() AND relname = 'outbox'",
        )
        .get_result(&mut conn)
        .await
        .unwrap();
        (stats.vacuums >= 1 && probe.unpublished().await == 0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_where_the_relay_stands_by_wakes_the_leader_elsewhere() {
    let probe = Probe::new().await;
    probe.start_consumer().await;
    // The leader, as if in another process: it polls only once a minute.
    let mut config = RelayConfig::new("customer", &probe.env.prefix, &probe.url, SCHEMA);
    config.poll_interval = Duration::from_secs(60);
    probe.start_relay_with(config).await;
    let mut conn = probe.conn().await;
    probe.enqueue(&mut conn, "led").await;
    probe.wait_applied("led").await;

    // This process: a writer whose relay stands by, and its notifier.
    let here = Outbox::new("customer", SCHEMA);
    tokio::spawn(here.clone().run_notifier(
        probe.url.clone(),
        SCHEMA.into(),
        probe.shutdown.clone(),
    ));
    let (ready, is_ready) = tokio::sync::oneshot::channel();
    let config = RelayConfig::new("customer", &probe.env.prefix, &probe.url, SCHEMA);
    let standby = Relay::new(config, probe.amqp.clone()).woken_by(here.clone());
    tokio::spawn(standby.run(probe.shutdown.clone(), ready));
    is_ready.await.unwrap();

    here.enqueue(&conn, &registered("from-here"), &TraceContext::new_root())
        .await
        .unwrap();
    here.committed();
    // Well before the leader's next poll: only the NOTIFY can have woken it.
    probe.wait_applied("from-here").await;
}

/// A nack (here: a full queue refusing, as a quorum queue refuses while it
/// elects a leader) is published again within milliseconds, not after the
/// 1 s backoff meant for events no queue takes.
#[tokio::test(flavor = "multi_thread")]
async fn a_nacked_event_is_published_again_within_milliseconds() {
    let probe = Probe::new().await;
    let channel = probe.amqp.channel().await.unwrap();
    // A queue of one message that refuses more, bound to the event, full.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), lapin::types::AMQPValue::LongInt(1));
    args.insert(
        "x-overflow".into(),
        lapin::types::AMQPValue::LongString("reject-publish".into()),
    );
    let queue = probe
        .bound_queue(&channel, "tight", "customer.registered", args)
        .await;
    probe.publish_raw("filler", b"").await;

    probe.start_relay().await;
    let mut conn = probe.conn().await;
    probe.enqueue(&mut conn, "nacked").await;
    // Let the relay meet the full queue, then make room.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let filler = channel
        .basic_get(
            queue.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap();
    assert!(filler.is_some(), "the filler held the queue");
    let made_room = std::time::Instant::now();

    eventually("the nacked event to be published", WAIT, || async {
        (probe.unpublished().await == 0).then_some(())
    })
    .await;
    #[derive(QueryableByName)]
    struct Attempts {
        #[diesel(sql_type = Integer)]
        attempts: i32,
    }
    let row: Attempts = diesel::sql_query("SELECT attempts FROM outbox")
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.attempts, 0, "published without the refusal backoff");
    assert!(
        made_room.elapsed() < Duration::from_millis(900),
        "published {:?} after the queue had room",
        made_room.elapsed()
    );
}

/// With a window far smaller than the backlog, every row is published exactly
/// once and in id order: a row in flight is never read again, and reading
/// goes on while earlier confirms are pending.
#[tokio::test(flavor = "multi_thread")]
async fn a_small_window_publishes_every_row_once_and_in_order() {
    use futures_util::StreamExt;

    let probe = Probe::new().await;
    let channel = probe.amqp.channel().await.unwrap();
    let queue = probe
        .bound_queue(
            &channel,
            "window",
            "customer.registered",
            FieldTable::default(),
        )
        .await;
    let mut deliveries = channel
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();

    // A backlog before the relay starts, and more rows while it publishes.
    let ids: Vec<String> = (0..600).map(|i| format!("w-{i:04}")).collect();
    let mut conn = probe.conn().await;
    for id in &ids[..300] {
        probe.enqueue(&mut conn, id).await;
    }
    let mut config = RelayConfig::new("customer", &probe.env.prefix, &probe.url, SCHEMA);
    config.window = 16;
    config.batch_size = 7;
    probe.start_relay_with(config).await;
    for id in &ids[300..] {
        probe.enqueue(&mut conn, id).await;
    }

    let mut seen = Vec::with_capacity(ids.len());
    while seen.len() < ids.len() {
        let delivery = tokio::time::timeout(WAIT, deliveries.next())
            .await
            .expect("every row to be published")
            .unwrap()
            .unwrap();
        seen.push(
            CustomerRegistered::decode(&*delivery.data)
                .unwrap()
                .customer_id,
        );
    }
    assert_eq!(seen, ids, "published out of order");
    let more = tokio::time::timeout(Duration::from_millis(500), deliveries.next()).await;
    assert!(more.is_err(), "a row was published twice");
    eventually("every row to be marked", WAIT, || async {
        (probe.unpublished().await == 0).then_some(())
    })
    .await;
}
