//! `inventory.v1.InventoryService`: validates at the edge, then one
//! transaction per write, each with its `product.changed` event.

use dbps::inventory::v1::{
    AdjustStockRequest, CreateProductRequest, GetProductRequest, ListProductsRequest,
    ListProductsResponse, Product, inventory_service_server::InventoryService,
};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use platform::{
    ApiError, ApiResult, Db, OrNotFound, Page, Violations,
    fields::{field, parse_sku},
    telemetry::trace_context,
};
use tonic::Request;

use crate::{
    db::products::{self, NewProduct},
    domain::{MAX_STOCK, ProductName, parse_delta, parse_initial_stock, parse_price},
    wire,
};

/// The gRPC API of the inventory service.
#[derive(Clone)]
pub struct InventoryApi {
    db: Db,
}

impl InventoryApi {
    /// An API over the service's database.
    pub fn new(db: Db) -> Self {
        InventoryApi { db }
    }

    async fn create_product(&self, request: Request<CreateProductRequest>) -> ApiResult<Product> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let mut violations = Violations::new();
        let sku = violations.check("sku", parse_sku(&request.sku));
        let name = violations.check("name", ProductName::parse(&request.name));
        let price = violations.check("price_cents", parse_price(request.price_cents));
        let stock = violations.check("initial_stock", parse_initial_stock(request.initial_stock));
        let (Some(sku), Some(name), Some(price_cents), Some(available)) = (sku, name, price, stock)
        else {
            return Err(violations.into());
        };
        let name = name.into_inner();
        let new = NewProduct {
            sku,
            name: &name,
            price_cents,
            available,
        };
        let row = self
            .db
            .transaction::<_, ApiError>(async |conn| {
                let row = products::insert(conn, &new)
                    .await
                    .map_err(|error| match error {
                        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                            ApiError::AlreadyExists(format!("product {sku} exists"))
                        }
                        error => error.into(),
                    })?;
                let event = wire::changed(&row);
                self.db.outbox().enqueue(conn, &event, &trace).await?;
                Ok(row)
            })
            .await?;
        tracing::info!("product created");
        Ok(wire::product(row))
    }

    async fn get_product(&self, request: Request<GetProductRequest>) -> ApiResult<Product> {
        let sku = field("sku", parse_sku(&request.get_ref().sku))?;
        let mut conn = self.db.conn().await?;
        let row = products::find(&mut conn, sku).await?;
        Ok(wire::product(
            row.or_not_found(|| format!("product {sku}"))?,
        ))
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> ApiResult<ListProductsResponse> {
        let request = request.into_inner();
        let sku = |key: &str| parse_sku(key).map(str::to_owned);
        let page = Page::from_request(request.page_size, &request.page_token, sku)?;
        let mut conn = self.db.conn().await?;
        let rows = products::page(&mut conn, page.after.as_deref(), page.fetch()).await?;
        let (rows, next_page_token) = page.finish(rows, |row| row.sku.clone());
        Ok(ListProductsResponse {
            products: rows.into_iter().map(wire::product).collect(),
            next_page_token,
        })
    }

    async fn adjust_stock(&self, request: Request<AdjustStockRequest>) -> ApiResult<Product> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let mut violations = Violations::new();
        let sku = violations.check("sku", parse_sku(&request.sku));
        let delta = violations.check("delta", parse_delta(request.delta));
        let (Some(sku), Some(delta)) = (sku, delta) else {
            return Err(violations.into());
        };
        let row = self
            .db
            .transaction::<_, ApiError>(async |conn| {
                let Some(row) = products::adjust_available(conn, sku, delta).await? else {
                    return Err(match products::find(conn, sku).await? {
                        Some(row) if delta < 0 => ApiError::FailedPrecondition(format!(
                            "only {} of {sku} available; cannot remove {}",
                            row.available,
                            delta.unsigned_abs()
                        )),
                        Some(_) => ApiError::FailedPrecondition(format!(
                            "{sku} would hold more than {MAX_STOCK} units"
                        )),
                        None => ApiError::NotFound(format!("product {sku} not found")),
                    });
                };
                let event = wire::changed(&row);
                self.db.outbox().enqueue(conn, &event, &trace).await?;
                Ok(row)
            })
            .await?;
        tracing::info!(available = row.available, "stock adjusted");
        Ok(wire::product(row))
    }
}

platform::grpc_service! {
    impl InventoryService for InventoryApi {
        #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
        fn create_product(request: CreateProductRequest) -> Product;
        #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
        fn get_product(request: GetProductRequest) -> Product;
        fn list_products(request: ListProductsRequest) -> ListProductsResponse;
        #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku, delta = request.get_ref().delta))]
        fn adjust_stock(request: AdjustStockRequest) -> Product;
    }
}
