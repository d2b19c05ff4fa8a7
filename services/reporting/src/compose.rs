//! API composition: `GetCustomerOverview` asks the services that own the data,
//! live and in parallel, each call bounded by a deadline. A service that
//! does not answer in time is named in the answer, which then carries what
//! the others said: a partial answer beats no answer.

use std::{collections::BTreeSet, future::Future, time::Duration};

use dbps::{
    customer::v1::{GetCustomerRequest, customer_service_client::CustomerServiceClient},
    inventory::v1::{GetProductRequest, inventory_service_client::InventoryServiceClient},
    order::v1::{ListOrdersRequest, order_service_client::OrderServiceClient},
    reporting::v1::CustomerOverview,
};
use futures_util::future::join_all;
use platform::ApiError;
use tonic::{
    Code, Request, Status,
    transport::{ClientTlsConfig, Endpoint},
};
use uuid::Uuid;

use crate::config::ReportingArgs;

/// How many of the newest orders an overview shows.
pub const RECENT_ORDERS: i32 = 10;

/// Clients of the three services behind an overview.
#[derive(Clone)]
pub struct Composer {
    customers: CustomerServiceClient<tonic::transport::Channel>,
    orders: OrderServiceClient<tonic::transport::Channel>,
    inventory: InventoryServiceClient<tonic::transport::Channel>,
    timeout: Duration,
}

impl Composer {
    /// Clients that connect on first use (over TLS with `tls`).
    pub fn new(args: &ReportingArgs, tls: Option<ClientTlsConfig>) -> anyhow::Result<Self> {
        let channel = |addr: &str| -> anyhow::Result<tonic::transport::Channel> {
            let mut endpoint = Endpoint::from_shared(addr.to_owned())?
                .connect_timeout(args.composition_timeout)
                .timeout(args.composition_timeout);
            if let Some(tls) = &tls {
                endpoint = endpoint.tls_config(tls.clone())?;
            }
            Ok(endpoint.connect_lazy())
        };
        Ok(Composer {
            customers: CustomerServiceClient::new(channel(&args.customer_addr)?),
            orders: OrderServiceClient::new(channel(&args.order_addr)?),
            inventory: InventoryServiceClient::new(channel(&args.inventory_addr)?),
            timeout: args.composition_timeout,
        })
    }

    /// The customer, their newest orders and the names of the products in
    /// them. NOT_FOUND only if the customer service says so.
    pub async fn overview(&self, customer_id: Uuid) -> Result<CustomerOverview, ApiError> {
        let id = customer_id.to_string();
        let (mut customers, mut orders) = (self.customers.clone(), self.orders.clone());
        let customer_request = self.request(GetCustomerRequest {
            customer_id: id.clone(),
        });
        let orders_request = self.request(ListOrdersRequest {
            customer_id: id,
            page_size: RECENT_ORDERS,
            page_token: String::new(),
        });
        let (customer, orders) = tokio::join!(
            self.call(customers.get_customer(customer_request)),
            self.call(orders.list_orders(orders_request)),
        );
        let mut overview = CustomerOverview::default();
        match customer {
            Ok(customer) => overview.customer = Some(customer),
            Err(status) if status.code() == Code::NotFound => {
                return Err(ApiError::NotFound(format!(
                    "customer {customer_id} not found"
                )));
            }
            Err(status) => unavailable(&mut overview, "customer", &status),
        }
        match orders {
            Ok(page) => overview.recent_orders = page.orders,
            Err(status) => unavailable(&mut overview, "order", &status),
        }

        let skus: BTreeSet<String> = overview
            .recent_orders
            .iter()
            .flat_map(|order| order.lines.iter().map(|line| line.sku.clone()))
            .collect();
        let lookups = skus.iter().map(|sku| {
            let mut inventory = self.inventory.clone();
            let request = self.request(GetProductRequest { sku: sku.clone() });
            self.call(async move { inventory.get_product(request).await })
        });
        let mut inventory_failed = None;
        for (sku, product) in skus.iter().zip(join_all(lookups).await) {
            match product {
                Ok(product) => {
                    overview.product_names.insert(sku.clone(), product.name);
                }
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => inventory_failed = Some(status),
            }
        }
        if let Some(status) = inventory_failed {
            unavailable(&mut overview, "inventory", &status);
        }
        overview.partial = !overview.unavailable.is_empty();
        Ok(overview)
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Awaits a call, giving up at the deadline even if the transport does not.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Status> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded("no answer in time")),
        }
    }
}

fn unavailable(overview: &mut CustomerOverview, service: &str, status: &Status) {
    tracing::warn!(service, code = ?status.code(), message = status.message(), "overview is partial");
    overview.unavailable.push(service.to_owned());
}
