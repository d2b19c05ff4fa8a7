//! The raw baseline of P1: the rows `PlaceOrder` writes (order, lines,
//! outbox row), written by the fastest plain client, with no gRPC, no
//! validation and no replica reads, into a schema of its own.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use dbps::order::v1::{OrderCreated, OrderLine};
use diesel::{
    ExpressionMethods,
    pg::Pg,
    query_builder::{AstPass, QueryFragment, QueryId},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use futures_util::{FutureExt, future::BoxFuture};
use prost::Message;
use testkit::workload::{Orders, World};

/// The order service's tables, empty, in a schema of the baseline's own (so
/// no relay publishes its rows).
pub async fn create_schema(url: &str) -> anyhow::Result<()> {
    let mut conn = diesel_async::AsyncPgConnection::establish(url).await?;
    conn.batch_execute(
        "DROP SCHEMA IF EXISTS bench_raw CASCADE;
         CREATE SCHEMA bench_raw;
         CREATE TABLE bench_raw.orders (LIKE orders.orders INCLUDING ALL);
         CREATE TABLE bench_raw.order_lines (LIKE orders.order_lines INCLUDING ALL);
         CREATE TABLE bench_raw.outbox (LIKE orders.outbox INCLUDING ALL);",
    )
    .await?;
    Ok(())
}

/// A statement of fixed text with a static query ID, so that the connection
/// prepares it once and can pipeline it with the statements around it
/// (`diesel::sql_query` is prepared anew on every call, a round trip of its
/// own).
#[derive(Clone, Copy, Debug, QueryId)]
struct Begin;

#[derive(Clone, Copy, Debug, QueryId)]
struct Commit;

impl QueryFragment<Pg> for Begin {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("BEGIN");
        Ok(())
    }
}

impl QueryFragment<Pg> for Commit {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        out.push_sql("COMMIT");
        Ok(())
    }
}

/// The baseline's copies of the order service's tables.
mod tables {
    diesel::table! {
        bench_raw.orders (order_id) {
            order_id -> Uuid,
            customer_id -> Uuid,
            status -> Text,
            total_cents -> Int8,
        }
    }

    diesel::table! {
        bench_raw.order_lines (order_id, line_no) {
            order_id -> Uuid,
            line_no -> Int4,
            sku -> Text,
            quantity -> Int4,
            unit_price_cents -> Int8,
        }
    }

    diesel::table! {
        bench_raw.outbox (id) {
            id -> Int8,
            event_id -> Uuid,
            aggregate_type -> Text,
            aggregate_id -> Text,
            event_type -> Text,
            payload -> Bytea,
            headers -> Jsonb,
        }
    }
}

/// The rows of one order as the raw client writes them.
pub struct RawOrder {
    pub order_id: uuid::Uuid,
    pub customer_id: uuid::Uuid,
    pub lines: Vec<OrderLine>,
    pub total_cents: i64,
    pub event_id: uuid::Uuid,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
}

impl RawOrder {
    /// The rows PlaceOrder writes for `request`: the order, its lines (at a
    /// fixed price) and its `order.created` event with CloudEvents headers.
    pub fn new(request: &dbps::order::v1::PlaceOrderRequest) -> anyhow::Result<Self> {
        let order_id = uuid::Uuid::now_v7();
        let event_id = uuid::Uuid::now_v7();
        let lines: Vec<OrderLine> = request
            .lines
            .iter()
            .map(|l| OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price_cents: 100,
            })
            .collect();
        let total_cents: i64 = lines
            .iter()
            .map(|l| i64::from(l.quantity) * l.unit_price_cents)
            .sum();
        let payload = OrderCreated {
            order_id: order_id.to_string(),
            customer_id: request.customer_id.clone(),
            lines: lines.clone(),
            total_cents,
            created_at: None,
        }
        .encode_to_vec();
        let headers = serde_json::json!({
            "ce-specversion": "1.0",
            "ce-id": event_id.to_string(),
            "ce-source": "/services/order",
            "ce-type": "order.v1.OrderCreated",
            "ce-time": "2026-01-01T00:00:00.000000Z",
            "ce-subject": order_id.to_string(),
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        });
        Ok(RawOrder {
            order_id,
            customer_id: uuid::Uuid::try_parse(&request.customer_id)?,
            lines,
            total_cents,
            event_id,
            payload,
            headers,
        })
    }

    /// Writes the rows in one transaction, in one round trip: BEGIN, the
    /// order, all lines in one multi-row INSERT, the outbox row and COMMIT
    /// go out pipelined. Every statement's answer is checked; after a failed
    /// one the server rolls the transaction back at COMMIT.
    async fn insert(&self, conn: &AsyncPgConnection) -> anyhow::Result<()> {
        use tables::{order_lines, orders, outbox};
        let line = |no: i32, l: &'_ OrderLine| {
            (
                order_lines::order_id.eq(self.order_id),
                order_lines::line_no.eq(no),
                order_lines::sku.eq(l.sku.clone()),
                order_lines::quantity.eq(l.quantity),
                order_lines::unit_price_cents.eq(l.unit_price_cents),
            )
        };
        let mut rows = (0..).zip(&self.lines).map(|(no, l)| line(no, l));
        // Arrays, not slices: a fixed row count keeps the statement cached.
        let lines: BoxFuture<'_, diesel::QueryResult<usize>> =
            match (rows.next(), rows.next(), rows.next()) {
                (Some(a), None, None) => diesel::insert_into(order_lines::table)
                    .values([a])
                    .execute(&mut &*conn),
                (Some(a), Some(b), None) => diesel::insert_into(order_lines::table)
                    .values([a, b])
                    .execute(&mut &*conn),
                _ => async { Err(diesel::result::Error::NotFound) }.boxed(),
            };
        futures_util::try_join!(
            Begin.execute(&mut &*conn),
            diesel::insert_into(orders::table)
                .values((
                    orders::order_id.eq(self.order_id),
                    orders::customer_id.eq(self.customer_id),
                    orders::status.eq("PENDING"),
                    orders::total_cents.eq(self.total_cents),
                ))
                .execute(&mut &*conn),
            lines,
            diesel::insert_into(outbox::table)
                .values((
                    outbox::event_id.eq(self.event_id),
                    outbox::aggregate_type.eq("order"),
                    outbox::aggregate_id.eq(self.order_id.to_string()),
                    outbox::event_type.eq("order.created"),
                    outbox::payload.eq(&self.payload),
                    outbox::headers.eq(&self.headers),
                ))
                .execute(&mut &*conn),
            Commit.execute(&mut &*conn),
        )?;
        Ok(())
    }
}

/// The same rows PlaceOrder writes, one transaction per order, by `clients`
/// loops over a pool, each the fastest a client can write them: orders per
/// second.
pub async fn rate(
    pool: &platform::db::PgPool,
    world: &World,
    clients: usize,
    duration: Duration,
) -> anyhow::Result<f64> {
    let inserted = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for seed in 0..clients {
        let (pool, world, inserted) = (pool.clone(), world.clone(), inserted.clone());
        tasks.push(tokio::spawn(async move {
            let mut orders = Orders::seeded(seed as u64 + 1);
            let conn = pool.get().await?;
            while Instant::now() < deadline {
                let order = RawOrder::new(&orders.draw(&world))?;
                order.insert(&conn).await?;
                inserted.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    let started = Instant::now();
    for task in tasks {
        task.await??;
    }
    Ok(AtomicU64::load(&inserted, Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
