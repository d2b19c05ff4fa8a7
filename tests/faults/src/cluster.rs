//! R7–R11 (`faults --cluster`, `make cluster-faults`): faults a replicated
//! deployment must ride out, injected through `scripts/cluster.sh` into the
//! topology it runs: two replicas of every service, a three-node RabbitMQ
//! cluster, a streaming replica of every service's database.
//!
//! Every scenario shares that one cluster (database `dbps` per service, AMQP
//! prefix `dbps`), so each registers its own customers and SKUs, tagged with
//! the scenario and the run, and reconciles only those: [`reconcile`], reading
//! each service's own database through a multi-host URL with
//! `target_session_attrs=read-write`, so it follows R10's promotion.
//!
//! A scenario: world set-up through gRPC; load from [`load`] alternating
//! between both order replicas (a retry goes to the other one, with the same
//! idempotency key); after 3 s the fault; the load stops 3 s after the fault
//! is over; then it waits (deadline `--settle`) until the four databases
//! reconcile and every queue and dead-letter queue of the prefix is empty.
//! `recovery_ms` is the time from the (last) fault to that point.
//!
//! They run in the order given, R7..R11 by default. R10 leaves the order
//! service's old primary stopped and its replica promoted (nothing in the
//! topology is restored), so R11 runs on the promoted database; R7–R9 run
//! first, on the full topology.

