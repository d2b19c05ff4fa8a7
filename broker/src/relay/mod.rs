//! Publishes a service's outbox to its exchange.
//!
//! One relay per service is active at a time: the one whose dedicated
//! connection holds a session advisory lock. Others wait as standbys and take
//! over within [`RelayConfig::standby_poll`] when the leader's session ends.
//!
//! The leader keeps a sliding window of published, unconfirmed rows (up to
//! [`RelayConfig::window`]) instead of working in rounds:
//!
//! * woken by a commit in this process, a NOTIFY or the fallback poll, it
//!   reads unpublished rows `ORDER BY id` that are not in the window and
//!   publishes each at once, whatever confirms are still pending: an event
//!   waits for its own confirm, never for a previous batch's. No
//!   `id > last_seen` cursor: a transaction that committed late with a
//!   smaller id is still found, before the rows above it of the same
//!   aggregate;
//! * confirms are taken as they come; confirmed rows are marked by batched
//!   `UPDATE`s on a second connection, off the publish path; a row leaves the
//!   window only once its mark committed, so no read returns it twice;
//! * a nack (most often a quorum queue electing a leader) publishes the row
//!   again within milliseconds; rows still nacked then, or returned
//!   unroutable, stay unpublished and are retried each after its own backoff
//!   (1 s doubling to 1 min), so they never hold up the rows behind them.
//!
//! Marking a row published leaves a dead entry in that scan's partial index
//! until a vacuum removes it; a burst of thousands of rows would make every
//! later scan walk them (milliseconds instead of microseconds). So the leader
//! vacuums the outbox itself after every [`RelayConfig::vacuum_after_rows`]
//! marked rows, on a connection of its own while it goes on publishing,
//! rather than trust autovacuum to come by in time (or at all: it can be off).
//!
//! A relay that dies between publish and mark publishes those rows again
//! once it (or a standby) leads: delivery is at least once, and consumers
//! deduplicate.

mod window;

use std::{
    pin::{Pin, pin},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Bool, Text},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::{
    FutureExt, StreamExt,
    future::BoxFuture,
    stream::{FuturesUnordered, Stream},
};
use lapin::{
    Channel, Confirmation, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
};
use tokio::{sync::oneshot, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    Amqp, BrokerError, Outbox, envelope,
    metrics::RelayMetrics,
    outbox::notify_channel,
    pg,
    schema::{inbox, outbox},
    supervise::{Restarts, Up, sleep_or_shutdown},
    topology,
};
use window::Window;

/// How a relay finds, publishes and cleans up its outbox.
#[derive(Clone, Debug)]
pub struct RelayConfig {
    /// The publishing service; names the exchange `<prefix>.<source>.events`.
    pub source: String,
    /// Prefix of every exchange and queue name.
    pub prefix: String,
    /// URL of the service's database, for the relay's dedicated connections.
    pub database_url: String,
    /// The service's schema, holding `outbox` and `inbox`.
    pub schema: String,
    /// Most rows read from the outbox at a time.
    pub batch_size: i64,
    /// Most rows published and not yet confirmed and marked.
    pub window: usize,
    /// Longest a confirmed row waits to be marked published, so that marks
    /// (each a commit with its WAL flush) come in batches rather than one per
    /// confirm; marking is off the publish path, so no event waits for it.
    pub mark_every: Duration,
    /// Longest wait between reads when nothing wakes the relay.
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
            window: 4096,
            mark_every: Duration::from_millis(20),
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

/// How often the leader deletes expired outbox and inbox rows.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// How long a stopping leader waits for the confirms of what it published.
const SETTLE_ON_SHUTDOWN: Duration = Duration::from_secs(5);

#[derive(QueryableByName)]
struct Backlog {
    #[diesel(sql_type = BigInt)]
    rows: i64,
    #[diesel(sql_type = diesel::sql_types::Double)]
    oldest_seconds: f64,
}

/// The leader's own vacuums of the outbox: at most one at a time.
#[derive(Default)]
struct Vacuum {
    marked: usize,
    running: Option<JoinHandle<()>>,
}

impl Vacuum {
    /// Counts marked rows and starts a vacuum once there are enough.
    fn after_marking(&mut self, marked: usize, config: &RelayConfig) {
        self.marked += marked;
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

/// An outbox row to publish.
#[derive(QueryableByName)]
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

/// A confirm still to come: the row's id and the broker's answer.
type Confirming = BoxFuture<'static, (i64, Result<Confirmation, lapin::Error>)>;

/// Decided rows that are marked at once, without waiting for
/// [`RelayConfig::mark_every`].
const MARK_AT_ONCE: usize = 1000;

/// Rows whose fate the broker decided, to be written down.
#[derive(Debug, Default)]
struct Marks {
    published: Vec<i64>,
    failed: Vec<i64>,
    /// When the first of them was decided.
    since: Option<Instant>,
}

impl Marks {
    fn add(&mut self, id: i64, published: bool) {
        self.since.get_or_insert_with(Instant::now);
        if published {
            self.published.push(id);
        } else {
            self.failed.push(id);
        }
    }

    /// When these should be marked; `None` if there are none.
    fn due(&self, mark_every: Duration) -> Option<Instant> {
        let since = self.since?;
        if self.published.len() + self.failed.len() >= MARK_AT_ONCE {
            Some(since)
        } else {
            Some(since + mark_every)
        }
    }

    fn ids(&self) -> impl Iterator<Item = i64> + '_ {
        self.published.iter().chain(&self.failed).copied()
    }
}

/// The marking under way: the connection comes back with the marks written.
type Marking =
    Pin<Box<dyn Future<Output = (AsyncPgConnection, Marks, Result<(), BrokerError>)> + Send>>;

/// What the leader holds between two wake-ups.
struct Leader {
    window: Window,
    confirms: FuturesUnordered<Confirming>,
    /// Nacked rows to publish again, each with when.
    retries: Vec<(Instant, i64)>,
    /// Decided rows not yet being marked.
    marks: Marks,
    /// [`RelayConfig::mark_every`].
    mark_every: Duration,
    /// The marking connection, when no marking is under way.
    idle: Option<AsyncPgConnection>,
    marking: Option<Marking>,
    vacuum: Vacuum,
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
    /// lost) drops the connections, and with them leadership, and starts over
    /// after a backoff.
    pub async fn run(self, shutdown: CancellationToken, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let what = format!("outbox relay of {} failed", self.config.source);
        let mut restarts = Restarts::new(what, Duration::from_secs(10));
        while let Err(error) = self.lead(&shutdown, &mut ready, restarts.attempt()).await {
            if !restarts.wait(error, &shutdown).await {
                return;
            }
        }
    }

