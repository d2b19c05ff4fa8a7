//! P1: `PlaceOrder` throughput over gRPC with 1, 8 and 32 clients, each
//! calling in a loop, against the same rows (order, lines, outbox) inserted
//! by a plain pooled diesel-async client with no gRPC, no validation and no
//! replica reads. Only the order service (and its relay) runs meanwhile, as
//! only the database runs for the baseline. Then the whole system at 32
//! clients: do the consumers keep up? And, on the same stack, P6.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dbps::order::v1::{OrderCreated, OrderLine, order_service_client::OrderServiceClient};
use diesel::{
    ExpressionMethods,
    pg::Pg,
    query_builder::{AstPass, QueryFragment, QueryId},
    sql_types::Int8,
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::{FutureExt, future::BoxFuture};
use prost::Message;

use crate::{
    Options, Results, pgbench, report, resources,
    setup::{self, Lcg, World},
};

const LEVELS: [usize; 3] = [1, 8, 32];

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let (mut stack, world) = setup::start(options, "throughput", &[]).await?;
    let idle = resources::max_rss_mb(&stack);
    let startup = resources::start_to_serving(&mut stack).await?;
    let duration = options.pick(Duration::from_secs(10), Duration::from_secs(3));

    let url = stack.admin_url();
    raw_schema(&url).await?;
    let pool = platform::db::pool(&url, "bench_raw", 32).await?;
    let client = OrderServiceClient::new(stack.channel("order")?);
    // The baseline is the database alone: leave the order service alone too.
    for service in ["customer", "inventory", "reporting"] {
        stack.kill(service).await?;
    }
    println!(
        "\nP1 PlaceOrder throughput ({} s per level; order service only)",
        duration.as_secs()
    );
    let script = pgbench::script(&options.out, &world)?;
    for clients in LEVELS {
        let raw = raw_rate(&pool, &world, clients, duration).await?;
        let anchor = pgbench::tps(&url, &script, clients, duration).await?;
        let served = grpc_rate(&client, &world, clients, duration).await?;
        let ratio = report(
            &format!("P1 {clients:>2} clients, orders/s"),
            served,
            raw,
            "orders/s",
        );
        results.insert(format!("p1_orders_per_s_{clients}"), round(served).into());
        results.insert(format!("p1_raw_orders_per_s_{clients}"), round(raw).into());
        results.insert(format!("p1_ratio_{clients}"), round2(ratio).into());
        if let Some(anchor) = anchor {
            let of_pgbench = if anchor > 0.0 { raw / anchor } else { 0.0 };
            println!(
                "P1 {clients:>2} clients, raw client vs pgbench     {raw:>10.1} orders/s  pgbench {anchor:>6.1} tx/s     ratio {of_pgbench:>5.2}"
            );
            results.insert(format!("p1_pgbench_per_s_{clients}"), round(anchor).into());
            results.insert(
                format!("p1_raw_pgbench_ratio_{clients}"),
                round2(of_pgbench).into(),
            );
        }
    }

    // The whole system at 32 clients, and its memory meanwhile. The events
    // of the order-only runs are dropped rather than drained: applying tens
    // of thousands of them would take minutes and measure nothing new.
    purge(&stack, "order").await?;
    for service in ["customer", "inventory", "reporting"] {
        stack.spawn(service, service, &[], &[])?;
        stack.wait_serving(service).await?;
    }
    drain(&stack).await?;
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let sampling = sampling.clone();
        let pids: Vec<u32> = testkit::stack::SERVICES
            .iter()
            .filter_map(|s| stack.pid(s))
            .collect();
        tokio::spawn(async move {
            let mut peak: f64 = 0.0;
            while AtomicBool::load(&sampling, Ordering::Relaxed) {
                peak = pids
                    .iter()
                    .filter_map(|pid| resources::rss_mb(*pid))
                    .fold(peak, f64::max);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    };
    let served = grpc_rate(&client, &world, 32, duration).await?;
    let unpublished = unpublished(&stack).await?;
    let backlogs = queued(&stack).await?;
    let backlog: u64 = backlogs.iter().sum();
    let drained = drain(&stack).await?;
    sampling.store(false, Ordering::Relaxed);
    let peak_rss = sampler.await?;
    println!(
        "P1 whole system, 32 clients: {served:>8.1} orders/s; events queued at the end {backlog}, drained {:.0} ms later",
        drained.as_secs_f64() * 1e3
    );
    let behind: Vec<String> = QUEUES
        .iter()
        .zip(&backlogs)
        .filter(|(_, n)| **n > 0)
        .map(|((consumer, source), n)| format!("{consumer} ← {source}: {n}"))
        .collect();
    if !behind.is_empty() {
        println!("   queued at the end: {}", behind.join(", "));
    }
    let waiting: Vec<String> = unpublished
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(schema, n)| format!("{schema}: {n}"))
        .collect();
    if !waiting.is_empty() {
        println!(
            "   outboxes not yet published at the end: {}",
            waiting.join(", ")
        );
    }
    results.insert("p1_system_orders_per_s_32".into(), round(served).into());
    results.insert("p1_system_queued_at_end".into(), backlog.into());
    results.insert(
        "p1_system_drain_ms".into(),
        round(drained.as_secs_f64() * 1e3).into(),
    );

    println!("\nP6 resources");
    println!("P6 RSS idle (largest service)              {idle:>10.1} MiB      target < 30");
    println!("P6 RSS under P1 load (largest service)     {peak_rss:>10.1} MiB      target < 100");
    println!(
        "P6 start → SERVING (slowest service)       {:>10.0} ms       target < 1000",
        startup.as_secs_f64() * 1e3
    );
    results.insert("p6_rss_idle_mb".into(), round(idle).into());
    results.insert("p6_rss_load_mb".into(), round(peak_rss).into());
    results.insert(
        "p6_start_to_serving_ms".into(),
        round(startup.as_secs_f64() * 1e3).into(),
    );
    stack.teardown().await
}

/// The consumers' queues, as (consumer, source).
const QUEUES: [(&str, &str); 7] = [
    ("customer", "order"),
    ("inventory", "order"),
    ("order", "inventory"),
    ("order", "customer"),
    ("reporting", "order"),
    ("reporting", "inventory"),
    ("reporting", "customer"),
];

/// Events waiting in each consumer queue (ready, not yet delivered), in the
/// order of [`QUEUES`].
pub async fn queued(stack: &testkit::stack::Stack) -> anyhow::Result<Vec<u64>> {
    let channel = stack.amqp.channel().await?;
    let mut counts = Vec::with_capacity(QUEUES.len());
    for (consumer, source) in QUEUES {
        let queue = broker::topology::queue(&stack.prefix, consumer, source);
        let options = lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declared = channel
            .queue_declare(queue.into(), options, Default::default())
            .await?;
        counts.push(u64::from(declared.message_count()));
    }
    let _ = channel.close(200, "counted".into()).await;
    Ok(counts)
}

/// Empties every consumer queue of `source`'s events.
async fn purge(stack: &testkit::stack::Stack, source: &str) -> anyhow::Result<()> {
    let channel = stack.amqp.channel().await?;
    for (consumer, _) in QUEUES.iter().filter(|(_, s)| *s == source) {
        let queue = broker::topology::queue(&stack.prefix, consumer, source);
        channel
            .queue_purge(queue.into(), lapin::options::QueuePurgeOptions::default())
            .await?;
    }
    let _ = channel.close(200, "purged".into()).await;
    Ok(())
}

/// Events each producing service has written but not yet published.
async fn unpublished(stack: &testkit::stack::Stack) -> anyhow::Result<Vec<(&'static str, i64)>> {
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = Int8)]
        n: i64,
    }
    let mut conn = setup::admin(stack).await?;
    let mut counts = Vec::new();
    for schema in ["orders", "customers", "inventory"] {
        let count: Count = diesel::sql_query(format!(
            "SELECT count(*) AS n FROM {schema}.outbox WHERE published_at IS NULL"
        ))
        .get_result(&mut conn)
        .await?;
        counts.push((schema, count.n));
    }
    Ok(counts)
}

