//! The four services as real processes (the built binaries, as deployed) on
//! a run's own database and AMQP prefix, each on a free port, logging to
//! `target/<kind>/<run>/`: what the fault suite and the benchmark drive.

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use dbps::customer::v1::{RegisterCustomerRequest, customer_service_client::CustomerServiceClient};
use diesel_async::{AsyncConnection, AsyncPgConnection, SimpleAsyncConnection};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

/// Where the servers are: flattened into the command line of each binary
/// that runs a stack.
#[derive(Clone, Debug, clap::Args)]
pub struct Servers {
    /// Superuser URL of the maintenance database.
    #[arg(
        long,
        env = "TEST_ADMIN_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub admin_url: String,
    /// RabbitMQ.
    #[arg(
        long,
        env = "TEST_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
}

/// Where the binaries and the servers are.
#[derive(Clone, Debug)]
pub struct StackOptions {
    /// Names the database (`dbps_<kind>_<run>`), prefix and log directory.
    pub kind: &'static str,
    /// Directory of the service binaries.
    pub bin_dir: PathBuf,
    /// Superuser URL of the maintenance database.
    pub admin_url: String,
    /// RabbitMQ.
    pub amqp_url: String,
    /// Leave the database and queues in place on teardown.
    pub keep: bool,
}

/// The services, in start order.
pub const SERVICES: [&str; 4] = ["customer", "inventory", "order", "reporting"];

/// One scenario's running system.
pub struct Stack {
    /// The scenario's database (`dbps_<kind>_<scenario>`).
    pub database: String,
    /// AMQP prefix of its exchanges and queues
    /// (`<kind>-<scenario>-<8 random hex digits>`).
    pub prefix: String,
    /// gRPC port of each service, by service name.
    pub ports: BTreeMap<&'static str, u16>,
    options: StackOptions,
    logs: PathBuf,
    processes: BTreeMap<String, Child>,
    /// The checker's own broker connection.
    pub amqp: broker::Amqp,
}

impl Stack {
    /// A fresh database and prefix; nothing started yet.
    pub async fn new(scenario: &str, options: &StackOptions) -> anyhow::Result<Stack> {
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        let database = format!("dbps_{}_{}", options.kind, scenario.to_lowercase());
        let mut admin = AsyncPgConnection::establish(&options.admin_url)
            .await
            .context("connecting to Postgres")?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await?;
        let logs = PathBuf::from("target")
            .join(options.kind)
            .join(scenario.to_lowercase());
        // Logs of an earlier run would confuse the checks that read them.
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(&logs)?;
        let mut ports = BTreeMap::new();
        for service in SERVICES {
            ports.insert(service, free_port()?);
        }
        Ok(Stack {
            database,
            prefix: format!(
                "{}-{}-{}",
                options.kind,
                scenario.to_lowercase(),
                &suffix[..8]
            ),
            ports,
            options: options.clone(),
            logs,
            processes: BTreeMap::new(),
            amqp: broker::Amqp::new(
                options.amqp_url.clone(),
                format!("{}-checker", options.kind),
            ),
        })
    }

