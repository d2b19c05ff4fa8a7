//! One way to keep long-lived work going: every reconnect loop (relay,
//! consumers, outbox notifier, `WatchOrder`'s listener, batches waiting out a
//! database outage) restarts its work after a failure through [`Restarts`],
//! with the same backoff: backon's exponential policy with jitter.

use std::{
    borrow::Cow,
    fmt::Display,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

/// The first delay after a failure.
const FIRST_DELAY: Duration = Duration::from_millis(100);

/// Delays between attempts: 100 ms doubling up to `max`, with jitter so that
/// many clients do not retry in step; never giving up.
pub fn backoff(max: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(FIRST_DELAY)
        .with_max_delay(max)
        .with_jitter()
        .without_max_times()
        .build()
}

/// The delay before retry number `attempt` (0-based) of [`backoff`], for
/// work that counts its own attempts (a delivery's redeliveries).
pub(crate) fn backoff_delay(attempt: u32, max: Duration) -> Duration {
    backoff(max).nth(attempt as usize).unwrap_or(max)
}

/// Sleeps for `delay` unless `shutdown` fires first; false on shutdown.
pub async fn sleep_or_shutdown(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.cancelled() => false,
    }
}

/// Handed to each attempt of supervised work: [`Up::mark`] says that it is
/// established (connected, consuming, leading), so that its next failure is
/// retried after the shortest delay again rather than the last one.
#[derive(Clone, Debug, Default)]
pub struct Up(Arc<AtomicBool>);

impl Up {
    /// The work is established.
    pub fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn is_marked(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The restarts of one piece of long-lived work, named `what` in the log:
///
/// ```ignore
/// let mut restarts = Restarts::new("relay failed", Duration::from_secs(10));
/// while let Err(error) = lead(restarts.attempt()).await {
///     if !restarts.wait(error, &shutdown).await {
///         return; // shut down while waiting
///     }
/// }
/// ```
#[derive(Debug)]
pub struct Restarts {
    what: Cow<'static, str>,
    max: Duration,
    delays: ExponentialBackoff,
    up: Up,
}

impl Restarts {
    /// No attempt yet; delays grow up to `max`. A `&'static str` costs no
    /// allocation, so a `Restarts` may be made for each short-lived task.
    pub fn new(what: impl Into<Cow<'static, str>>, max: Duration) -> Self {
        Restarts {
            what: what.into(),
            max,
            delays: backoff(max),
            up: Up::default(),
        }
    }

    /// The handle of the next attempt.
    pub fn attempt(&mut self) -> Up {
        self.up = Up::default();
        self.up.clone()
    }

    /// After an attempt failed with `error`: logs it, and waits the next
    /// delay (the first one again if the attempt had marked itself up).
    /// False if `shutdown` fired meanwhile.
    pub async fn wait(&mut self, error: impl Display, shutdown: &CancellationToken) -> bool {
        if self.up.is_marked() {
            self.delays = backoff(self.max);
        }
        let delay = self.delays.next().unwrap_or(self.max);
        tracing::warn!(error = %error, retry_in = ?delay, "{}", self.what);
        sleep_or_shutdown(delay, shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_start_small_grow_and_stay_under_the_cap() {
        let delays: Vec<Duration> = backoff(Duration::from_secs(1)).take(12).collect();
        // Jitter adds up to one more delay's worth to each.
        assert!(delays[0] >= FIRST_DELAY && delays[0] <= 2 * FIRST_DELAY);
        assert!(delays[3] >= Duration::from_millis(800));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
    }

    #[tokio::test(start_paused = true)]
    async fn delays_grow_while_failing_and_start_small_after_an_established_attempt() {
        let shutdown = CancellationToken::new();
        let mut restarts = Restarts::new("failing", Duration::from_secs(10));
        let mut gaps = Vec::new();
        for attempt in 1..=5 {
            let up = restarts.attempt();
            if attempt == 4 {
                up.mark();
            }
            let before = tokio::time::Instant::now();
            assert!(restarts.wait("down", &shutdown).await);
            gaps.push(before.elapsed());
        }
        assert!(gaps[2] > gaps[0], "{gaps:?}");
        assert!(gaps[3] <= 2 * FIRST_DELAY, "{gaps:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_wait() {
        let shutdown = CancellationToken::new();
        shutdown.cancel();
        let mut restarts = Restarts::new("failing", Duration::from_secs(10));
        restarts.attempt();
        assert!(!restarts.wait("down", &shutdown).await);
    }
}
