//! `make faults`: the fault suite. Each scenario starts the real service
//! binaries as processes on a fresh database and AMQP prefix, drives orders
//! through gRPC, injects its fault, waits (with a deadline) until the system
//! is consistent again, and reconciles every effect against the orders the
//! clients were told were accepted:
//!
//! ```text
//! R1 relay-kill: orders=2000 lost=0 doubled=0 recovery_ms=840
//! ```
//!
//! It exits non-zero if anything was lost or applied twice, or if a
//! scenario was skipped (unless `--allow-skips`).
//!
//! `faults --cluster` (`make cluster-faults`) runs R7–R11 instead, against
//! the replicated topology `scripts/cluster.sh` runs (two replicas of each
//! service, three RabbitMQ nodes, a primary and a replica of each database);
//! there a skipped scenario fails the run.
//!
//! * `testkit::stack`: the service processes; [`load`]: the clients;
//!   [`reconcile`]: what must hold afterwards; [`scenarios`]: R1–R6;
//!   [`cluster`]: R7–R11.
// A command-line tool: it reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod cluster;
mod load;
mod reconcile;
mod scenarios;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::Parser;

/// Fault suite options.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "faults",
    about = "Inject faults under load into the real services and reconcile"
)]
pub struct Options {
    /// Orders each scenario places.
    #[arg(long, env = "FAULT_ORDERS", default_value_t = 2000)]
    pub orders: usize,
    /// Orders per second the clients aim for.
    #[arg(long, env = "FAULT_RATE", default_value_t = 200)]
    pub rate: u32,
    /// Scenarios to run, comma separated (default: R1..R6, or R7..R11 with
    /// `--cluster`).
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Run the cluster suite R7–R11 against the topology `scripts/cluster.sh
    /// up` started (which it does not start or stop itself).
    #[arg(long)]
    pub cluster: bool,
    /// Where the service binaries are (built with `--features failpoints`).
    #[arg(long, default_value = "target/release")]
    pub bin_dir: PathBuf,
    /// Longest wait for the system to become consistent after a fault.
    #[arg(long, default_value = "120s", value_parser = humantime_parse)]
    pub settle: Duration,
    /// Leave each scenario's database and queues in place (processes are still
    /// stopped), e.g. to inspect R4's dead letters with `dbps dlq list`.
    #[arg(long)]
    pub keep: bool,
    /// Let a scenario this machine cannot run (R2 and R5 restart the
    /// machine's RabbitMQ and Postgres) pass as skipped; otherwise a skip
    /// fails the run, since it proved nothing. The cluster suite never
    /// allows skips.
    #[arg(long)]
    pub allow_skips: bool,
    #[command(flatten)]
    pub servers: testkit::stack::Servers,
}

impl Options {
    /// The process stack's options.
    pub fn stack(&self) -> testkit::stack::StackOptions {
        testkit::stack::StackOptions {
            kind: "faults",
            bin_dir: self.bin_dir.clone(),
            admin_url: self.servers.admin_url.clone(),
            amqp_url: self.servers.amqp_url.clone(),
            keep: self.keep,
        }
    }
}

fn humantime_parse(text: &str) -> Result<Duration, String> {
    let seconds = text
        .strip_suffix('s')
        .ok_or("a number of seconds, like 120s")?;
    seconds
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let options = Options::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        if options.cluster {
            return cluster::run_all(&options).await;
        }
        let mut failed = false;
        let all = ["R1", "R2", "R3", "R4", "R5", "R6"].map(String::from);
        let scenarios = if options.scenarios.is_empty() {
            &all[..]
        } else {
            &options.scenarios[..]
        };
        for name in scenarios {
            match scenarios::run(name, &options).await {
                Ok(report) => {
                    println!("{report}");
                    failed |= !report.passed(options.allow_skips);
                }
                Err(error) => {
                    println!("{name} error: {error:#}");
                    failed = true;
                }
            }
        }
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}
