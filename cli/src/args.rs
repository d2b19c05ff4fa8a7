//! The command line: flags, environment variables, `--help`.

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};

const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Operate a dbps deployment: the consumers' dead-letter queues, the
/// publishers' outboxes, the reporting rebuild, and the event log export.
#[derive(Debug, Parser)]
#[command(name = "dbps", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub amqp: AmqpArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// Where RabbitMQ is, and which deployment's exchanges and queues to use.
#[derive(Args, Clone, Debug)]
pub struct AmqpArgs {
    /// RabbitMQ URL, `amqp://` or `amqps://` (default: amqp://guest:…@127.0.0.1:5672/%2f).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = DEFAULT_AMQP_URL,
        hide_default_value = true,
        hide_env_values = true,
        global = true,
        help_heading = "RabbitMQ"
    )]
    pub amqp_url: String,

    /// Prefix of every exchange and queue name, as the services were given it.
    #[arg(
        long,
        env = "AMQP_PREFIX",
        default_value = "dbps",
        value_parser = platform::config::parse_prefix,
        global = true,
        help_heading = "RabbitMQ"
    )]
    pub amqp_prefix: String,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Browse, replay or purge the consumers' dead-letter queues
    /// (`<prefix>.<consumer>.dlq`).
    #[command(subcommand)]
    Dlq(DlqCommand),

    /// Inspect the transactional outboxes of the publishing services.
    #[command(subcommand)]
    Outbox(OutboxCommand),

    /// Rebuild the reporting read models: empty them and replay the
    /// reporting event log (`<prefix>.reporting.log`) into them. A running
    /// reporting service may keep running.
    Replay(ReplayArgs),

    /// Read the event log the reporting service keeps
    /// (`<prefix>.reporting.log`, every event of every service).
    #[command(subcommand)]
    Events(EventsCommand),
}

/// Event log commands.
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Write the event log as JSON lines, oldest first: one CloudEvents JSON
    /// object per event (specversion, id, source, type, subject, time,
    /// datacontenttype, routingkey, offset) whose `data` is the protobuf
    /// payload in protobuf's canonical JSON. Stops at the entry that was the
    /// log's last when the export started.
    Export(ExportArgs),
}

/// What to export, and where to.
#[derive(Args, Clone, Debug)]
pub struct ExportArgs {
    /// From the oldest event the log keeps (the default).
    #[arg(long, conflicts_with = "since")]
    pub from_start: bool,

    /// Only events from TIME on: an RFC 3339 time (`2026-05-01T12:00:00Z`) or
    /// a duration before now (`90m`, `2h`, `7days`).
    #[arg(long, value_name = "TIME", value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,

    /// Write the lines to FILE (created or truncated) instead of stdout, and
    /// say on stdout how many were written.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Give up waiting for the next event after this many seconds (the log
    /// lost entries to its retention meanwhile, or `--since` lies after its
    /// end).
    #[arg(long, value_name = "SECONDS", default_value_t = 5)]
    pub idle_secs: u64,
}

/// An RFC 3339 time, or a duration before now.
fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("{text:?} is neither an RFC 3339 time nor a duration like 90m or 2h")
    })?;
    chrono::Duration::from_std(ago)
        .ok()
        .and_then(|ago| Utc::now().checked_sub_signed(ago))
        .ok_or_else(|| format!("{text:?} reaches back too far"))
}

/// Dead-letter queue commands.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// List every dead letter, one line each, without removing any: message
    /// ID, routing key, source exchange, the queue it died in, why and how
    /// often (`x-death`), `ce-type` and payload size.
    List {
        #[command(flatten)]
        consumers: ConsumerArg,
    },

    /// Put dead letters back into the queue they died in (only the consumer
    /// that failed gets them again), with all their properties and headers.
    /// Each leaves the dead-letter queue only once the broker has confirmed
    /// its republish; the consumer's inbox still deduplicates by message ID.
    Replay {
        #[command(flatten)]
        consumers: ConsumerArg,

        /// Replay only the dead letter with this message ID (in each selected
        /// dead-letter queue that holds it).
        #[arg(long, value_name = "MESSAGE_ID")]
        id: Option<String>,
    },

    /// Delete every message in the dead-letter queues, for good.
    Purge {
        #[command(flatten)]
        consumers: ConsumerArg,
    },
}

/// Which consumers' dead-letter queues.
#[derive(Args, Clone, Debug)]
pub struct ConsumerArg {
    /// Only this consumer's dead-letter queue [default: all four].
    #[arg(long, value_enum)]
    pub consumer: Option<ConsumerName>,
}

impl ConsumerArg {
    /// The chosen consumer, or all of them.
    pub fn selected(&self) -> Vec<ConsumerName> {
        match self.consumer {
            Some(one) => vec![one],
            None => ConsumerName::value_variants().to_vec(),
        }
    }
}

/// A consuming service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConsumerName {
    /// The order service's consumer.
    Order,
    /// The customer service's consumer.
    Customer,
    /// The inventory service's consumer.
    Inventory,
    /// The reporting service's consumer (every event).
    Reporting,
}

