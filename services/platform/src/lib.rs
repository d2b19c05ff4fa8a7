//! What every service shares, so each service holds only its own domain.
//!
//! * [`config`]: one clap configuration for all services, defaults per service.
//! * [`telemetry`]: structured logs (text or JSON) filtered by `RUST_LOG`, OTLP
//!   traces, and the trace context of a request.
//! * [`bootstrap`]: creates a service's database, role and schema from an admin URL.
//! * [`db`]: [`Db`], the pool and the outbox, whose writes wake the relay after
//!   they commit; dedicated connections; embedded migrations.
//! * [`error`]: [`ApiError`], the one mapping from failures to gRPC status
//!   codes, and [`respond`], where every handler's result becomes an answer.
//! * [`fields`]: [`Violations`] and the field formats every service shares.
//! * [`paging`]: [`Page`], page sizes and page tokens.
//! * [`app`]: binds the gRPC server (with health and reflection), runs the
//!   outbox relay and event consumers beside it, and shuts all down together.
//! * [`health`]: the `healthcheck` command's client.
//! * [`metrics`]: the Prometheus endpoint, gRPC and pool metrics.
//! * [`tls`]: TLS and mTLS for gRPC and AMQP from the settings.
//!
//! A service's `main` is [`main`] with its [`ServiceSpec`] and a `build`
//! function that turns [`Infra`] into an [`App`]:
//!
//! ```text
//! main ─► Config::parse ─► Infra::connect (bootstrap?, migrate, pool)
//!      ─► build: api + consumer ─► App::run (serve, relay, consume) ─► signal ─► drain
//! ```

#![warn(missing_docs, unreachable_pub)]

pub mod app;
pub mod bootstrap;
pub mod config;
pub mod db;
pub mod error;
pub mod fields;
pub mod health;
pub mod metrics;
pub mod paging;
pub mod telemetry;
pub mod tls;

use std::{future::Future, process::ExitCode};

use clap::{Args, FromArgMatches, Subcommand};
use tokio_util::sync::CancellationToken;

pub use app::{App, Infra};
pub use config::{Command, Config, NoCommand, NoExtra, ServiceSpec, Settings};
pub use db::Db;
pub use error::{ApiError, ApiResult, OrNotFound, respond};
pub use fields::Violations;
pub use paging::Page;

/// Runs a service binary: parses its configuration and runs the chosen
/// command (`serve` by default, `bootstrap`, `healthcheck`).
pub fn main<X, F, Fut>(spec: &'static ServiceSpec, build: F) -> ExitCode
where
    X: Args + FromArgMatches,
    F: FnOnce(Infra, Config<X>) -> Fut,
    Fut: Future<Output = anyhow::Result<App>>,
{
    main_with(spec, build, |command: NoCommand, _, _| async move {
        match command {}
    })
}

/// [`main`] for a service with commands of its own: `run` gets the command,
/// the service's connections and its configuration.
pub fn main_with<X, S, F, Fut, R, RFut>(spec: &'static ServiceSpec, build: F, run: R) -> ExitCode
where
    X: Args + FromArgMatches,
    S: Subcommand + FromArgMatches + Clone,
    F: FnOnce(Infra, Config<X, S>) -> Fut,
    Fut: Future<Output = anyhow::Result<App>>,
    R: FnOnce(S, Infra, Config<X, S>) -> RFut,
    RFut: Future<Output = anyhow::Result<()>>,
{
    let config = Config::<X, S>::parse_for(spec);
    // FAILPOINTS=... configures fault injection; only in fault-suite builds.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let Ok(runtime) = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    else {
        return ExitCode::FAILURE;
    };
    let result = runtime.block_on(async move {
        let service = format!("{}-service", spec.name);
        let otlp = config.settings.otlp_endpoint.as_deref();
        let _telemetry = telemetry::init(config.settings.log_format, otlp, &service)?;
        match config.command.clone().unwrap_or_default() {
            Command::Serve => {
                let shutdown = shutdown_on_signal();
                // Both listeners first: once this process (or a sibling
                // started with it) opens outgoing connections, the kernel
                // may hand one of our ports out as an ephemeral source port.
                let listener = std::net::TcpListener::bind(config.grpc_addr).map_err(|error| {
                    anyhow::anyhow!("cannot listen on {} (GRPC_ADDR): {error}", config.grpc_addr)
                })?;
                if let Some(addr) = config.metrics_addr()? {
                    metrics::install(addr).map_err(|error| {
                        anyhow::anyhow!("cannot serve metrics on {addr} (METRICS_ADDR): {error}")
                    })?;
                }
                let infra = Infra::connect(spec, &config).await?.with_listener(listener);
                build(infra, config).await?.run(shutdown).await
            }
            Command::Bootstrap => {
                let admin = config
                    .settings
                    .admin_database_url
                    .as_deref()
                    .ok_or_else(|| {
                        anyhow::anyhow!("bootstrap needs --admin-database-url (ADMIN_DATABASE_URL)")
                    })?;
                bootstrap::run(admin, &config.database_url, spec.schema).await
            }
            Command::Healthcheck => {
                health::check(config.grpc_addr, tls::client(&config.settings)?).await
            }
            Command::Relay => {
                let shutdown = shutdown_on_signal();
                if let Some(addr) = config.metrics_addr()? {
                    metrics::install(addr)?;
                }
                let infra = Infra::connect(spec, &config).await?;
                infra.run_relay(shutdown).await
            }
            Command::Service(command) => {
                let infra = Infra::connect(spec, &config).await?;
                run(command, infra, config).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), service = spec.name, "exiting");
            ExitCode::FAILURE
        }
    }
}

/// A token cancelled on SIGTERM or Ctrl-C.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut terminate) => {
                    tokio::select! {
                        _ = ctrl_c => {},
                        _ = terminate.recv() => {},
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot watch SIGTERM; Ctrl-C only");
                    let _ = ctrl_c.await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutdown requested");
        cancel.cancel();
    });
    token
}
