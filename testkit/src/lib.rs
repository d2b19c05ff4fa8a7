//! Test harness over the real Postgres and RabbitMQ.
//!
//! * [`TestEnv`]: a fresh database and a fresh AMQP prefix for one test, both
//!   removed when it is dropped, so tests run side by side without sharing state.
//! * [`TestEnv::spawn`]: starts a service in-process on `127.0.0.1:0` exactly
//!   as its binary would (bootstrap, migrations, relay, consumers) and waits
//!   until it reports SERVING.
//! * [`eventually`]: polls a condition until a deadline instead of sleeping.
//! * [`stack`]: the four services as release binaries in processes, for the
//!   bench and the fault suite.
//! * [`certs`]: a throwaway CA and certificates for the TLS tests.
//! * [`workload`]: the shared world, seeded orders, retried placing, raw publishing.
//!
//! `TEST_ADMIN_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`)
//! and `TEST_AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`) say where
//! the servers are.

#![warn(missing_docs, unreachable_pub)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{future::Future, net::SocketAddr, time::Duration};

use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use platform::{App, Config, Infra, NoExtra, ServiceSpec};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub mod certs;
pub mod stack;
pub mod workload;

/// Every service name, for tearing down whatever a test declared.
const SERVICES: &[&str] = &["order", "customer", "inventory", "reporting"];

/// Superuser URL of the maintenance database.
pub fn admin_url() -> String {
    std::env::var("TEST_ADMIN_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// RabbitMQ URL.
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `url` with its database replaced by `database` and its credentials by `user`.
fn with_database(url: &str, user: Option<&str>, database: &str) -> String {
    // postgres://[user[:password]@]host[:port]/db
    let (scheme, rest) = url.split_once("://").expect("URL has a scheme");
    let (credentials, location) = match rest.rsplit_once('@') {
        Some((credentials, location)) => (Some(credentials), location),
        None => (None, rest),
    };
    let host = location.split('/').next().unwrap();
    let credentials = match user {
        Some(user) => Some(format!("{user}:{user}")),
        None => credentials.map(str::to_owned),
    };
    match credentials {
        Some(credentials) => format!("{scheme}://{credentials}@{host}/{database}"),
        None => format!("{scheme}://{host}/{database}"),
    }
}

/// A database and an AMQP prefix of one test's own.
pub struct TestEnv {
    /// Name of the test's first database.
    pub database: String,
    /// Prefix of the test's exchanges and queues.
    pub prefix: String,
    databases: std::sync::Mutex<Vec<String>>,
    consumers: std::sync::Mutex<Vec<&'static str>>,
    shutdown: CancellationToken,
}

impl TestEnv {
    /// A new empty database (and a prefix nobody else uses).
    pub async fn new() -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("dbps_test_{}", &id[..16]);
        create_database(&database).await;
        TestEnv {
            prefix: format!("test-{}", &id[..12]),
            databases: std::sync::Mutex::new(vec![database.clone()]),
            consumers: std::sync::Mutex::new(SERVICES.to_vec()),
            database,
            shutdown: CancellationToken::new(),
        }
    }

    /// Another database of this test's own (separate-database deployments).
    pub async fn extra_database(&self, suffix: &str) -> String {
        let name = format!("{}_{suffix}", self.database);
        create_database(&name).await;
        self.databases.lock().unwrap().push(name.clone());
        name
    }

    /// Also tear down the queues of a consumer that is not a service.
    pub fn track_consumer(&self, name: &'static str) {
        self.consumers.lock().unwrap().push(name);
    }

    /// Publishes `event` as its service would (same exchange, routing key and
    /// envelope essentials), bypassing any outbox; waits for the broker's
    /// confirm. Returns its message ID.
    pub async fn publish<E: dbps::Event>(&self, event: &E) -> uuid::Uuid {
        let message_id = uuid::Uuid::now_v7();
        self.publish_bytes(
            E::SOURCE,
            E::TYPE,
            message_id,
            &prost::Message::encode_to_vec(event),
        )
        .await;
        message_id
    }

    /// Publishes a payload to `source`'s exchange under `routing_key` with
    /// `message_id`, and waits for the broker to confirm it reached a queue.
    pub async fn publish_bytes(
        &self,
        source: &str,
        routing_key: &str,
        message_id: uuid::Uuid,
        payload: &[u8],
    ) {
        use lapin::{BasicProperties, options::BasicPublishOptions, options::ConfirmSelectOptions};
        let amqp = broker::Amqp::new(amqp_url(), "test-publisher");
        let channel = amqp.channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        broker::topology::declare_exchange(&channel, &self.prefix, source)
            .await
            .unwrap();
        let confirmation = channel
            .basic_publish(
                broker::topology::exchange(&self.prefix, source).into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                payload,
                BasicProperties::default()
                    .with_message_id(message_id.to_string().into())
                    .with_type(routing_key.into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(
            matches!(confirmation, lapin::Confirmation::Ack(None)),
            "{routing_key} was not routed to any queue: {confirmation:?}"
        );
        amqp.close().await;
    }

    /// Superuser URL of `database`.
    pub fn admin_url_of(&self, database: &str) -> String {
        with_database(&admin_url(), None, database)
    }

    /// URL of `database` as `role` (password = role name, as bootstrap sets it).
    pub fn url_as(&self, role: &str, database: &str) -> String {
        with_database(&admin_url(), Some(role), database)
    }

    /// The configuration a service would get in this environment: its own role
    /// on the test database, bootstrap by the superuser, the test's prefix,
    /// a free port.
    pub fn config(&self, spec: &ServiceSpec) -> Config<NoExtra> {
        self.config_in(spec, &self.database, &[])
    }

    /// Like [`TestEnv::config`] in `database`, with extra flags.
    pub fn config_in(&self, spec: &ServiceSpec, database: &str, extra: &[&str]) -> Config<NoExtra> {
        self.config_for(spec, database, extra)
    }

    /// Like [`TestEnv::config_in`] for a service with settings or commands of
    /// its own.
    pub fn config_for<X, S>(
        &self,
        spec: &ServiceSpec,
        database: &str,
        extra: &[&str],
    ) -> Config<X, S>
    where
        X: clap::Args + clap::FromArgMatches,
        S: clap::Subcommand + clap::FromArgMatches,
    {
        self.config_with(
            spec,
            &self.url_as(&spec.role(), database),
            &amqp_url(),
            extra,
        )
    }

    /// A service's configuration with its own database and AMQP URLs.
    pub fn config_with<X, S>(
        &self,
        spec: &ServiceSpec,
        database_url: &str,
        amqp: &str,
        extra: &[&str],
    ) -> Config<X, S>
    where
        X: clap::Args + clap::FromArgMatches,
        S: clap::Subcommand + clap::FromArgMatches,
    {
        let admin = admin_url();
        let mut args = vec![
            spec.binary,
            "--grpc-addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--admin-database-url",
            &admin,
            "--amqp-url",
            amqp,
            "--amqp-prefix",
            &self.prefix,
            "--shutdown-grace",
            "3s",
            "--metrics-addr",
            "off",
        ];
        args.extend_from_slice(extra);
        Config::try_parse_for(spec, args).expect("test configuration parses")
    }

    /// Starts a service from `config` in-process and waits until it is SERVING.
    pub async fn spawn<X, S, F, Fut>(
        &self,
        spec: &'static ServiceSpec,
        config: Config<X, S>,
        build: F,
    ) -> Running
    where
        X: clap::Args,
        S: clap::Subcommand,
        F: FnOnce(Infra, Config<X, S>) -> Fut,
        Fut: Future<Output = anyhow::Result<App>>,
    {
        let tls = platform::tls::client(&config.settings).expect("TLS settings are valid");
        let infra = Infra::connect(spec, &config)
            .await
            .expect("service connects");
        let app = build(infra, config).await.expect("service builds");
        let addr = app.local_addr();
        let shutdown = self.shutdown.child_token();
        let handle = tokio::spawn(app.run(shutdown.clone()));
        let running = Running {
            addr,
            shutdown,
            handle: Some(handle),
        };
        eventually(
            &format!("{} to report SERVING", spec.name),
            Duration::from_secs(30),
            || async { platform::health::check(addr, tls.clone()).await.ok() },
        )
        .await;
        running
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let databases = std::mem::take(&mut *self.databases.lock().unwrap());
        let prefix = self.prefix.clone();
        let consumers = std::mem::take(&mut *self.consumers.lock().unwrap());
        // Drop runs outside any runtime we may block: clean up on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let mut admin = AsyncPgConnection::establish(&admin_url()).await.unwrap();
                for database in databases {
                    let _ = admin
                        .batch_execute(&format!(
                            "DROP DATABASE IF EXISTS \"{database}\" WITH (FORCE)"
                        ))
                        .await;
                }
                let amqp = broker::Amqp::new(amqp_url(), "test-cleanup");
                if let Ok(channel) = amqp.channel().await {
                    let _ =
                        broker::topology::teardown(&channel, &prefix, &consumers, SERVICES).await;
                }
                amqp.close().await;
            });
        });
        let _ = cleanup.join();
    }
}

