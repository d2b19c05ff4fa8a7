//! `make bench`: every figure is a ratio against a raw baseline measured in
//! the same run, on the same machine, against the same Postgres and RabbitMQ.
//!
//! * [`floor`]: the hop floor, one commit plus one confirmed publish.
//! * [`throughput`]: P1 `PlaceOrder` over gRPC vs the same rows written by
//!   the fastest raw client ([`raw`]), itself anchored by [`pgbench`].
//! * [`relay`]: P2 relay drain of an outbox backlog vs raw publishing.
//! * [`consumer`]: P4 consumer apply rate vs raw consume and ack.
//! * [`capacity`]: P7 the whole system's highest steady rate vs the ceiling
//!   the raw rates above give for what an order costs.
//! * [`latency`]: P3 commit → points applied; P5 commit → APPROVED seen by
//!   `WatchOrder`, at half of P7 and at 100 orders/s, in hop floors.
//! * [`resources`]: P6 memory and start-up time.
//! * [`setup`]: the stack of services and the world (customers, products)
//!   every part shares, drawn from with `testkit::workload::Orders`.
//! * [`targets`]: the targets, met / not met, and the README table.
//!
//! The services run as the release binaries, as processes, through
//! `testkit::stack`. Results print as they are measured, then every target
//! of [`targets::TARGETS`] with met / not met; all go to
//! `target/bench/latest.json`, from which `bench table` regenerates the
//! README's table.

// A command-line tool: it reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod capacity;
mod consumer;
mod floor;
mod latency;
mod pgbench;
mod raw;
mod relay;
mod resources;
mod setup;
mod targets;
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
    /// Only these parts (floor = the hop floor, throughput = P1 and P6,
    /// relay = P2, consumer = P4, capacity = P7, latency = P3 and P5); all by
    /// default, in that order.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Keep each run's database and queues for inspection.
    #[arg(long)]
    pub keep: bool,
    /// P3's and P5's open-loop rate, orders per second, when P7 did not run
    /// (otherwise half of P7's capacity).
    #[arg(long, default_value_t = 1000)]
    pub p3_rate: u32,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/bench/latest.json")]
    pub out: PathBuf,
    #[command(flatten)]
    pub servers: testkit::stack::Servers,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum Command {
    /// Regenerate the README's Performance table from a results file (between
    /// its bench-table markers); measures nothing.
    Table {
        /// The results of a run.
        #[arg(long, default_value = "target/bench/latest.json")]
        json: PathBuf,
        /// The README to update.
        #[arg(long, default_value = "README.md")]
        readme: PathBuf,
    },
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
    if let Some(Command::Table { json, readme }) = &options.command {
        return match table(json, readme) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("bench table failed: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
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
    let machine = machine();
    println!("{machine}");
    results.insert("machine".into(), machine.into());
    results.insert("quick".into(), options.quick.into());
    let wanted = |part: &str| options.only.is_empty() || options.only.iter().any(|p| p == part);
    if wanted("floor") {
        floor::run(options, &mut results).await?;
    }
    if wanted("throughput") {
        throughput::run(options, &mut results).await?;
    }
    if wanted("relay") {
        relay::run(options, &mut results).await?;
    }
    if wanted("consumer") {
        consumer::run(options, &mut results).await?;
    }
    // After P1, P2 and P4: its ceiling is made of their raw rates.
    if wanted("capacity") {
        capacity::run(options, &mut results).await?;
    }
    // After P7: P3 and P5 run at half of its rate.
    if wanted("latency") {
        latency::run(options, &mut results).await?;
    }
    targets::print(&results);
    results.insert(
        "bench_seconds".into(),
        started.elapsed().as_secs_f64().round().into(),
    );
    results.insert("targets".into(), targets::json(&results));
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

/// `bench table`: the README's table regenerated from `json`.
fn table(json: &std::path::Path, readme: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(json).with_context(|| format!("reading {}", json.display()))?;
    let results: Results = serde_json::from_str(&text)?;
    let current =
        std::fs::read_to_string(readme).with_context(|| format!("reading {}", readme.display()))?;
    let updated = targets::splice(&current, &targets::readme_table(&results))?;
    if updated != current {
        std::fs::write(readme, updated)?;
    }
    println!(
        "{}: Performance table regenerated from {}",
        readme.display(),
        json.display()
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
