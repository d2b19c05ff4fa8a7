//! P3: how long an `order.created` takes from the order service's commit to
//! the customer service's points, at a steady open-loop rate, with NOTIFY and
//! with a 1 s poll instead; P5: `PlaceOrder` → APPROVED as a `WatchOrder`
//! client sees it.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use dbps::order::v1::{OrderStatus, WatchOrderRequest, order_service_client::OrderServiceClient};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Double},
};
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use testkit::stack::Stack;
use tokio::sync::Semaphore;

use crate::{
    Options, Results,
    setup::{self, Lcg, World},
    throughput::{self, round},
};

/// Below this rate the whole system keeps up on the reference machine, so the
/// propagation latency shows the pipeline rather than a queue.
const STEADY_RATE: u32 = 100;

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let (mut stack, world) = setup::start(options, "latency", &[]).await?;
    p5(options, &stack, &world, results).await?;

    let rate = options.p3_rate;
    let duration = options.pick(Duration::from_secs(60), Duration::from_secs(10));
    println!(
        "\nP3 order.created commit → points applied, open loop, target p50 ≤ 5 ms, p99 ≤ 25 ms"
    );
    let lags = propagation(&stack, &world, rate, duration).await?;
    lags.print(&format!("{rate}/s with NOTIFY"));
    results.insert("p3_p50_ms".into(), round(lags.p50()).into());
    results.insert("p3_p99_ms".into(), round(lags.p99()).into());
    results.insert("p3_max_ms".into(), round(lags.max()).into());
    results.insert("p3_relay_p50_ms".into(), round(lags.relay_p50()).into());
    results.insert("p3_orders".into(), lags.sent.into());
    results.insert(
        "p3_place_order_p99_ms".into(),
        round(lags.place_order_p99).into(),
    );

    // Below saturation: what the pipeline itself costs.
    throughput::drain(&stack).await?;
    let steady = options.pick(Duration::from_secs(20), Duration::from_secs(10));
    let lags = propagation(&stack, &world, STEADY_RATE, steady).await?;
    lags.print(&format!("{STEADY_RATE}/s with NOTIFY"));
    results.insert("p3_steady_p50_ms".into(), round(lags.p50()).into());
    results.insert("p3_steady_p99_ms".into(), round(lags.p99()).into());

    // The same, with the relay finding events by a 1 s poll only.
    stack.kill("order").await?;
    stack.spawn(
        "order",
        "order",
        &[],
        &[("OUTBOX_NOTIFY", "false"), ("RELAY_POLL_INTERVAL", "1s")],
    )?;
    stack.wait_serving("order").await?;
    let slow = options.pick(Duration::from_secs(15), Duration::from_secs(5));
    let lags = propagation(&stack, &world, STEADY_RATE, slow).await?;
    lags.print(&format!("{STEADY_RATE}/s, 1 s poll only"));
    results.insert("p3_poll_p50_ms".into(), round(lags.p50()).into());
    results.insert("p3_poll_p99_ms".into(), round(lags.p99()).into());
    stack.teardown().await
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e3
}

#[derive(QueryableByName)]
struct Lag {
    #[diesel(sql_type = Double)]
    micros: f64,
    /// Commit → the relay marked it published (after the broker's confirm).
    #[diesel(sql_type = Double)]
    relay_micros: f64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Propagation lags of one P3 run.
struct Lags {
    /// Commit → points applied.
    total: Histogram<u64>,
    /// Commit → marked published, the relay's share.
    relay: Histogram<u64>,
    /// Orders placed.
    sent: u64,
    /// The PlaceOrder calls' own p99, from their scheduled start.
    place_order_p99: f64,
}

impl Lags {
    fn p50(&self) -> f64 {
        ms(&self.total, 0.5)
    }

    fn p99(&self) -> f64 {
        ms(&self.total, 0.99)
    }

    fn max(&self) -> f64 {
        self.total.max() as f64 / 1e3
    }

    fn relay_p50(&self) -> f64 {
        ms(&self.relay, 0.5)
    }

