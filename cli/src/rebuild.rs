//! `dbps replay`: the reporting rebuild, exactly as `reporting-service
//! rebuild` does it, from wherever `dbps` runs.

use std::{io::Write, time::Duration};

use anyhow::Context;
use broker::{Amqp, dlq, topology};
use reporting_service::{SERVICE, config::Config, rebuild::rebuild};

use crate::{
    args::{AmqpArgs, ReplayArgs},
    secret::redact,
};

/// Longest wait for the reporting database to answer the first time.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Empties the reporting read models and replays the reporting event log
/// into them; prints what the replay did.
pub async fn run(
    amqp_args: &AmqpArgs,
    args: &ReplayArgs,
    amqp: &Amqp,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let url = &args.reporting_database_url;
    let prefix = &amqp_args.amqp_prefix;
    // Check both ends before anything is emptied: the service's own start-up
    // would wait a minute for a database that is not there.
    tokio::time::timeout(CONNECT_TIMEOUT, platform::db::connect(url, SERVICE.schema))
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {CONNECT_TIMEOUT:?}"))
        .and_then(|connected| connected.map_err(anyhow::Error::from))
        .with_context(|| format!("cannot connect to the reporting database {}", redact(url)))?;
    let log = topology::event_log(prefix, SERVICE.name);
    if dlq::message_count(amqp, &log)
        .await
        .with_context(|| format!("cannot reach RabbitMQ at {}", redact(&amqp_args.amqp_url)))?
        .is_none()
    {
        anyhow::bail!(
            "the event log {log} does not exist: nothing to rebuild from \
             (has the reporting service run under --amqp-prefix {prefix}?); \
             the read models were left as they are"
        );
    }

    let config = Config::try_parse_for(
        &SERVICE,
        [
            SERVICE.binary,
            "--database-url",
            url,
            "--amqp-url",
            &amqp_args.amqp_url,
            "--amqp-prefix",
            prefix,
            "--db-pool-size",
            "4",
        ],
    )
    .context("reporting configuration")?;
    let infra = platform::Infra::connect(&SERVICE, &config)
        .await
        .with_context(|| format!("cannot open the reporting database {}", redact(url)))?;
    let result = rebuild(
        &infra,
        config.extra.event_log_max_age.clone(),
        Duration::from_secs(args.idle_secs),
    )
    .await;
    infra.amqp().close().await;
    let stats = result.context("the rebuild failed")?;
    writeln!(
        out,
        "reporting read models rebuilt from {log}: applied {}, duplicates {}, failed {}",
        stats.applied, stats.duplicates, stats.failed
    )?;
    Ok(())
}
