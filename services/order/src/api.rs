//! `order.v1.OrderService`: validates at the edge, checks and prices against
//! the local replicas, writes order, lines and event in one statement.

use broker::{Outbox, TraceContext, pg::PgPool};
use chrono::{SubsecRound, Utc};
use std::sync::Arc;

use dbps::order::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order,
    OrderCreated, OrderLine, OrderStatus as ProtoStatus, PlaceOrderRequest, WatchOrderRequest,
    order_service_server::OrderService,
};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncConnection, AsyncPgConnection, pooled_connection::bb8::RunError};
use futures_util::try_join;
use platform::{
    ApiError, Violations,
    api::{Page, parse_id, timestamp, trace_context},
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::{
        orders::{self, LineRow, Order as Stored, OrderRow},
        replicas,
    },
    domain::{self, OrderStatus, PlaceOrder, Transition},
    transitions::{self, Outcome},
    watch::Watchers,
};

/// After REJECTED or CANCELLED nothing can happen to an order any more.
fn is_final(order: &Order) -> bool {
    matches!(
        order.status(),
        ProtoStatus::Rejected | ProtoStatus::Cancelled
    )
}

/// The gRPC API of the order service.
#[derive(Clone)]
pub struct OrderApi {
    pool: PgPool,
    outbox: Outbox,
    watchers: Arc<Watchers>,
    shutdown: CancellationToken,
}

