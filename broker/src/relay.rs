//! Publishes a service's outbox to its exchange.
//!
//! One relay per service is active at a time: the one whose dedicated
//! connection holds a session advisory lock. Others wait as standbys and take
//! over within [`RelayConfig::standby_poll`] when the leader's session ends.
//!
//! Each round the leader reads unpublished rows `ORDER BY id LIMIT batch_size`
//! (no `id > last_seen` cursor: a transaction that committed late with a smaller
//! id is still found), publishes them all before waiting for any confirm, and
//! marks exactly the rows the broker confirmed and routed. A full batch starts
//! the next round at once; otherwise the relay sleeps until a NOTIFY from a
//! committing writer or the fallback poll. Rows that were nacked or returned
//! unroutable stay unpublished and are retried, each after its own backoff
//! (1 s doubling to 1 min), so they never hold up the rows behind them.
//!
//! Marking a row published leaves a dead entry in that scan's partial index
//! until a vacuum removes it; a burst of thousands of rows would make every
//! later round walk them (milliseconds per round instead of microseconds). So
//! the leader vacuums the outbox itself after every
//! [`RelayConfig::vacuum_after_rows`] marked rows, on a connection of its own
//! while it goes on publishing, rather than trust autovacuum to come by in
//! time (or at all: it can be off).
//!
//! A relay that dies between publish and mark publishes those rows again on
//! the next round: delivery is at least once, and consumers deduplicate.

use std::{
    pin::pin,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use diesel::{
    BoolExpressionMethods, ExpressionMethods, QueryDsl, QueryableByName, Selectable,
    SelectableHelper,
    sql_types::{Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::{FutureExt, StreamExt, future::join_all};
use lapin::{Channel, Confirmation, options::BasicPublishOptions, options::ConfirmSelectOptions};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Amqp, BrokerError, Outbox, backoff_delay, envelope, metrics::RelayMetrics,
    outbox::notify_channel, pg, schema::inbox, schema::outbox, sleep_or_shutdown, topology,
};

/// How a relay finds, publishes and cleans up its outbox.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The publishing service; names the exchange `<prefix>.<source>.events`.
    pub source: String,
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// URL of the service's database, for the relay's dedicated connection.
    pub database_url: String,
    /// The service's schema, holding `outbox` and `inbox`.
    pub schema: String,
    /// Rows published per round.
    pub batch_size: i64,
    /// Longest wait between rounds when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Whether to LISTEN for writers' NOTIFY (otherwise poll only).
    pub listen: bool,
    /// How often a standby tries to become the leader.
    pub standby_poll: Duration,
    /// Published outbox rows older than this are deleted.
    pub outbox_retention: Duration,
    /// Inbox rows older than this are deleted; must exceed the longest time a
    /// message can wait for redelivery.
    pub inbox_retention: Duration,
    /// Rows marked (published or failed) between two of the leader's own
    /// vacuums of the outbox.
    pub vacuum_after_rows: usize,
}

impl RelayConfig {
    /// Defaults for a service `source` in `schema`.
    pub fn new(source: &str, prefix: &str, database_url: &str, schema: &str) -> Self {
        RelayConfig {
            source: source.to_owned(),
            prefix: prefix.to_owned(),
            database_url: database_url.to_owned(),
            schema: schema.to_owned(),
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            listen: true,
            standby_poll: Duration::from_secs(1),
            outbox_retention: Duration::from_secs(24 * 3600),
            inbox_retention: Duration::from_secs(7 * 24 * 3600),
            vacuum_after_rows: 10_000,
        }
    }
}

/// How often the leader measures the backlog for the metrics.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

#[derive(QueryableByName)]
struct Backlog {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    rows: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    oldest_seconds: f64,
}

/// How often the leader deletes expired outbox and inbox rows.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// The leader's own vacuums of the outbox: at most one at a time.
#[derive(Default)]
struct Vacuum {
    marked: usize,
    running: Option<JoinHandle<()>>,
}

impl Vacuum {
    /// Counts a round's marked rows and starts a vacuum once there are enough.
    fn after_round(&mut self, round: &Round, config: &RelayConfig) {
        self.marked += round.fetched;
        if self.marked < config.vacuum_after_rows
            || self
                .running
                .as_ref()
                .is_some_and(|task| !task.is_finished())
        {
            return;
        }
        self.marked = 0;
        let (url, schema) = (config.database_url.clone(), config.schema.clone());
        self.running = Some(tokio::spawn(async move {
            let started = Instant::now();
            let vacuumed = async {
                let mut conn = pg::connect(&url, &schema).await?;
                // SKIP_LOCKED: if autovacuum is at it already, leave it be.
                conn.batch_execute("VACUUM (SKIP_LOCKED) outbox").await?;
                Ok::<_, BrokerError>(())
            };
            match vacuumed.await {
                Ok(()) => tracing::debug!(took = ?started.elapsed(), %schema, "outbox vacuumed"),
                Err(error) => {
                    tracing::warn!(%error, %schema, "outbox vacuum failed; the next one retries")
                }
            }
        }));
    }
}

/// The outbox relay of one service.
pub struct Relay {
    config: RelayConfig,
    amqp: Amqp,
    metrics: RelayMetrics,
    outbox: Option<Outbox>,
}

#[derive(diesel::Queryable, Selectable)]
#[diesel(table_name = outbox)]
struct Row {
    id: i64,
    event_id: Uuid,
    event_type: String,
    payload: Vec<u8>,
    headers: serde_json::Value,
    created_at: DateTime<Utc>,
}

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = Bool)]
    locked: bool,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Round {
    fetched: usize,
    published: usize,
}

