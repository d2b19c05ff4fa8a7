//! Starting the system and driving it like a client would.

use std::time::Duration;

use dbps::{
    customer::v1::{
        GetCustomerRequest, RegisterCustomerRequest, customer_service_client::CustomerServiceClient,
    },
    inventory::v1::{
        CreateProductRequest, GetProductRequest, Product,
        inventory_service_client::InventoryServiceClient,
    },
    order::v1::{
        GetOrderRequest, LineItem, Order, OrderStatus, PlaceOrderRequest,
        order_service_client::OrderServiceClient,
    },
    reporting::v1::reporting_service_client::ReportingServiceClient,
};
use testkit::{Running, TestEnv, eventually};
use tonic::{Code, transport::Channel};

pub const WAIT: Duration = Duration::from_secs(60);

/// Where each service keeps its data.
#[derive(Clone, Copy, Debug)]
pub enum Deployment {
    /// One database, a schema per service (the default).
    SharedDatabase,
    /// A database per service: the services must not notice the difference.
    DatabasePerService,
}

/// The services of one test.
pub struct System {
    pub env: TestEnv,
    /// Databases of customer, inventory, order, reporting.
    pub databases: [String; 4],
    pub running: Vec<Option<Running>>,
    pub customers: CustomerServiceClient<Channel>,
    pub inventory: InventoryServiceClient<Channel>,
    pub orders: OrderServiceClient<Channel>,
    pub reporting: ReportingServiceClient<Channel>,
    composition_timeout: &'static str,
    /// Flags every process of every service gets.
    flags: &'static [&'static str],
}

pub const CUSTOMER: usize = 0;
pub const INVENTORY: usize = 1;
pub const ORDER: usize = 2;
pub const REPORTING: usize = 3;

impl System {
    pub async fn start(deployment: Deployment) -> System {
        Self::start_with(deployment, "500ms").await
    }

    /// Like [`System::start`], with the reporting service's composition deadline.
    pub async fn start_with(deployment: Deployment, composition_timeout: &'static str) -> System {
        Self::start_configured(deployment, composition_timeout, &[]).await
    }

