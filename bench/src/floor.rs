//! The hop floor: what one event hop cannot go below on this machine, measured
//! in the same run. One hop is a commit (the event's transaction) and a
//! persistent publish confirmed by a quorum queue; the floor is the sum of
//! their medians, each measured alone with one client and nothing else
//! running. P3 and P5 are judged in multiples of it.

use std::time::Instant;

use diesel::ExpressionMethods;
use diesel_async::{RunQueryDsl, SimpleAsyncConnection};
use hdrhistogram::Histogram;
use lapin::options::QueueDeleteOptions;
use testkit::{stack::Stack, workload};

use crate::{Options, Results, setup, throughput::round2};

mod table {
    diesel::table! {
        bench_floor.hop (id) {
            id -> Int8,
            note -> Text,
        }
    }
}

pub async fn run(options: &Options, results: &mut Results) -> anyhow::Result<()> {
    let samples = if options.quick { 200 } else { 500 };
    let stack = Stack::new("floor", &options.stack()).await?;
    println!("\nHop floor ({samples} samples each, one client, nothing else running)");
    let insert = insert_p50(&stack, samples).await?;
    let publish = publish_p50(&stack, samples).await?;
    let floor = insert + publish;
    println!(
        "Hop floor: insert commit p50 {insert:.2} ms + publish confirm p50 {publish:.2} ms = {floor:.2} ms"
    );
    results.insert("hop_floor_insert_p50_ms".into(), round2(insert).into());
    results.insert("hop_floor_publish_p50_ms".into(), round2(publish).into());
    results.insert("hop_floor_ms".into(), round2(floor).into());
    stack.teardown().await
}

fn p50_ms(histogram: &Histogram<u64>) -> f64 {
    histogram.value_at_quantile(0.5) as f64 / 1e3
}

/// Median of a single-row INSERT committed on its own (autocommit), into a
/// small table of its own.
async fn insert_p50(stack: &Stack, samples: usize) -> anyhow::Result<f64> {
    let mut conn = setup::admin(stack).await?;
    conn.batch_execute(
        "CREATE SCHEMA bench_floor;
         CREATE TABLE bench_floor.hop (id bigserial PRIMARY KEY, note text NOT NULL);",
    )
    .await?;
    let mut histogram = Histogram::<u64>::new(3)?;
    // The first calls prepare the statement.
    for i in 0..samples + 10 {
        let started = Instant::now();
        diesel::insert_into(table::hop::table)
            .values(table::hop::note.eq("hop"))
            .execute(&mut conn)
            .await?;
        if i >= 10 {
            histogram.record(started.elapsed().as_micros() as u64)?;
        }
    }
    Ok(p50_ms(&histogram))
}

/// Median of one persistent publish confirmed (window 1) by an exchange
/// bound to one quorum queue.
async fn publish_p50(stack: &Stack, samples: usize) -> anyhow::Result<f64> {
    let channel = workload::confirm_channel(&stack.amqp).await?;
    broker::topology::declare_exchange(&channel, &stack.prefix, "order").await?;
    let exchange = broker::topology::exchange(&stack.prefix, "order");
    let queue = format!("{}.bench.floor", stack.prefix);
    setup::bound_quorum_queue(&channel, &queue, &exchange).await?;
    let payload = vec![0xab_u8; 120];
    let mut histogram = Histogram::<u64>::new(3)?;
    for i in 0..samples + 10 {
        let started = Instant::now();
        let message = (payload.as_slice(), workload::persistent());
        workload::publish_confirmed(&channel, &exchange, "order.created", 1, [message]).await?;
        if i >= 10 {
            histogram.record(started.elapsed().as_micros() as u64)?;
        }
    }
    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    Ok(p50_ms(&histogram))
}
