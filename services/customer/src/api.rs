//! `customer.v1.CustomerService`: validates at the edge, then one
//! transaction per write.

use broker::{Outbox, TraceContext, pg::PgPool};
use chrono::Utc;
use dbps::customer::v1::{
    Customer, CustomerRegistered, GetCustomerRequest, ListCustomersRequest, ListCustomersResponse,
    RegisterCustomerRequest, customer_service_server::CustomerService,
};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::AsyncConnection;
use platform::{
    ApiError, Violations,
    api::{Page, parse_id, timestamp, trace_context},
};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    db::customers::{self, Customer as Row},
    domain::{CustomerName, Email},
};

/// The gRPC API of the customer service.
#[derive(Clone)]
pub struct CustomerApi {
    pool: PgPool,
    outbox: Outbox,
}

impl CustomerApi {
    /// An API over the service's pool and outbox.
    pub fn new(pool: PgPool, outbox: Outbox) -> Self {
        CustomerApi { pool, outbox }
    }

    async fn register(
        &self,
        name: CustomerName,
        email: Email,
        trace: &TraceContext,
    ) -> Result<Row, ApiError> {
        let row = Row {
            customer_id: Uuid::now_v7(),
            name: name.as_str().to_owned(),
            email: email.as_str().to_owned(),
            loyalty_points: 0,
            created_at: Utc::now(),
        };
        let mut conn = self.pool.get().await?;
        let outbox = &self.outbox;
        let result = conn
            .transaction::<_, DieselError, _>(async |conn| {
                let row = customers::insert(conn, &row).await?;
                let event = CustomerRegistered {
                    customer_id: row.customer_id.to_string(),
                    name: row.name.clone(),
                    email: row.email.clone(),
                    registered_at: Some(timestamp(row.created_at)),
                };
                outbox.enqueue(conn, &event, trace).await?;
                Ok(row)
            })
            .await;
        match result {
            Ok(row) => {
                self.outbox.committed();
                Ok(row)
            }
            Err(DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Err(
                ApiError::AlreadyExists(format!("a customer with email {} exists", email.as_str())),
            ),
            Err(error) => Err(error.into()),
        }
    }
}

#[tonic::async_trait]
impl CustomerService for CustomerApi {
    #[tracing::instrument(skip_all, fields(customer_id))]
    async fn register_customer(
        &self,
        request: Request<RegisterCustomerRequest>,
    ) -> Result<Response<Customer>, Status> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let mut violations = Violations::new();
        let name = violations.check("name", CustomerName::parse(&request.name));
        let email = violations.check("email", Email::parse(&request.email));
        let (Some(name), Some(email)) = (name, email) else {
            return Err(ApiError::from(violations).into());
        };
        let row = self.register(name, email, &trace).await?;
        tracing::Span::current().record("customer_id", tracing::field::display(row.customer_id));
        tracing::info!("customer registered");
        Ok(Response::new(to_proto(row)))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
    async fn get_customer(
        &self,
        request: Request<GetCustomerRequest>,
    ) -> Result<Response<Customer>, Status> {
        let customer_id = parse_id(&request.get_ref().customer_id)
            .map_err(|error| ApiError::invalid("customer_id", error))?;
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let row = customers::find(&mut conn, customer_id)
            .await
            .map_err(ApiError::from)?
            .ok_or_else(|| ApiError::NotFound(format!("customer {customer_id} not found")))?;
        Ok(Response::new(to_proto(row)))
    }

    async fn list_customers(
        &self,
        request: Request<ListCustomersRequest>,
    ) -> Result<Response<ListCustomersResponse>, Status> {
        let request = request.into_inner();
        let mut violations = Violations::new();
        let page = Page::parse(&mut violations, request.page_size, &request.page_token);
        let after = page
            .as_ref()
            .and_then(|page| page.after.as_deref())
            .and_then(|key| violations.check("page_token", parse_id(key)));
        let Some(page) = page.filter(|_| violations.is_empty()) else {
            return Err(ApiError::from(violations).into());
        };
        let mut conn = self.pool.get().await.map_err(ApiError::from)?;
        let mut rows = customers::page(&mut conn, after, page.size + 1)
            .await
            .map_err(ApiError::from)?;
        let next_page_token = page.finish(&mut rows, |row| row.customer_id.to_string());
        Ok(Response::new(ListCustomersResponse {
            customers: rows.into_iter().map(to_proto).collect(),
            next_page_token,
        }))
    }
}

fn to_proto(row: Row) -> Customer {
    Customer {
        customer_id: row.customer_id.to_string(),
        name: row.name,
        email: row.email,
        loyalty_points: row.loyalty_points,
        created_at: Some(timestamp(row.created_at)),
    }
}
