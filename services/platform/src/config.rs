//! One configuration for every service, from flags or the environment.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use diesel_migrations::EmbeddedMigrations;

/// What distinguishes one service binary from another.
pub struct ServiceSpec {
    /// Short name: events source, consumer name, role prefix (`order`).
    pub name: &'static str,
    /// Binary name, shown by `--help`.
    pub binary: &'static str,
    /// One line for `--help`.
    pub about: &'static str,
    /// The schema it owns (`orders`).
    pub schema: &'static str,
    /// Default gRPC port.
    pub grpc_port: u16,
    /// Default port of `/metrics`.
    pub metrics_port: u16,
    /// Its own diesel migrations, run after the broker's outbox/inbox ones.
    pub migrations: EmbeddedMigrations,
}

impl ServiceSpec {
    /// The Postgres role the service connects as by default.
    pub fn role(&self) -> String {
        format!("{}_svc", self.name)
    }

    fn default_database_url(&self) -> String {
        let role = self.role();
        format!("postgres://{role}:{role}@127.0.0.1:5432/dbps")
    }
}

/// What the binary does; `S` adds commands only that service has.
#[derive(Clone, Debug, Default, Subcommand)]
pub enum Command<S: Subcommand = NoCommand> {
    /// Serve gRPC, publish the outbox and consume events (the default).
    #[default]
    Serve,
    /// Create the database, role and schema with --admin-database-url, then exit.
    Bootstrap,
    /// Exit 0 if the server at --grpc-addr reports SERVING (container health checks).
    Healthcheck,
    /// Run only the outbox relay, as a process of its own (serve the rest with
    /// --run-relay false). Several may run: one publishes, the others stand by.
    Relay,
    /// A command only this service has (reporting's `rebuild`).
    #[command(flatten)]
    Service(S),
}

/// No service-specific commands.
#[derive(Clone, Debug, Subcommand)]
pub enum NoCommand {}

/// A service's configuration; `X` holds settings and `S` commands only that
/// service has.
#[derive(Clone, Debug, Parser)]
pub struct Config<X: Args = NoExtra, S: Subcommand = NoCommand> {
    /// What to do; none given: `serve`.
    #[command(subcommand)]
    pub command: Option<Command<S>>,

    /// Address the gRPC server listens on.
    #[arg(long, env = "GRPC_ADDR")]
    pub grpc_addr: SocketAddr,

    /// Address of the Prometheus `/metrics` endpoint, or `off`.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: String,

    /// This service's own database, as its own role
    /// [default: postgres://<service>_svc:<service>_svc@127.0.0.1:5432/dbps].
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// The settings every service has.
    #[command(flatten)]
    pub settings: Settings,

    /// The settings only this service has.
    #[command(flatten)]
    pub extra: X,
}

/// No service-specific settings.
#[derive(Args, Clone, Debug, Default)]
pub struct NoExtra {}

/// Settings every service has, with the same defaults.
#[derive(Args, Clone, Debug)]
pub struct Settings {
    /// Superuser URL, used only to create the database, role and schema (at
    /// start when given, or by `bootstrap`). Never used to serve.
    #[arg(long, env = "ADMIN_DATABASE_URL", hide_env_values = true)]
    pub admin_database_url: Option<String>,

    /// RabbitMQ URL (`amqp://` or `amqps://`), or the URLs of a cluster's
    /// nodes separated by commas: a lost connection fails over to the next.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name.
    #[arg(long, env = "AMQP_PREFIX", default_value = "dbps", value_parser = parse_prefix)]
    pub amqp_prefix: String,

    /// Connections in the database pool.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16)]
    pub db_pool_size: u32,

    /// PEM certificate chain of the gRPC server: with --grpc-tls-key, serve TLS.
    #[arg(long, env = "GRPC_TLS_CERT")]
    pub grpc_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --grpc-tls-cert.
    #[arg(long, env = "GRPC_TLS_KEY")]
    pub grpc_tls_key: Option<std::path::PathBuf>,

    /// PEM CA certificate: require clients to present a certificate it signed
    /// (mutual TLS).
    #[arg(long, env = "GRPC_TLS_CLIENT_CA")]
    pub grpc_tls_client_ca: Option<std::path::PathBuf>,

