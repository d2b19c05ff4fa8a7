//! What the broker says of a consumer's queues, for the operator's first
//! look: messages ready and consumers per queue, and the dead-letter queue's
//! depth, asked every few seconds with a passive declare (which changes
//! nothing). Unacked messages are not in that answer; the runtime counts the
//! deliveries this process holds instead (`_queue_messages_unacked`).

use std::{sync::Arc, time::Duration};

use lapin::Channel;
use tokio_util::sync::CancellationToken;

use crate::{Amqp, BrokerError, metrics::QueueGauges, supervise::sleep_or_shutdown, topology};

/// How often the broker is asked.
const EVERY: Duration = Duration::from_secs(5);

/// Refreshes the gauges of `consumer`'s queues for `sources` until `shutdown`.
pub(super) async fn watch(
    amqp: Amqp,
    prefix: String,
    consumer: Arc<str>,
    sources: Vec<&'static str>,
    shutdown: CancellationToken,
) {
    let queues: Vec<(String, QueueGauges)> = sources
        .iter()
        .map(|source| {
            (
                topology::queue(&prefix, &consumer, source),
                QueueGauges::new(&consumer, source),
            )
        })
        .collect();
    let dead_letters = QueueGauges::dead_letters(&consumer);
    let dlq = topology::dead_letter_queue(&prefix, &consumer);
    let mut channel: Option<Channel> = None;
    loop {
        if !sleep_or_shutdown(EVERY, &shutdown).await {
            return;
        }
        let refreshed = async {
            let open = match channel.take() {
                Some(open) if open.status().connected() => open,
                _ => amqp.channel().await?,
            };
            for (queue, gauges) in &queues {
                let (ready, consumers) = topology::queue_depth(&open, queue).await?;
                gauges.ready.set(f64::from(ready));
                gauges.consumers.set(f64::from(consumers));
            }
            let (depth, _) = topology::queue_depth(&open, &dlq).await?;
            dead_letters.set(f64::from(depth));
            channel = Some(open);
            Ok::<_, BrokerError>(())
        };
        // A queue not declared yet, or the broker away: the consumer's own
        // loop reports that; try again next time.
        if let Err(error) = refreshed.await {
            tracing::debug!(%error, %consumer, "queue gauges not refreshed");
        }
    }
}