async fn create_database(name: &str) {
    let mut admin = AsyncPgConnection::establish(&admin_url())
        .await
        .expect("Postgres is running (TEST_ADMIN_DATABASE_URL)");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap();
}

/// A service running inside the test.
pub struct Running {
    /// Its gRPC address.
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Running {
    /// A channel to it (connects lazily).
    pub fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect_lazy()
    }

    /// Shuts it down gracefully and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("service task")
                .expect("service stops cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Polls `check` until it yields `Some`, failing the test after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Opens a superuser connection to `database`.
pub async fn admin_connection(database: &str) -> AsyncPgConnection {
    AsyncPgConnection::establish(&with_database(&admin_url(), None, database))
        .await
        .unwrap()
}

/// The fields named in a status's `google.rpc.BadRequest` details, sorted.
pub fn violated_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    let mut fields: Vec<String> = status
        .get_error_details()
        .bad_request()
        .map(|bad| {
            bad.field_violations
                .iter()
                .map(|v| v.field.clone())
                .collect()
        })
        .unwrap_or_default();
    fields.sort();
    fields
}

/// Asserts that `result` failed with INVALID_ARGUMENT naming exactly `fields`.
#[track_caller]
pub fn assert_invalid<T: std::fmt::Debug>(result: Result<T, tonic::Status>, fields: &[&str]) {
    let status = result.expect_err("request should have been refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    let mut expected: Vec<String> = fields.iter().map(|f| f.to_string()).collect();
    expected.sort();
    assert_eq!(violated_fields(&status), expected, "{status:?}");
}
