//! `dbps`, the admin CLI of a dbps deployment.
//!
//! * `dbps dlq list|replay|purge` ([`dlq`]): the consumers' dead-letter queues,
//!   through `broker::dlq`.
//! * `dbps outbox status` ([`outbox`]): each publisher's unpublished backlog.
//! * `dbps replay` ([`rebuild`]): the reporting rebuild.
//! * `dbps events export` ([`export`]): the event log as JSON lines.
//!
//! Results go to stdout, logs (`RUST_LOG`, default `warn` but for lapin's
//! reports of channels the broker closed) and errors to stderr; no password
//! is ever printed.

mod args;
mod dlq;
mod export;
mod outbox;
mod rebuild;
mod secret;

use std::{io::Write, process::ExitCode};

use clap::Parser;

use crate::args::{Cli, Command, EventsCommand, OutboxCommand};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // lapin logs as an error every channel the broker closes, and asking
    // whether a queue exists closes the channel when it does not: routine here.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,lapin::channel=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let secrets = secret::Secrets::of(cli.urls());
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let message = secrets.scrub(&describe(&error));
            let _ = writeln!(std::io::stderr(), "dbps: error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let amqp = broker::Amqp::new(cli.amqp.amqp_url.clone(), "dbps-cli");
    let prefix = &cli.amqp.amqp_prefix;
    let result = match cli.command {
        Command::Dlq(command) => dlq::run(command, &amqp, prefix, &mut out).await,
        Command::Outbox(OutboxCommand::Status(args)) => outbox::status(&args, &mut out).await,
        Command::Replay(args) => rebuild::run(&cli.amqp, &args, &amqp, &mut out).await,
        Command::Events(EventsCommand::Export(args)) => {
            export::run(&args, &amqp, &cli.amqp.amqp_url, prefix, &mut out).await
        }
    };
    amqp.close().await;
    out.flush()?;
    result
}

/// The error and its causes, `: `-separated, skipping a cause that the text
/// so far already quotes (most wrappers repeat their source).
fn describe(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}
