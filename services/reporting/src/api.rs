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
    fields::{field, parse_id, parse_sku},
};
use tonic::Request;

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
        let history = orders::history(&mut conn, customer_id, page.after, page.fetch()).await?;
        let (history, next_page_token) = page.finish(history, |order| order.order_id.to_string());
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
        let sku = field("sku", parse_sku(&request.get_ref().sku))?;
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
        let customer_id = field("customer_id", parse_id(&request.get_ref().customer_id))?;
        self.composer.overview(customer_id).await
    }
}

platform::grpc_service! {
    impl ReportingService for ReportingApi {
        #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
        fn get_customer_order_history(request: GetCustomerOrderHistoryRequest) -> CustomerOrderHistory;
        #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
        fn get_sales_by_sku(request: GetSalesBySkuRequest) -> SkuSales;
        fn list_top_products(request: ListTopProductsRequest) -> ListTopProductsResponse;
        #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
        fn get_customer_overview(request: GetCustomerOverviewRequest) -> CustomerOverview;
    }
}
