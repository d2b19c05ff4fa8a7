//! The built `dbps` binary against the real RabbitMQ and Postgres, in a
//! [`TestEnv`] of its own (a fresh AMQP prefix: nothing is declared under it).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is a failed test

use std::process::{Command, Output};

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
