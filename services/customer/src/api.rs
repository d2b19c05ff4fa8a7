//! `customer.v1.CustomerService`: validates at the edge, then one
//! transaction per write.

use chrono::Utc;
use dbps::customer::v1::{
    Customer, GetCustomerRequest, ListCustomersRequest, ListCustomersResponse,
    RegisterCustomerRequest, customer_service_server::CustomerService,
};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use platform::{
    ApiError, ApiResult, Db, OrNotFound, Page, Violations,
    fields::{field, parse_id},
    telemetry::trace_context,
};
use tonic::Request;
use uuid::Uuid;

use crate::{
    db::customers::{self, Customer as Row},
    domain::{CustomerName, Email},
    wire,
};

/// The gRPC API of the customer service.
#[derive(Clone)]
pub struct CustomerApi {
    db: Db,
}

impl CustomerApi {
    /// An API over the service's database.
    pub fn new(db: Db) -> Self {
        CustomerApi { db }
    }

    async fn register_customer(
        &self,
        request: Request<RegisterCustomerRequest>,
    ) -> ApiResult<Customer> {
        let trace = trace_context(&request);
        let request = request.into_inner();
        let mut violations = Violations::new();
        let name = violations.check("name", CustomerName::parse(&request.name));
        let email = violations.check("email", Email::parse(&request.email));
        let (Some(name), Some(email)) = (name, email) else {
            return Err(violations.into());
        };
        let row = Row {
            customer_id: Uuid::now_v7(),
            name: name.as_str().to_owned(),
            email: email.as_str().to_owned(),
            loyalty_points: 0,
            created_at: Utc::now(),
        };
        let row = self
            .db
            .transaction::<_, ApiError>(async |conn| {
                let row = customers::insert(conn, &row)
                    .await
                    .map_err(|error| match error {
                        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => {
                            ApiError::AlreadyExists(format!(
                                "a customer with email {} exists",
                                email.as_str()
                            ))
                        }
                        error => error.into(),
                    })?;
                let event = wire::registered(&row);
                self.db.outbox().enqueue(conn, &event, &trace).await?;
                Ok(row)
            })
            .await?;
        tracing::Span::current().record("customer_id", tracing::field::display(row.customer_id));
        tracing::info!("customer registered");
        Ok(wire::customer(row))
    }

    async fn get_customer(&self, request: Request<GetCustomerRequest>) -> ApiResult<Customer> {
        let customer_id = field("customer_id", parse_id(&request.get_ref().customer_id))?;
        let mut conn = self.db.conn().await?;
        let row = customers::find(&mut conn, customer_id).await?;
        Ok(wire::customer(
            row.or_not_found(|| format!("customer {customer_id}"))?,
        ))
    }

    async fn list_customers(
        &self,
        request: Request<ListCustomersRequest>,
    ) -> ApiResult<ListCustomersResponse> {
        let request = request.into_inner();
        let page = Page::from_request(request.page_size, &request.page_token, parse_id)?;
        let mut conn = self.db.conn().await?;
        let rows = customers::page(&mut conn, page.after, page.fetch()).await?;
        let (rows, next_page_token) = page.finish(rows, |row| row.customer_id.to_string());
        Ok(ListCustomersResponse {
            customers: rows.into_iter().map(wire::customer).collect(),
            next_page_token,
        })
    }
}

platform::grpc_service! {
    impl CustomerService for CustomerApi {
        #[tracing::instrument(skip_all, fields(customer_id))]
        fn register_customer(request: RegisterCustomerRequest) -> Customer;
        #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
        fn get_customer(request: GetCustomerRequest) -> Customer;
        fn list_customers(request: ListCustomersRequest) -> ListCustomersResponse;
    }
}
