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

use dbps::order::v1::order_service_client::OrderServiceClient;
use diesel::sql_types::Int8;
use diesel_async::RunQueryDsl;
use testkit::workload::{Orders, World};

use crate::{Options, Results, pgbench, raw, report, resources, setup};

const LEVELS: [usize; 3] = [1, 8, 32];

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let (mut stack, world) = setup::start(options, "throughput", &[]).await?;
    let idle = resources::max_rss_mb(&stack);
    let startup = resources::start_to_serving(&mut stack).await?;
    let duration = options.pick(Duration::from_secs(10), Duration::from_secs(3));

    let url = stack.admin_url();
    raw::create_schema(&url).await?;
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
        let raw = raw::rate(&pool, &world, clients, duration).await?;
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
            let mut orders = Orders::seeded(seed as u64 + 1);
            while Instant::now() < deadline {
                client.place_order(orders.draw(&world)).await?;
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