    /// Superuser URL of the scenario's database.
    pub fn admin_url(&self) -> String {
        match self.options.admin_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{}", self.database),
            None => self.options.admin_url.clone(),
        }
    }

    /// RabbitMQ URL the services connect to.
    pub fn amqp_url(&self) -> &str {
        &self.options.amqp_url
    }

    fn database_url(&self, service: &str) -> String {
        let role = format!("{service}_svc");
        let host = self
            .options
            .admin_url
            .split('@')
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or("127.0.0.1:5432");
        format!("postgres://{role}:{role}@{host}/{}", self.database)
    }

    /// Starts `service`'s binary as process `name` with `args` and extra
    /// environment; does not wait for it.
    pub fn spawn(
        &mut self,
        name: &str,
        service: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("{name}.log")))?;
        let binary = self.options.bin_dir.join(format!("{service}-service"));
        let mut command = Command::new(&binary);
        command
            .args(args)
            .env("GRPC_ADDR", format!("127.0.0.1:{}", self.ports[service]))
            .env("DATABASE_URL", self.database_url(service))
            .env("ADMIN_DATABASE_URL", &self.options.admin_url)
            .env("AMQP_URL", &self.options.amqp_url)
            .env("AMQP_PREFIX", &self.prefix)
            .env(
                "ORDER_ADDR",
                format!("http://127.0.0.1:{}", self.ports["order"]),
            )
            .env(
                "CUSTOMER_ADDR",
                format!("http://127.0.0.1:{}", self.ports["customer"]),
            )
            .env(
                "INVENTORY_ADDR",
                format!("http://127.0.0.1:{}", self.ports["inventory"]),
            )
            .env("SHUTDOWN_GRACE", "5s")
            .env("METRICS_ADDR", "off")
            .env(
                "RUST_LOG",
                std::env::var("STACK_RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env_remove("FAILPOINTS")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.processes.insert(name.to_owned(), child);
        Ok(())
    }

    /// Starts every service (`extra` adds environment to some) and waits
    /// until all are SERVING.
    pub async fn start_all(&mut self, extra: &[(&str, &str, &str)]) -> anyhow::Result<()> {
        for service in SERVICES {
            let env: Vec<(&str, &str)> = extra
                .iter()
                .filter(|(s, _, _)| *s == service)
                .map(|(_, k, v)| (*k, *v))
                .collect();
            self.spawn(service, service, &[], &env)?;
        }
        for service in SERVICES {
            self.wait_serving(service).await?;
        }
        Ok(())
    }

    /// Waits until `service` reports SERVING.
    pub async fn wait_serving(&mut self, service: &str) -> anyhow::Result<()> {
        let address = format!("127.0.0.1:{}", self.ports[service]).parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while platform::health::check(address, None).await.is_err() {
            if let Some(status) = self.exited(service)? {
                bail!(
                    "{service} exited ({status}) before serving; see {}",
                    self.logs.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{service} not SERVING after 60 s; see {}",
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Like [`Stack::wait_serving`], polling every 5 ms (for timing start-up).
    pub async fn wait_serving_fast(&mut self, service: &str) -> anyhow::Result<()> {
        let address = format!("127.0.0.1:{}", self.ports[service]).parse()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while platform::health::check(address, None).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "{service} not SERVING after 60 s; see {}",
                    self.logs.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// The exit status of process `name`, if it has exited.
    pub fn exited(&mut self, name: &str) -> anyhow::Result<Option<std::process::ExitStatus>> {
        match self.processes.get_mut(name) {
            Some(child) => Ok(child.try_wait()?),
            None => bail!("no process {name}"),
        }
    }

    /// Waits for process `name` to exit.
    pub async fn wait_exit(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let child = self
            .processes
            .get_mut(name)
            .with_context(|| format!("no process {name}"))?;
        Ok(tokio::time::timeout(timeout, child.wait())
            .await
            .with_context(|| format!("{name} did not exit"))??)
    }

    /// SIGKILLs process `name` and reaps it.
    pub async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        if let Some(mut child) = self.processes.remove(name) {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// The OS process ID of process `name`.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.processes.get(name).and_then(Child::id)
    }

    /// Whether process `name`'s log contains `needle`.
    pub fn log_contains(&self, name: &str, needle: &str) -> bool {
        std::fs::read_to_string(self.logs.join(format!("{name}.log")))
            .is_ok_and(|log| log.contains(needle))
    }

    /// A gRPC channel to `service`.
    pub fn channel(&self, service: &str) -> anyhow::Result<Channel> {
        Ok(
            Channel::from_shared(format!("http://127.0.0.1:{}", self.ports[service]))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
                .connect_lazy(),
        )
    }

    /// Registers `count` customers through the customer service, with emails
    /// `<tag><i>@<prefix>.example`; their IDs.
    pub async fn register_customers(&self, count: usize, tag: &str) -> anyhow::Result<Vec<String>> {
        register_customers(self.channel("customer")?, count, tag, &self.prefix).await
    }

    /// Stops every process (SIGTERM, SIGKILL after 10 s), deletes the
    /// scenario's exchanges and queues, and drops its database.
    #[allow(
        clippy::print_stdout,
        clippy::print_stderr,
        reason = "reports to the console of the bench or fault-suite binary that runs the stack"
    )]
    pub async fn teardown(mut self) -> anyhow::Result<()> {
        for (name, mut child) in std::mem::take(&mut self.processes) {
            if let Some(pid) = child.id() {
                let _ = Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await;
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                eprintln!("{name} ignored SIGTERM; killing it");
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        if self.options.keep {
            println!(
                "    kept: database={} prefix={}",
                self.database, self.prefix
            );
            self.amqp.close().await;
            return Ok(());
        }
        let channel = self.amqp.channel().await?;
        broker::topology::teardown(&channel, &self.prefix, &SERVICES, &SERVICES).await?;
        self.amqp.close().await;
        let mut admin = AsyncPgConnection::establish(&self.options.admin_url).await?;
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .await?;
        Ok(())
    }
}

/// Registers `count` customers through the customer service at `channel`,
/// with emails `<tag><i>@<domain>.example`; their IDs.
pub async fn register_customers(
    channel: Channel,
    count: usize,
    tag: &str,
    domain: &str,
) -> anyhow::Result<Vec<String>> {
    let mut client = CustomerServiceClient::new(channel);
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let request = RegisterCustomerRequest {
            name: format!("Customer {i}"),
            email: format!("{tag}{i}@{domain}.example"),
        };
        ids.push(
            client
                .register_customer(request)
                .await?
                .into_inner()
                .customer_id,
        );
    }
    Ok(ids)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
