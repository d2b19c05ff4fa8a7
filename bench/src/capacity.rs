//! P7: the whole system's capacity. Every service runs, with its relay and
//! consumers; orders come in open loop at a steady rate for a step, and the
//! step passes if every call succeeds, the backlog (events unpublished,
//! ready in a queue or held unsettled by a consumer) does not grow from the
//! step's middle third to its last (compared at their lowest), and within 2 s of the load stopping every outbox is
//! published and every consumer queue is empty. The rate doubles until a
//! step fails, then bisects within the time budget.
//!
//! Over the whole search it also measures what an order costs the system:
//! k Postgres transactions (the bench database's `xact_commit` in
//! `pg_stat_database`, less the bench's own queries) and m broker deliveries
//! (the services' `<service>_consumer_deliveries_total` counters, from their
//! `/metrics`). With the raw rates measured in the same run (P1 raw at 32
//! clients, P2 raw publish, P4 raw consume + ack) that gives the ceiling
//! 1 / (k / raw tx/s + m / raw publish/s + m / raw consume/s): what the
//! machine could do if the services cost nothing beyond those operations.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use dbps::order::v1::order_service_client::OrderServiceClient;
use diesel::{QueryableByName, sql_types::BigInt};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use hdrhistogram::Histogram;
use testkit::{
    stack::{SERVICES, Stack},
    workload::{Orders, World},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{
    Options, Results, setup,
    throughput::{self, round, round2},
};

/// How long after the load stops everything must have drained.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// The first step's rate, orders per second.
const START_RATE: u32 = 50;
/// Stop bisecting when the bracket is narrower than this share of its top.
const RESOLUTION: f64 = 0.1;

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let mut ports = BTreeMap::new();
    for service in SERVICES {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        ports.insert(service, listener.local_addr()?.port());
    }
    let addresses: Vec<(&str, String)> = ports
        .iter()
        .map(|(service, port)| (*service, format!("127.0.0.1:{port}")))
        .collect();
    let extra: Vec<(&str, &str, &str)> = addresses
        .iter()
        .map(|(service, address)| (*service, "METRICS_ADDR", address.as_str()))
        .collect();
    let (stack, world) = setup::start(options, "capacity", &extra).await?;
    throughput::drain(&stack).await?;
    let mut probe = Probe {
        conn: setup::admin(&stack).await?,
        ports: ports.values().copied().collect(),
        own_queries: 0,
    };

    let step_length = options.pick(Duration::from_secs(8), Duration::from_secs(4));
    let budget = options.pick(Duration::from_secs(150), Duration::from_secs(45));
    println!(
        "\nP7 whole-system capacity: open-loop PlaceOrder, {} s steps, everything drained within {} s of the load stopping",
        step_length.as_secs(),
        DRAIN_LIMIT.as_secs()
    );
    let before = probe.counters().await?;
    let started = Instant::now();
    let (mut passed, mut failed): (Option<u32>, Option<u32>) = (None, None);
    let mut rate = START_RATE;
    let mut placed = 0;
    loop {
        let step = step(&stack, &world, &mut probe, rate, step_length).await?;
        placed += step.placed;
        step.print(rate);
        if step.passed() {
            passed = passed.max(Some(rate));
        } else {
            failed = Some(failed.map_or(rate, |f| f.min(rate)));
            if !wait_drained(&mut probe, &stack, Duration::from_secs(90)).await? {
                println!("P7 the system had not drained 90 s after the step; going on");
            }
        }
        let next = match (passed, failed) {
            (_, None) => rate * 2,
            (low, Some(high)) => {
                let low = low.unwrap_or(0);
                if f64::from(high - low) <= RESOLUTION * f64::from(high) || high <= 1 {
                    break;
                }
                low + (high - low) / 2
            }
        };
        // The next step must fit in the budget.
        if started.elapsed() + step_length + DRAIN_LIMIT > budget {
            break;
        }
        rate = next;
    }
    // Backends report their transactions to the statistics at most once a
    // second, and an idle one up to 10 s later: wait that out once.
    tokio::time::sleep(Duration::from_millis(10_500)).await;
    let after = probe.counters().await?;
    let capacity = passed.unwrap_or(0);
    let orders = placed.max(1) as f64;
    let transactions = after.transactions - before.transactions - probe.own_queries;
    let k = transactions as f64 / orders;
    let m = (after.deliveries - before.deliveries) / orders;
    println!(
        "P7 per order, over the search ({placed} orders): k = {k:.2} Postgres transactions, m = {m:.2} broker deliveries"
    );
    results.insert("p7_orders_per_s".into(), capacity.into());
    results.insert("p7_k_transactions_per_order".into(), round2(k).into());
    results.insert("p7_m_deliveries_per_order".into(), round2(m).into());
    let raw = |key: &str| results.get(key).and_then(serde_json::Value::as_f64);
    match (
        raw("p1_raw_orders_per_s_32"),
        raw("p2_raw_events_per_s"),
        raw("p4_raw_events_per_s"),
    ) {
        (Some(tx), Some(publish), Some(consume)) if tx > 0.0 && publish > 0.0 && consume > 0.0 => {
            let ceiling = 1.0 / (k / tx + m / publish + m / consume);
            let ratio = f64::from(capacity) / ceiling;
            println!(
                "P7 capacity {capacity} orders/s; ceiling 1 / (k / {tx:.0} tx/s + m / {publish:.0} publish/s + m / {consume:.0} consume/s) = {ceiling:.1} orders/s; ratio {ratio:.2}"
            );
            results.insert("p7_ceiling_per_s".into(), round(ceiling).into());
            results.insert("p7_ratio".into(), round2(ratio).into());
        }
        _ => println!(
            "P7 capacity {capacity} orders/s; no ceiling: it needs the raw rates of P1, P2 and P4 (parts throughput, relay, consumer)"
        ),
    }
    drop(probe);
    stack.teardown().await
}

