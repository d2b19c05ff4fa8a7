//! R1–R6: each starts its own stack, runs the load, injects its fault,
//! settles and reconciles.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fmt,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use dbps::{
    Event,
    inventory::v1::ProductChanged,
    order::v1::{
        OrderApproved, OrderCancelled, OrderCreated, OrderRejected,
        order_service_client::OrderServiceClient,
    },
};
use futures_util::StreamExt;
use lapin::{
    BasicProperties,
    options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions},
    types::FieldTable,
};
use prost::Message;
use tokio::process::Command;

use testkit::{
    stack::Stack,
    workload::{self, World},
};

use crate::{
    Options, load,
    load::Outcome,
    reconcile::{self, Verdict},
};

/// One scenario's result.
pub struct Report {
    pub(crate) id: String,
    pub(crate) name: &'static str,
    pub(crate) orders: usize,
    pub(crate) verdict: Verdict,
    pub(crate) recovery: Option<Duration>,
    pub(crate) expected_dead_letters: BTreeMap<String, u32>,
    /// `key=value` figures printed on the scenario's first line.
    pub(crate) headline: Vec<String>,
    pub(crate) details: Vec<String>,
    /// Checks of the scenario's own that failed.
    pub(crate) failures: Vec<String>,
    pub(crate) skipped: Option<String>,
}

impl Report {
    pub(crate) fn skipped(id: &str, name: &'static str, why: String) -> Report {
        Report {
            id: id.to_owned(),
            name,
            orders: 0,
            verdict: Verdict::default(),
            recovery: None,
            expected_dead_letters: BTreeMap::new(),
            headline: Vec::new(),
            details: Vec::new(),
            failures: Vec::new(),
            skipped: Some(why),
        }
    }

