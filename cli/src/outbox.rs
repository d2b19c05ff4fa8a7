//! `dbps outbox status`: how far each publishing service's relay is behind.

use std::{io::Write, time::Duration};

use anyhow::Context;
use diesel::{
    QueryableByName,
    sql_types::{BigInt, Double, Nullable},
};
use diesel_async::RunQueryDsl;

use crate::{args::OutboxArgs, secret::redact};

/// Longest wait for one service's database.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What the relay has not published yet: the unpublished rows of one outbox.
#[derive(Debug, QueryableByName)]
struct Backlog {
    /// Rows with `published_at IS NULL`.
    #[diesel(sql_type = BigInt)]
    unpublished: i64,
    /// Age of the oldest of them, in seconds.
    #[diesel(sql_type = Nullable<Double>)]
    oldest_secs: Option<f64>,
    /// Those the broker refused or returned at least once: each waits on its
    /// own backoff (`attempts`, `next_attempt_at`).
    #[diesel(sql_type = BigInt)]
    retrying: i64,
    /// Seconds until the next of them is due, if one is still waiting.
    #[diesel(sql_type = Nullable<Double>)]
    next_retry_secs: Option<f64>,
}

const QUERY: &str = "
    SELECT count(*) AS unpublished,
           extract(epoch FROM now() - min(created_at))::float8 AS oldest_secs,
           count(*) FILTER (WHERE attempts > 0) AS retrying,
           extract(epoch FROM min(next_attempt_at) FILTER (WHERE next_attempt_at > now()) - now())::float8
               AS next_retry_secs
      FROM outbox
     WHERE published_at IS NULL";

/// Prints one line per publishing service; fails (after printing the others)
/// if any outbox could not be read.
pub async fn status(args: &OutboxArgs, out: &mut impl Write) -> anyhow::Result<()> {
    // The publishing services and the schemas they own (their `ServiceSpec`s).
    let services = [
        ("order", "orders", args.order_database_url.as_str()),
        ("customer", "customers", args.customer_database_url.as_str()),
        (
            "inventory",
            "inventory",
            args.inventory_database_url.as_str(),
        ),
    ];
    let mut failures = Vec::new();
    writeln!(
        out,
        "{:<10} {:>11} {:>8} {:>9} {:>10}",
        "SERVICE", "UNPUBLISHED", "OLDEST", "RETRYING", "NEXT RETRY"
    )?;
    for (service, schema, url) in services {
        match tokio::time::timeout(TIMEOUT, backlog(url, schema)).await {
            Ok(Ok(backlog)) => writeln!(
                out,
                "{service:<10} {:>11} {:>8} {:>9} {:>10}",
                backlog.unpublished,
                age(backlog.oldest_secs),
                backlog.retrying,
                backlog
                    .next_retry_secs
                    .map_or_else(|| "-".to_owned(), |secs| format!("in {}", age(Some(secs)))),
            )?,
            Ok(Err(error)) => failures.push(format!("{service} ({}): {error:#}", redact(url))),
            Err(_) => failures.push(format!(
                "{service} ({}): no answer within {TIMEOUT:?}",
                redact(url)
            )),
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!(
            "cannot read {} of {} outboxes:\n  {}",
            failures.len(),
            services.len(),
            failures.join("\n  ")
        )
    }
}

async fn backlog(url: &str, schema: &str) -> anyhow::Result<Backlog> {
    let mut conn = platform::db::connect(url, schema)
        .await
        .context("cannot connect")?;
    let backlog = diesel::sql_query(QUERY)
        .get_result(&mut conn)
        .await
        .with_context(|| format!("cannot read {schema}.outbox"))?;
    Ok(backlog)
}

/// `4.2s`, `3m07s`, `5h02m`, `2d03h`; `-` for none.
fn age(secs: Option<f64>) -> String {
    let Some(secs) = secs else {
        return "-".to_owned();
    };
    let secs = secs.max(0.0);
    if secs < 60.0 {
        return format!("{secs:.1}s");
    }
    // Whole seconds from here on; ages beyond u64 seconds do not occur.
    let whole = secs as u64;
    let (minutes, hours, days) = (whole / 60, whole / 3600, whole / 86_400);
    if hours == 0 {
        format!("{minutes}m{:02}s", whole % 60)
    } else if days == 0 {
        format!("{hours}h{:02}m", minutes % 60)
    } else {
        format!("{days}d{:02}h", hours % 24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(None), "-");
        assert_eq!(age(Some(-0.2)), "0.0s");
        assert_eq!(age(Some(4.25)), "4.2s");
        assert_eq!(age(Some(187.0)), "3m07s");
        assert_eq!(age(Some(5.0 * 3600.0 + 120.0)), "5h02m");
        assert_eq!(age(Some(2.0 * 86_400.0 + 3.0 * 3600.0)), "2d03h");
    }
}
