//! From configuration to a running service, and back down on shutdown.

use std::{convert::Infallible, future::Future, net::SocketAddr, time::Duration};

use backon::{ExponentialBuilder, Retryable};
use futures_util::future::BoxFuture;

use broker::{Amqp, Consumer, Outbox, Relay};
use tokio::{net::TcpListener, sync::oneshot, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tonic::{
    body::Body,
    codegen::{Service, http},
    server::NamedService,
    service::Routes,
    transport::{Server, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::{
    bootstrap,
    config::{Config, ServiceSpec, Settings},
    db::{self, Db},
};

/// A service's connections, ready for its API and handlers.
pub struct Infra {
    spec: &'static ServiceSpec,
    /// Connections as the service's role (`search_path` = its schema) and
    /// the outbox the relay publishes.
    pub db: Db,
    amqp: Amqp,
    database_url: String,
    settings: Settings,
    shutdown: CancellationToken,
    /// The gRPC listener, bound before any outgoing connection was opened.
    listener: Option<std::net::TcpListener>,
}

/// How long to keep retrying the database when a service starts before it.
const DATABASE_WAIT: Duration = Duration::from_secs(60);

impl Infra {
    /// Bootstraps (with an admin URL), migrates and opens the pool, waiting up
    /// to a minute for the database to come up.
    pub async fn connect<X: clap::Args, S: clap::Subcommand>(
        spec: &'static ServiceSpec,
        config: &Config<X, S>,
    ) -> anyhow::Result<Infra> {
        let settings = config.settings.clone();
        let database_url = config.database_url.clone();
        let waiting = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(DATABASE_WAIT));
        (|| Self::prepare_database(spec, &database_url, &settings))
            .retry(waiting)
            .notify(|error, delay| {
                tracing::warn!(error = format!("{error:#}"), retry_in = ?delay, "database not ready");
            })
            .await?;
        let pool = db::pool(&database_url, spec.schema, settings.db_pool_size).await?;
        let mut outbox = Outbox::new(spec.name, spec.schema);
        if !settings.outbox_notify {
            outbox = outbox.without_notify();
        }
        let db = Db::new(pool, outbox);
        let amqp = Amqp::new(settings.amqp_url.clone(), format!("{}-service", spec.name))
            .with_tls(crate::tls::amqp(&settings)?);
        let shutdown = CancellationToken::new();
        Ok(Infra {
            spec,
            db,
            amqp,
            database_url,
            settings,
            shutdown,
            listener: None,
        })
    }

    async fn prepare_database(
        spec: &'static ServiceSpec,
        database_url: &str,
        settings: &Settings,
    ) -> anyhow::Result<()> {
        if let Some(admin) = &settings.admin_database_url {
            bootstrap::run(admin, database_url, spec.schema).await?;
        }
        let sets = vec![&broker::pg::MIGRATIONS, &spec.migrations];
        let applied = db::migrate(database_url, spec.schema, sets).await?;
        if !applied.is_empty() {
            tracing::info!(?applied, schema = spec.schema, "migrations applied");
        }
        Ok(())
    }

    /// Serves on `listener` (bound early, before any outgoing connection
    /// could take its port as an ephemeral one) instead of binding later.
    pub fn with_listener(mut self, listener: std::net::TcpListener) -> Self {
        self.listener = Some(listener);
        self
    }

    /// The shared settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The shared AMQP connection.
    pub fn amqp(&self) -> &Amqp {
        &self.amqp
    }

    /// The service's own database URL (for dedicated connections, e.g. LISTEN).
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// Cancelled when the service begins to shut down: long-lived work
    /// (streams, background tasks) stops on it.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs only the outbox relay until `shutdown` (the `relay` command).
    pub async fn run_relay(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.settings.relay_config(self.spec, &self.database_url);
        let (ready, is_ready) = oneshot::channel();
        let relay =
            tokio::spawn(Relay::new(config, self.amqp.clone()).run(shutdown.clone(), ready));
        if is_ready.await.is_ok() {
            tracing::info!(service = self.spec.name, "relay running");
        }
        relay.await?;
        self.amqp.close().await;
        Ok(())
    }

    /// Starts describing the server: add the API, then the consumer, then bind.
    pub fn server(self) -> AppBuilder {
        AppBuilder {
            infra: self,
            routes: Routes::builder(),
            names: Vec::new(),
            consumer: None,
            relay: true,
            background: Vec::new(),
        }
    }
}

/// Collects what a service runs before it binds.
pub struct AppBuilder {
    infra: Infra,
    routes: tonic::service::RoutesBuilder,
    names: Vec<&'static str>,
    consumer: Option<Consumer>,
    relay: bool,
    background: Vec<BoxFuture<'static, ()>>,
}

impl AppBuilder {
    /// Adds a gRPC service; its health status follows the service's readiness.
    pub fn api<S>(mut self, service: S) -> Self
    where
        S: Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.names.push(S::NAME);
        self
    }

    /// Runs the consumer `subscribe` makes (its handlers write events through
    /// the service's outbox) beside the server; their commits wake the relay.
    pub fn consumer(mut self, subscribe: impl FnOnce(Outbox) -> Consumer) -> Self {
        let outbox = self.infra.db.outbox().clone();
        self.consumer = Some(subscribe(outbox.clone()).wakes(outbox));
        self
    }

    /// Runs `task` beside the server until it returns; it should return soon
    /// after [`Infra::shutdown_token`] is cancelled.
    pub fn background(mut self, task: impl Future<Output = ()> + Send + 'static) -> Self {
        self.background.push(Box::pin(task));
        self
    }

    /// No outbox relay (for a service that publishes nothing).
    pub fn without_relay(mut self) -> Self {
        self.relay = false;
        self
    }

    /// Binds the gRPC listener (port 0 picks a free port), or takes the one
    /// bound at start for `addr` ([`Infra::with_listener`]).
    pub async fn bind(mut self, addr: SocketAddr) -> anyhow::Result<App> {
        let listener = match self.infra.listener.take() {
            Some(early) if early.local_addr()? == addr || addr.port() == 0 => {
                early.set_nonblocking(true)?;
                TcpListener::from_std(early)?
            }
            _ => TcpListener::bind(addr).await?,
        };
        let local_addr = listener.local_addr()?;
        tracing::info!(service = self.infra.spec.name, %local_addr, "gRPC listening");
        Ok(App {
            builder: self,
            listener,
            local_addr,
        })
    }
}

/// A service bound to its port, not yet serving.
pub struct App {
    builder: AppBuilder,
    listener: TcpListener,
    local_addr: SocketAddr,
}

impl App {
    /// Where the gRPC server listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown`, with the relay and consumers beside the
    /// server. Health says NOT_SERVING until the broker side is declared and
    /// consuming, and again from the moment shutdown begins. On shutdown the
    /// server stops accepting and finishes in-flight calls, the relay and the
    /// consumers finish their current round (ack after commit), all within
    /// the shutdown grace period.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App {
            builder, listener, ..
        } = self;
        let AppBuilder {
            infra,
            routes,
            names,
            consumer,
            relay,
            background,
        } = builder;
        let Infra {
            spec,
            db,
            amqp,
            database_url,
            settings,
            shutdown: internal,
            ..
        } = infra;
        let grace = settings.shutdown_grace;
        // Everything inside follows the service's own token, cancelled when
        // the caller's is (and by a failing server).
        {
            let internal = internal.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                internal.cancel();
            });
        }
        let shutdown = internal;
        let (pool, outbox) = (db.pool().clone(), db.outbox().clone());

        let (reporter, health) = tonic_health::server::health_reporter();
        set_status(&reporter, &names, ServingStatus::NotServing).await;
        let reflection_v1 = reflection(&names).build_v1()?;
        let reflection_alpha = reflection(&names).build_v1alpha()?;

        let mut workers = JoinSet::new();
        for task in background {
            workers.spawn(task);
        }
        if relay && settings.outbox_notify {
            // Relays in other processes (standbys, `relay` processes) learn
            // of this process's commits through NOTIFY.
            let notifier = outbox.clone().run_notifier(
                database_url.clone(),
                spec.schema.to_owned(),
                shutdown.clone(),
            );
            workers.spawn(notifier);
        }
        let mut readiness = Vec::new();
        if relay && settings.run_relay {
            let (ready, is_ready) = oneshot::channel();
            readiness.push(is_ready);
            let config = settings.relay_config(spec, &database_url);
            let relay = Relay::new(config, amqp.clone()).woken_by(outbox.clone());
            workers.spawn(relay.run(shutdown.clone(), ready));
        }
        if let Some(consumer) = consumer {
            let (ready, is_ready) = oneshot::channel();
            readiness.push(is_ready);
            let config = settings.consumer_config();
            workers.spawn(consumer.run(
                amqp.clone(),
                pool.clone(),
                config,
                shutdown.clone(),
                ready,
            ));
        }
        {
            let reporter = reporter.clone();
            let names = names.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                for is_ready in readiness {
                    if is_ready.await.is_err() {
                        return;
                    }
                }
                if !shutdown.is_cancelled() {
                    set_status(&reporter, &names, ServingStatus::Serving).await;
                    tracing::info!(service = spec.name, "SERVING");
                }
            });
        }

        let mut routes = routes.routes();
        routes = routes
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_alpha);
        let stopping = {
            let shutdown = shutdown.clone();
            let reporter = reporter.clone();
            let names = names.clone();
            let drain = settings.shutdown_drain;
            async move {
                shutdown.cancelled().await;
                set_status(&reporter, &names, ServingStatus::NotServing).await;
                // Still answering while load balancers and health probes
                // learn that this replica is going away.
                tokio::time::sleep(drain).await;
            }
        };
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let mut server = Server::builder();
        if let Some(tls) = crate::tls::server(&settings)? {
            server = server.tls_config(tls)?;
        }
        workers.spawn(crate::metrics::watch_pool(
            spec.name,
            pool.clone(),
            shutdown.clone(),
        ));
        let server = server
            .timeout(settings.grpc_timeout)
            .trace_fn(grpc_span)
            .layer(crate::metrics::GrpcMetrics::new(spec.name))
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, stopping);
        let mut server = std::pin::pin!(server);
        tokio::select! {
            result = &mut server => result?,
            _ = shutdown.cancelled() => {
                if tokio::time::timeout(grace, &mut server).await.is_err() {
                    tracing::warn!(?grace, "in-flight calls outlived the grace period; closing them");
                }
            }
        }
        shutdown.cancel();
        if tokio::time::timeout(grace, async {
            while workers.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("relay or consumers outlived the grace period");
        }
        amqp.close().await;
        tracing::info!(service = spec.name, "stopped");
        Ok(())
    }
}

/// Reflection that lists this service's APIs and health (not every contract in
/// the descriptor set) and can describe error details (`google.rpc.BadRequest`).
fn reflection(names: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(dbps::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .with_service_name("grpc.health.v1.Health");
    for name in names {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// The span of one gRPC call, a child of the caller's `traceparent` if any.
fn grpc_span(request: &tonic::codegen::http::Request<()>) -> tracing::Span {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span = tracing::info_span!("grpc", method = %request.uri().path());
    let parent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(broker::TraceContext::parse);
    if let Some(parent) = parent {
        let _ = span.set_parent(parent.otel_context());
    }
    span
}

async fn set_status(reporter: &HealthReporter, names: &[&'static str], status: ServingStatus) {
    reporter.set_service_status("", status).await;
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}
