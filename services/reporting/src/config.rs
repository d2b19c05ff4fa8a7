//! Settings and commands only the reporting service has.

use std::time::Duration;

use clap::{Args, Subcommand};

/// Where the services behind `GetCustomerOverview` are, and how long to wait.
#[derive(Args, Clone, Debug)]
pub struct ReportingArgs {
    /// The customer service.
    #[arg(long, env = "CUSTOMER_ADDR", default_value = "http://127.0.0.1:50052")]
    pub customer_addr: String,
    /// The order service.
    #[arg(long, env = "ORDER_ADDR", default_value = "http://127.0.0.1:50051")]
    pub order_addr: String,
    /// The inventory service.
    #[arg(long, env = "INVENTORY_ADDR", default_value = "http://127.0.0.1:50053")]
    pub inventory_addr: String,
    /// Deadline of each call GetCustomerOverview makes.
    #[arg(long, env = "COMPOSITION_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub composition_timeout: Duration,
    /// Age after which event-log entries are dropped (e.g. `30D`); unset keeps
    /// them all, so the read models can always be rebuilt.
    #[arg(long, env = "EVENT_LOG_MAX_AGE")]
    pub event_log_max_age: Option<String>,
}

/// Commands only the reporting service has.
#[derive(Clone, Debug, Subcommand)]
pub enum ReportingCommand {
    /// Drop the read models and rebuild them by replaying the event log, then exit.
    Rebuild,
}

/// The reporting service's configuration.
pub type Config = platform::Config<ReportingArgs, ReportingCommand>;
