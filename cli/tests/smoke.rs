//! The built `dbps` binary against the real RabbitMQ and Postgres, in a
//! [`TestEnv`] of its own (a fresh AMQP prefix: nothing is declared under it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::{Command, Output};

use dbps::{
    Event,
    order::v1::{OrderApproved, OrderCancelled, OrderLine, OrderStatus},
};
use lapin::{
    BasicProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeleteOptions},
    types::{AMQPValue, FieldTable},
};
use serde_json::{Value, json};
use testkit::TestEnv;

/// Runs `dbps` with `args`, against the test's RabbitMQ and prefix, with no
/// connection settings inherited from the environment.
fn dbps(env: &TestEnv, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dbps"))
        .args(args)
        .args(["--amqp-url", &testkit::amqp_url()])
        .args(["--amqp-prefix", &env.prefix])
        .env_remove("AMQP_URL")
        .env_remove("AMQP_PREFIX")
        .env_remove("ORDER_DATABASE_URL")
        .env_remove("CUSTOMER_DATABASE_URL")
        .env_remove("INVENTORY_DATABASE_URL")
        .env_remove("REPORTING_DATABASE_URL")
        .env_remove("ADMIN_DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .expect("dbps runs")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn listing_dead_letter_queues_that_do_not_exist_succeeds_quietly() {
    let env = TestEnv::new().await;
    let output = dbps(&env, &["dlq", "list"]);
    assert!(output.status.success());
    let out = stdout(&output);
    for consumer in ["order", "customer", "inventory", "reporting"] {
        let line = format!("{}.{consumer}.dlq  not declared", env.prefix);
        assert!(out.contains(&line), "{out}");
    }
    assert_eq!(out.lines().count(), 4, "one line per consumer: {out}");
    let err = stderr(&output);
    assert!(err.is_empty(), "nothing on stderr: {err}");

    let one = dbps(&env, &["dlq", "list", "--consumer", "customer"]);
    assert!(one.status.success());
    assert_eq!(stdout(&one).lines().count(), 1);

    // Nothing was declared by looking.
    let purge = dbps(&env, &["dlq", "purge", "--consumer", "order"]);
    assert!(purge.status.success());
    assert!(stdout(&purge).contains("not declared"));
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_status_against_missing_databases_fails_clearly() {
    let env = TestEnv::new().await;
    let missing = format!("{}_missing", env.database);
    let url = |role: &str| format!("postgres://{role}:Sup3r-s3cret@127.0.0.1:5432/{missing}");
    let output = dbps(
        &env,
        &[
            "outbox",
            "status",
            "--order-database-url",
            &url("order_svc"),
            "--customer-database-url",
            &url("customer_svc"),
            "--inventory-database-url",
            &url("inventory_svc"),
        ],
    );
    assert_eq!(output.status.code(), Some(1), "an error, not a panic");
    let err = stderr(&output);
    assert!(
        err.starts_with("dbps: error: cannot read 3 of 3 outboxes"),
        "{err}"
    );
    for service in ["order", "customer", "inventory"] {
        assert!(
            err.contains(&format!(
                "{service} (postgres://{service}_svc:***@127.0.0.1:5432/{missing})"
            )),
            "{err}"
        );
    }
    assert!(
        !err.contains("Sup3r-s3cret"),
        "a password was printed: {err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // Only the header line: no service could be read.
    assert_eq!(stdout(&output).lines().count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reporting_replay_refuses_to_start_without_its_database() {
    let env = TestEnv::new().await;
    let url = format!(
        "postgres://reporting_svc:Sup3r-s3cret@127.0.0.1:5432/{}_missing",
        env.database
    );
    let output = dbps(&env, &["replay", "--reporting-database-url", &url]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("cannot connect to the reporting database postgres://reporting_svc:***@"),
        "{err}"
    );
    assert!(!err.contains("Sup3r-s3cret"), "{err}");
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["dlq", "--help"],
        &["dlq", "list", "--help"],
        &["dlq", "replay", "--help"],
        &["dlq", "purge", "--help"],
        &["outbox", "status", "--help"],
        &["replay", "--help"],
        &["events", "--help"],
        &["events", "export", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_dbps"))
            .args(args)
            .env("AMQP_URL", "amqp://guest:Sup3r-s3cret@127.0.0.1:5672/%2f")
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}");
        let help = String::from_utf8(output.stdout).unwrap();
        assert!(help.contains("Usage: dbps"), "{args:?}: {help}");
        assert!(!help.contains("Sup3r-s3cret"), "{args:?}: {help}");
    }
}

/// Declares `prefix`'s reporting event log as the reporting service does,
/// for the order service's events.
async fn declare_reporting_log(env: &TestEnv) -> String {
    let amqp = broker::Amqp::new(testkit::amqp_url(), "cli-test");
    let channel = amqp.channel().await.unwrap();
    let keys = [OrderApproved::TYPE, OrderCancelled::TYPE];
    let log = broker::topology::declare_event_log(
        &channel,
        &env.prefix,
        "reporting",
        "order",
        &keys,
        None,
    )
    .await
    .unwrap();
    amqp.close().await;
    log
}

/// Publishes `event` to the order exchange with the CloudEvents headers the
/// order service's relay sets.
async fn publish_with_headers<E: Event>(env: &TestEnv, event: &E, id: &str, time: &str) {
    let amqp = broker::Amqp::new(testkit::amqp_url(), "cli-test");
    let channel = amqp.channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut headers = FieldTable::default();
    let prefix = broker::envelope::CLOUD_EVENTS_PREFIX;
    for (name, value) in [
        ("specversion", "1.0"),
        ("id", id),
        ("source", "/services/order"),
        ("type", E::PROTO_NAME),
        ("time", time),
        ("subject", event.aggregate_id()),
    ] {
        headers.insert(
            format!("{prefix}{name}").into(),
            AMQPValue::LongString(value.into()),
        );
    }
    channel
        .basic_publish(
            broker::topology::exchange(&env.prefix, E::SOURCE).into(),
            E::TYPE.into(),
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            &event.encode_to_vec(),
            BasicProperties::default()
                .with_message_id(id.into())
                .with_type(E::TYPE.into())
                .with_headers(headers),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    amqp.close().await;
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_event_log_is_exported_as_json_lines_up_to_its_end() {
    let env = TestEnv::new().await;
    let missing = dbps(&env, &["events", "export"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains(&format!(
            "the event log {}.reporting.log does not exist",
            env.prefix
        )),
        "{}",
        stderr(&missing)
    );

    let log = declare_reporting_log(&env).await;
    let lines = vec![OrderLine {
        sku: "TEA".into(),
        quantity: 2,
        unit_price_cents: 450,
    }];
    // As the relay publishes it, CloudEvents headers and all ...
    publish_with_headers(
        &env,
        &OrderApproved {
            order_id: "order-1".into(),
            customer_id: "customer-1".into(),
            total_cents: 900,
            approved_at: None,
            lines: lines.clone(),
        },
        "01a216d2-0308-73cb-8b85-55c6b8066fdb",
        "2026-05-01T12:00:00.123456Z",
    )
    .await;
    // ... with only a message ID and a routing key ...
    let bare = env
        .publish(&OrderCancelled {
            order_id: "order-1".into(),
            customer_id: "customer-1".into(),
            reason: "changed my mind".into(),
            previous_status: OrderStatus::Approved.into(),
            lines,
            total_cents: 900,
            ..Default::default()
        })
        .await;
    // ... and a payload that does not decode.
    let broken = uuid::Uuid::now_v7();
    env.publish_bytes("order", OrderApproved::TYPE, broken, b"\xff\xff")
        .await;

    let output = dbps(&env, &["events", "export", "--from-start"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let events = json_lines(&stdout(&output));
    assert_eq!(events.len(), 3, "{events:#?}");
    assert_eq!(
        events[0],
        json!({
            "specversion": "1.0",
            "id": "01a216d2-0308-73cb-8b85-55c6b8066fdb",
            "source": "/services/order",
            "type": "order.v1.OrderApproved",
            "subject": "order-1",
            "time": "2026-05-01T12:00:00.123456Z",
            "datacontenttype": "application/json",
            "routingkey": "order.approved",
            "offset": 0,
            "data": {
                "orderId": "order-1",
                "customerId": "customer-1",
                "totalCents": "900",
                "lines": [{"sku": "TEA", "quantity": 2, "unitPriceCents": "450"}],
            },
        })
    );
    assert_eq!(events[1]["id"], json!(bare.to_string()));
    assert_eq!(events[1]["type"], json!("order.v1.OrderCancelled"));
    assert_eq!(events[1]["source"], json!("/services/order"));
    assert_eq!(
        events[1]["data"]["previousStatus"],
        json!("ORDER_STATUS_APPROVED")
    );
    assert_eq!(events[1]["data"]["lines"][0]["sku"], json!("TEA"));
    assert_eq!(events[1]["data"]["totalCents"], json!("900"));
    assert_eq!(events[2]["id"], json!(broken.to_string()));
    assert_eq!(events[2]["data_base64"], json!("//8="));
    assert_eq!(events[2]["datacontenttype"], json!("application/protobuf"));
    assert!(events[2].get("data").is_none());

    // To a file; and nothing from after the end.
    let dir = std::env::temp_dir().join(format!("dbps-export-{}", env.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let to_file = dbps(&env, &["events", "export", "-o", file.to_str().unwrap()]);
    assert!(to_file.status.success(), "{}", stderr(&to_file));
    assert_eq!(
        stdout(&to_file).trim(),
        format!("exported 3 events from {log} to {}", file.display())
    );
    assert_eq!(json_lines(&std::fs::read_to_string(&file).unwrap()), events);
    std::fs::remove_dir_all(&dir).unwrap();
    let later = dbps(
        &env,
        &[
            "events",
            "export",
            "--since",
            "2100-01-01T00:00:00Z",
            "--idle-secs",
            "1",
        ],
    );
    assert!(later.status.success(), "{}", stderr(&later));
    assert_eq!(stdout(&later), "");

    let amqp = broker::Amqp::new(testkit::amqp_url(), "cli-test");
    let channel = amqp.channel().await.unwrap();
    channel
        .queue_delete(log.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    amqp.close().await;
}
