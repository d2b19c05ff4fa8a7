//! P3: how long an `order.created` takes from the order's commit to the
//! customer service's points; P5: from the order's commit to APPROVED as a
//! `WatchOrder` client sees it. Both run on the same orders, placed at a
//! steady open-loop rate: half of P7's capacity when P7 ran in this run (else
//! `--p3-rate`), then 100/s, then 100/s again with the relay on a 1 s poll
//! instead of NOTIFY (P3 only). The clock starts when the client receives
//! the PlaceOrder answer, which is after the commit, so neither figure
//! includes the call itself; P3 ends when the customer service's inbox row is
//! written (its `applied_at`), P5 when the stream delivers APPROVED.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use dbps::order::v1::{OrderStatus, WatchOrderRequest, order_service_client::OrderServiceClient};
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Double, Text},
};
use diesel_async::RunQueryDsl;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::Value;
use testkit::{
    stack::Stack,
    workload::{Orders, World},
};

use crate::{
    Options, Results, floor, setup,
    throughput::{self, round, round2},
};

/// Below this rate the whole system keeps up on the reference machine, so the
/// latencies show the pipeline rather than a queue.
const STEADY_RATE: u32 = 100;

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    if !results.contains_key("hop_floor_ms") {
        floor::run(options, results).await?;
    }
    let hop_floor = results.get("hop_floor_ms").and_then(Value::as_f64);
    let (mut stack, world) = setup::start(options, "latency", &[]).await?;

    let (rate, why) = match results.get("p7_orders_per_s").and_then(Value::as_f64) {
        Some(capacity) if capacity >= 2.0 => ((capacity / 2.0).round() as u32, "half of P7"),
        _ => (options.p3_rate, "--p3-rate; P7 not measured"),
    };
    results.insert("p3_rate".into(), rate.into());
    let duration = options.pick(Duration::from_secs(30), Duration::from_secs(8));
    println!(
        "\nP3 commit → points applied, P5 commit → APPROVED seen by WatchOrder: open loop, clock from the PlaceOrder answer{}",
        hop_floor
            .map(|f| format!("; hop floor {f:.2} ms"))
            .unwrap_or_default()
    );
    let lags = propagation(&stack, &world, rate, duration, true).await?;
    lags.print(&format!("{rate}/s ({why})"), hop_floor);
    results.insert("p3_p50_ms".into(), round(lags.p50()).into());
    results.insert("p3_p99_ms".into(), round(lags.p99()).into());
    results.insert("p3_max_ms".into(), round(lags.max()).into());
    results.insert("p3_relay_p50_ms".into(), round(lags.relay_p50()).into());
    results.insert("p3_orders".into(), lags.sent.into());
    results.insert(
        "p3_place_order_p99_ms".into(),
        round(lags.place_order_p99).into(),
    );
    if let Some(p5) = &lags.approved {
        results.insert("p5_p50_ms".into(), round(ms(p5, 0.5)).into());
        results.insert("p5_p99_ms".into(), round(ms(p5, 0.99)).into());
    }
    if let Some(hop_floor) = hop_floor.filter(|f| *f > 0.0) {
        results.insert(
            "p3_p50_floor_ratio".into(),
            round2(lags.p50() / hop_floor).into(),
        );
        results.insert(
            "p3_p99_floor_ratio".into(),
            round2(lags.p99() / hop_floor).into(),
        );
        if let Some(p5) = &lags.approved {
            results.insert(
                "p5_p50_floor_ratio".into(),
                round2(ms(p5, 0.5) / hop_floor).into(),
            );
        }
    }

    // Well below saturation: what the pipeline itself costs.
    throughput::drain(&stack).await?;
    let steady = options.pick(Duration::from_secs(20), Duration::from_secs(6));
    let lags = propagation(&stack, &world, STEADY_RATE, steady, true).await?;
    lags.print(&format!("{STEADY_RATE}/s"), hop_floor);
    results.insert("p3_steady_p50_ms".into(), round(lags.p50()).into());
    results.insert("p3_steady_p99_ms".into(), round(lags.p99()).into());
    if let Some(p5) = &lags.approved {
        results.insert("p5_steady_p50_ms".into(), round(ms(p5, 0.5)).into());
        results.insert("p5_steady_p99_ms".into(), round(ms(p5, 0.99)).into());
    }

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
    let lags = propagation(&stack, &world, STEADY_RATE, slow, false).await?;
    lags.print(&format!("{STEADY_RATE}/s, 1 s poll only"), hop_floor);
    results.insert("p3_poll_p50_ms".into(), round(lags.p50()).into());
    results.insert("p3_poll_p99_ms".into(), round(lags.p99()).into());
    stack.teardown().await
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1e3
}

#[derive(QueryableByName)]
struct Applied {
    #[diesel(sql_type = Text)]
    order_id: String,
    /// When the customer service wrote its inbox row, in µs since the epoch.
    #[diesel(sql_type = Double)]
    applied_us: f64,
    /// When the relay marked the event published (after the broker's
    /// confirm), in µs since the epoch.
    #[diesel(sql_type = Double)]
    published_us: f64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The latencies of one open-loop run.
struct Lags {
    /// P3: PlaceOrder answer → points applied.
    total: Histogram<u64>,
    /// PlaceOrder answer → marked published, the relay's share.
    relay: Histogram<u64>,
    /// P5: PlaceOrder answer → APPROVED on WatchOrder, if watched.
    approved: Option<Histogram<u64>>,
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