impl ConsumerName {
    /// The consumer's name in queue names.
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerName::Order => "order",
            ConsumerName::Customer => "customer",
            ConsumerName::Inventory => "inventory",
            ConsumerName::Reporting => "reporting",
        }
    }
}

/// Outbox commands.
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// For each publishing service: events not yet published, the age of the
    /// oldest, and how many the broker refused and wait on a retry. Reads
    /// each outbox as that service's own role.
    Status(OutboxArgs),
}

/// The publishing services' databases.
#[derive(Args, Clone, Debug)]
pub struct OutboxArgs {
    /// The order service's database, as its own role
    /// (default: postgres://order_svc:…@127.0.0.1:5432/dbps).
    #[arg(
        long,
        env = "ORDER_DATABASE_URL",
        default_value = "postgres://order_svc:order_svc@127.0.0.1:5432/dbps",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub order_database_url: String,

    /// The customer service's database, as its own role
    /// (default: postgres://customer_svc:…@127.0.0.1:5432/dbps).
    #[arg(
        long,
        env = "CUSTOMER_DATABASE_URL",
        default_value = "postgres://customer_svc:customer_svc@127.0.0.1:5432/dbps",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub customer_database_url: String,

    /// The inventory service's database, as its own role
    /// (default: postgres://inventory_svc:…@127.0.0.1:5432/dbps).
    #[arg(
        long,
        env = "INVENTORY_DATABASE_URL",
        default_value = "postgres://inventory_svc:inventory_svc@127.0.0.1:5432/dbps",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub inventory_database_url: String,
}

/// The reporting rebuild.
#[derive(Args, Clone, Debug)]
pub struct ReplayArgs {
    /// The reporting service's database, as its own role
    /// (default: postgres://reporting_svc:…@127.0.0.1:5432/dbps).
    #[arg(
        long,
        env = "REPORTING_DATABASE_URL",
        default_value = "postgres://reporting_svc:reporting_svc@127.0.0.1:5432/dbps",
        hide_default_value = true,
        hide_env_values = true
    )]
    pub reporting_database_url: String,

    /// Stop once the event log has delivered nothing for this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 2)]
    pub idle_secs: u64,
}

impl Cli {
    /// Every URL given, for keeping their passwords out of messages.
    pub fn urls(&self) -> Vec<&str> {
        let mut urls = vec![self.amqp.amqp_url.as_str()];
        match &self.command {
            Command::Outbox(OutboxCommand::Status(outbox)) => urls.extend([
                outbox.order_database_url.as_str(),
                outbox.customer_database_url.as_str(),
                outbox.inventory_database_url.as_str(),
            ]),
            Command::Replay(replay) => urls.push(&replay.reporting_database_url),
            Command::Dlq(_) | Command::Events(_) => {}
        }
        urls
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn global_flags_go_anywhere_and_bad_prefixes_are_refused() {
        let cli = Cli::try_parse_from([
            "dbps",
            "dlq",
            "list",
            "--consumer",
            "reporting",
            "--amqp-prefix",
            "test-1",
        ])
        .unwrap();
        assert_eq!(cli.amqp.amqp_prefix, "test-1");
        let Command::Dlq(DlqCommand::List { consumers }) = cli.command else {
            panic!("parsed as dlq list");
        };
        assert_eq!(consumers.selected(), vec![ConsumerName::Reporting]);
        assert!(Cli::try_parse_from(["dbps", "--amqp-prefix", "a b", "dlq", "list"]).is_err());
        assert!(Cli::try_parse_from(["dbps", "dlq", "list", "--consumer", "nobody"]).is_err());
    }

    #[test]
    fn export_takes_a_time_or_a_duration_since_and_not_both_starts() {
        let since = |text: &str| {
            let cli = Cli::try_parse_from(["dbps", "events", "export", "--since", text])?;
            let Command::Events(EventsCommand::Export(args)) = cli.command else {
                panic!("parsed as events export");
            };
            Ok::<_, clap::Error>(args.since.unwrap())
        };
        assert_eq!(
            since("2026-05-01T12:00:00+02:00").unwrap().to_rfc3339(),
            "2026-05-01T10:00:00+00:00"
        );
        let two_hours_ago = since("2h").unwrap();
        let expected = Utc::now() - chrono::Duration::hours(2);
        assert!((two_hours_ago - expected).num_seconds().abs() < 5);
        assert!(since("yesterday-ish").is_err());
        assert!(
            Cli::try_parse_from(["dbps", "events", "export", "--from-start", "--since", "1h"])
                .is_err()
        );
        let cli = Cli::try_parse_from(["dbps", "events", "export", "-o", "x.jsonl"]).unwrap();
        let Command::Events(EventsCommand::Export(args)) = cli.command else {
            panic!("parsed as events export");
        };
        assert_eq!(
            args.output.as_deref(),
            Some(std::path::Path::new("x.jsonl"))
        );
        assert!(args.since.is_none());
    }
}