    /// PEM CA certificate of the gRPC servers this service calls: call them
    /// over TLS (as a client with --grpc-tls-cert, if set).
    #[arg(long, env = "GRPC_TLS_CA")]
    pub grpc_tls_ca: Option<std::path::PathBuf>,

    /// PEM CA certificate to trust for `amqps://` (default: the system's roots).
    #[arg(long, env = "AMQP_TLS_CA")]
    pub amqp_tls_ca: Option<std::path::PathBuf>,

    /// PEM client certificate for `amqps://` with mutual TLS.
    #[arg(long, env = "AMQP_TLS_CERT")]
    pub amqp_tls_cert: Option<std::path::PathBuf>,

    /// PEM private key of --amqp-tls-cert.
    #[arg(long, env = "AMQP_TLS_KEY")]
    pub amqp_tls_key: Option<std::path::PathBuf>,

    /// Longest a call may take before the server gives up on it (a client's
    /// shorter `grpc-timeout` wins); streams are limited only until their
    /// first response.
    #[arg(long, env = "GRPC_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub grpc_timeout: Duration,

    /// Largest gRPC request accepted, in bytes.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", default_value_t = 1024 * 1024)]
    pub grpc_max_message_bytes: usize,

    /// Run the outbox relay inside `serve` (false: run `relay` processes instead).
    #[arg(long, env = "RUN_RELAY", default_value_t = true, action = clap::ArgAction::Set)]
    pub run_relay: bool,

    /// Most outbox rows the relay reads at a time.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 500)]
    pub relay_batch_size: i64,

    /// Most events the relay has published and not yet seen confirmed and
    /// marked (its sliding window).
    #[arg(long, env = "RELAY_WINDOW", default_value_t = 4096)]
    pub relay_window: usize,

    /// Longest time between the relay's reads when nothing wakes it.
    #[arg(long, env = "RELAY_POLL_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub relay_poll_interval: Duration,

    /// Wake the relay with NOTIFY on every commit (false: poll only).
    #[arg(long, env = "OUTBOX_NOTIFY", default_value_t = true, action = clap::ArgAction::Set)]
    pub outbox_notify: bool,

    /// Age after which published outbox rows are deleted.
    #[arg(long, env = "OUTBOX_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub outbox_retention: Duration,

    /// Age after which inbox rows (seen message IDs) are deleted.
    #[arg(long, env = "INBOX_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub inbox_retention: Duration,

    /// Unacknowledged deliveries per consumer queue.
    #[arg(long, env = "CONSUMER_PREFETCH", default_value_t = 256)]
    pub consumer_prefetch: u16,

    /// Deliveries of a failing message before it is dead-lettered.
    #[arg(long, env = "CONSUMER_DELIVERY_LIMIT", default_value_t = 10)]
    pub consumer_delivery_limit: u32,

    /// Nodes each new quorum queue is replicated on
    /// [default: min(3, the nodes in AMQP_URL)].
    #[arg(long, env = "AMQP_QUORUM_GROUP_SIZE", value_parser = clap::value_parser!(u32).range(1..))]
    pub amqp_quorum_group_size: Option<u32>,

    /// One active consumer per queue across all replicas, so each order's
    /// events are applied in publish order (false: replicas compete for
    /// deliveries; the handlers tolerate reordering). Takes effect for queues
    /// declared from then on.
    #[arg(long, env = "CONSUMER_SINGLE_ACTIVE", default_value_t = true, action = clap::ArgAction::Set)]
    pub consumer_single_active: bool,

    /// On SIGTERM, how long to keep serving after health turns NOT_SERVING,
    /// so that load balancers stop sending calls here before the listener
    /// closes (e.g. a few seconds on Kubernetes).
    #[arg(long, env = "SHUTDOWN_DRAIN", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_drain: Duration,

    /// Longest wait for in-flight work when shutting down.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP/gRPC endpoint to export traces to (e.g. http://127.0.0.1:4317);
    /// unset: no traces exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
}

impl Settings {
    /// The consumer tuning these settings describe.
    pub fn consumer_config(&self) -> broker::ConsumerConfig {
        let mut config = broker::ConsumerConfig::new(&self.amqp_prefix);
        config.prefetch = self.consumer_prefetch;
        config.delivery_limit = self.consumer_delivery_limit;
        config.quorum_group_size = self.amqp_quorum_group_size;
        config.single_active = self.consumer_single_active;
        config
    }