    async fn lead(
        &self,
        shutdown: &CancellationToken,
        ready: &mut Option<oneshot::Sender<()>>,
        up: Up,
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
            // Before the first read, so no commit between read and wait is missed.
            conn.batch_execute(&format!(
                "LISTEN {}",
                pg::quote_ident(&notify_channel(&config.schema))
            ))
            .await?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut leader = Leader {
            window: Window::new(config.window),
            confirms: FuturesUnordered::new(),
            retries: Vec::new(),
            marks: Marks::default(),
            mark_every: config.mark_every,
            idle: Some(pg::connect(&config.database_url, &config.schema).await?),
            marking: None,
            vacuum: Vacuum::default(),
        };
        up.mark();

        let mut last_housekeeping: Option<Instant> = None;
        let mut last_backlog: Option<Instant> = None;
        // Whether unpublished rows may be waiting: true after a wake-up, and
        // while reads come back full.
        let mut dirty = true;
        let mut poll = pin!(tokio::time::sleep(config.poll_interval));
        loop {
            if dirty && leader.window.room() > 0 {
                let limit = leader.window.room().min(config.batch_size.max(1) as usize);
                let fetched = self
                    .publish_next(&mut conn, &channel, &mut leader, limit)
                    .await?;
                dirty = fetched == limit;
                poll.as_mut()
                    .reset(tokio::time::Instant::now() + config.poll_interval);
            }
            if last_backlog.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) {
                self.measure_backlog(&mut conn).await?;
                last_backlog = Some(Instant::now());
            }
            if last_housekeeping.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_EVERY) {
                self.housekeeping(&mut conn).await?;
                last_housekeeping = Some(Instant::now());
            }
            leader.start_marking(false);