impl Relay {
    /// A relay publishing through `amqp`.
    pub fn new(config: RelayConfig, amqp: Amqp) -> Self {
        let metrics = RelayMetrics::new(&config.source);
        Relay {
            config,
            amqp,
            metrics,
            outbox: None,
        }
    }

    /// Also wakes when `outbox` (this process's writer) reports a commit,
    /// without waiting for a NOTIFY.
    pub fn woken_by(mut self, outbox: Outbox) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Runs until `shutdown`: declares the exchange (then signals `ready`),
    /// waits to become leader, and publishes. Every failure (database or broker
    /// lost) drops the connection, and with it leadership, and starts over after
    /// a backoff.
    pub async fn run(self, shutdown: CancellationToken, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut attempt = 0;
        loop {
            match self.lead(&shutdown, &mut ready, &mut attempt).await {
                Ok(()) => return,
                Err(error) => {
                    let delay = backoff_delay(attempt, Duration::from_secs(10));
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(%error, retry_in = ?delay, source = %self.config.source, "outbox relay failed");
                    if !sleep_or_shutdown(delay, &shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    async fn lead(
        &self,
        shutdown: &CancellationToken,
        ready: &mut Option<oneshot::Sender<()>>,
        attempt: &mut u32,
    ) -> Result<(), BrokerError> {
        let config = &self.config;
        let channel = self.amqp.channel().await?;
        topology::declare_exchange(&channel, &config.prefix, &config.source).await?;
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }

        let mut conn = pg::connect(&config.database_url, &config.schema).await?;
        while !try_lock(&mut conn, &config.schema).await? {
            if !sleep_or_shutdown(config.standby_poll, shutdown).await {
                return Ok(());
            }
        }
        tracing::info!(source = %config.source, "outbox relay is the leader");
        let _leading = Leading::new(self.outbox.as_ref());
        if config.listen {
            // Before the first scan, so no commit between scan and wait is missed.
            conn.batch_execute(&format!(
                "LISTEN {}",
                pg::quote_ident(&notify_channel(&config.schema))
            ))
            .await?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *attempt = 0;

        let mut last_housekeeping: Option<Instant> = None;
        let mut last_backlog: Option<Instant> = None;
        let mut vacuum = Vacuum::default();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let round = self.publish_round(&mut conn, &channel).await?;
            vacuum.after_round(&round, config);
            if last_backlog.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
                self.measure_backlog(&mut conn).await?;
                last_backlog = Some(Instant::now());
            }
            if last_housekeeping.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
                self.housekeeping(&mut conn).await?;
                last_housekeeping = Some(Instant::now());
            }
            if round.fetched as i64 == config.batch_size {
                continue;
            }
            if !wait_for_work(
                &mut conn,
                self.outbox.as_ref(),
                config.poll_interval,
                shutdown,
            )
            .await?
            {
                return Ok(());
            }
        }
    }

    async fn publish_round(
        &self,
        conn: &mut AsyncPgConnection,
        channel: &Channel,
    ) -> Result<Round, BrokerError> {
        let round_started = Instant::now();
        let rows: Vec<Row> = outbox::table
            .filter(outbox::published_at.is_null())
            .filter(
                outbox::next_attempt_at
                    .is_null()
                    .or(outbox::next_attempt_at.le(diesel::dsl::now)),
            )
            .order(outbox::id)
            .limit(self.config.batch_size)
            .select(Row::as_select())
            .load(conn)
            .await?;
        if rows.is_empty() {
            return Ok(Round::default());
        }

        let fetched_in = round_started.elapsed();
        let started = Instant::now();
        let mut confirmed = Vec::with_capacity(rows.len());
        let mut failed = Vec::new();
        let mut pending: Vec<&Row> = rows.iter().collect();
        let mut republish = nack_retries();
        while !pending.is_empty() {
            let confirmations = self.publish(channel, &pending).await?;
            let mut nacked = Vec::new();
            for (row, confirmation) in pending.into_iter().zip(confirmations) {
                match confirmation? {
                    Confirmation::Ack(None) => confirmed.push(row.id),
                    Confirmation::Ack(Some(returned)) => {
                        tracing::warn!(
                            event_id = %row.event_id,
                            event_type = %row.event_type,
                            reply = %returned.reply_text,
                            "event returned unroutable: no queue is bound for it yet; it will be retried"
                        );
                        failed.push(row.id);
                    }
                    Confirmation::Nack(_) => nacked.push(row),
                    Confirmation::NotRequested => {
                        tracing::error!("publisher confirms are off; not marking");
                        failed.push(row.id);
                    }
                }
            }
            // A nack is most often a quorum queue electing a new leader (a
            // node was lost): it takes milliseconds, so publish again soon,
            // before the slow per-row backoff meant for refusals.
            match republish.next() {
                Some(delay) if !nacked.is_empty() => {
                    tracing::debug!(
                        nacked = nacked.len(),
                        ?delay,
                        "broker nacked events; publishing them again"
                    );
                    self.metrics.nacked.increment(nacked.len() as u64);
                    tokio::time::sleep(delay).await;
                }
                _ => {
                    for row in &nacked {
                        tracing::warn!(event_id = %row.event_id, "broker refused the event; it will be retried");
                    }
                    failed.extend(nacked.iter().map(|row| row.id));
                    nacked.clear();
                }
            }
            pending = nacked;
        }
        let confirmed_in = started.elapsed();
        self.metrics
            .confirm_seconds
            .record(confirmed_in.as_secs_f64());
        self.metrics.published.increment(confirmed.len() as u64);
        self.metrics.failed.increment(failed.len() as u64);
        if !failed.is_empty() {
            // Each failed event waits on its own doubling backoff (1 s to 1 min)
            // and never holds up the events behind it.
            diesel::sql_query(
                "UPDATE outbox SET attempts = attempts + 1,
                   next_attempt_at = now() + least(interval '1 second' * power(2, attempts), interval '1 minute')
                 WHERE id = ANY($1)",
            )
            .bind::<diesel::sql_types::Array<diesel::sql_types::BigInt>, _>(&failed)
            .execute(conn)
            .await?;
        }
        if !confirmed.is_empty() {
            diesel::update(outbox::table.filter(outbox::id.eq_any(&confirmed)))
                .set(outbox::published_at.eq(diesel::dsl::now))
                .execute(conn)
                .await?;
        }
        tracing::debug!(
            fetched = rows.len(),
            published = confirmed.len(),
            ?fetched_in,
            ?confirmed_in,
            took = ?round_started.elapsed(),
            "relay round"
        );
        Ok(Round {
            fetched: rows.len(),
            published: confirmed.len(),
        })
    }

    /// Publishes `rows` (all before waiting for any confirm) and waits for
    /// their confirms, in order.
    async fn publish(
        &self,
        channel: &Channel,
        rows: &[&Row],
    ) -> Result<Vec<Result<Confirmation, lapin::Error>>, BrokerError> {
        let exchange = topology::exchange(&self.config.prefix, &self.config.source);
        let mut confirms = Vec::with_capacity(rows.len());
        for row in rows {
            let properties = envelope::properties(
                &self.config.source,
                row.event_id,
                &row.event_type,
                row.created_at,
                &row.headers,
            );
            let confirm = channel
                .basic_publish(
                    exchange.as_str().into(),
                    row.event_type.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &row.payload,
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }
        Ok(join_all(confirms).await)
    }

    async fn measure_backlog(&self, conn: &mut AsyncPgConnection) -> Result<(), BrokerError> {
        let backlog: Backlog = diesel::sql_query(
            "SELECT count(*) AS rows,
                    coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_seconds
             FROM outbox WHERE published_at IS NULL",
        )
        .get_result(conn)
        .await?;
        self.metrics.backlog.set(backlog.rows as f64);
        self.metrics.oldest_age_seconds.set(backlog.oldest_seconds);
        Ok(())
    }

    async fn housekeeping(&self, conn: &mut AsyncPgConnection) -> Result<(), BrokerError> {
        let outbox_cutoff = Utc::now() - self.config.outbox_retention;
        let inbox_cutoff = Utc::now() - self.config.inbox_retention;
        let outbox_deleted =
            diesel::delete(outbox::table.filter(outbox::published_at.lt(outbox_cutoff)))
                .execute(conn)
                .await?;
        let inbox_deleted = diesel::delete(inbox::table.filter(inbox::applied_at.lt(inbox_cutoff)))
            .execute(conn)
            .await?;
        if outbox_deleted + inbox_deleted > 0 {
            tracing::info!(
                outbox_deleted,
                inbox_deleted,
                "expired outbox and inbox rows deleted"
            );
        }
        Ok(())
    }
}

/// Delays before publishing nacked events again within the round: 10 ms
/// doubling to 200 ms, about 1.3 s in all, long enough for a quorum queue's
/// leader election; what is still nacked then waits for its row's backoff.
fn nack_retries() -> impl Iterator<Item = Duration> {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(10))
        .with_max_delay(Duration::from_millis(200))
        .with_max_times(10)
        .build()
}

/// Tells this process's outbox that its relay leads, for as long as it lives.
struct Leading<'a>(Option<&'a Outbox>);

impl<'a> Leading<'a> {
    fn new(outbox: Option<&'a Outbox>) -> Self {
        if let Some(outbox) = outbox {
            outbox.set_leading(true);
        }
        Leading(outbox)
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if let Some(outbox) = self.0 {
            outbox.set_leading(false);
        }
    }
}

/// Takes the service's relay lock on this session, if free.
async fn try_lock(conn: &mut AsyncPgConnection, schema: &str) -> Result<bool, BrokerError> {
    let row: Locked =
        diesel::sql_query("SELECT pg_try_advisory_lock(hashtext('outbox relay ' || $1)) AS locked")
            .bind::<Text, _>(schema)
            .get_result(conn)
            .await?;
    Ok(row.locked)
}

/// Waits for a commit in this process, a NOTIFY, the poll interval or
/// shutdown; false on shutdown.
async fn wait_for_work(
    conn: &mut AsyncPgConnection,
    local: Option<&Outbox>,
    poll: Duration,
    shutdown: &CancellationToken,
) -> Result<bool, BrokerError> {
    let mut notifications = pin!(conn.notifications_stream());
    let woken = async {
        match local {
            Some(outbox) => outbox.woken().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = woken => Ok(true),
        notification = notifications.next() => match notification {
            Some(Ok(_)) => {
                // Many commits, one round: drain what is already queued.
                while let Some(Some(Ok(_))) = notifications.next().now_or_never() {}
                Ok(true)
            }
            Some(Err(error)) => Err(error.into()),
            None => Err(BrokerError::ListenerClosed),
        },
        _ = tokio::time::sleep(poll) => Ok(true),
        _ = shutdown.cancelled() => Ok(false),
    }
}