    /// The relay of `spec`'s service, connecting to `database_url`.
    pub fn relay_config(&self, spec: &ServiceSpec, database_url: &str) -> broker::RelayConfig {
        let mut config =
            broker::RelayConfig::new(spec.name, &self.amqp_prefix, database_url, spec.schema);
        config.batch_size = self.relay_batch_size;
        config.window = self.relay_window;
        config.poll_interval = self.relay_poll_interval;
        config.listen = self.outbox_notify;
        config.outbox_retention = self.outbox_retention;
        config.inbox_retention = self.inbox_retention;
        config
    }
}

/// How logs are written to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl<X: Args, S: Subcommand> Config<X, S> {
    /// Where to serve `/metrics`, unless `off`.
    pub fn metrics_addr(&self) -> anyhow::Result<Option<SocketAddr>> {
        match self.metrics_addr.as_str() {
            "off" | "" => Ok(None),
            addr => {
                Ok(Some(addr.parse().map_err(|e| {
                    anyhow::anyhow!("METRICS_ADDR {addr:?}: {e}")
                })?))
            }
        }
    }
}

impl<X: Args + FromArgMatches, S: Subcommand + FromArgMatches> Config<X, S> {
    /// Parses the process arguments with `spec`'s name and defaults.
    pub fn parse_for(spec: &ServiceSpec) -> Self {
        Self::try_parse_for(spec, std::env::args_os()).unwrap_or_else(|error| error.exit())
    }

    /// Parses `args` (the first is the binary name) with `spec`'s defaults.
    pub fn try_parse_for<I, T>(spec: &ServiceSpec, args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut matches = Self::command()
            .name(spec.binary)
            .about(spec.about)
            .mut_arg("grpc_addr", |arg| {
                arg.required(false)
                    .default_value(format!("0.0.0.0:{}", spec.grpc_port))
            })
            .mut_arg("metrics_addr", |arg| {
                arg.required(false)
                    .default_value(format!("0.0.0.0:{}", spec.metrics_port))
            })
            .mut_arg("database_url", |arg| {
                arg.required(false)
                    .default_value(spec.default_database_url())
                    .hide_default_value(true)
            })
            .try_get_matches_from(args)?;
        Self::from_arg_matches_mut(&mut matches)
    }
}

/// Checks an AMQP prefix (`--amqp-prefix`): 1 to 64 characters that are safe
/// in exchange and queue names. The `dbps` CLI applies the same rule.
pub fn parse_prefix(prefix: &str) -> Result<String, String> {
    let valid = !prefix.is_empty()
        && prefix.len() <= 64
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if valid {
        Ok(prefix.to_owned())
    } else {
        Err("1 to 64 of A-Z, a-z, 0-9, '-', '_', '.'".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: ServiceSpec = ServiceSpec {
        name: "order",
        binary: "order-service",
        about: "test",
        schema: "orders",
        grpc_port: 50051,
        metrics_port: 9091,
        migrations: diesel_migrations::embed_migrations!("../../broker/migrations"),
    };

    #[test]
    fn defaults_come_from_the_service_spec() {
        let config = Config::<NoExtra>::try_parse_for(&SPEC, ["order-service"]).unwrap();
        assert_eq!(config.grpc_addr.port(), 50051);
        assert!(config.database_url.starts_with("postgres://order_svc:"));
        assert_eq!(config.settings.amqp_prefix, "dbps");
        assert!(config.settings.outbox_notify);
    }

    #[test]
    fn flags_override_defaults_and_bad_prefixes_are_refused() {
        let config = Config::<NoExtra>::try_parse_for(
            &SPEC,
            [
                "order-service",
                "--grpc-addr",
                "127.0.0.1:0",
                "--relay-poll-interval",
                "250ms",
            ],
        )
        .unwrap();
        assert_eq!(config.grpc_addr.port(), 0);
        assert_eq!(
            config.settings.relay_poll_interval,
            Duration::from_millis(250)
        );
        assert!(
            Config::<NoExtra>::try_parse_for(&SPEC, ["order-service", "--amqp-prefix", "a b"])
                .is_err()
        );
    }
}