            let next_retry = leader.retries.iter().map(|(at, _)| *at).min();
            let more = dirty && leader.window.room() > 0;
            let mark_due = leader
                .idle
                .as_ref()
                .and(leader.marks.due(leader.mark_every));
            let woken = async {
                match self.outbox.as_ref() {
                    Some(outbox) => outbox.woken().await,
                    None => std::future::pending().await,
                }
            };
            let notifications = conn.notifications_stream();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                Some((id, confirmation)) = leader.confirms.next(), if !leader.confirms.is_empty() => {
                    self.settle(&mut leader, id, confirmation)?;
                    // Take every confirm already in, so they are marked together.
                    while let Some(Some((id, confirmation))) = leader.confirms.next().now_or_never() {
                        self.settle(&mut leader, id, confirmation)?;
                    }
                }
                marked = marking(&mut leader.marking) => leader.marked(marked, config)?,
                _ = sleep_until(next_retry) => self.republish(&channel, &mut leader).await?,
                _ = sleep_until(mark_due) => {}
                _ = std::future::ready(()), if more => {}
                _ = woken => dirty = true,
                notified = notified(notifications), if config.listen => {
                    notified?;
                    dirty = true;
                }
                _ = poll.as_mut() => {
                    dirty = true;
                    poll.as_mut()
                        .reset(tokio::time::Instant::now() + config.poll_interval);
                }
            }
        }
        self.settle_on_shutdown(&mut leader).await
    }

    /// Reads up to `limit` unpublished rows not in the window, publishes
    /// each and puts it in the window; how many were read.
    async fn publish_next(
        &self,
        conn: &mut AsyncPgConnection,
        channel: &Channel,
        leader: &mut Leader,
        limit: usize,
    ) -> Result<usize, BrokerError> {
        let started = Instant::now();
        let (lows, highs) = leader.window.runs();
        let rows: Vec<Row> = pg::statement(
            "SELECT id, event_id, event_type, payload, headers, created_at FROM outbox
             WHERE published_at IS NULL
               AND (next_attempt_at IS NULL OR next_attempt_at <= now())
               AND NOT EXISTS (SELECT FROM unnest($1::int8[], $2::int8[]) AS flight(low, high)
                               WHERE outbox.id BETWEEN flight.low AND flight.high)
             ORDER BY id LIMIT $3",
        )
        .bind::<Array<BigInt>, _>(&lows)
        .bind::<Array<BigInt>, _>(&highs)
        .bind::<BigInt, _>(limit as i64)
        .load(conn)
        .await?;
        let fetched = rows.len();
        let fetched_in = started.elapsed();
        for row in rows {
            let confirm = self.publish(channel, &row).await?;
            let id = row.id;
            leader.window.insert(row);
            leader.confirms.push(confirming(id, confirm));
        }
        if fetched > 0 {
            tracing::debug!(
                fetched,
                in_flight = leader.window.len(),
                ?fetched_in,
                took = ?started.elapsed(),
                "relay published"
            );
        }
        Ok(fetched)
    }

    /// Publishes one row; the confirm comes later.
    async fn publish(&self, channel: &Channel, row: &Row) -> Result<PublisherConfirm, BrokerError> {
        let exchange = topology::exchange(&self.config.prefix, &self.config.source);
        let properties = envelope::properties(
            &self.config.source,
            row.event_id,
            &row.event_type,
            row.created_at,
            &row.headers,
        );
        Ok(channel
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
            .await?)
    }

    /// Takes the broker's answer for row `id`.
    fn settle(
        &self,
        leader: &mut Leader,
        id: i64,
        confirmation: Result<Confirmation, lapin::Error>,
    ) -> Result<(), BrokerError> {
        // A failed confirm means the channel is gone: start over, and the
        // rows in the window are published again.
        let confirmation = confirmation?;
        let Some(flight) = leader.window.get_mut(id) else {
            return Ok(());
        };
        let row = &flight.row;
        match confirmation {
            Confirmation::Ack(None) => {
                self.metrics
                    .confirm_seconds
                    .record(flight.published_at.elapsed().as_secs_f64());
                self.metrics.published.increment(1);
                leader.marks.add(id, true);
            }
            Confirmation::Ack(Some(returned)) => {
                tracing::warn!(
                    event_id = %row.event_id,
                    event_type = %row.event_type,
                    reply = %returned.reply_text,
                    "event returned unroutable: no queue is bound for it yet; it will be retried"
                );
                self.metrics.failed.increment(1);
                leader.marks.add(id, false);
            }
            // A nack is most often a quorum queue electing a new leader (a
            // node was lost): it takes milliseconds, so publish again soon,
            // before the slow per-row backoff meant for refusals.
            Confirmation::Nack(_) => {
                self.metrics.nacked.increment(1);
                match nack_retries().nth(flight.nacks) {
                    Some(delay) => {
                        flight.nacks += 1;
                        tracing::debug!(event_id = %row.event_id, ?delay, "broker nacked the event; publishing it again");
                        leader.retries.push((Instant::now() + delay, id));
                    }
                    None => {
                        tracing::warn!(event_id = %row.event_id, "broker refused the event; it will be retried");
                        self.metrics.failed.increment(1);
                        leader.marks.add(id, false);
                    }
                }
            }
            Confirmation::NotRequested => {
                tracing::error!("publisher confirms are off; not marking");
                self.metrics.failed.increment(1);
                leader.marks.add(id, false);
            }
        }
        Ok(())
    }

    /// Publishes again the nacked rows whose delay is over.
    async fn republish(&self, channel: &Channel, leader: &mut Leader) -> Result<(), BrokerError> {
        let now = Instant::now();
        let (due, later) = leader.retries.drain(..).partition(|(at, _)| *at <= now);
        leader.retries = later;
        for (_, id) in due {
            let Some(flight) = leader.window.get_mut(id) else {
                continue;
            };
            let confirm = self.publish(channel, &flight.row).await?;
            flight.published_at = Instant::now();
            leader.confirms.push(confirming(id, confirm));
        }
        Ok(())
    }

    /// On shutdown: waits a while for the confirms of what was published and
    /// marks what they decided; the rest is published again by the next leader.
    async fn settle_on_shutdown(&self, leader: &mut Leader) -> Result<(), BrokerError> {
        let deadline = tokio::time::sleep(SETTLE_ON_SHUTDOWN);
        let mut deadline = pin!(deadline);
        while !leader.confirms.is_empty() && leader.retries.is_empty() {
            tokio::select! {
                Some((id, confirmation)) = leader.confirms.next() => self.settle(leader, id, confirmation)?,
                _ = deadline.as_mut() => break,
            }
        }
        if let Some(marking) = leader.marking.take() {
            let marked = marking.await;
            leader.marked(marked, &self.config)?;
        }
        leader.start_marking(true);
        if let Some(marking) = leader.marking.take() {
            let marked = marking.await;
            leader.marked(marked, &self.config)?;
        }
        if !leader.window.is_empty() {
            tracing::info!(
                unmarked = leader.window.len(),
                "relay stopped with rows unconfirmed; the next leader publishes them"
            );
        }
        Ok(())
    }

    async fn measure_backlog(&self, conn: &mut AsyncPgConnection) -> Result<(), BrokerError> {
        let backlog: Backlog = pg::statement(
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
        use diesel::{ExpressionMethods, QueryDsl};
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

impl Leader {
    /// Starts writing down the decided rows once they are due (or `now`),
    /// unless a marking is under way (the next one then takes everything
    /// decided meanwhile).
    fn start_marking(&mut self, now: bool) {
        match self.marks.due(self.mark_every) {
            None => return,
            Some(due) if !now && due > Instant::now() => return,
            Some(_) => {}
        }
        let Some(mut conn) = self.idle.take() else {
            return;
        };
        let marks = std::mem::take(&mut self.marks);
        self.marking = Some(Box::pin(async move {
            let result = mark(&mut conn, &marks).await;
            (conn, marks, result)
        }));
    }

    /// A marking committed: its rows leave the window.
    fn marked(
        &mut self,
        (conn, marks, result): (AsyncPgConnection, Marks, Result<(), BrokerError>),
        config: &RelayConfig,
    ) -> Result<(), BrokerError> {
        result?;
        self.idle = Some(conn);
        let ids: Vec<i64> = marks.ids().collect();
        self.window.remove(&ids);
        self.vacuum.after_marking(ids.len(), config);
        Ok(())
    }
}

/// Marks confirmed rows published, and gives failed rows their backoff.
async fn mark(conn: &mut AsyncPgConnection, marks: &Marks) -> Result<(), BrokerError> {
    let started = Instant::now();
    if !marks.failed.is_empty() {
        // Each failed event waits on its own doubling backoff (1 s to 1 min)
        // and never holds up the events behind it.
        pg::statement(
            "UPDATE outbox SET attempts = attempts + 1,
               next_attempt_at = now() + least(interval '1 second' * power(2, attempts), interval '1 minute')
             WHERE id = ANY($1)",
        )
        .bind::<Array<BigInt>, _>(&marks.failed)
        .execute(conn)
        .await?;
    }
    if !marks.published.is_empty() {
        pg::statement("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
            .bind::<Array<BigInt>, _>(&marks.published)
            .execute(conn)
            .await?;
    }
    tracing::debug!(
        published = marks.published.len(),
        failed = marks.failed.len(),
        took = ?started.elapsed(),
        "relay marked"
    );
    Ok(())
}

/// A row's confirm, tagged with its id.
fn confirming(id: i64, confirm: PublisherConfirm) -> Confirming {
    Box::pin(async move { (id, confirm.await) })
}

/// Resolves when the marking under way is done; never if there is none.
async fn marking(
    marking: &mut Option<Marking>,
) -> (AsyncPgConnection, Marks, Result<(), BrokerError>) {
    match marking {
        Some(future) => {
            let done = future.await;
            *marking = None;
            done
        }
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`; forever if `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The next NOTIFY, after which every one already queued is taken too (many
/// commits, one read).
async fn notified(
    notifications: impl Stream<Item = diesel::QueryResult<diesel::pg::PgNotification>>,
) -> Result<(), BrokerError> {
    let mut notifications = pin!(notifications);
    match notifications.next().await {
        Some(Ok(_)) => {
            while let Some(Some(Ok(_))) = notifications.next().now_or_never() {}
            Ok(())
        }
        Some(Err(error)) => Err(error.into()),
        None => Err(BrokerError::ListenerClosed),
    }
}

/// Delays before publishing a nacked event again: 10 ms doubling to 200 ms,
/// about 1.3 s in all, long enough for a quorum queue's leader election;
/// what is still nacked then waits for its row's backoff.
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