    /// Nothing lost or doubled and every check of the scenario held. A
    /// skipped scenario proved nothing: it passes only when skips are
    /// allowed (`--allow-skips`).
    pub fn passed(&self, allow_skips: bool) -> bool {
        match self.skipped {
            Some(_) => allow_skips,
            None => self.verdict.clean(&self.expected_dead_letters) && self.failures.is_empty(),
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.skipped {
            return write!(f, "{} {}: skipped: {why}", self.id, self.name);
        }
        let recovery = self
            .recovery
            .map(|d| d.as_millis().to_string())
            .unwrap_or_else(|| "none".into());
        write!(
            f,
            "{} {}: orders={} lost={} doubled={} recovery_ms={recovery}",
            self.id, self.name, self.orders, self.verdict.lost, self.verdict.doubled
        )?;
        for figure in &self.headline {
            write!(f, " {figure}")?;
        }
        let v = &self.verdict;
        write!(
            f,
            "\n    unpublished={} pending={} dead_letters={:?}",
            v.unpublished, v.pending, v.dead_letters
        )?;
        for detail in &self.details {
            write!(f, "\n    {detail}")?;
        }
        for note in &v.notes {
            write!(f, "\n    ! {note}")?;
        }
        for failure in &self.failures {
            write!(f, "\n    FAILED: {failure}")?;
        }
        Ok(())
    }
}

/// Runs scenario `id`.
pub async fn run(id: &str, options: &Options) -> anyhow::Result<Report> {
    match id {
        "R1" => relay_kill(options).await,
        "R2" => broker_restart(options).await,
        "R3" => consumer_crash(options).await,
        "R4" => poison(options).await,
        "R5" => postgres_restart(options).await,
        "R6" => relay_failover(options).await,
        other => bail!("unknown scenario {other} (R1..R6)"),
    }
}

/// Starts the load in the background.
fn start_load(
    stack: &Stack,
    world: &World,
    options: &Options,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<Outcome>>> {
    let client = OrderServiceClient::new(stack.channel("order")?);
    Ok(tokio::spawn(load::run(
        client,
        world.clone(),
        options.orders,
        options.rate,
    )))
}

/// Waits until the reconciliation is clean, or the settle deadline passes;
/// returns the last verdict and how long it took.
async fn settle(
    stack: &Stack,
    world: &World,
    outcome: &Outcome,
    expected_dead_letters: &BTreeMap<String, u32>,
    options: &Options,
) -> anyhow::Result<(Verdict, Option<Duration>)> {
    let started = Instant::now();
    loop {
        let verdict = reconcile::check(stack, world, &outcome.accepted).await?;
        if verdict.clean(expected_dead_letters) {
            return Ok((verdict, Some(started.elapsed())));
        }
        if started.elapsed() > options.settle {
            return Ok((verdict, None));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Run {
    /// [`Run::finish`] plus the per-order event order the checker saw.
    async fn finish_checked(
        mut self,
        stack: Stack,
        world: &World,
        outcome: Outcome,
        options: &Options,
        seen: &Seen,
    ) -> anyhow::Result<Report> {
        // Settle first, so the checker has seen every event.
        settle(
            &stack,
            world,
            &outcome,
            &self.expected_dead_letters,
            options,
        )
        .await?;
        let (misordered, duplicates, orders_seen) = check_order(seen)?;
        if misordered > 0 {
            self.failures
                .push(format!("{misordered} orders' events arrived out of order"));
        }
        self.details.push(format!("orders_checked={orders_seen} misordered={misordered} redelivered_duplicates={duplicates}"));
        self.finish(stack, world, outcome, options).await
    }
}

/// The longest time no order was accepted during the load: what clients saw
/// of the fault.
pub(crate) fn longest_gap(outcome: &Outcome) -> Duration {
    let mut times: Vec<Instant> = outcome.accepted.iter().map(|o| o.at).collect();
    times.sort();
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// What a scenario has found besides the reconciliation.
struct Run {
    id: &'static str,
    name: &'static str,
    expected_dead_letters: BTreeMap<String, u32>,
    details: Vec<String>,
    failures: Vec<String>,
}

impl Run {
    fn new(id: &'static str, name: &'static str) -> Run {
        Run {
            id,
            name,
            expected_dead_letters: BTreeMap::new(),
            details: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Settles, builds the report, tears the stack down.
    async fn finish(
        mut self,
        stack: Stack,
        world: &World,
        outcome: Outcome,
        options: &Options,
    ) -> anyhow::Result<Report> {
        let (verdict, settled) = settle(
            &stack,
            world,
            &outcome,
            &self.expected_dead_letters,
            options,
        )
        .await?;
        self.details.push(format!(
            "unavailable_answers={} longest_gap_between_accepted_orders_ms={}",
            outcome.unavailable,
            longest_gap(&outcome).as_millis()
        ));
        self.failures
            .extend(outcome.unexpected.iter().take(5).cloned());
        if settled.is_none() {
            self.failures
                .push("did not settle before the deadline".into());
        }
        let report = Report {
            id: self.id.to_owned(),
            name: self.name,
            orders: outcome.accepted.len(),
            verdict,
            recovery: settled,
            expected_dead_letters: self.expected_dead_letters,
            headline: Vec::new(),
            details: self.details,
            failures: self.failures,
            skipped: None,
        };
        stack.teardown().await?;
        Ok(report)
    }
}

async fn prepared(
    id: &str,
    options: &Options,
    extra: &[(&str, &str, &str)],
) -> anyhow::Result<(Stack, World)> {
    let mut stack = Stack::new(id, &options.stack()).await?;
    stack.start_all(extra).await?;
    let world = load::setup(&stack, options.orders).await?;
    Ok((stack, world))
}

/// R1: the order service's relay runs as its own process and is SIGKILLed
/// (and restarted) every 2 s while orders come in.
async fn relay_kill(options: &Options) -> anyhow::Result<Report> {
    let (mut stack, world) = prepared("R1", options, &[("order", "RUN_RELAY", "false")]).await?;
    stack.spawn("order-relay", "order", &["relay"], &[])?;
    let load = start_load(&stack, &world, options)?;
    let mut kills = 0;
    while !load.is_finished() {
        tokio::time::sleep(Duration::from_secs(2)).await;
        stack.kill("order-relay").await?;
        stack.spawn("order-relay", "order", &["relay"], &[])?;
        kills += 1;
    }
    let outcome = load.await??;
    let mut run = Run::new("R1", "relay-kill");
    run.details.push(format!("relay_kills={kills}"));
    run.finish(stack, &world, outcome, options).await
}

async fn can_run(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output().await {
        Ok(output) if output.status.success() => Ok(()),
        Ok(output) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => Err(format!("cannot run {program}: {error}")),
    }
}

/// R2: RabbitMQ's application stops for 5 s mid-load and starts again.
/// PlaceOrder must keep succeeding (writes touch only Postgres); the backlog
/// drains afterwards.
async fn broker_restart(options: &Options) -> anyhow::Result<Report> {
    if let Err(why) = can_run("rabbitmqctl", &["-q", "status"]).await {
        return Ok(Report::skipped("R2", "broker-restart", why));
    }
    let (stack, world) = prepared("R2", options, &[]).await?;
    let load = start_load(&stack, &world, options)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped_at = Instant::now();
    can_run("rabbitmqctl", &["-q", "stop_app"])
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let started = can_run("rabbitmqctl", &["-q", "start_app"]).await;
    let restarted_at = Instant::now();
    started.map_err(anyhow::Error::msg)?;
    let outcome = load.await??;
    let during = outcome
        .accepted
        .iter()
        .filter(|o| o.at > stopped_at && o.at < restarted_at)
        .count();
    let mut run = Run::new("R2", "broker-restart");
    if during == 0 {
        run.failures
            .push("no order was accepted while RabbitMQ was down".into());
    }
    run.details.push(format!(
        "broker_down_ms={} accepted_while_broker_down={during}",
        (restarted_at - stopped_at).as_millis()
    ));
    run.finish(stack, &world, outcome, options).await
}

/// R3: the customer service dies right after committing a batch and before
/// acking it (a fault-injection point), three times; the redelivered events
/// must be absorbed.
async fn consumer_crash(options: &Options) -> anyhow::Result<Report> {
    let failpoint = [("FAILPOINTS", "consumer-after-commit=return")];
    let (mut stack, world) = prepared("R3", options, &[]).await?;
    // Restart the customer service armed.
    stack.kill("customer").await?;
    stack.spawn("customer", "customer", &[], &failpoint)?;
    let load = start_load(&stack, &world, options)?;
    let mut crashes = 0;
    let mut run = Run::new("R3", "consumer-crash");
    while crashes < 3 {
        match stack.wait_exit("customer", Duration::from_secs(60)).await {
            Ok(status) if status.code() == Some(86) => crashes += 1,
            Ok(status) => {
                run.failures.push(format!(
                    "customer service exited with {status}, not at the failpoint"
                ));
                break;
            }
            Err(_) => {
                run.failures.push("the failpoint was never reached".into());
                break;
            }
        }
        let env: &[(&str, &str)] = if crashes < 3 { &failpoint } else { &[] };
        stack.spawn("customer", "customer", &[], env)?;
    }
    let outcome = load.await??;
    run.details
        .push(format!("crashes_after_commit_before_ack={crashes}"));
    run.finish(stack, &world, outcome, options).await
}

/// Publishes raw bytes on a connection of its own, waiting for the broker's
/// confirm.
async fn publish(
    stack: &Stack,
    exchange: String,
    routing_key: &str,
    payload: &[u8],
) -> anyhow::Result<()> {
    let amqp = broker::Amqp::new(stack.amqp_url(), "faults-poison");
    let channel = workload::confirm_channel(&amqp).await?;
    let properties =
        BasicProperties::default().with_message_id(uuid::Uuid::now_v7().to_string().into());
    let published =
        workload::publish_confirmed(&channel, &exchange, routing_key, 1, [(payload, properties)])
            .await;
    amqp.close().await;
    published.with_context(|| format!("poison {routing_key}"))
}

/// R4: poison messages on the real queues, mid-load: an undecodable payload
/// (three consumers get it), an unknown event type, and an event whose
/// handler always fails. Each must end in its dead-letter queue while the
/// load flows on.
async fn poison(options: &Options) -> anyhow::Result<Report> {
    let (stack, world) = prepared("R4", options, &[]).await?;
    let load = start_load(&stack, &world, options)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let prefix = stack.prefix.clone();
    // Undecodable, to everyone bound to order.created.
    publish(
        &stack,
        broker::topology::exchange(&prefix, "order"),
        OrderCreated::TYPE,
        b"\xff\x00 not protobuf",
    )
    .await?;
    // A type no handler knows, straight into the customer service's queue.
    let customer_queue = broker::topology::queue(&prefix, "customer", "order");
    publish(
        &stack,
        String::new(),
        &customer_queue,
        &OrderCreated::default().encode_to_vec(),
    )
    .await?;
    // A negative price: the order service's catalog refuses it every time.
    let bad = ProductChanged {
        sku: "POISON".into(),
        name: "poison".into(),
        price_cents: -1,
        version: 1,
        ..Default::default()
    };
    publish(
        &stack,
        broker::topology::exchange(&prefix, "inventory"),
        ProductChanged::TYPE,
        &bad.encode_to_vec(),
    )
    .await?;

    let outcome = load.await??;
    // The good messages behind the poison keep flowing: every order is
    // decided long before the poison has spent its delivery attempts.
    let after_load = Instant::now();
    while reconcile::check(&stack, &world, &outcome.accepted)
        .await?
        .pending
        > 0
        && after_load.elapsed() < options.settle
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let decided = after_load.elapsed();
    let mut run = Run::new("R4", "poison");
    run.details.push(format!(
        "all_orders_decided_ms_after_load={}",
        decided.as_millis()
    ));
    run.expected_dead_letters = [
        ("customer", 2),
        ("inventory", 1),
        ("reporting", 1),
        ("order", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    run.details.push(format!(
        "expected_dead_letters={:?}",
        run.expected_dead_letters
    ));
    run.finish(stack, &world, outcome, options).await
}

/// R5: Postgres stops for 3 s mid-load and starts again. Services answer
/// UNAVAILABLE meanwhile (never INTERNAL), recover without a restart, and no
/// committed order is lost.
async fn postgres_restart(options: &Options) -> anyhow::Result<Report> {
    let version = match std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
    {
        Some(entry) => entry.file_name().to_string_lossy().into_owned(),
        None => {
            return Ok(Report::skipped(
                "R5",
                "postgres-restart",
                "no /etc/postgresql cluster to restart".into(),
            ));
        }
    };
    if let Err(why) = can_run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "status"],
    )
    .await
    {
        return Ok(Report::skipped("R5", "postgres-restart", why));
    }
    let (stack, world) = prepared("R5", options, &[]).await?;
    let load = start_load(&stack, &world, options)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped_at = Instant::now();
    can_run(
        "pg_ctlcluster",
        &[
            "--skip-systemctl-redirect",
            &version,
            "main",
            "stop",
            "-m",
            "fast",
        ],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    can_run(
        "pg_ctlcluster",
        &["--skip-systemctl-redirect", &version, "main", "start"],
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let up_at = Instant::now();
    let outcome = load.await??;
    let first_after = outcome
        .accepted
        .iter()
        .filter(|o| o.at > up_at)
        .map(|o| o.at - up_at)
        .min();
    let mut run = Run::new("R5", "postgres-restart");
    if outcome.unavailable == 0 {
        run.failures
            .push("no client saw UNAVAILABLE while Postgres was down".into());
    }
    run.details.push(format!(
        "postgres_down_ms={} first_order_accepted_ms_after_restart={}",
        (up_at - stopped_at).as_millis(),
        first_after
            .map(|d| d.as_millis().to_string())
            .unwrap_or("none".into())
    ));
    run.finish(stack, &world, outcome, options).await
}

/// R6: two relay processes for the order service; the leader is SIGKILLed
/// mid-load. The standby must take over within 5 s, and a checker bound to
/// every order event must see each order's events in order (created, then
/// approved or rejected, then cancelled).
async fn relay_failover(options: &Options) -> anyhow::Result<Report> {
    let (mut stack, world) = prepared("R6", options, &[("order", "RUN_RELAY", "false")]).await?;
    let seen = start_checker(&stack).await?;
    stack.spawn("relay-a", "order", &["relay"], &[])?;
    stack.spawn("relay-b", "order", &["relay"], &[])?;
    let leader_line = "outbox relay is the leader";
    let load = start_load(&stack, &world, options)?;
    // Mid-load, and only once one of them says it leads: killing the
    // standby would prove nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let elected = Instant::now();
    let (leader, standby) = loop {
        match (
            stack.log_contains("relay-a", leader_line),
            stack.log_contains("relay-b", leader_line),
        ) {
            (true, false) => break ("relay-a", "relay-b"),
            (false, true) => break ("relay-b", "relay-a"),
            (true, true) => bail!("both relays say they lead"),
            (false, false) if elected.elapsed() > Duration::from_secs(30) => {
                bail!("neither relay became the leader within 30 s")
            }
            (false, false) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let killed_at = Instant::now();
    stack.kill(leader).await?;
    let mut takeover = None;
    while killed_at.elapsed() < Duration::from_secs(30) {
        if stack.log_contains(standby, leader_line) {
            takeover = Some(killed_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.spawn(leader, "order", &["relay"], &[])?; // back, as the standby now
    let outcome = load.await??;
    let mut run = Run::new("R6", "relay-failover");
    match takeover {
        Some(t) if t <= Duration::from_secs(5) => {}
        Some(t) => run
            .failures
            .push(format!("takeover took {} ms (> 5000)", t.as_millis())),
        None => run.failures.push("the standby never took over".into()),
    }
    run.details.push(format!(
        "takeover_ms={}",
        takeover
            .map(|t| t.as_millis().to_string())
            .unwrap_or("none".into())
    ));
    run.finish_checked(stack, &world, outcome, options, &seen)
        .await
}

type Seen = Arc<Mutex<Vec<(String, String, String)>>>;

/// A queue of the checker's own bound to every order event; records
/// (message_id, routing key, order id) in arrival order.
async fn start_checker(stack: &Stack) -> anyhow::Result<Seen> {
    let amqp = broker::Amqp::new(stack.amqp_url(), "faults-checker");
    let channel = amqp.channel().await?;
    broker::topology::declare_exchange(&channel, &stack.prefix, "order").await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            broker::topology::exchange(&stack.prefix, "order").into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut deliveries = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        let _keep = (amqp, channel);
        while let Some(Ok(delivery)) = deliveries.next().await {
            let key = delivery.routing_key.as_str().to_owned();
            let order_id = match key.as_str() {
                OrderCreated::TYPE => OrderCreated::decode(&*delivery.data).map(|e| e.order_id),
                OrderApproved::TYPE => OrderApproved::decode(&*delivery.data).map(|e| e.order_id),
                OrderRejected::TYPE => OrderRejected::decode(&*delivery.data).map(|e| e.order_id),
                OrderCancelled::TYPE => OrderCancelled::decode(&*delivery.data).map(|e| e.order_id),
                _ => continue,
            };
            let id = delivery
                .properties
                .message_id()
                .as_ref()
                .map(|m| m.as_str().to_owned())
                .unwrap_or_default();
            if let (Ok(order_id), Ok(mut seen)) = (order_id, record.lock()) {
                seen.push((id, key, order_id));
            }
        }
    });
    Ok(seen)
}

/// (orders whose events came out of order, duplicates, orders seen).
fn check_order(seen: &Seen) -> anyhow::Result<(usize, usize, usize)> {
    let seen = seen
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))
        .context("checker")?;
    let mut ids = HashSet::new();
    let mut per_order: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut duplicates = 0;
    for (id, key, order_id) in seen.iter() {
        if !ids.insert(id) {
            duplicates += 1;
            continue;
        }
        per_order.entry(order_id).or_default().push(key);
    }
    let rank = |key: &str| match key {
        OrderCreated::TYPE => 0,
        OrderApproved::TYPE | OrderRejected::TYPE => 1,
        _ => 2,
    };
    let misordered = per_order
        .values()
        .filter(|events| {
            events.first() != Some(&OrderCreated::TYPE)
                || events.windows(2).any(|w| rank(w[0]) >= rank(w[1]))
        })
        .count();
    Ok((misordered, duplicates, per_order.len()))
}