/// Why an order was not placed.
#[derive(Debug, thiserror::Error)]
enum PlaceError {
    #[error(transparent)]
    Database(#[from] DieselError),
    #[error(transparent)]
    Pool(#[from] RunError),
    #[error("unknown customer {0}: the order service has not heard of it")]
    UnknownCustomer(Uuid),
    #[error("unknown sku: {}", .0.join(", "))]
    UnknownSkus(Vec<String>),
    #[error("idempotency key was already used for a different order")]
    KeyReused,
}

impl From<PlaceError> for ApiError {
    fn from(error: PlaceError) -> Self {
        match error {
            PlaceError::Database(error) => error.into(),
            PlaceError::Pool(error) => error.into(),
            PlaceError::KeyReused => ApiError::invalid("idempotency_key", error.to_string()),
            PlaceError::UnknownCustomer(_) | PlaceError::UnknownSkus(_) => {
                ApiError::FailedPrecondition(error.to_string())
            }
        }
    }
}

impl OrderApi {
    /// An API over the service's pool and outbox; watch streams end on
    /// `shutdown`.
    pub fn new(
        pool: PgPool,
        outbox: Outbox,
        watchers: Arc<Watchers>,
        shutdown: CancellationToken,
    ) -> Self {
        OrderApi {
            pool,
            outbox,
            watchers,
            shutdown,
        }
    }

    async fn load(&self, order_id: Uuid) -> Result<Order, ApiError> {
        let mut conn = self.pool.get().await?;
        let stored = orders::find(&mut conn, order_id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("order {order_id} not found")))?;
        Ok(to_proto(stored))
    }

    async fn place(
        &self,
        request: &PlaceOrder,
        trace: &TraceContext,
    ) -> Result<Stored, PlaceError> {
        let conn = self.pool.get().await?;
        let conn: &AsyncPgConnection = &conn;
        // Two round trips: the reads pipelined, then one statement for the
        // order, its lines and its event. The reads need no transaction: the
        // write does not depend on their snapshot (an idempotency key used
        // meanwhile is caught by the insert itself).
        let skus: Vec<&str> = request.lines.iter().map(|line| line.sku.as_str()).collect();
        let earlier = async {
            match &request.idempotency_key {
                Some(key) => orders::find_by_key(conn, request.customer_id, key).await,
                None => Ok(None),
            }
        };
        let (earlier, known, prices) = try_join!(
            earlier,
            replicas::customer_exists(conn, request.customer_id),
            replicas::prices(conn, &skus),
        )?;
        if let Some(earlier) = earlier {
            return same_order(earlier, request);
        }
        if !known {
            return Err(PlaceError::UnknownCustomer(request.customer_id));
        }
        let (lines, total_cents) =
            domain::price(&request.lines, &prices).map_err(PlaceError::UnknownSkus)?;

        // Postgres keeps microseconds: answer with what is stored.
        let now = Utc::now().trunc_subsecs(6);
        let order = OrderRow {
            order_id: Uuid::now_v7(),
            customer_id: request.customer_id,
            status: OrderStatus::Pending.as_str().to_owned(),
            status_reason: String::new(),
            total_cents,
            idempotency_key: request.idempotency_key.clone(),
            created_at: now,
            updated_at: now,
        };
        let stored = Stored {
            lines: lines
                .iter()
                .zip(0..)
                .map(|(line, line_no)| LineRow {
                    order_id: order.order_id,
                    line_no,
                    sku: line.sku.clone(),
                    quantity: line.quantity,
                    unit_price_cents: line.unit_price_cents,
                })
                .collect(),
            order,
        };
        let event = self.outbox.entry(&created(&stored), trace);
        if !orders::insert_placed(conn, &stored.order, &stored.lines, &event).await? {
            // A concurrent request with the same key committed first.
            let key = request.idempotency_key.as_deref().unwrap_or_default();
            let existing = orders::find_by_key(conn, request.customer_id, key).await?;
            return existing
                .ok_or(PlaceError::KeyReused)
                .and_then(|existing| same_order(existing, request));
        }
        Ok(stored)
    }
}

/// The order stored under an idempotency key, if the retried request asks for
/// the same thing.
fn same_order(existing: Stored, request: &PlaceOrder) -> Result<Stored, PlaceError> {
    let same = existing.lines.len() == request.lines.len()
        && existing
            .lines
            .iter()
            .zip(&request.lines)
            .all(|(stored, asked)| stored.sku == asked.sku && stored.quantity == asked.quantity);
    if same {
        Ok(existing)
    } else {
        Err(PlaceError::KeyReused)
    }
}

#[tonic::async_trait]
impl OrderService for OrderApi {
    type WatchOrderStream = ReceiverStream<Result<Order, Status>>;

    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id, order_id))]
    async fn place_order(
        &self,
        request: Request<PlaceOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let trace = trace_context(&request);
        let order = PlaceOrder::parse(request.get_ref()).map_err(ApiError::from)?;
        let stored = self.place(&order, &trace).await.map_err(ApiError::from)?;
        self.outbox.committed();
        tracing::Span::current().record("order_id", tracing::field::display(stored.order.order_id));
        tracing::info!(total_cents = stored.order.total_cents, "order placed");
        Ok(Response::new(to_proto(stored)))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn get_order(
        &self,
        request: Request<GetOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let order_id = parse_id(&request.get_ref().order_id)
            .map_err(|error| ApiError::invalid("order_id", error))?;
        Ok(Response::new(self.load(order_id).await?))
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn cancel_order(
        &self,
        request: Request<CancelOrderRequest>,
    ) -> Result<Response<Order>, Status> {
        let trace = trace_context(&request);
        let mut violations = Violations::new();
        let order_id = violations.check("order_id", parse_id(&request.get_ref().order_id));
        let reason = violations.check("reason", domain::parse_reason(&request.get_ref().reason));
        let (Some(order_id), Some(reason)) = (order_id, reason) else {
            return Err(ApiError::from(violations).into());
        };
        let reason = if reason.is_empty() {
            "cancelled by the client".to_owned()
        } else {
            reason
        };
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let outcome = conn
            .transaction::<_, DieselError, _>(async |conn| {
                transitions::apply(
                    conn,
                    &self.outbox,
                    order_id,
                    Transition::Cancel,
                    &reason,
                    &trace,
                )
                .await
            })
            .await
            .map_err(ApiError::from)?;
        self.outbox.committed();
        match outcome {
            Outcome::Moved(_) => Ok(Response::new(self.load(order_id).await?)),
            Outcome::Missing => {
                Err(ApiError::NotFound(format!("order {order_id} not found")).into())
            }
            Outcome::AlreadyThere(order) | Outcome::Refused(order) => {
                Err(ApiError::FailedPrecondition(format!(
                    "order {order_id} is {} and cannot be cancelled",
                    order.status
                ))
                .into())
            }
        }
    }

    #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> Result<Response<Self::WatchOrderStream>, Status> {
        let order_id = parse_id(&request.get_ref().order_id)
            .map_err(|error| ApiError::invalid("order_id", error))?;
        // Subscribe before the first read, so no change can fall in between.
        let mut changes = self.watchers.subscribe(order_id);
        let first = self.load(order_id).await?;
        let (sender, receiver) = mpsc::channel(8);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut last = first;
            loop {
                if sender.send(Ok(last.clone())).await.is_err() || is_final(&last) {
                    return;
                }
                loop {
                    let latest = tokio::select! {
                        latest = changes.next() => latest,
                        _ = sender.closed() => return,
                        _ = shutdown.cancelled() => {
                            let _ = sender.send(Err(Status::unavailable("the server is shutting down; watch again"))).await;
                            return;
                        }
                    };
                    let Some(latest) = latest else { return };
                    if *latest != last {
                        last = (*latest).clone();
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> Result<Response<ListOrdersResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let customer_id = match request.customer_id.as_str() {
            "" => None,
            id => violations.check("customer_id", parse_id(id)),
        };
        let page = Page::parse(&mut violations, request.page_size, &request.page_token);
        let before = page
            .as_ref()
            .and_then(|page| page.after.as_deref())
            .and_then(|key| violations.check("page_token", parse_id(key)));
        let Some(page) = page.filter(|_| violations.is_empty()) else {
            return Err(ApiError::from(violations).into());
        };
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let mut rows = orders::page(&mut conn, customer_id, before, page.size + 1)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut rows, |stored| stored.order.order_id.to_string());
        Ok(Response::new(ListOrdersResponse {
            orders: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}

/// The proto lines of stored lines (the API's and the events' view).
pub(crate) fn proto_lines(lines: &[LineRow]) -> Vec<OrderLine> {
    lines
        .iter()
        .map(|line| OrderLine {
            sku: line.sku.clone(),
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
        })
        .collect()
}

/// The `order.created` event: the whole order as accepted.
fn created(stored: &Stored) -> OrderCreated {
    OrderCreated {
        order_id: stored.order.order_id.to_string(),
        customer_id: stored.order.customer_id.to_string(),
        lines: proto_lines(&stored.lines),
        total_cents: stored.order.total_cents,
        created_at: Some(timestamp(stored.order.created_at)),
    }
}

/// The API view of a stored order.
pub fn to_proto(stored: Stored) -> Order {
    let status = OrderStatus::parse(&stored.order.status)
        .map(OrderStatus::to_proto)
        .unwrap_or_default();
    Order {
        order_id: stored.order.order_id.to_string(),
        customer_id: stored.order.customer_id.to_string(),
        lines: proto_lines(&stored.lines),
        total_cents: stored.order.total_cents,
        status: status.into(),
        status_reason: stored.order.status_reason,
        created_at: Some(timestamp(stored.order.created_at)),
        updated_at: Some(timestamp(stored.order.updated_at)),
    }
}