use std::{
    collections::{BTreeMap, HashSet},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use dbps::{
    inventory::v1::{CreateProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{LineItem, PlaceOrderRequest, order_service_client::OrderServiceClient},
};
use diesel::{
    QueryableByName,
    sql_types::{Array, BigInt, Text},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::{process::Command, task::JoinHandle};
use tonic::transport::Channel;

use testkit::{
    stack::SERVICES,
    workload::{Product, World},
};

use crate::{
    Options,
    load::{self, Outcome},
    reconcile::{self, Databases, Verdict},
    scenarios::{Report, longest_gap},
};

const SCRIPT: &str = "scripts/cluster.sh";
const PREFIX: &str = "dbps";
const AMQP_NODES: [&str; 3] = [
    "amqp://guest:guest@127.0.0.1:5680/%2f",
    "amqp://guest:guest@127.0.0.1:5681/%2f",
    "amqp://guest:guest@127.0.0.1:5682/%2f",
];
const ALL: [&str; 5] = ["R7", "R8", "R9", "R10", "R11"];
/// Load before the fault, and after it is over.
const BEFORE: Duration = Duration::from_secs(3);
const AFTER: Duration = Duration::from_secs(3);

/// Runs the selected scenarios against the running cluster; one line (and
/// details) per scenario. Fails if any lost, doubled, errored or was skipped.
pub async fn run_all(options: &Options) -> ExitCode {
    let selected: Vec<String> = if options.scenarios.is_empty() {
        ALL.map(String::from).to_vec()
    } else {
        options.scenarios.clone()
    };
    let down = script(&["status"]).await.err();
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let mut failed = false;
    for id in &selected {
        if let Some(why) = &down {
            println!("{id} SKIPPED: the cluster is not up: {why:#}");
            failed = true;
            continue;
        }
        let tag = format!("{}-{run}", id.to_lowercase());
        match scenario(id, &tag, options).await {
            Ok(report) => match &report.skipped {
                Some(why) => {
                    println!("{} {}: SKIPPED: {why}", report.id, report.name);
                    failed = true;
                }
                None => {
                    println!("{report}");
                    failed |= !report.passed(false);
                }
            },
            Err(error) => {
                println!("{id} error: {error:#}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

async fn scenario(id: &str, tag: &str, options: &Options) -> anyhow::Result<Report> {
    match id {
        "R7" => replica_kill(tag, options).await,
        "R8" => rolling_restart(tag, options).await,
        "R9" => broker_node_loss(tag, options).await,
        "R10" => db_failover(tag, options).await,
        "R11" => replica_contention(tag, options).await,
        other => bail!("unknown cluster scenario {other} (R7..R11)"),
    }
}

// --- the cluster ----------------------------------------------------------

/// Runs `scripts/cluster.sh args…`; its standard output.
async fn script(args: &[&str]) -> anyhow::Result<String> {
    let run = Command::new(SCRIPT).args(args).kill_on_drop(true).output();
    let output = tokio::time::timeout(Duration::from_secs(360), run)
        .await
        .with_context(|| format!("`{SCRIPT} {}` took over 6 min", args.join(" ")))?
        .with_context(|| format!("running {SCRIPT}"))?;
    if !output.status.success() {
        let said = [output.stderr, output.stdout].concat();
        bail!(
            "`{SCRIPT} {}` failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&said).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// 1 order, 2 customer, 3 inventory, 4 reporting: the last digit of every
/// port of the service.
fn index(service: &str) -> u16 {
    match service {
        "order" => 1,
        "customer" => 2,
        "inventory" => 3,
        _ => 4,
    }
}

/// A lazily connected channel to replica 1 or 2 of `service`.
fn channel(service: &str, replica: u16) -> anyhow::Result<Channel> {
    let port = if replica == 1 { 50060 } else { 50070 } + index(service);
    Ok(Channel::from_shared(format!("http://127.0.0.1:{port}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy())
}

/// The superuser URL of `service`'s database on whichever of its two
/// servers is the primary.
fn admin_url(service: &str) -> String {
    let i = index(service);
    format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/dbps?target_session_attrs=read-write&connect_timeout=3",
        5440 + i,
        5450 + i
    )
}

fn databases() -> Databases {
    Databases {
        order: admin_url("order"),
        customer: admin_url("customer"),
        inventory: admin_url("inventory"),
        reporting: admin_url("reporting"),
    }
}

/// Both order replicas, for the clients.
fn order_clients() -> anyhow::Result<Vec<OrderServiceClient<Channel>>> {
    Ok(vec![
        OrderServiceClient::new(channel("order", 1)?),
        OrderServiceClient::new(channel("order", 2)?),
    ])
}

// --- load and settling ------------------------------------------------------

/// The load running in the background; stops when dropped.
struct Load {
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<anyhow::Result<Outcome>>>,
}

impl Load {
    fn start(world: &World, options: &Options) -> anyhow::Result<Load> {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(load::run_until(
            order_clients()?,
            world.clone(),
            usize::MAX,
            options.rate,
            stop.clone(),
        ));
        Ok(Load {
            stop,
            task: Some(task),
        })
    }

    /// Stops placing orders and waits for those in flight.
    async fn finish(mut self) -> anyhow::Result<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.take() {
            Some(task) => task.await?,
            None => bail!("load already finished"),
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A scenario's world (through replica 1 of the customer and inventory
/// services) and its load, already running for [`BEFORE`].
async fn begin(tag: &str, options: &Options) -> anyhow::Result<(World, Load)> {
    let world = load::setup_tagged(
        channel("customer", 1)?,
        channel("inventory", 1)?,
        tag,
        options.orders,
    )
    .await
    .context("setting up customers and products")?;
    let load = Load::start(&world, options)?;
    tokio::time::sleep(BEFORE).await;
    Ok((world, load))
}

/// Messages in the dead-letter queues, and the queues of the prefix that
/// still hold messages, asked of the first node that answers.
async fn broker_state() -> anyhow::Result<(BTreeMap<String, u32>, Vec<String>)> {
    let mut last = anyhow::anyhow!("no RabbitMQ node");
    for url in AMQP_NODES {
        let amqp = broker::Amqp::new(url, "faults-cluster-checker");
        let asked = tokio::time::timeout(Duration::from_secs(5), queues(&amqp)).await;
        amqp.close().await;
        match asked {
            Ok(Ok(state)) => return Ok(state),
            Ok(Err(error)) => last = error,
            Err(_) => last = anyhow::anyhow!("{url}: no answer within 5 s"),
        }
    }
    Err(last)
}

async fn queues(amqp: &broker::Amqp) -> anyhow::Result<(BTreeMap<String, u32>, Vec<String>)> {
    let dead_letters = reconcile::dead_letters(amqp, PREFIX).await?;
    let mut busy = Vec::new();
    let mut channel = amqp.channel().await?;
    for consumer in SERVICES {
        for source in SERVICES {
            let name = broker::topology::queue(PREFIX, consumer, source);
            match broker::topology::queue_depth(&channel, &name).await {
                Ok((ready, _consumers)) if ready > 0 => busy.push(format!("{name}={ready}")),
                Ok(_) => {}
                // No such queue (that consumer does not hear from that
                // source): the broker closed the channel.
                Err(_) => channel = amqp.channel().await?,
            }
        }
    }
    let _ = channel.close(200, "checked".into()).await;
    Ok((dead_letters, busy))
}

/// Waits until the world reconciles and the queues are empty, or the settle
/// deadline passes; the last verdict and when it became consistent.
async fn settle(
    world: &World,
    outcome: &Outcome,
    options: &Options,
) -> anyhow::Result<(Verdict, Option<Instant>, Vec<String>)> {
    let started = Instant::now();
    let databases = databases();
    let mut last: Option<Verdict> = None;
    let mut waiting_for = Vec::new();
    loop {
        match reconcile::check_databases(&databases, world, &outcome.accepted).await {
            Ok(mut verdict) => {
                waiting_for.clear();
                if verdict.clean(&BTreeMap::new()) {
                    match broker_state().await {
                        Ok((dead_letters, busy)) => {
                            verdict.dead_letters = dead_letters;
                            if verdict.clean(&BTreeMap::new()) && busy.is_empty() {
                                return Ok((verdict, Some(Instant::now()), Vec::new()));
                            }
                            waiting_for = busy;
                        }
                        Err(error) => waiting_for = vec![format!("RabbitMQ: {error:#}")],
                    }
                }
                last = Some(verdict);
            }
            Err(error) => waiting_for = vec![format!("databases: {error:#}")],
        }
        if started.elapsed() > options.settle {
            let Some(verdict) = last else {
                bail!("never read the databases: {}", waiting_for.join("; "));
            };
            return Ok((verdict, None, waiting_for));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a scenario found besides the reconciliation.
struct Findings {
    id: &'static str,
    name: &'static str,
    headline: Vec<String>,
    details: Vec<String>,
    failures: Vec<String>,
}

impl Findings {
    fn new(id: &'static str, name: &'static str) -> Findings {
        Findings {
            id,
            name,
            headline: Vec::new(),
            details: Vec::new(),
            failures: Vec::new(),
        }
    }

    /// Settles, reconciles and reports; `recovery_ms` counts from `fault`.
    async fn finish(
        mut self,
        world: &World,
        outcome: Outcome,
        fault: Instant,
        options: &Options,
    ) -> anyhow::Result<Report> {
        let load_ended = Instant::now();
        let (mut verdict, consistent, waiting_for) = settle(world, &outcome, options).await?;
        // Every accepted order is a different order, and nothing was stored
        // that no client was told about (a retry that made a second order).
        let distinct: HashSet<&str> = outcome
            .accepted
            .iter()
            .map(|a| a.order_id.as_str())
            .collect();
        let repeated = outcome.accepted.len() - distinct.len();
        if repeated > 0 {
            verdict.doubled += repeated;
            verdict
                .notes
                .push(format!("{repeated} order IDs returned for two requests"));
        }
        if outcome.unexpected.is_empty() && verdict.stored > distinct.len() {
            let extra = verdict.stored - distinct.len();
            verdict.doubled += extra;
            verdict
                .notes
                .push(format!("{extra} stored orders no client was told about"));
        }
        self.details.push(format!(
            "stored_orders={} statuses={:?} retried_answers={} (client-side transport errors: {}) longest_gap_between_accepted_orders_ms={} consistent_ms_after_load={}",
            verdict.stored,
            verdict.statuses,
            outcome.unavailable,
            outcome.transport_failures,
            longest_gap(&outcome).as_millis(),
            consistent
                .map(|at| (at - load_ended).as_millis().to_string())
                .unwrap_or_else(|| "none".into())
        ));
        if !outcome.unexpected.is_empty() {
            self.failures.push(format!(
                "{} requests failed with a non-retryable answer",
                outcome.unexpected.len()
            ));
        }
        self.failures
            .extend(outcome.unexpected.iter().take(5).cloned());
        if consistent.is_none() {
            self.failures.push(format!(
                "did not settle before the deadline; waiting for: {}",
                if waiting_for.is_empty() {
                    "the reconciliation".to_owned()
                } else {
                    waiting_for.join(", ")
                }
            ));
        }
        Ok(Report {
            id: self.id.to_owned(),
            name: self.name,
            orders: outcome.accepted.len(),
            verdict,
            recovery: consistent.map(|at| at.saturating_duration_since(fault)),
            expected_dead_letters: BTreeMap::new(),
            headline: self.headline,
            details: self.details,
            failures: self.failures,
            skipped: None,
        })
    }
}

// --- the scenarios ----------------------------------------------------------

/// R7: replica 1 of each service in turn SIGKILLed, 2 s later started again
/// (waiting until it is SERVING), under load.
async fn replica_kill(tag: &str, options: &Options) -> anyhow::Result<Report> {
    let (world, load) = begin(tag, options).await?;
    let mut run = Findings::new("R7", "replica-kill");
    let mut last_kill = Instant::now();
    let mut restarts = Vec::new();
    for service in SERVICES {
        last_kill = Instant::now();
        script(&["svc-stop", service, "1", "KILL"]).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = Instant::now();
        script(&["svc-start", service, "1"]).await?;
        restarts.push(format!("{service}={}", started.elapsed().as_millis()));
    }
    tokio::time::sleep(AFTER).await;
    let outcome = load.finish().await?;
    run.details.push(format!(
        "killed: replica 1 of each; start_to_serving_ms: {}",
        restarts.join(" ")
    ));
    run.finish(&world, outcome, last_kill, options).await
}

/// R8: all eight replicas, one at a time, SIGTERMed and started again (each
/// waited for until SERVING), under load. No client may see an answer it
/// should not retry.
async fn rolling_restart(tag: &str, options: &Options) -> anyhow::Result<Report> {
    let (world, load) = begin(tag, options).await?;
    let mut run = Findings::new("R8", "rolling-restart");
    let mut last = Instant::now();
    let mut steps = Vec::new();
    for service in SERVICES {
        for replica in ["1", "2"] {
            last = Instant::now();
            script(&["svc-stop", service, replica, "TERM"]).await?;
            let stopped = last.elapsed();
            script(&["svc-start", service, replica]).await?;
            steps.push(format!(
                "{service}/{replica}={}+{}",
                stopped.as_millis(),
                (last.elapsed() - stopped).as_millis()
            ));
        }
    }
    tokio::time::sleep(AFTER).await;
    let outcome = load.finish().await?;
    run.headline
        .push(format!("non_retryable_errors={}", outcome.unexpected.len()));
    run.details.push(format!(
        "stop_ms+start_to_serving_ms: {}; retried: UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, ABORTED, client-side UNKNOWN/INTERNAL transport errors (reset, GOAWAY-refused)",
        steps.join(" ")
    ));
    run.finish(&world, outcome, last, options).await
}

/// `(node number, node name, quorum queues it leads)` per line of
/// `rabbit-leaders` ("dbps-c2@localhost 7").
fn leaders(text: &str) -> Vec<(u32, String, u32)> {
    text.lines()
        .filter_map(|line| {
            let (node, count) = line.trim().split_once(' ')?;
            let digits: String = node
                .split('@')
                .next()?
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            Some((
                digits.parse().ok()?,
                node.to_owned(),
                count.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// R9: mid-load, the RabbitMQ node leading the most quorum queues is killed
/// (`kill -9` of its VM), started again 5 s later. Orders must keep being
/// accepted meanwhile (PlaceOrder touches only Postgres).
async fn broker_node_loss(tag: &str, options: &Options) -> anyhow::Result<Report> {
    let (world, load) = begin(tag, options).await?;
    let before = leaders(&script(&["rabbit-leaders"]).await?);
    let Some((node, name, led)) = before.iter().max_by_key(|(_, _, led)| *led).cloned() else {
        return Ok(Report::skipped(
            "R9",
            "broker-node-loss",
            "`cluster.sh rabbit-leaders` named no node".into(),
        ));
    };
    if led == 0 {
        return Ok(Report::skipped(
            "R9",
            "broker-node-loss",
            "no node leads a quorum queue".into(),
        ));
    }
    let mut run = Findings::new("R9", "broker-node-loss");
    let killed = Instant::now();
    script(&["rabbit-stop", &node.to_string(), "kill"]).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let restarting = Instant::now();
    script(&["rabbit-start", &node.to_string()]).await?;
    let back = Instant::now();
    tokio::time::sleep(AFTER).await;
    let outcome = load.finish().await?;
    let during = outcome
        .accepted
        .iter()
        .filter(|o| o.at > killed && o.at < restarting)
        .count();
    if during == 0 {
        run.failures
            .push("no order was accepted while the node was down".into());
    }
    let after = script(&["rabbit-leaders"]).await.unwrap_or_default();
    run.details.push(format!(
        "killed={name} (led {led} quorum queues) down_ms={} restart_ms={} accepted_while_down={during}",
        (restarting - killed).as_millis(),
        (back - restarting).as_millis(),
    ));
    run.details.push(format!(
        "leaders before: {}; after: {}",
        before
            .iter()
            .map(|(_, n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" "),
        leaders(&after)
            .iter()
            .map(|(_, n, c)| format!("{n}={c}"))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    run.finish(&world, outcome, killed, options).await
}

async fn order_pids() -> anyhow::Result<[String; 2]> {
    Ok([
        script(&["svc-pid", "order", "1"]).await?.trim().to_owned(),
        script(&["svc-pid", "order", "2"]).await?.trim().to_owned(),
    ])
}

/// R10: mid-load, the order service's primary stopped (immediate mode) and
/// its replica promoted. Both order replicas must carry on, unrestarted, on
/// the promoted database; `failover_ms` is the time from the stop (once
/// `pg-stop` has returned) to the first order accepted on an attempt sent
/// after it, promotion included. The old primary stays down.
async fn db_failover(tag: &str, options: &Options) -> anyhow::Result<Report> {
    let pids = order_pids().await?;
    let (world, load) = begin(tag, options).await?;
    let mut run = Findings::new("R10", "db-failover");
    let stopped = Instant::now();
    script(&["pg-stop", "order", "primary", "immediate"]).await?;
    // The primary is certainly gone once the script returns.
    let promoting = Instant::now();
    script(&["pg-promote", "order"]).await?;
    let promoted = Instant::now();
    // Long enough for the pools to find the new primary.
    tokio::time::sleep(AFTER * 3).await;
    let outcome = load.finish().await?;
    let failover = outcome
        .accepted
        .iter()
        .filter(|o| o.sent > promoting)
        .map(|o| o.at - promoting)
        .min();
    run.headline.push(format!(
        "failover_ms={}",
        failover
            .map(|d| d.as_millis().to_string())
            .unwrap_or_else(|| "none".into())
    ));
    if failover.is_none() {
        run.failures
            .push("no order was accepted after the primary stopped".into());
    }
    match order_pids().await {
        Ok(now) if now == pids => {}
        Ok(now) => run.failures.push(format!(
            "the order service restarted (pids {pids:?} -> {now:?})"
        )),
        Err(error) => run
            .failures
            .push(format!("an order replica is not running: {error:#}")),
    }
    run.details.push(format!(
        "stop_ms={} promote_ms={} order_pids={pids:?}",
        (promoting - stopped).as_millis(),
        (promoted - promoting).as_millis()
    ));
    run.finish(&world, outcome, stopped, options).await
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct Stock {
    #[diesel(sql_type = BigInt)]
    available: i64,
    #[diesel(sql_type = BigInt)]
    reserved: i64,
}

/// Waits until the order service has heard of `customers` and `sku`, so
/// the burst is not spread out by retries.
async fn known_to_orders(customers: &[String], sku: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut conn = AsyncPgConnection::establish(&admin_url("order")).await?;
        let known: Count = diesel::sql_query(
            "SELECT (SELECT count(*) FROM orders.known_customers
                     WHERE customer_id = ANY($1::text[]::uuid[]))
                  + (SELECT count(*) FROM orders.catalog WHERE sku = $2) AS n",
        )
        .bind::<Array<Text>, _>(customers)
        .bind::<Text, _>(sku)
        .get_result(&mut conn)
        .await?;
        if known.n == customers.len() as i64 + 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the order service did not hear of the customers and {sku} within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// R11: a product with exactly 10 units; 64 orders of one unit each at
/// once, alternating between the order replicas. Exactly 10 approved, 54
/// rejected; 0 available, 10 reserved.
async fn replica_contention(tag: &str, options: &Options) -> anyhow::Result<Report> {
    const UNITS: i64 = 10;
    const ORDERS: usize = 64;
    let customers =
        testkit::stack::register_customers(channel("customer", 1)?, 8, "c", tag).await?;
    let sku = format!("{tag}-HOT");
    let price = 500;
    InventoryServiceClient::new(channel("inventory", 1)?)
        .create_product(CreateProductRequest {
            sku: sku.clone(),
            name: "Contended".into(),
            price_cents: price,
            initial_stock: UNITS,
        })
        .await?;
    let world = World {
        customers,
        products: vec![Product {
            sku: sku.clone(),
            price_cents: price,
            initial_stock: UNITS,
        }],
    };
    known_to_orders(&world.customers, &sku).await?;

    let clients: Arc<[OrderServiceClient<Channel>]> = order_clients()?.into();
    let outcome = Arc::new(Mutex::new(Outcome::default()));
    let gate = Arc::new(tokio::sync::Barrier::new(ORDERS));
    let burst = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..ORDERS {
        let request = PlaceOrderRequest {
            customer_id: world.customers[i % world.customers.len()].clone(),
            lines: vec![LineItem {
                sku: sku.clone(),
                quantity: 1,
            }],
            idempotency_key: format!("burst-{i}"),
        };
        let (clients, outcome, gate) = (clients.clone(), outcome.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            gate.wait().await;
            load::place(&clients, i, request, false, &outcome).await;
        }));
    }
    for task in tasks {
        task.await?;
    }
    let outcome = std::mem::take(&mut *outcome.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    let run = Findings::new("R11", "replica-contention");
    let mut report = run.finish(&world, outcome, burst, options).await?;
    let approved = report
        .verdict
        .statuses
        .get("APPROVED")
        .copied()
        .unwrap_or(0);
    let rejected = report
        .verdict
        .statuses
        .get("REJECTED")
        .copied()
        .unwrap_or(0);
    let mut conn = AsyncPgConnection::establish(&admin_url("inventory")).await?;
    let stock: Stock =
        diesel::sql_query("SELECT available, reserved FROM inventory.products WHERE sku = $1")
            .bind::<Text, _>(&sku)
            .get_result(&mut conn)
            .await?;
    drop(conn);
    report
        .headline
        .push(format!("approved={approved} rejected={rejected}"));
    report.details.push(format!(
        "{sku}: available={} reserved={} after {ORDERS} orders of 1 unit of {UNITS}",
        stock.available, stock.reserved
    ));
    if approved != UNITS as usize || rejected != ORDERS - UNITS as usize {
        report.failures.push(format!(
            "expected {UNITS} approved and {} rejected, got {approved} and {rejected}",
            ORDERS - UNITS as usize
        ));
    }
    if (stock.available, stock.reserved) != (0, UNITS) {
        report.failures.push(format!(
            "expected 0 available and {UNITS} reserved, got {} and {}",
            stock.available, stock.reserved
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::leaders;

    #[test]
    fn parses_rabbit_leaders() {
        let text = "dbps-c1@localhost 3\ndbps-c2@localhost 11\ndbps-c3@localhost 0\n";
        assert_eq!(
            leaders(text),
            vec![
                (1, "dbps-c1@localhost".to_owned(), 3),
                (2, "dbps-c2@localhost".to_owned(), 11),
                (3, "dbps-c3@localhost".to_owned(), 0),
            ]
        );
    }
}