/// Waits until every outbox is published and every consumer queue is empty;
/// how long that took.
pub async fn drain(stack: &testkit::stack::Stack) -> anyhow::Result<Duration> {
    let started = Instant::now();
    loop {
        let queued: u64 = queued(stack).await?.iter().sum();
        let unpublished: i64 = unpublished(stack).await?.iter().map(|(_, n)| n).sum();
        if queued == 0 && unpublished == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(300),
            "the consumers did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(started.elapsed())
}

pub fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `clients` loops of PlaceOrder for `duration`: orders per second.
async fn grpc_rate(
    client: &OrderServiceClient<tonic::transport::Channel>,
    world: &World,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let placed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for seed in 0..clients {
        let (mut client, world, placed) = (client.clone(), world.clone(), placed.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(seed as u64 + 1);
            while Instant::now() < deadline {
                client.place_order(setup::order(&world, &mut rng)).await?;
                placed.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok(AtomicU64::load(&placed, Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// The order service's tables, empty, in a schema of the baseline's own (so
/// no relay publishes its rows).
async fn raw_schema(url: &str) -> anyhow::Result<()> {
    let mut conn = diesel_async::AsyncPgConnection::establish(url).await?;
    conn.batch_execute(
        "DROP SCHEMA IF EXISTS bench_raw CASCADE;
         CREATE SCHEMA bench_raw;
         CREATE TABLE bench_raw.orders (LIKE orders.orders INCLUDING ALL);
         CREATE TABLE bench_raw.order_lines (LIKE orders.order_lines INCLUDING ALL);
         CREATE TABLE bench_raw.outbox (LIKE orders.outbox INCLUDING ALL);",
    )
    .await?;
    Ok(())
}

/// A statement of fixed text with a static query ID, so that the connection
/// prepares it once and can pipeline it with the statements around it
/// (`diesel::sql_query` is prepared anew on every call, a round trip of its
/// own).
#[derive(Clone, Copy, Debug, QueryId)]
struct Begin;

#[derive(Clone, Copy, Debug, QueryId)]
struct Commit;

impl QueryFragment<Pg> for Begin {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("BEGIN");
        Ok(())
    }
}

impl QueryFragment<Pg> for Commit {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("COMMIT");
        Ok(())
    }
}

/// The baseline's copies of the order service's tables.
mod raw {
    diesel::table! {
        bench_raw.orders (order_id) {
            order_id -> Uuid,
            customer_id -> Uuid,
            status -> Text,
            total_cents -> Int8,
        }
    }

    diesel::table! {
        bench_raw.order_lines (order_id, line_no) {
            order_id -> Uuid,
            line_no -> Int4,
            sku -> Text,
            quantity -> Int4,
            unit_price_cents -> Int8,
        }
    }

    diesel::table! {
        bench_raw.outbox (id) {
            id -> Int8,
            event_id -> Uuid,
            aggregate_type -> Text,
            aggregate_id -> Text,
            event_type -> Text,
            payload -> Bytea,
            headers -> Jsonb,
        }
    }
}

/// The rows of one order as the raw client writes them.
pub struct RawOrder {
    pub order_id: uuid::Uuid,
    pub customer_id: uuid::Uuid,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub event_id: uuid::Uuid,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
}

impl RawOrder {
    /// The rows PlaceOrder writes for `request`: the order, its lines (at a
    /// fixed price) and its `order.created` event with CloudEvents headers.
    pub fn new(request: &dbps::order::v1::PlaceOrderRequest) -> anyhow::Result<Self> {
        let order_id = uuid::Uuid::now_v7();
        let event_id = uuid::Uuid::now_v7();
        let lines: Vec<OrderLine> = request
            .lines
            .iter()
            .map(|l| OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price_cents: 100,
            })
            .collect();
        let total_cents: i64 = lines
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum();
        let payload = OrderCreated {
            order_id: order_id.to_string(),
            customer_id: request.customer_id.clone(),
            lines: lines.clone(),
            total_cents,
            created_at: None,
        }
        .encode_to_vec();
        let headers = serde_json::json!({
            "ce-specversion": "1.0",
            "ce-id": event_id.to_string(),
            "ce-source": "/services/order",
            "ce-type": "order.v1.OrderCreated",
            "ce-time": "2026-01-01T00:00:00.000000Z",
            "ce-subject": order_id.to_string(),
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        });
        Ok(RawOrder {
            order_id,
            customer_id: uuid::Uuid::try_parse(&request.customer_id)?,
            lines,
            total_cents,
            event_id,
            payload,
            headers,
        })
    }

    /// Writes the rows in one transaction, in one round trip: BEGIN, the
    /// order, all lines in one multi-row INSERT, the outbox row and COMMIT
    /// go out pipelined. Every statement's answer is checked; after a failed
    /// one the server rolls the transaction back at COMMIT.
    async fn insert(&self, conn: &AsyncPgConnection) -> anyhow::Result<()> {
        use raw::{order_lines, orders, outbox};
        let line = |no: i32, l: &'_ OrderLine| {
            (
                order_lines::order_id.eq(self.order_id),
                order_lines::line_no.eq(no),
                order_lines::sku.eq(l.sku.clone()),
                order_lines::quantity.eq(l.quantity),
                order_lines::unit_price_cents.eq(l.unit_price_cents),
            )
        };
        let mut rows = (0..).zip(&self.lines).map(|(no, l)| line(no, l));
        // Arrays, not slices: a fixed row count keeps the statement cached.
        let lines: BoxFuture<'_, diesel::QueryResult<usize>> =
            match (rows.next(), rows.next(), rows.next()) {
                (Some(a), None, None) => diesel::insert_into(order_lines::table)
                    .values([a])
                    .execute(&mut &*conn),
                (Some(a), Some(b), None) => diesel::insert_into(order_lines::table)
                    .values([a, b])
                    .execute(&mut &*conn),
                _ => async { Err(diesel::result::Error::NotFound) }.boxed(),
            };
        futures_util::try_join!(
            Begin.execute(&mut &*conn),
            diesel::insert_into(orders::table)
                .values((
                    orders::order_id.eq(self.order_id),
                    orders::customer_id.eq(self.customer_id),
                    orders::status.eq("PENDING"),
                    orders::total_cents.eq(self.total_cents),
                ))
                .execute(&mut &*conn),
            lines,
            diesel::insert_into(outbox::table)
                .values((
                    outbox::event_id.eq(self.event_id),
                    outbox::aggregate_type.eq("order"),
                    outbox::aggregate_id.eq(self.order_id.to_string()),
                    outbox::event_type.eq("order.created"),
                    outbox::payload.eq(&self.payload),
                    outbox::headers.eq(&self.headers),
                ))
                .execute(&mut &*conn),
            Commit.execute(&mut &*conn),
        )?;
        Ok(())
    }
}

/// The same rows PlaceOrder writes, one transaction per order, by `clients`
/// loops over a pool, each the fastest a client can write them: orders per
/// second.
async fn raw_rate(
    pool: &broker::pg::PgPool,
    world: &World,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let inserted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for seed in 0..clients {
        let (pool, world, inserted) = (pool.clone(), world.clone(), inserted.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Lcg(seed as u64 + 1);
            let conn = pool.get().await?;
            while Instant::now() < deadline {
                let order = RawOrder::new(&setup::order(&world, &mut rng))?;
                order.insert(&conn).await?;
                inserted.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok(AtomicU64::load(&inserted, Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
