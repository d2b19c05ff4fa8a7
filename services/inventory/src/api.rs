//! `inventory.v1.InventoryService`: validates at the edge, then one
//! transaction per write, each with its `product.changed` event.

use broker::{Outbox, TraceContext, pg::PgPool};
use dbps::inventory::v1::{
    AdjustStockRequest, CreateProductRequest, GetProductRequest, ListProductsRequest,
    ListProductsResponse, Product, ProductChanged, inventory_service_server::InventoryService,
};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncConnection, AsyncPgConnection};
use platform::{
    ApiError, Violations,
    api::{Page, parse_sku, timestamp, trace_context},
};
use tonic::{Request, Response, Status};

use crate::{
    db::products::{self, NewProduct, Product as Row},
    domain::{MAX_STOCK, ProductName, parse_delta, parse_initial_stock, parse_price},
};

/// The gRPC API of the inventory service.
#[derive(Clone)]
pub struct InventoryApi {
    pool: PgPool,
    outbox: Outbox,
}

/// Why a stock adjustment was refused.
enum Refused {
    Database(DieselError),
    Missing,
    OutOfRange(Row),
}

impl From<DieselError> for Refused {
    fn from(error: DieselError) -> Self {
        Refused::Database(error)
    }
}

impl InventoryApi {
    /// An API over the service's pool and outbox.
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        InventoryApi { pool, outbox }
    }

    async fn publish(
        &self,
        conn: &mut AsyncPgConnection,
        row: &Row,
        trace: &TraceContext,
    ) -> Result<(), DieselError> {
        self.outbox
            .enqueue(conn, &changed(row), trace)
            .await
            .map(|_| ())
    }
}

#[tonic::async_trait]
impl InventoryService for InventoryApi {
    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
    async fn create_product(
        &self,
        request: Request<CreateProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let mut violations = Violations::new();
        let sku = violations.check("sku", parse_sku(&request.sku));
        let name = violations.check("name", ProductName::parse(&request.name));
        let price = violations.check("price_cents", parse_price(request.price_cents));
        let stock = violations.check("initial_stock", parse_initial_stock(request.initial_stock));
        let (Some(sku), Some(name), Some(price_cents), Some(available)) = (sku, name, price, stock)
        else {
            return Err(ApiError::from(violations).into());
        };
        let name = name.into_inner();
        let new = NewProduct {
            sku,
            name: &name,
            price_cents,
            available,
        };

        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let result = conn
            .transaction::<_, DieselError, _>(async |conn| {
                let row = products::insert(conn, &new).await?;
                self.publish(conn, &row, &trace).await?;
                Ok(row)
            })
            .await;
        let row = match result {
            Ok(row) => row,
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => {
                return Err(ApiError::AlreadyExists(format!("product {sku} exists")).into());
            }
            Err(error) => return Err(ApiError::from(error).into()),
        };
        self.outbox.committed();
        tracing::info!("product created");
        Ok(Response::new(to_proto(row)))
    }

    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
    async fn get_product(
        &self,
        request: Request<GetProductRequest>,
    ) -> Result<Response<Product>, Status> {
        let sku =
            parse_sku(&request.get_ref().sku).map_err(|error| ApiError::invalid("sku", error))?;
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let row = products::find(&mut conn, sku)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("product {sku} not found")))?;
        Ok(Response::new(to_proto(row)))
    }

    async fn list_products(
        &self,
        request: Request<ListProductsRequest>,
    ) -> Result<Response<ListProductsResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(&mut violations, request.page_size, &request.page_token);
        if let Some(key) = page.as_ref().and_then(|page| page.after.as_deref()) {
            violations.check("page_token", parse_sku(key));
        }
        let Some(page) = page.filter(|_| violations.is_empty()) else {
            return Err(ApiError::from(violations).into());
        };
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let mut rows = products::page(&mut conn, page.after.as_deref(), page.size + 1)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut rows, |row| row.sku.clone());
        Ok(Response::new(ListProductsResponse {
            products: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku, delta = request.get_ref().delta))]
    async fn adjust_stock(
        &self,
        request: Request<AdjustStockRequest>,
    ) -> Result<Response<Product>, Status> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let mut violations = Violations::new();
        let sku = violations.check("sku", parse_sku(&request.sku));
        let delta = violations.check("delta", parse_delta(request.delta));
        let (Some(sku), Some(delta)) = (sku, delta) else {
            return Err(ApiError::from(violations).into());
        };

        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let result = conn
            .transaction::<_, Refused, _>(async |conn| {
                let Some(row) = products::adjust_available(conn, sku, delta).await? else {
                    return Err(match products::find(conn, sku).await? {
                        Some(row) => Refused::OutOfRange(row),
                        None => Refused::Missing,
                    });
                };
                self.publish(conn, &row, &trace).await?;
                Ok(row)
            })
            .await;
        match result {
            Ok(row) => {
                self.outbox.committed();
                tracing::info!(available = row.available, "stock adjusted");
                Ok(Response::new(to_proto(row)))
            }
            Err(Refused::Missing) => {
                Err(ApiError::NotFound(format!("product {sku} not found")).into())
            }
            Err(Refused::OutOfRange(row)) if delta < 0 => {
                Err(ApiError::FailedPrecondition(format!(
                    "only {} of {sku} available; cannot remove {}",
                    row.available,
                    delta.unsigned_abs()
                ))
                .into())
            }
            Err(Refused::OutOfRange(_)) => Err(ApiError::FailedPrecondition(format!(
                "{sku} would hold more than {MAX_STOCK} units"
            ))
            .into()),
            Err(Refused::Database(error)) => Err(ApiError::from(error).into()),
        }
    }
}

/// The `product.changed` event: the product's full state.
pub fn changed(row: &Row) -> ProductChanged {
    ProductChanged {
        sku: row.sku.clone(),
        name: row.name.clone(),
        price_cents: row.price_cents,
        available: row.available,
        reserved: row.reserved,
        version: row.version,
        changed_at: Some(timestamp(row.updated_at)),
    }
}

fn to_proto(row: Row) -> Product {
    Product {
        sku: row.sku,
        name: row.name,
        price_cents: row.price_cents,
        available: row.available,
        reserved: row.reserved,
    }
}
