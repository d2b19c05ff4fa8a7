//! `dbps dlq list|replay|purge`.

use std::{borrow::Cow, io::Write};

use anyhow::Context;
use broker::{Amqp, dlq};

use crate::args::{ConsumerName, DlqCommand};

/// Runs one `dlq` command on the selected consumers' dead-letter queues.
pub async fn run(
    command: DlqCommand,
    amqp: &Amqp,
    prefix: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { consumers } => list(amqp, prefix, &consumers.selected(), out).await,
        DlqCommand::Replay { consumers, id } => {
            replay(amqp, prefix, &consumers.selected(), id.as_deref(), out).await
        }
        DlqCommand::Purge { consumers } => purge(amqp, prefix, &consumers.selected(), out).await,
    }
}

async fn list(
    amqp: &Amqp,
    prefix: &str,
    consumers: &[ConsumerName],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for consumer in consumers {
        let listing = dlq::list(amqp, prefix, consumer.as_str())
            .await
            .with_context(|| {
                format!("cannot browse the {} dead-letter queue", consumer.as_str())
            })?;
        // Browsing is over (everything is back in the queue) before anything
        // is printed: a closed pipe cannot cost a message.
        match listing.messages.len() {
            _ if !listing.declared => writeln!(
                out,
                "{}  not declared (its consumer has never started under this prefix)",
                listing.queue
            )?,
            0 => writeln!(out, "{}  empty", listing.queue)?,
            1 => writeln!(out, "{}  1 dead letter", listing.queue)?,
            n => writeln!(out, "{}  {n} dead letters", listing.queue)?,
        }
        for letter in &listing.messages {
            writeln!(out, "{}", line(letter))?;
        }
    }
    Ok(())
}

/// One dead letter as `key=value` pairs.
fn line(letter: &dlq::DeadLetter) -> String {
    let last = letter.last_death();
    let time = last
        .and_then(|d| d.time)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    let count = last.map_or(0, |d| d.count).to_string();
    let bytes = letter.payload.len().to_string();
    let earlier: Vec<String> = letter
        .deaths
        .iter()
        .skip(1)
        .map(|d| format!("{}:{}@{}", d.reason, d.count, d.queue))
        .collect();
    let earlier = earlier.join(",");
    let mut fields = vec![
        ("message_id", value(letter.message_id.as_deref())),
        ("routing_key", value(Some(&letter.routing_key))),
        ("exchange", value(Some(&letter.source_exchange))),
        ("queue", value(last.map(|d| d.queue.as_str()))),
        ("reason", value(last.map(|d| d.reason.as_str()))),
        ("count", value(Some(&count))),
        ("time", value(time.as_deref())),
        ("ce-type", value(letter.ce_type())),
        ("bytes", value(Some(&bytes))),
    ];
    if !earlier.is_empty() {
        fields.push(("earlier", value(Some(&earlier))));
    }
    fields
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A field's value: `-` when absent, quoted when it would not read as one word.
fn value(text: Option<&str>) -> Cow<'_, str> {
    match text {
        None => Cow::Borrowed("-"),
        Some(text)
            if text.is_empty()
                || text
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=')) =>
        {
            Cow::Owned(format!("{text:?}"))
        }
        Some(text) => Cow::Borrowed(text),
    }
}

async fn replay(
    amqp: &Amqp,
    prefix: &str,
    consumers: &[ConsumerName],
    id: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut found = false;
    let mut left = 0;
    for consumer in consumers {
        let report = dlq::replay(amqp, prefix, consumer.as_str(), id)
            .await
            .with_context(|| {
                format!(
                    "replaying the {} dead-letter queue stopped (what was confirmed is replayed; \
                     the rest is still in the queue)",
                    consumer.as_str()
                )
            })?;
        if !report.declared {
            if id.is_none() {
                writeln!(out, "{}  not declared", report.queue)?;
            }
            continue;
        }
        for replayed in &report.replayed {
            writeln!(
                out,
                "replayed message_id={} routing_key={} to={}",
                value(replayed.message_id.as_deref()),
                value(Some(&replayed.routing_key)),
                replayed.queue
            )?;
        }
        for skipped in &report.skipped {
            writeln!(
                out,
                "left message_id={} in {}: {}",
                value(skipped.message_id.as_deref()),
                report.queue,
                skipped.reason
            )?;
        }
        found |= !report.replayed.is_empty() || !report.skipped.is_empty();
        left += report.skipped.len();
        if id.is_none() {
            writeln!(
                out,
                "{}  replayed {}, left {}",
                report.queue,
                report.replayed.len(),
                report.skipped.len()
            )?;
        }
    }
    if let Some(id) = id
        && !found
    {
        let names: Vec<_> = consumers.iter().map(|c| c.as_str()).collect();
        anyhow::bail!(
            "no dead letter with message_id {id} in the dead-letter queue of {}",
            names.join(", ")
        );
    }
    if left > 0 {
        anyhow::bail!("{left} dead letter(s) could not be replayed and stay where they were");
    }
    Ok(())
}

async fn purge(
    amqp: &Amqp,
    prefix: &str,
    consumers: &[ConsumerName],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for consumer in consumers {
        let purged = dlq::purge(amqp, prefix, consumer.as_str())
            .await
            .with_context(|| format!("cannot purge the {} dead-letter queue", consumer.as_str()))?;
        let queue = broker::topology::dead_letter_queue(prefix, consumer.as_str());
        match purged {
            Some(n) => writeln!(out, "{queue}  purged {n}")?,
            None => writeln!(out, "{queue}  not declared")?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_as_one_word() {
        assert_eq!(value(None), "-");
        assert_eq!(value(Some("order.created")), "order.created");
        assert_eq!(value(Some("")), "\"\"");
        assert_eq!(value(Some("a b")), "\"a b\"");
        assert_eq!(value(Some("k=v")), "\"k=v\"");
    }
}