    fn print(&self, label: &str) {
        println!(
            "P3 {label:<24} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.1} ms  (commit → published p50 {:.2} ms; {} orders, PlaceOrder p99 {:.1} ms)",
            self.p50(),
            self.p99(),
            self.max(),
            self.relay_p50(),
            self.sent,
            self.place_order_p99,
        );
    }
}

/// Places orders at `rate` per second for `duration`, each at its scheduled
/// time whether or not earlier ones have answered (open loop, so a slow
/// moment cannot hide itself), waits until every credit is applied, and reads
/// each event's lag from the databases' own clocks: the outbox row written in
/// the order's transaction → the inbox row written in the credit's.
async fn propagation(
    stack: &Stack,
    world: &World,
    rate: u32,
    duration: Duration,
) -> anyhow::Result<Lags> {
    let client = OrderServiceClient::new(stack.channel("order")?);
    let mut conn = setup::admin(stack).await?;
    let before: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM customers.inbox WHERE event_type = 'order.created'",
    )
    .get_result(&mut conn)
    .await?;
    let since = chrono_now(&mut conn).await?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let started = Instant::now();
    let mut rng = Lcg(42);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (mut client, request) = (client.clone(), setup::order(world, &mut rng));
        tasks.push(tokio::spawn(async move {
            let placed = client.place_order(request).await;
            (placed.is_ok(), scheduled.elapsed())
        }));
    }
    let mut client_latency = Histogram::<u64>::new(3)?;
    let mut placed = 0;
    for task in tasks {
        let (ok, took) = task.await?;
        client_latency.record(took.as_micros() as u64)?;
        placed += u64::from(ok);
    }
    if placed < total {
        println!(
            "P3 {} of {total} PlaceOrder calls failed (overload)",
            total - placed
        );
    }
    let total = placed;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let applied: Count = diesel::sql_query(
            "SELECT count(*) AS n FROM customers.inbox WHERE event_type = 'order.created'",
        )
        .get_result(&mut conn)
        .await?;
        // The relay marks a row after the broker's confirm, which may come
        // after the consumer's commit: wait for the marks too.
        let unmarked: Count =
            diesel::sql_query("SELECT count(*) AS n FROM orders.outbox WHERE published_at IS NULL")
                .get_result(&mut conn)
                .await?;
        if (applied.n - before.n) as u64 >= total && unmarked.n == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "credits or marks still missing after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<Lag> = diesel::sql_query(
        "SELECT (extract(epoch FROM i.applied_at - o.created_at) * 1e6)::float8 AS micros,
                (extract(epoch FROM o.published_at - o.created_at) * 1e6)::float8 AS relay_micros
         FROM orders.outbox o JOIN customers.inbox i ON i.message_id = o.event_id
         WHERE o.event_type = 'order.created' AND o.created_at >= $1::timestamptz",
    )
    .bind::<diesel::sql_types::Text, _>(since)
    .load(&mut conn)
    .await?;
    let mut lags = Lags {
        total: Histogram::<u64>::new(3)?,
        relay: Histogram::<u64>::new(3)?,
        sent: total,
        place_order_p99: client_latency.value_at_quantile(0.99) as f64 / 1e3,
    };
    for lag in rows {
        lags.total.record(lag.micros.max(1.0) as u64)?;
        lags.relay.record(lag.relay_micros.max(1.0) as u64)?;
    }
    Ok(lags)
}

async fn chrono_now(conn: &mut diesel_async::AsyncPgConnection) -> anyhow::Result<String> {
    #[derive(QueryableByName)]
    struct Now {
        #[diesel(sql_type = diesel::sql_types::Text)]
        now: String,
    }
    let now: Now = diesel::sql_query("SELECT clock_timestamp()::text AS now")
        .get_result(conn)
        .await?;
    Ok(now.now)
}

/// P5: from sending PlaceOrder to receiving APPROVED on a WatchOrder stream
/// opened right after it returned.
async fn p5(
    options: &Options,
    stack: &Stack,
    world: &World,
    results: &mut Results,
) -> anyhow::Result<()> {
    let orders = if options.quick { 100 } else { 500 };
    let client = OrderServiceClient::new(stack.channel("order")?);
    let limit = Arc::new(Semaphore::new(8));
    let mut tasks = Vec::new();
    let mut rng = Lcg(5);
    for _ in 0..orders {
        let permit = limit.clone().acquire_owned().await?;
        let (mut client, request) = (client.clone(), setup::order(world, &mut rng));
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            let started = Instant::now();
            let order_id = client.place_order(request).await?.into_inner().order_id;
            let mut stream = client
                .watch_order(WatchOrderRequest { order_id })
                .await?
                .into_inner();
            while let Some(order) = stream.next().await {
                if order?.status() == OrderStatus::Approved {
                    return anyhow::Ok(started.elapsed());
                }
            }
            anyhow::bail!("the stream ended before APPROVED")
        }));
    }
    let mut histogram = Histogram::<u64>::new(3)?;
    for task in tasks {
        histogram.record(task.await??.as_micros() as u64)?;
    }
    let (p50, p99) = (ms(&histogram, 0.5), ms(&histogram, 0.99));
    println!(
        "\nP5 PlaceOrder → APPROVED seen by WatchOrder: p50 {p50:>7.2} ms  p99 {p99:>7.2} ms   ({orders} orders)   target p50 ≤ 15"
    );
    results.insert("p5_p50_ms".into(), round(p50).into());
    results.insert("p5_p99_ms".into(), round(p99).into());
    Ok(())
}
