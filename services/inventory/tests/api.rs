//! The inventory service over real gRPC, Postgres and RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use dbps::inventory::v1::{
    AdjustStockRequest, CreateProductRequest, GetProductRequest, ListProductsRequest,
    inventory_service_client::InventoryServiceClient,
};
use inventory_service::{SERVICE, startup::build};
use testkit::{Running, TestEnv, assert_invalid};
use tonic::{Code, transport::Channel};

async fn spawn_app() -> (TestEnv, Running, InventoryServiceClient<Channel>) {
    let env = TestEnv::new().await;
    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let client = InventoryServiceClient::new(app.channel());
    (env, app, client)
}

fn product(sku: &str, price_cents: i64, initial_stock: i64) -> CreateProductRequest {
    CreateProductRequest {
        sku: sku.into(),
        name: format!("Product {sku}"),
        price_cents,
        initial_stock,
    }
}

fn adjust(sku: &str, delta: i64) -> AdjustStockRequest {
    AdjustStockRequest {
        sku: sku.into(),
        delta,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_created_product_can_be_read_and_its_stock_adjusted() {
    let (_env, _app, mut client) = spawn_app().await;
    let created = client
        .create_product(product("BOOK-1", 4999, 10))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (created.available, created.reserved, created.price_cents),
        (10, 0, 4999)
    );

    let read = client
        .get_product(GetProductRequest {
            sku: "BOOK-1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);

    let more = client
        .adjust_stock(adjust("BOOK-1", 5))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(more.available, 15);
    let less = client
        .adjust_stock(adjust("BOOK-1", -15))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(less.available, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn stock_cannot_go_below_zero_and_skus_are_unique() {
    let (_env, _app, mut client) = spawn_app().await;
    client.create_product(product("PEN", 150, 3)).await.unwrap();
    let status = client.adjust_stock(adjust("PEN", -4)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("only 3"), "{status:?}");

    let status = client
        .create_product(product("PEN", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    for status in [
        client.adjust_stock(adjust("NOPE", 1)).await.unwrap_err(),
        client
            .get_product(GetProductRequest { sku: "NOPE".into() })
            .await
            .unwrap_err(),
    ] {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn products_are_listed_in_pages_by_sku() {
    let (_env, _app, mut client) = spawn_app().await;
    for sku in ["C", "A", "E", "B", "D"] {
        client.create_product(product(sku, 100, 1)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_products(ListProductsRequest {
                page_size: 2,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(page.products.into_iter().map(|p| p.sku));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, ["A", "B", "C", "D", "E"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_field_is_named_in_invalid_argument() {
    let (_env, _app, mut client) = spawn_app().await;
    let all_bad = CreateProductRequest {
        sku: "".into(),
        name: " ".into(),
        price_cents: -1,
        initial_stock: -1,
    };
    assert_invalid(
        client.create_product(all_bad).await,
        &["initial_stock", "name", "price_cents", "sku"],
    );
    for sku in ["has space", "ü", &"x".repeat(65), "a/b"] {
        assert_invalid(client.create_product(product(sku, 1, 1)).await, &["sku"]);
        assert_invalid(
            client
                .get_product(GetProductRequest { sku: sku.into() })
                .await,
            &["sku"],
        );
    }
    let long_name = CreateProductRequest {
        name: "n".repeat(201),
        ..product("OK", 1, 1)
    };
    assert_invalid(client.create_product(long_name).await, &["name"]);
    assert_invalid(
        client.create_product(product("OK", i64::MAX, 1)).await,
        &["price_cents"],
    );
    assert_invalid(
        client.create_product(product("OK", 1, i64::MAX)).await,
        &["initial_stock"],
    );
    for delta in [0, i64::MIN, i64::MAX, 1_000_000_001] {
        assert_invalid(client.adjust_stock(adjust("OK", delta)).await, &["delta"]);
    }
    for page_size in [-1, 1001] {
        let request = ListProductsRequest {
            page_size,
            page_token: String::new(),
        };
        assert_invalid(client.list_products(request).await, &["page_size"]);
    }
    let request = ListProductsRequest {
        page_size: 1,
        page_token: "%%%".into(),
    };
    assert_invalid(client.list_products(request).await, &["page_token"]);
}
