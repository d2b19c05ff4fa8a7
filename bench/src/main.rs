//! `make bench`: every figure is a ratio against a raw baseline measured in
//! the same run, on the same machine, against the same Postgres and RabbitMQ.
//!
//! * [`throughput`]: P1 `PlaceOrder` over gRPC vs the same rows inserted raw.
//! * [`relay`]: P2 relay drain of an outbox backlog vs raw publishing.
//! * [`latency`]: P3 commit → points applied; P5 `PlaceOrder` → APPROVED seen
//!   by `WatchOrder`.
//! * [`consumer`]: P4 consumer apply rate vs raw consume and ack.
//! * [`resources`]: P6 memory and start-up time.
//!
//! The services run as the release binaries, as processes, through
//! `testkit::stack`. Results print as a table and go to
//! `target/bench/latest.json`.

// A command-line tool: it reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod consumer;
mod latency;
mod relay;
mod resources;
mod setup;
mod throughput;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;
use serde_json::{Map, Value};

/// Benchmark options.
#[derive(Clone, Debug, Parser)]
#[command(name = "bench", about = "Measure the services against raw baselines")]
pub struct Options {
    /// Shorter runs of the same figures (about two minutes).
    #[arg(long)]
    pub quick: bool,
    /// Where the release service binaries are.
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Only these parts (throughput = P1 and P6, relay = P2, latency = P3 and
    /// P5, consumer = P4); all by default.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Keep each run's database and queues for inspection.
    #[arg(long)]
    pub keep: bool,
    /// P3's open-loop rate, orders per second.
    #[arg(long, default_value_t = 1000)]
    pub p3_rate: u32,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/latest.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub servers: testkit::stack::Servers,
}

impl Options {
    fn stack(&self) -> testkit::stack::StackOptions {
        testkit::stack::StackOptions {
            kind: "bench",
            bin_dir: self.bin_dir.clone(),
            admin_url: self.servers.admin_url.clone(),
            amqp_url: self.servers.amqp_url.clone(),
            keep: self.keep,
        }
    }

    /// A duration of the full run, or of the quick one.
    fn pick(&self, full: Duration, quick: Duration) -> Duration {
        if self.quick { quick } else { full }
    }
}

/// The figures, in the order they were measured.
pub type Results = Map<String, Value>;

fn main() -> ExitCode {
    let options = Options::parse();
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    match runtime.block_on(run(&options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: &Options) -> anyhow::Result<()> {
    let mut results = Results::new();
    let started = std::time::Instant::now();
    println!("{}", machine());
    let wanted = |part: &str| options.only.is_empty() || options.only.iter().any(|p| p == part);
    if wanted("throughput") {
        throughput::run(options, &mut results).await?;
    }
    if wanted("relay") {
        relay::run(options, &mut results).await?;
    }
    if wanted("latency") {
        latency::run(options, &mut results).await?;
    }
    if wanted("consumer") {
        consumer::run(options, &mut results).await?;
    }
    results.insert(
        "bench_seconds".into(),
        started.elapsed().as_secs_f64().round().into(),
    );
    if let Some(dir) = options.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(
        &options.out,
        serde_json::to_string_pretty(&Value::Object(results))?,
    )?;
    println!(
        "\nresults: {} ({} s)",
        options.out.display(),
        started.elapsed().as_secs()
    );
    Ok(())
}

/// Cores and server versions, for the table's header.
fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let version = |program: &str, args: &[&str]| {
        std::process::Command::new(program)
            .args(args)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "?".into())
    };
    format!(
        "machine: {cores} cores; {}; RabbitMQ {}",
        version("psql", &["--version"]),
        version("rabbitmqctl", &["version"])
    )
}

/// Prints one figure: measured, baseline, ratio.
pub fn report(name: &str, measured: f64, baseline: f64, unit: &str) -> f64 {
    let ratio = if baseline > 0.0 {
        measured / baseline
    } else {
        0.0
    };
    println!(
        "{name:<44} {measured:>10.1} {unit:<9} raw {baseline:>10.1} {unit:<9} ratio {ratio:>5.2}"
    );
    ratio
}
