//! The customer service over real gRPC, Postgres and RabbitMQ.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use customer_service::{SERVICE, startup::build};
use dbps::customer::v1::{
    GetCustomerRequest, ListCustomersRequest, RegisterCustomerRequest,
    customer_service_client::CustomerServiceClient,
};
use testkit::{Running, TestEnv, assert_invalid};
use tonic::{Code, transport::Channel};

async fn spawn_app() -> (TestEnv, Running, CustomerServiceClient<Channel>) {
    let env = TestEnv::new().await;
    let app = env.spawn(&SERVICE, env.config(&SERVICE), build).await;
    let client = CustomerServiceClient::new(app.channel());
    (env, app, client)
}

fn register(name: &str, email: &str) -> RegisterCustomerRequest {
    RegisterCustomerRequest {
        name: name.into(),
        email: email.into(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn registered_customer_can_be_read_back_with_zero_points() {
    let (_env, _app, mut client) = spawn_app().await;
    let created = client
        .register_customer(register(" Ada Lovelace ", "Ada@Example.com"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.name, "Ada Lovelace");
    assert_eq!(created.email, "ada@example.com");
    assert_eq!(created.loyalty_points, 0);
    assert!(created.created_at.is_some());

    let read = client
        .get_customer(GetCustomerRequest {
            customer_id: created.customer_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(read, created);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_email_can_belong_to_one_customer_only_whatever_its_case() {
    let (_env, _app, mut client) = spawn_app().await;
    client
        .register_customer(register("Ada", "ada@example.com"))
        .await
        .unwrap();
    let status = client
        .register_customer(register("Imposter", "ADA@example.com"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn customers_are_listed_in_pages_in_registration_order() {
    let (_env, _app, mut client) = spawn_app().await;
    let mut registered = Vec::new();
    for i in 0..5 {
        let customer = client
            .register_customer(register("C", &format!("c{i}@example.com")))
            .await
            .unwrap();
        registered.push(customer.into_inner().customer_id);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_customers(ListCustomersRequest {
                page_size: 2,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.customers.len() <= 2);
        seen.extend(page.customers.into_iter().map(|c| c.customer_id));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(seen, registered);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_field_is_named_in_invalid_argument() {
    let (_env, _app, mut client) = spawn_app().await;
    assert_invalid(
        client.register_customer(register("", "")).await,
        &["email", "name"],
    );
    assert_invalid(
        client
            .register_customer(register("   ", "ada@example.com"))
            .await,
        &["name"],
    );
    assert_invalid(
        client
            .register_customer(register(&"x".repeat(201), "ada@example.com"))
            .await,
        &["name"],
    );
    assert_invalid(
        client
            .register_customer(register("Ada\u{7}", "ada@example.com"))
            .await,
        &["name"],
    );
    for email in [
        "ada",
        "ada@",
        "@example.com",
        "ada@example",
        "Ada <ada@example.com>",
    ] {
        assert_invalid(
            client.register_customer(register("Ada", email)).await,
            &["email"],
        );
    }
    let long_email = format!("{}@example.com", "a".repeat(250));
    assert_invalid(
        client.register_customer(register("Ada", &long_email)).await,
        &["email"],
    );

    for id in [
        "",
        "42",
        "not-a-uuid",
        "0192f0c4-6c9b-7bde-b1d8-3c2a3f6e9a1",
    ] {
        assert_invalid(
            client
                .get_customer(GetCustomerRequest {
                    customer_id: id.into(),
                })
                .await,
            &["customer_id"],
        );
    }
    for page_size in [-1, 1001, i32::MIN, i32::MAX] {
        let request = ListCustomersRequest {
            page_size,
            page_token: String::new(),
        };
        assert_invalid(client.list_customers(request).await, &["page_size"]);
    }
    for page_token in ["***", "bm90LWEtdXVpZA"] {
        let request = ListCustomersRequest {
            page_size: 10,
            page_token: page_token.into(),
        };
        assert_invalid(client.list_customers(request).await, &["page_token"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_customer_is_not_found() {
    let (_env, _app, mut client) = spawn_app().await;
    let status = client
        .get_customer(GetCustomerRequest {
            customer_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}
