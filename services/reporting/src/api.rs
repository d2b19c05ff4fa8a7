//! `reporting.v1.ReportingService`: read-model queries, and the composed
//! overview.

use broker::pg::PgPool;
use dbps::{
    order::v1::OrderStatus,
    reporting::v1::{
        CustomerOrderHistory, CustomerOverview, GetCustomerOrderHistoryRequest,
        GetCustomerOverviewRequest, GetSalesBySkuRequest, ListTopProductsRequest,
        ListTopProductsResponse, OrderSummary, SkuSales,
        reporting_service_server::ReportingService,
    },
};
use platform::{
    ApiError, Violations,
    api::{Page, parse_id, parse_sku, timestamp},
};
use tonic::{Request, Response, Status};

use crate::{
    compose::Composer,
    db::{customers, orders, products},
};

/// Most products `ListTopProducts` returns.
pub const MAX_TOP: i32 = 100;
/// What `ListTopProducts` returns when `limit` is 0.
pub const DEFAULT_TOP: i32 = 10;

/// The gRPC API of the reporting service.
#[derive(Clone)]
pub struct ReportingApi {
    pool: PgPool,
    composer: Composer,
}

impl ReportingApi {
    /// An API over the read models and the other services' clients.
    pub fn new(pool: PgPool, composer: Composer) -> Self {
        ReportingApi { pool, composer }
    }
}

#[tonic::async_trait]
impl ReportingService for ReportingApi {
    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
    async fn get_customer_order_history(
        &self,
        request: Request<GetCustomerOrderHistoryRequest>,
    ) -> Result<Response<CustomerOrderHistory>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let customer_id = violations.check("customer_id", parse_id(&request.customer_id));
        let page = Page::parse(&mut violations, request.page_size, &request.page_token);
        let before = page
            .as_ref()
            .and_then(|page| page.after.as_deref())
            .and_then(|key| violations.check("page_token", parse_id(key)));
        let (Some(customer_id), Some(page)) = (customer_id, page.filter(|_| violations.is_empty()))
        else {
            return Err(ApiError::from(violations).into());
        };
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let customer = customers::find(&mut conn, customer_id)
            .await
            .map_err(ApiError::from)?;
        let mut history = orders::history(&mut conn, customer_id, before, page.size + 1)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut history, |order| order.order_id.to_string());
        let Some(customer) = customer.or_else(|| {
            (!history.is_empty()).then(|| customers::CustomerView {
                customer_id,
                name: String::new(),
                email: String::new(),
                loyalty_points: 0,
            })
        }) else {
            return Err(ApiError::NotFound(format!(
                "customer {customer_id} not (yet) in the read model"
            ))
            .into());
        };
        Ok(Response::new(CustomerOrderHistory {
            customer_id: customer_id.to_string(),
            name: customer.name,
            loyalty_points: customer.loyalty_points,
            orders: history
                .into_iter()
                .map(|order| OrderSummary {
                    order_id: order.order_id.to_string(),
                    status: OrderStatus::from_str_name(&format!("ORDER_STATUS_{}", order.status))
                        .unwrap_or_default()
                        .into(),
                    status_reason: order.status_reason,
                    total_cents: order.total_cents.unwrap_or_default(),
                    line_count: order.line_count.unwrap_or_default(),
                    created_at: order.created_at.map(timestamp),
                    stock: order.stock,
                })
                .collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
    async fn get_sales_by_sku(
        &self,
        request: Request<GetSalesBySkuRequest>,
    ) -> Result<Response<SkuSales>, Status> {
        let sku =
            parse_sku(&request.get_ref().sku).map_err(|error| ApiError::invalid("sku", error))?;
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let sales = products::sales(&mut conn, sku)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("sku {sku} not (yet) in the read model")))?;
        Ok(Response::new(to_proto(sales)))
    }

    async fn list_top_products(
        &self,
        request: Request<ListTopProductsRequest>,
    ) -> Result<Response<ListTopProductsResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => DEFAULT_TOP,
            n @ 1..=MAX_TOP => n,
            _ => {
                return Err(
                    ApiError::invalid("limit", format!("must be between 0 and {MAX_TOP}")).into(),
                );
            }
        };
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let top = products::top(&mut conn, i64::from(limit))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(ListTopProductsResponse {
            products: top.into_iter().map(to_proto).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
    async fn get_customer_overview(
        &self,
        request: Request<GetCustomerOverviewRequest>,
    ) -> Result<Response<CustomerOverview>, Status> {
        let customer_id = parse_id(&request.get_ref().customer_id)
            .map_err(|error| ApiError::invalid("customer_id", error))?;
        Ok(Response::new(self.composer.overview(customer_id).await?))
    }
}

fn to_proto(sales: products::Sales) -> SkuSales {
    SkuSales {
        sku: sales.sku,
        name: sales.name,
        units: sales.units,
        revenue_cents: sales.revenue_cents,
        orders: sales.orders,
    }
}