/// One step's outcome.
struct Step {
    /// The rate asked for, orders per second.
    rate: f64,
    placed: u64,
    failed: u64,
    /// The rate the orders were actually sent at.
    sent_per_s: f64,
    /// The largest backlog (events unpublished, queued or held by a
    /// consumer) while the load ran.
    peak_backlog: u64,
    /// How much the backlog's troughs rose from the middle third of the step
    /// to the last.
    growth: f64,
    /// The backlog did not grow by more than a quarter second of load (plus
    /// 50 events of batching noise) over the step's last third.
    bounded: bool,
    /// Load stopped → everything drained, if within [`DRAIN_LIMIT`].
    drained: Option<Duration>,
    place_order_p99_ms: f64,
}

impl Step {
    fn passed(&self) -> bool {
        // A load generator that fell behind did not test the rate.
        self.failed == 0
            && self.sent_per_s >= 0.9 * self.rate
            && self.bounded
            && self.drained.is_some()
    }

    fn print(&self, rate: u32) {
        let drained = match self.drained {
            Some(took) => format!("drained {:.0} ms after", took.as_secs_f64() * 1e3),
            None => format!("not drained within {} s", DRAIN_LIMIT.as_secs()),
        };
        let failed = if self.failed > 0 {
            format!(", {} calls failed", self.failed)
        } else {
            String::new()
        };
        println!(
            "P7 step {rate:>5}/s: sent {:>7.1}/s, PlaceOrder p99 {:>7.1} ms, backlog peak {:>6} growth {:>7.0}{}, {drained}{failed}: {}",
            self.sent_per_s,
            self.place_order_p99_ms,
            self.peak_backlog,
            self.growth,
            if self.bounded { "" } else { " (growing)" },
            if self.passed() {
                "steady"
            } else {
                "not steady"
            },
        );
    }
}

