//! `reporting.v1.ReportingService`: read-model queries, and the composed
//! overview.

use dbps::reporting::v1::{
    CustomerOrderHistory, CustomerOverview, GetCustomerOrderHistoryRequest,
    GetCustomerOverviewRequest, GetSalesBySkuRequest, ListTopProductsRequest,
    ListTopProductsResponse, SkuSales, reporting_service_server::ReportingService,
};
use platform::{
    ApiError, ApiResult, Page, Violations,
    db::PgPool,
    fields::{parse_id, parse_sku},
    respond,
};
use tonic::{Request, Response, Status};

use crate::{
    compose::Composer,
    db::{customers, orders, products},
    wire,
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

    async fn get_customer_order_history(
        &self,
        request: Request<GetCustomerOrderHistoryRequest>,
    ) -> ApiResult<CustomerOrderHistory> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let customer_id = violations.check("customer_id", parse_id(&request.customer_id));
        let page = Page::parse_with(
            &mut violations,
            request.page_size,
            &request.page_token,
            parse_id,
        );
        let (Some(customer_id), Some(page)) = (customer_id, page.filter(|_| violations.is_empty()))
        else {
            return Err(violations.into());
        };
        let mut conn = self.pool.get().await?;
        let customer = customers::find(&mut conn, customer_id).await?;
        let mut history = orders::history(&mut conn, customer_id, page.after, page.fetch()).await?;
        let next_page_token = page.finish(&mut history, |order| order.order_id.to_string());
        // Orders can arrive before their customer's registration.
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
            )));
        };
        Ok(wire::history(customer, history, next_page_token))
    }

    async fn get_sales_by_sku(
        &self,
        request: Request<GetSalesBySkuRequest>,
    ) -> ApiResult<SkuSales> {
        let sku =
            parse_sku(&request.get_ref().sku).map_err(|error| ApiError::invalid("sku", error))?;
        let mut conn = self.pool.get().await?;
        let sales = products::sales(&mut conn, sku)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("sku {sku} not (yet) in the read model")))?;
        Ok(wire::sales(sales))
    }

    async fn list_top_products(
        &self,
        request: Request<ListTopProductsRequest>,
    ) -> ApiResult<ListTopProductsResponse> {
        let limit = match request.get_ref().limit {
            0 => DEFAULT_TOP,
            n @ 1..=MAX_TOP => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit",
                    format!("must be between 0 and {MAX_TOP}"),
                ));
            }
        };
        let mut conn = self.pool.get().await?;
        let top = products::top(&mut conn, i64::from(limit)).await?;
        Ok(ListTopProductsResponse {
            products: top.into_iter().map(wire::sales).collect(),
        })
    }

    async fn get_customer_overview(
        &self,
        request: Request<GetCustomerOverviewRequest>,
    ) -> ApiResult<CustomerOverview> {
        let customer_id = parse_id(&request.get_ref().customer_id)
            .map_err(|error| ApiError::invalid("customer_id", error))?;
        self.composer.overview(customer_id).await
    }
}

#[tonic::async_trait]
impl ReportingService for ReportingApi {
    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
    async fn get_customer_order_history(
        &self,
        request: Request<GetCustomerOrderHistoryRequest>,
    ) -> Result<Response<CustomerOrderHistory>, Status> {
        respond(ReportingApi::get_customer_order_history(self, request).await)
    }

    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
    async fn get_sales_by_sku(
        &self,
        request: Request<GetSalesBySkuRequest>,
    ) -> Result<Response<SkuSales>, Status> {
        respond(ReportingApi::get_sales_by_sku(self, request).await)
    }

    async fn list_top_products(
        &self,
        request: Request<ListTopProductsRequest>,
    ) -> Result<Response<ListTopProductsResponse>, Status> {
        respond(ReportingApi::list_top_products(self, request).await)
    }

    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
    async fn get_customer_overview(
        &self,
        request: Request<GetCustomerOverviewRequest>,
    ) -> Result<Response<CustomerOverview>, Status> {
        respond(ReportingApi::get_customer_overview(self, request).await)
    }
}
