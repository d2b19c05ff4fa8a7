//! `order.v1.OrderService`: validates at the edge, checks and prices against
//! the local replicas, writes order, lines and event in one statement.

use std::sync::Arc;

use broker::{Outbox, TraceContext};
use chrono::{SubsecRound, Utc};
use dbps::order::v1::{
    CancelOrderRequest, GetOrderRequest, ListOrdersRequest, ListOrdersResponse, Order,
    OrderStatus as ProtoStatus, PlaceOrderRequest, WatchOrderRequest,
    order_service_server::OrderService,
};
use diesel::result::Error as DieselError;
use diesel_async::{AsyncPgConnection, pooled_connection::bb8::RunError};
use futures_util::try_join;
use platform::{
    ApiError, ApiResult, Db, OrNotFound, Page, Violations,
    fields::{field, parse_id},
    telemetry::trace_context,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};
use uuid::Uuid;

use crate::{
    db::{
        orders::{self, LineRow, Order as Stored, OrderRow},
        replicas,
    },
    domain::{self, OrderStatus, PlaceOrder, Transition},
    transitions::{self, Outcome},
    watch::Watchers,
    wire,
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
    db: Db,
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
    /// An API over the service's database; watch streams end on `shutdown`.
    pub fn new(db: Db, watchers: Arc<Watchers>, shutdown: CancellationToken) -> Self {
        OrderApi {
            db,
            watchers,
            shutdown,
        }
    }

    async fn load(&self, order_id: Uuid) -> ApiResult<Order> {
        let mut conn = self.db.conn().await?;
        let stored = orders::find(&mut conn, order_id).await?;
        Ok(wire::order(
            stored.or_not_found(|| format!("order {order_id}"))?,
        ))
    }

    async fn get_order(&self, request: Request<GetOrderRequest>) -> ApiResult<Order> {
        self.load(field("order_id", parse_id(&request.get_ref().order_id))?)
            .await
    }

    async fn place_order(&self, request: Request<PlaceOrderRequest>) -> ApiResult<Order> {
        let trace = trace_context(&request);
        let order = PlaceOrder::parse(request.get_ref())?;
        let stored = self
            .db
            .write(async |conn| place(conn, self.db.outbox(), &order, &trace).await)
            .await?;
        tracing::Span::current().record("order_id", tracing::field::display(stored.order.order_id));
        tracing::info!(total_cents = stored.order.total_cents, "order placed");
        Ok(wire::order(stored))
    }

    async fn cancel_order(&self, request: Request<CancelOrderRequest>) -> ApiResult<Order> {
        let trace = trace_context(&request);
        let mut violations = Violations::new();
        let order_id = violations.check("order_id", parse_id(&request.get_ref().order_id));
        let reason = violations.check("reason", domain::parse_reason(&request.get_ref().reason));
        let (Some(order_id), Some(reason)) = (order_id, reason) else {
            return Err(violations.into());
        };
        let reason = if reason.is_empty() {
            "cancelled by the client".to_owned()
        } else {
            reason
        };
        let outcome = self
            .db
            .transaction::<_, ApiError>(async |conn| {
                let cancel = Transition::Cancel;
                let outbox = self.db.outbox();
                Ok(transitions::apply(conn, outbox, order_id, cancel, &reason, &trace).await?)
            })
            .await?;
        match outcome {
            Outcome::Moved(_) => self.load(order_id).await,
            Outcome::Missing => Err(ApiError::NotFound(format!("order {order_id} not found"))),
            Outcome::AlreadyThere(order) | Outcome::Refused(order) => {
                Err(ApiError::FailedPrecondition(format!(
                    "order {order_id} is {} and cannot be cancelled",
                    order.status
                )))
            }
        }
    }

    async fn watch_order(
        &self,
        request: Request<WatchOrderRequest>,
    ) -> ApiResult<ReceiverStream<Result<Order, Status>>> {
        let order_id = field("order_id", parse_id(&request.get_ref().order_id))?;
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
        Ok(ReceiverStream::new(receiver))
    }

    async fn list_orders(
        &self,
        request: Request<ListOrdersRequest>,
    ) -> ApiResult<ListOrdersResponse> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let customer_id = match request.customer_id.as_str() {
            "" => None,
            id => violations.check("customer_id", parse_id(id)),
        };
        let page = Page::parse_with(
            &mut violations,
            request.page_size,
            &request.page_token,
            parse_id,
        );
        let Some(page) = page.filter(|_| violations.is_empty()) else {
            return Err(violations.into());
        };
        let mut conn = self.db.conn().await?;
        let rows = orders::page(&mut conn, customer_id, page.after, page.fetch()).await?;
        let (rows, next_page_token) = page.finish(rows, |stored| stored.order.order_id.to_string());
        Ok(ListOrdersResponse {
            orders: rows.into_iter().map(wire::order).collect(),
            next_page_token,
        })
    }
}

/// Places `request`: the reads pipelined, then one statement for the order,
/// its lines and its event. The reads need no transaction: the write does
/// not depend on their snapshot (an idempotency key used meanwhile is caught
/// by the insert itself).
async fn place(
    conn: &AsyncPgConnection,
    outbox: &Outbox,
    request: &PlaceOrder,
    trace: &TraceContext,
) -> Result<Stored, PlaceError> {
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
    let event = outbox.entry(&wire::created(&stored), trace);
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

platform::grpc_service! {
    impl OrderService for OrderApi {
        type WatchOrderStream = ReceiverStream<Result<Order, Status>>;

        #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id, order_id))]
        fn place_order(request: PlaceOrderRequest) -> Order;
        #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
        fn get_order(request: GetOrderRequest) -> Order;
        #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
        fn cancel_order(request: CancelOrderRequest) -> Order;
        #[tracing::instrument(skip_all, fields(order_id = %request.get_ref().order_id))]
        fn watch_order(request: WatchOrderRequest) -> Self::WatchOrderStream;
        fn list_orders(request: ListOrdersRequest) -> ListOrdersResponse;
    }
}