/// Places orders at `rate` for `length`, open loop, and checks that the
/// system drains within [`DRAIN_LIMIT`] of the last one.
async fn step(
    stack: &Stack,
    world: &World,
    probe: &mut Probe,
    rate: u32,
    length: Duration,
) -> anyhow::Result<Step> {
    let client = OrderServiceClient::new(stack.channel("order")?);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate));
    let total = (length.as_secs_f64() * f64::from(rate)).round() as u64;
    let started = Instant::now();
    let sending = std::sync::atomic::AtomicBool::new(true);
    let sender = async {
        let mut orders = Orders::seeded(u64::from(rate));
        let mut tasks = Vec::with_capacity(total as usize);
        for i in 0..total {
            let scheduled = started + interval.mul_f64(i as f64);
            tokio::time::sleep_until(scheduled.into()).await;
            let (mut client, request) = (client.clone(), orders.draw(world));
            tasks.push(tokio::spawn(async move {
                let placed = client.place_order(request).await;
                (placed.is_ok(), scheduled.elapsed())
            }));
        }
        sending.store(false, std::sync::atomic::Ordering::Relaxed);
        tasks
    };
    // The whole backlog (unpublished, ready, held by a consumer), sampled
    // while the load runs.
    let sampler = async {
        let mut samples = Vec::new();
        while std::sync::atomic::AtomicBool::load(&sending, std::sync::atomic::Ordering::Relaxed) {
            if let Ok(backlog) = probe.backlog(stack).await {
                samples.push(backlog);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        samples
    };
    let (tasks, samples) = tokio::join!(sender, sampler);
    let peak_backlog = samples.iter().copied().max().unwrap_or(0);
    let growth = growth(&samples);
    let bounded = growth <= 0.25 * f64::from(rate) + 50.0;
    let sent_per_s = total as f64 / started.elapsed().as_secs_f64();
    let stopped = Instant::now();
    let deadline = stopped + DRAIN_LIMIT;
    let mut answered = Vec::with_capacity(tasks.len());
    let mut late = false;
    for mut task in tasks {
        // Past the deadline the step has failed; the answers still count.
        if !late {
            match tokio::time::timeout_at(deadline.into(), &mut task).await {
                Ok(answer) => {
                    answered.push(answer?);
                    continue;
                }
                Err(_) => late = true,
            }
        }
        answered.push(task.await?);
    }
    let drained = if late {
        None
    } else {
        drained_by(probe, stack, deadline)
            .await?
            .then(|| stopped.elapsed())
    };
    let mut latency = Histogram::<u64>::new(3)?;
    let mut placed = 0;
    for (ok, took) in &answered {
        latency.record(took.as_micros() as u64)?;
        placed += u64::from(*ok);
    }
    Ok(Step {
        rate: f64::from(rate),
        placed,
        failed: total - placed,
        sent_per_s,
        peak_backlog,
        growth,
        bounded,
        drained,
        place_order_p99_ms: latency.value_at_quantile(0.99) as f64 / 1e3,
    })
}

/// Whether everything drained by `deadline`: two clean looks in a row (an
/// event can move from a queue to an outbox between the two halves of one).
async fn drained_by(probe: &mut Probe, stack: &Stack, deadline: Instant) -> anyhow::Result<bool> {
    let mut clean = 0;
    loop {
        if probe.idle(stack).await? {
            clean += 1;
            if clean == 2 {
                return Ok(true);
            }
        } else {
            clean = 0;
        }
        if Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_drained(probe: &mut Probe, stack: &Stack, limit: Duration) -> anyhow::Result<bool> {
    drained_by(probe, stack, Instant::now() + limit).await
}

/// Events ready in every consumer queue.
async fn queued(stack: &Stack) -> anyhow::Result<u64> {
    Ok(throughput::queued(stack).await?.iter().sum())
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// Counters read before and after the search.
struct Counters {
    transactions: i64,
    deliveries: f64,
}

/// The bench's view of the running system: its database (one connection, its
/// own queries counted) and the services' metrics.
struct Probe {
    conn: AsyncPgConnection,
    ports: Vec<u16>,
    own_queries: i64,
}

impl Probe {
    async fn count(&mut self, sql: &str) -> anyhow::Result<i64> {
        self.own_queries += 1;
        let count: Count = diesel::sql_query(sql).get_result(&mut self.conn).await?;
        Ok(count.n)
    }

    async fn counters(&mut self) -> anyhow::Result<Counters> {
        let transactions = self
            .count(
                "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()",
            )
            .await?;
        let mut deliveries = 0.0;
        for port in self.ports.clone() {
            deliveries += sum(&scrape(port).await?, "_consumer_deliveries_total");
        }
        Ok(Counters {
            transactions,
            deliveries,
        })
    }

    /// Events unpublished, ready in a queue or held by a consumer.
    async fn backlog(&mut self, stack: &Stack) -> anyhow::Result<u64> {
        let unpublished = self
            .count(
                "SELECT (SELECT count(*) FROM orders.outbox WHERE published_at IS NULL)
                      + (SELECT count(*) FROM customers.outbox WHERE published_at IS NULL)
                      + (SELECT count(*) FROM inventory.outbox WHERE published_at IS NULL) AS n",
            )
            .await?;
        let mut held = 0.0;
        for port in self.ports.clone() {
            held += sum(&scrape(port).await?, "_queue_messages_unacked");
        }
        Ok(u64::try_from(unpublished).unwrap_or(0) + queued(stack).await? + held.max(0.0) as u64)
    }

    /// Nothing unpublished, nothing ready in a queue, nothing held by a
    /// consumer.
    async fn idle(&mut self, stack: &Stack) -> anyhow::Result<bool> {
        Ok(self.backlog(stack).await? == 0)
    }
}

/// The lowest of the last third of `samples` less the lowest of the middle
/// third. Relay rounds and consumer batches make the backlog a sawtooth; its
/// troughs rise only when the system falls behind.
fn growth(samples: &[u64]) -> f64 {
    let third = samples.len() / 3;
    if third == 0 {
        return 0.0;
    }
    let low = |part: &[u64]| part.iter().copied().min().unwrap_or(0) as f64;
    low(&samples[samples.len() - third..]) - low(&samples[third..2 * third])
}

/// A service's Prometheus text.
async fn scrape(port: u16) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    // HTTP/1.0: the answer comes unchunked and the connection closes after.
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await?;
    let mut text = String::new();
    stream.read_to_string(&mut text).await?;
    Ok(text)
}

/// The sum of every sample of every metric whose name ends with `suffix`.
fn sum(text: &str, suffix: &str) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with(suffix).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::sum;

    #[test]
    fn sums_the_samples_of_a_metric() {
        let text = "# TYPE customer_consumer_deliveries_total counter\n\
                    customer_consumer_deliveries_total{source=\"order\",outcome=\"applied\"} 12\n\
                    customer_consumer_deliveries_total{source=\"order\",outcome=\"duplicate\"} 1\n\
                    customer_relay_published_total 40\n\
                    customer_queue_messages_unacked{source=\"order\"} 0\n";
        assert_eq!(sum(text, "_consumer_deliveries_total"), 13.0);
        assert_eq!(sum(text, "_queue_messages_unacked"), 0.0);
    }

    #[test]
    fn growth_compares_the_last_third_with_the_middle() {
        assert_eq!(super::growth(&[0, 0, 10, 30, 40, 50]), 30.0);
        assert_eq!(super::growth(&[5, 5]), 0.0);
    }
}