    /// Like [`System::start`], with `flags` for every service process.
    pub async fn start_flagged(deployment: Deployment, flags: &'static [&'static str]) -> System {
        Self::start_configured(deployment, "500ms", flags).await
    }

    async fn start_configured(
        deployment: Deployment,
        composition_timeout: &'static str,
        flags: &'static [&'static str],
    ) -> System {
        let env = TestEnv::new().await;
        let databases = match deployment {
            Deployment::SharedDatabase => std::array::from_fn(|_| env.database.clone()),
            Deployment::DatabasePerService => [
                env.extra_database("customer").await,
                env.extra_database("inventory").await,
                env.extra_database("order").await,
                env.extra_database("reporting").await,
            ],
        };
        let mut system = System {
            customers: CustomerServiceClient::new(lazy()),
            inventory: InventoryServiceClient::new(lazy()),
            orders: OrderServiceClient::new(lazy()),
            reporting: ReportingServiceClient::new(lazy()),
            running: vec![None, None, None, None],
            composition_timeout,
            flags,
            databases,
            env,
        };
        for service in [CUSTOMER, INVENTORY, ORDER, REPORTING] {
            system.start_service(service).await;
        }
        system
    }

    /// (Re)starts one service on its database.
    pub async fn start_service(&mut self, service: usize) {
        let running = self.spawn_replica(service, &[]).await;
        let channel = running.channel();
        match service {
            CUSTOMER => self.customers = CustomerServiceClient::new(channel),
            INVENTORY => self.inventory = InventoryServiceClient::new(channel),
            ORDER => self.orders = OrderServiceClient::new(channel),
            _ => self.reporting = ReportingServiceClient::new(channel),
        }
        self.running[service] = Some(running);
    }

    /// Starts another process of `service` on the same database and
    /// prefix (a replica), with extra flags; the system's clients keep
    /// talking to the first.
    pub async fn spawn_replica(&self, service: usize, extra: &[&str]) -> Running {
        use {
            customer_service as c, inventory_service as i, order_service as o,
            reporting_service as r,
        };
        let env = &self.env;
        let database = &self.databases[service];
        let extra: Vec<&str> = self.flags.iter().chain(extra).copied().collect();
        let extra = extra.as_slice();
        match service {
            CUSTOMER => {
                env.spawn(
                    &c::SERVICE,
                    env.config_in(&c::SERVICE, database, extra),
                    c::startup::build,
                )
                .await
            }
            INVENTORY => {
                env.spawn(
                    &i::SERVICE,
                    env.config_in(&i::SERVICE, database, extra),
                    i::startup::build,
                )
                .await
            }
            ORDER => {
                env.spawn(
                    &o::SERVICE,
                    env.config_in(&o::SERVICE, database, extra),
                    o::startup::build,
                )
                .await
            }
            _ => {
                let addr = |s: usize| {
                    self.running[s]
                        .as_ref()
                        .map(|r| format!("http://{}", r.addr))
                        .unwrap_or_default()
                };
                let (customer, order, inventory) = (addr(CUSTOMER), addr(ORDER), addr(INVENTORY));
                let mut args = vec![
                    "--customer-addr",
                    &customer,
                    "--order-addr",
                    &order,
                    "--inventory-addr",
                    &inventory,
                    "--composition-timeout",
                    self.composition_timeout,
                ];
                args.extend_from_slice(extra);
                let config = env.config_for(&r::SERVICE, database, &args);
                env.spawn(&r::SERVICE, config, r::startup::build).await
            }
        }
    }

    /// Stops one service gracefully.
    pub async fn stop_service(&mut self, service: usize) {
        if let Some(running) = self.running[service].take() {
            running.stop().await;
        }
    }

    pub async fn customer(&self, email: &str) -> String {
        let request = RegisterCustomerRequest {
            name: "Ada".into(),
            email: email.into(),
        };
        self.customers
            .clone()
            .register_customer(request)
            .await
            .unwrap()
            .into_inner()
            .customer_id
    }

    pub async fn product(&self, sku: &str, price_cents: i64, stock: i64) {
        let request = CreateProductRequest {
            sku: sku.into(),
            name: format!("Product {sku}"),
            price_cents,
            initial_stock: stock,
        };
        self.inventory
            .clone()
            .create_product(request)
            .await
            .unwrap();
    }

    pub async fn stock(&self, sku: &str) -> Product {
        self.inventory
            .clone()
            .get_product(GetProductRequest { sku: sku.into() })
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn points(&self, customer_id: &str) -> i64 {
        let request = GetCustomerRequest {
            customer_id: customer_id.into(),
        };
        self.customers
            .clone()
            .get_customer(request)
            .await
            .unwrap()
            .into_inner()
            .loyalty_points
    }

    pub async fn order(&self, order_id: &str) -> Order {
        self.orders
            .clone()
            .get_order(GetOrderRequest {
                order_id: order_id.into(),
            })
            .await
            .unwrap()
            .into_inner()
    }

    /// Places an order, retrying (same key) while the order service's
    /// replicas catch up with the customer and the products.
    pub async fn place(&self, customer_id: &str, lines: &[(&str, i32)], key: &str) -> Order {
        let request = PlaceOrderRequest {
            customer_id: customer_id.into(),
            lines: lines
                .iter()
                .map(|(sku, quantity)| LineItem {
                    sku: (*sku).into(),
                    quantity: *quantity,
                })
                .collect(),
            idempotency_key: key.into(),
        };
        let orders = self.orders.clone();
        eventually(
            "the order service to know customer and products",
            WAIT,
            || {
                let (mut orders, request) = (orders.clone(), request.clone());
                async move {
                    match orders.place_order(request).await {
                        Ok(order) => Some(order.into_inner()),
                        Err(status) if status.code() == Code::FailedPrecondition => None,
                        Err(status) => panic!("{status:?}"),
                    }
                }
            },
        )
        .await
    }

    /// Waits until the order reaches `status`.
    pub async fn wait_status(&self, order_id: &str, status: OrderStatus) -> Order {
        eventually(
            &format!("order {order_id} to be {status:?}"),
            WAIT,
            || async {
                let order = self.order(order_id).await;
                (order.status() == status).then_some(order)
            },
        )
        .await
    }

    /// Waits until the customer's points are `expected`.
    pub async fn wait_points(&self, customer_id: &str, expected: i64) {
        eventually(&format!("{expected} points"), WAIT, || async {
            (self.points(customer_id).await == expected).then_some(())
        })
        .await;
    }

    /// Waits until the SKU's stock is (available, reserved).
    pub async fn wait_stock(&self, sku: &str, available: i64, reserved: i64) {
        eventually(
            &format!("{sku} at {available} available / {reserved} reserved"),
            WAIT,
            || async {
                let product = self.stock(sku).await;
                (product.available == available && product.reserved == reserved).then_some(())
            },
        )
        .await;
    }
}

fn lazy() -> Channel {
    Channel::from_static("http://127.0.0.1:9").connect_lazy()
}
