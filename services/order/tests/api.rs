//! The order service over real gRPC, Postgres and RabbitMQ. Its replicas are
//! fed by publishing the customer and inventory services' events directly.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::time::Duration;

use dbps::{
    customer::v1::CustomerRegistered,
    inventory::v1::{ProductChanged, StockRejected, StockReserved},
    order::v1::{
        CancelOrderRequest, GetOrderRequest, LineItem, ListOrdersRequest, Order, OrderApproved,
        OrderCancelled, OrderLine, OrderRejected, OrderStatus, PlaceOrderRequest,
        WatchOrderRequest, order_service_client::OrderServiceClient,
    },
};
use diesel::{QueryableByName, sql_types::Bytea, sql_types::Text};
use diesel_async::RunQueryDsl;
use order_service::{SERVICE, startup::build};
use prost::Message;
use testkit::{Running, TestEnv, assert_invalid, eventually};
use tonic::{Code, transport::Channel};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

struct App {
    env: TestEnv,
    _app: Running,
    client: OrderServiceClient<Channel>,
}

async fn spawn_app() -> App {
    let env = TestEnv::new().await;
    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let client = OrderServiceClient::new(app.channel());
    App {
        env,
        _app: app,
        client,
    }
}

impl App {
    async fn customer(&self) -> String {
        let customer_id = Uuid::now_v7().to_string();
        self.env
            .publish(&CustomerRegistered {
                customer_id: customer_id.clone(),
                name: "Ada".into(),
                ..Default::default()
            })
            .await;
        customer_id
    }

    async fn product(&self, sku: &str, price_cents: i64, version: i64) {
        let product = ProductChanged {
            sku: sku.into(),
            name: sku.into(),
            price_cents,
            available: 100,
            version,
            ..Default::default()
        };
        self.env.publish(&product).await;
    }

    /// Places an order, retrying while the replicas catch up.
    async fn place(&mut self, request: PlaceOrderRequest) -> Order {
        let client = self.client.clone();
        eventually("the order to be accepted", WAIT, || {
            let mut client = client.clone();
            let request = request.clone();
            async move {
                match client.place_order(request).await {
                    Ok(order) => Some(order.into_inner()),
                    Err(status) if status.code() == Code::FailedPrecondition => None,
                    Err(status) => panic!("{status:?}"),
                }
            }
        })
        .await
    }
}

