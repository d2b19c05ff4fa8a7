//! Batch handlers: a batch's new deliveries reach their handlers as runs of
//! one event type, in delivery order, and a failing run is applied again
//! delivery by delivery so that only the failing delivery is held back.
//!
//! The probe's handlers append each run's events to `applied` with one
//! statement and the run's size to `runs`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use broker::{
    Amqp, Consumer, ConsumerConfig, HandlerError, Received, consumer::HandlerFuture, dlq,
    pg::PgPool, topology,
};
use dbps::customer::v1::{CustomerRegistered, LoyaltyPointsChanged};
use diesel::{
    QueryableByName,
    sql_types::{Array, Integer, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use testkit::{TestEnv, eventually};
use tokio_util::sync::CancellationToken;

const NAME: &str = "runs";
const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    env: TestEnv,
    pool: PgPool,
    amqp: Amqp,
    shutdown: CancellationToken,
}

impl Fixture {
    async fn new() -> Fixture {
        let env = TestEnv::new().await;
        env.track_consumer(NAME);
        let url = env.admin_url_of(&env.database);
        let mut admin = testkit::admin_connection(&env.database).await;
        admin
            .batch_execute(
                "CREATE SCHEMA runs;
                 CREATE TABLE runs.applied (seq bigserial PRIMARY KEY, kind text NOT NULL, id text NOT NULL);
                 CREATE TABLE runs.runs (size int NOT NULL);",
            )
            .await
            .unwrap();
        platform::db::migrate(&url, NAME, vec![&broker::pg::MIGRATIONS])
            .await
            .unwrap();
        let pool = platform::db::pool(&url, NAME, 4).await.unwrap();
        Fixture {
            amqp: Amqp::new(testkit::amqp_url(), NAME),
            shutdown: CancellationToken::new(),
            env,
            pool,
        }
    }

    /// Starts the consumer; returns once its queue is consumed, with the
    /// task to await for its end after `stop`.
    async fn start(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let mut config = ConsumerConfig::new(&self.env.prefix);
        config.delivery_limit = 3;
        config.max_retry_delay = Duration::from_millis(200);
        let (ready, is_ready) = tokio::sync::oneshot::channel();
        let task =
            tokio::spawn(consumer().run(self.amqp.clone(), self.pool.clone(), config, stop, ready));
        is_ready.await.unwrap();
        task
    }

    /// Declares the queue, then stops consuming, so that what is published
    /// next piles up and the next consumer takes it in large batches.
    async fn declare_and_pause(&self) {
        let stop = self.shutdown.child_token();
        let task = self.start(stop.clone()).await;
        stop.cancel();
        task.await.unwrap();
    }

    /// Every applied event as (kind, id), in the order applied.
    async fn applied(&self) -> Vec<(String, String)> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            kind: String,
            #[diesel(sql_type = Text)]
            id: String,
        }
        let mut conn = self.pool.get().await.unwrap();
        let rows: Vec<Row> = diesel::sql_query("SELECT kind, id FROM applied ORDER BY seq")
            .load(&mut conn)
            .await
            .unwrap();
        rows.into_iter().map(|row| (row.kind, row.id)).collect()
    }

    async fn largest_run(&self) -> i32 {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Integer)]
            size: i32,
        }
        let mut conn = self.pool.get().await.unwrap();
        diesel::sql_query("SELECT coalesce(max(size), 0) AS size FROM runs")
            .get_result::<Row>(&mut conn)
            .await
            .unwrap()
            .size
    }

    async fn dead_letters(&self) -> u32 {
        let queue = topology::dead_letter_queue(&self.env.prefix, NAME);
        dlq::message_count(&self.amqp, &queue)
            .await
            .unwrap()
            .expect("the DLQ is declared")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn consumer() -> Consumer {
    Consumer::new(NAME)
        .on_batch::<CustomerRegistered, _>(|conn, run: Vec<Received<CustomerRegistered>>| {
            let ids = run.into_iter().map(|r| r.event.customer_id).collect();
            record_run(conn, "registered", ids)
        })
        .on_batch::<LoyaltyPointsChanged, _>(|conn, run: Vec<Received<LoyaltyPointsChanged>>| {
            let ids = run.into_iter().map(|r| r.event.customer_id).collect();
            record_run(conn, "points", ids)
        })
}

/// Appends the run with one statement; then fails the whole run if any of
/// its events has a `fail-*` ID.
fn record_run<'c>(
    conn: &'c mut AsyncPgConnection,
    kind: &'static str,
    ids: Vec<String>,
) -> HandlerFuture<'c> {
    Box::pin(async move {
        diesel::sql_query(
            "INSERT INTO applied (kind, id)
             SELECT $1, id FROM unnest($2::text[]) WITH ORDINALITY AS t(id, n) ORDER BY n",
        )
        .bind::<Text, _>(kind)
        .bind::<Array<Text>, _>(&ids)
        .execute(conn)
        .await?;
        diesel::sql_query("INSERT INTO runs (size) VALUES ($1)")
            .bind::<Integer, _>(i32::try_from(ids.len()).unwrap())
            .execute(conn)
            .await?;
        if ids.iter().any(|id| id.starts_with("fail-")) {
            return Err(HandlerError::Database(diesel::result::Error::NotFound));
        }
        Ok(())
    })
}

fn registered(id: &str) -> CustomerRegistered {
    CustomerRegistered {
        customer_id: id.into(),
        ..Default::default()
    }
}

fn points(id: &str) -> LoyaltyPointsChanged {
    LoyaltyPointsChanged {
        customer_id: id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn runs_of_one_type_are_applied_together_in_delivery_order() {
    let fx = Fixture::new().await;
    fx.declare_and_pause().await;
    let mut expected = Vec::new();
    for i in 0..30 {
        // Runs of 1 to 4 events, types alternating.
        let kind = if (i / 3 + i / 7) % 2 == 0 {
            "registered"
        } else {
            "points"
        };
        let id = format!("e-{i}");
        if kind == "registered" {
            fx.env.publish(&registered(&id)).await;
        } else {
            fx.env.publish(&points(&id)).await;
        }
        expected.push((kind.to_owned(), id));
    }
    fx.start(fx.shutdown.clone()).await;
    eventually("every event to be applied", WAIT, || async {
        (fx.applied().await.len() >= expected.len()).then_some(())
    })
    .await;
    assert_eq!(fx.applied().await, expected);
    assert!(
        fx.largest_run().await > 1,
        "adjacent events of one type went to the handler together"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_delivery_in_a_run_is_held_back_alone() {
    let fx = Fixture::new().await;
    fx.declare_and_pause().await;
    let ids: Vec<String> = (0..20)
        .map(|i| {
            if i == 7 {
                "fail-7".to_owned()
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    for id in &ids {
        fx.env.publish(&registered(id)).await;
    }
    fx.start(fx.shutdown.clone()).await;
    eventually("the failing one to be dead-lettered", WAIT, || async {
        (fx.dead_letters().await == 1).then_some(())
    })
    .await;
    let applied: Vec<String> = fx.applied().await.into_iter().map(|(_, id)| id).collect();
    let good: Vec<String> = ids.into_iter().filter(|id| id != "fail-7").collect();
    // Each good one once, in delivery order; the failing run's writes and
    // the failing delivery's were rolled back.
    assert_eq!(applied, good);
}