    fn print(&self, label: &str, hop_floor: Option<f64>) {
        let floors = |x: f64| {
            hop_floor
                .filter(|f| *f > 0.0)
                .map(|f| format!(" ({:.1} floors)", x / f))
                .unwrap_or_default()
        };
        println!(
            "P3 {label:<32} p50 {:>8.2} ms{}  p99 {:>8.2} ms{}  max {:>8.1} ms  (→ published p50 {:.2} ms; {} orders, PlaceOrder p99 {:.1} ms)",
            self.p50(),
            floors(self.p50()),
            self.p99(),
            floors(self.p99()),
            self.max(),
            self.relay_p50(),
            self.sent,
            self.place_order_p99,
        );
        if let Some(p5) = &self.approved {
            let (p50, p99) = (ms(p5, 0.5), ms(p5, 0.99));
            println!(
                "P5 {label:<32} p50 {p50:>8.2} ms{}  p99 {p99:>8.2} ms",
                floors(p50),
            );
        }
    }
}

/// What one order's task reports.
struct Placed {
    order_id: String,
    /// When the PlaceOrder answer arrived, in µs since the epoch.
    answered_us: f64,
    /// The answer → APPROVED on WatchOrder, if watched and seen.
    approved: Option<Duration>,
    /// Scheduled start → answer.
    call: Duration,
}

fn epoch_us(time: SystemTime) -> f64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1e6)
        .unwrap_or(0.0)
}

/// Places orders at `rate` per second for `duration`, each at its scheduled
/// time whether or not earlier ones have answered (open loop, so a slow
/// moment cannot hide itself); with `watch`, each order's client then opens
/// `WatchOrder` and waits for APPROVED. Then waits until every credit is
/// applied and reads when each was, from the customer service's inbox.
async fn propagation(
    stack: &Stack,
    world: &World,
    rate: u32,
    duration: Duration,
    watch: bool,
) -> anyhow::Result<Lags> {
    let client = OrderServiceClient::new(stack.channel("order")?);
    let mut conn = setup::admin(stack).await?;
    let before: Count = diesel::sql_query(
        "SELECT count(*) AS n FROM customers.inbox WHERE event_type = 'order.created'",
    )
    .get_result(&mut conn)
    .await?;
    let since = chrono_now(&mut conn).await?;
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = (duration.as_secs_f64() * f64::from(rate)) as u64;
    let started = Instant::now();
    let mut orders = Orders::seeded(42);
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let (mut client, request) = (client.clone(), orders.draw(world));
        tasks.push(tokio::spawn(async move {
            let order_id = client.place_order(request).await?.into_inner().order_id;
            let (answered_us, answered) = (epoch_us(SystemTime::now()), Instant::now());
            let call = scheduled.elapsed();
            let approved = if watch {
                let watching = async {
                    let mut stream = client
                        .watch_order(WatchOrderRequest {
                            order_id: order_id.clone(),
                        })
                        .await?
                        .into_inner();
                    while let Some(order) = stream.next().await {
                        if order?.status() == OrderStatus::Approved {
                            return anyhow::Ok(Some(answered.elapsed()));
                        }
                    }
                    anyhow::Ok(None)
                };
                tokio::time::timeout(Duration::from_secs(60), watching)
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .flatten()
            } else {
                None
            };
            anyhow::Ok(Placed {
                order_id,
                answered_us,
                approved,
                call,
            })
        }));
    }
    let mut client_latency = Histogram::<u64>::new(3)?;
    let mut approved = Histogram::<u64>::new(3)?;
    let mut answered = HashMap::with_capacity(tasks.len());
    let mut unwatched = 0;
    for task in tasks {
        let Ok(placed) = task.await? else { continue };
        client_latency.record(placed.call.as_micros() as u64)?;
        match placed.approved {
            Some(took) => approved.record(took.as_micros() as u64)?,
            None => unwatched += 1,
        }
        answered.insert(placed.order_id, placed.answered_us);
    }
    let placed = answered.len() as u64;
    if placed < total {
        println!(
            "P3 {} of {total} PlaceOrder calls failed (overload)",
            total - placed
        );
    }
    if watch && unwatched > 0 {
        println!("P5 {unwatched} orders not seen APPROVED within 60 s");
    }
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
        if (applied.n - before.n) as u64 >= placed && unmarked.n == 0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "credits or marks still missing after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rows: Vec<Applied> = diesel::sql_query(
        "SELECT o.aggregate_id AS order_id,
                (extract(epoch FROM i.applied_at) * 1e6)::float8 AS applied_us,
                (extract(epoch FROM o.published_at) * 1e6)::float8 AS published_us
         FROM orders.outbox o JOIN customers.inbox i ON i.message_id = o.event_id
         WHERE o.event_type = 'order.created' AND o.created_at >= $1::timestamptz",
    )
    .bind::<Text, _>(since)
    .load(&mut conn)
    .await?;
    let mut lags = Lags {
        total: Histogram::<u64>::new(3)?,
        relay: Histogram::<u64>::new(3)?,
        approved: watch.then_some(approved),
        sent: placed,
        place_order_p99: client_latency.value_at_quantile(0.99) as f64 / 1e3,
    };
    for row in rows {
        let Some(answered_us) = answered.get(&row.order_id) else {
            continue;
        };
        // A credit can land before the answer reaches the client: 1 µs.
        lags.total
            .record((row.applied_us - answered_us).max(1.0) as u64)?;
        lags.relay
            .record((row.published_us - answered_us).max(1.0) as u64)?;
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