fn order(customer_id: &str, lines: &[(&str, i32)], key: &str) -> PlaceOrderRequest {
    PlaceOrderRequest {
        customer_id: customer_id.into(),
        lines: lines
            .iter()
            .map(|(sku, quantity)| LineItem {
                sku: (*sku).into(),
                quantity: *quantity,
            })
            .collect(),
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_is_priced_from_the_catalog_replica_and_pending() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("BOOK", 4999, 1).await;
    app.product("PEN", 1, 1).await;

    let placed = app
        .place(order(&customer, &[("BOOK", 2), ("PEN", 1)], ""))
        .await;
    assert_eq!(placed.total_cents, 9_999);
    assert_eq!(placed.status(), OrderStatus::Pending);
    assert_eq!(placed.lines[0].unit_price_cents, 4999);

    let read = app
        .client
        .get_order(GetOrderRequest {
            order_id: placed.order_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, placed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_product_state_does_not_roll_the_price_back() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("BOOK", 2000, 2).await;
    // Version 2 is stored before version 1 is even published, so the two
    // never share a run (within one, the newest state per SKU wins before
    // the database sees it): the stale state meets the stored one in the
    // upsert, whose version guard must refuse it.
    let current = app.place(order(&customer, &[("BOOK", 1)], "")).await;
    assert_eq!(current.total_cents, 2000);
    app.product("BOOK", 1000, 1).await; // older, arrives later
    // Product states share one queue, applied in publish order: once a SKU
    // published after the stale state is known, that state was applied.
    app.product("MARK", 1, 1).await;
    app.place(order(&customer, &[("MARK", 1)], "")).await;

    let placed = app.place(order(&customer, &[("BOOK", 1)], "")).await;
    assert_eq!(placed.total_cents, 2000, "{placed:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_idempotency_key_returns_the_same_order() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("BOOK", 100, 1).await;
    let first = app
        .place(order(&customer, &[("BOOK", 1)], "checkout-1"))
        .await;

    // Retried, also concurrently: one order.
    let mut retries = Vec::new();
    for _ in 0..8 {
        let mut client = app.client.clone();
        let request = order(&customer, &[("BOOK", 1)], "checkout-1");
        retries.push(tokio::spawn(async move {
            client.place_order(request).await.unwrap().into_inner()
        }));
    }
    for retry in retries {
        assert_eq!(retry.await.unwrap().order_id, first.order_id);
    }
    let listed = app
        .client
        .list_orders(ListOrdersRequest {
            customer_id: customer.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.orders.len(), 1);

    // The same key for something else is refused.
    assert_invalid(
        app.client
            .place_order(order(&customer, &[("BOOK", 2)], "checkout-1"))
            .await,
        &["idempotency_key"],
    );
    // Keys are per customer.
    let other = app.customer().await;
    let theirs = app.place(order(&other, &[("BOOK", 1)], "checkout-1")).await;
    assert_ne!(theirs.order_id, first.order_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_first_requests_with_one_key_create_one_order() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("BOOK", 100, 1).await;
    app.place(order(&customer, &[("BOOK", 1)], "warm-up")).await;

    let mut racers = Vec::new();
    for _ in 0..16 {
        let mut client = app.client.clone();
        let request = order(&customer, &[("BOOK", 3)], "race");
        racers.push(tokio::spawn(async move {
            client
                .place_order(request)
                .await
                .unwrap()
                .into_inner()
                .order_id
        }));
    }
    let mut ids = Vec::new();
    for racer in racers {
        ids.push(racer.await.unwrap());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_customers_and_skus_are_failed_preconditions_that_name_them() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("BOOK", 100, 1).await;
    app.place(order(&customer, &[("BOOK", 1)], "")).await;

    let stranger = Uuid::now_v7().to_string();
    let status = app
        .client
        .place_order(order(&stranger, &[("BOOK", 1)], ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains(&stranger), "{status:?}");

    let status = app
        .client
        .place_order(order(
            &customer,
            &[("BOOK", 1), ("GHOST", 1), ("NOPE", 2)],
            "",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("GHOST, NOPE"), "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn orders_are_listed_newest_first_per_customer_in_pages() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    let other = app.customer().await;
    app.product("BOOK", 100, 1).await;
    let mut placed = Vec::new();
    for quantity in 1..=5 {
        placed.push(
            app.place(order(&customer, &[("BOOK", quantity)], ""))
                .await
                .order_id,
        );
    }
    app.place(order(&other, &[("BOOK", 1)], "")).await;
    placed.reverse();

    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListOrdersRequest {
            customer_id: customer.clone(),
            page_size: 2,
            page_token,
        };
        let page = app.client.list_orders(request).await.unwrap().into_inner();
        seen.extend(page.orders.into_iter().map(|o| o.order_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, placed);
    let everyone = app
        .client
        .list_orders(ListOrdersRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(everyone.orders.len(), 6);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_field_is_named_in_invalid_argument() {
    let mut app = spawn_app().await;
    let client = &mut app.client;
    let customer = Uuid::now_v7().to_string();
    assert_invalid(
        client.place_order(order("", &[("A", 1)], "")).await,
        &["customer_id"],
    );
    assert_invalid(
        client.place_order(order("nope", &[("A", 1)], "")).await,
        &["customer_id"],
    );
    assert_invalid(
        client.place_order(order(&customer, &[], "")).await,
        &["lines"],
    );
    let too_many: Vec<String> = (0..101).map(|i| format!("S{i}")).collect();
    let too_many: Vec<(&str, i32)> = too_many.iter().map(|sku| (sku.as_str(), 1)).collect();
    assert_invalid(
        client.place_order(order(&customer, &too_many, "")).await,
        &["lines"],
    );
    assert_invalid(
        client.place_order(order(&customer, &[("A", 0)], "")).await,
        &["lines[0].quantity"],
    );
    assert_invalid(
        client
            .place_order(order(&customer, &[("A", 1), ("B", -1)], ""))
            .await,
        &["lines[1].quantity"],
    );
    assert_invalid(
        client
            .place_order(order(&customer, &[("A", 10_001)], ""))
            .await,
        &["lines[0].quantity"],
    );
    assert_invalid(
        client
            .place_order(order(&customer, &[("A", 1), ("A", 2)], ""))
            .await,
        &["lines[1].sku"],
    );
    assert_invalid(
        client
            .place_order(order(&customer, &[("bad sku", 1)], ""))
            .await,
        &["lines[0].sku"],
    );
    assert_invalid(
        client.place_order(order(&customer, &[("", 1)], "")).await,
        &["lines[0].sku"],
    );
    assert_invalid(
        client
            .place_order(order(&customer, &[("A", 1)], &"k".repeat(129)))
            .await,
        &["idempotency_key"],
    );
    assert_invalid(
        client.place_order(order("x", &[("", 0)], "\u{1}")).await,
        &[
            "customer_id",
            "idempotency_key",
            "lines[0].quantity",
            "lines[0].sku",
        ],
    );

    for id in ["", "1", "not-a-uuid"] {
        assert_invalid(
            client
                .get_order(GetOrderRequest {
                    order_id: id.into(),
                })
                .await,
            &["order_id"],
        );
    }
    let status = client
        .get_order(GetOrderRequest {
            order_id: Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    let bad = ListOrdersRequest {
        customer_id: "x".into(),
        page_size: -1,
        page_token: "!!".into(),
    };
    assert_invalid(
        client.list_orders(bad).await,
        &["customer_id", "page_size", "page_token"],
    );
    let bad = ListOrdersRequest {
        page_size: 1001,
        ..Default::default()
    };
    assert_invalid(client.list_orders(bad).await, &["page_size"]);
}

impl App {
    async fn wait_status(&self, order_id: &str, status: OrderStatus) -> Order {
        let client = self.client.clone();
        eventually(&format!("{order_id} to be {status:?}"), WAIT, || {
            let mut client = client.clone();
            async move {
                let order = client
                    .get_order(GetOrderRequest {
                        order_id: order_id.into(),
                    })
                    .await
                    .unwrap()
                    .into_inner();
                (order.status() == status).then_some(order)
            }
        })
        .await
    }
}

fn cancel(order_id: &str, reason: &str) -> CancelOrderRequest {
    CancelOrderRequest {
        order_id: order_id.into(),
        reason: reason.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inventory_answers_move_pending_orders_and_late_ones_change_nothing() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("BOOK", 100, 1).await;
    let approved = app.place(order(&customer, &[("BOOK", 1)], "a")).await;
    let rejected = app.place(order(&customer, &[("BOOK", 2)], "b")).await;

    app.env
        .publish(&StockReserved {
            order_id: approved.order_id.clone(),
            ..Default::default()
        })
        .await;
    app.env
        .publish(&StockRejected {
            order_id: rejected.order_id.clone(),
            reason: "no BOOK".into(),
            sku: "BOOK".into(),
            ..Default::default()
        })
        .await;
    app.wait_status(&approved.order_id, OrderStatus::Approved)
        .await;
    let refused = app
        .wait_status(&rejected.order_id, OrderStatus::Rejected)
        .await;
    assert_eq!(refused.status_reason, "no BOOK");

    // Replays and contradicting late answers are ignored.
    app.env
        .publish(&StockRejected {
            order_id: approved.order_id.clone(),
            ..Default::default()
        })
        .await;
    app.env
        .publish(&StockReserved {
            order_id: rejected.order_id.clone(),
            ..Default::default()
        })
        .await;
    // Inventory's events share one queue, consumed in order: once a product
    // published after them is known, both answers have been applied.
    app.product("MARK", 1, 1).await;
    app.place(order(&customer, &[("MARK", 1)], "")).await;
    for (order_id, status) in [
        (&approved.order_id, OrderStatus::Approved),
        (&rejected.order_id, OrderStatus::Rejected),
    ] {
        let request = GetOrderRequest {
            order_id: order_id.clone(),
        };
        assert_eq!(
            app.client
                .get_order(request)
                .await
                .unwrap()
                .into_inner()
                .status(),
            status
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn pending_and_approved_orders_can_be_cancelled_once() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("BOOK", 100, 1).await;
    let pending = app.place(order(&customer, &[("BOOK", 1)], "")).await;
    let cancelled = app
        .client
        .cancel_order(cancel(&pending.order_id, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.status(), OrderStatus::Cancelled);
    assert_eq!(cancelled.status_reason, "cancelled by the client");

    let status = app
        .client
        .cancel_order(cancel(&pending.order_id, "again"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let status = app
        .client
        .cancel_order(cancel(&Uuid::now_v7().to_string(), ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    assert_invalid(
        app.client.cancel_order(cancel("nope", "")).await,
        &["order_id"],
    );
    assert_invalid(
        app.client
            .cancel_order(cancel(&pending.order_id, &"r".repeat(201)))
            .await,
        &["reason"],
    );
    assert_invalid(
        app.client.cancel_order(cancel("", "\u{7}")).await,
        &["order_id", "reason"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watching_needs_an_existing_order() {
    let mut app = spawn_app().await;
    let watch = |id: &str| WatchOrderRequest {
        order_id: id.into(),
    };
    assert_invalid(
        app.client.watch_order(watch("x")).await.map(|_| ()),
        &["order_id"],
    );
    let status = app
        .client
        .watch_order(watch(&Uuid::now_v7().to_string()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

impl App {
    /// The payload of the `event_type` event the order service wrote about
    /// `order_id` to its outbox: what the relay publishes, byte for byte (no
    /// queue is bound to these events here, so the broker would not take them).
    async fn published<E: Message + Default>(&self, event_type: &str, order_id: &str) -> E {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Bytea)]
            payload: Vec<u8>,
        }
        let database = self.env.database.clone();
        let payload = eventually(
            &format!("{event_type} of {order_id} to be written"),
            WAIT,
            || {
                let database = database.clone();
                async move {
                    let mut conn = testkit::admin_connection(&database).await;
                    diesel::sql_query(
                        "SELECT payload FROM orders.outbox \
                     WHERE event_type = $1 AND aggregate_id = $2",
                    )
                    .bind::<Text, _>(event_type)
                    .bind::<Text, _>(order_id)
                    .get_result::<Row>(&mut conn)
                    .await
                    .ok()
                    .map(|row| row.payload)
                }
            },
        )
        .await;
        E::decode(&*payload).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn approved_rejected_and_cancelled_events_carry_the_lines_and_total() {
    let mut app = spawn_app().await;
    let customer = app.customer().await;
    app.product("TEA", 450, 1).await;
    app.product("MUG", 1200, 1).await;
    let first = app
        .place(order(&customer, &[("TEA", 2), ("MUG", 1)], "first"))
        .await;
    let second = app.place(order(&customer, &[("MUG", 3)], "second")).await;
    let expected_lines = vec![
        OrderLine {
            sku: "TEA".into(),
            quantity: 2,
            unit_price_cents: 450,
        },
        OrderLine {
            sku: "MUG".into(),
            quantity: 1,
            unit_price_cents: 1200,
        },
    ];
    assert_eq!(first.lines, expected_lines);
    assert_eq!(first.total_cents, 2100);

    app.env
        .publish(&StockReserved {
            order_id: first.order_id.clone(),
            ..Default::default()
        })
        .await;
    app.env
        .publish(&StockRejected {
            order_id: second.order_id.clone(),
            reason: "no MUG".into(),
            sku: "MUG".into(),
            ..Default::default()
        })
        .await;
    app.wait_status(&first.order_id, OrderStatus::Approved)
        .await;
    app.wait_status(&second.order_id, OrderStatus::Rejected)
        .await;
    app.client
        .cancel_order(cancel(&first.order_id, "changed my mind"))
        .await
        .unwrap();

    let approved: OrderApproved = app.published("order.approved", &first.order_id).await;
    assert_eq!(approved.lines, expected_lines);
    assert_eq!(approved.total_cents, 2100);
    assert_eq!(approved.customer_id, customer);

    let rejected: OrderRejected = app.published("order.rejected", &second.order_id).await;
    assert_eq!(
        rejected.lines,
        vec![OrderLine {
            sku: "MUG".into(),
            quantity: 3,
            unit_price_cents: 1200,
        }]
    );
    assert_eq!(rejected.total_cents, 3600);
    assert_eq!(rejected.reason, "no MUG");

    let cancelled: OrderCancelled = app.published("order.cancelled", &first.order_id).await;
    assert_eq!(cancelled.lines, expected_lines);
    assert_eq!(cancelled.total_cents, 2100);
    assert_eq!(cancelled.previous_status(), OrderStatus::Approved);
    assert_eq!(cancelled.reason, "changed my mind");
}
