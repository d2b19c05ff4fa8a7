//! Prometheus metrics: the exporter on a port of the service's own, the gRPC
//! request metrics (a tower layer) and the database pool's gauges. The relay
//! and consumer metrics are recorded by `broker`.

use std::{
    net::SocketAddr,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use broker::pg::PgPool;
use futures_util::future::BoxFuture;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tonic::codegen::http;
use tower::{Layer, Service};

/// Seconds, from a millisecond to ten seconds.
const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Serves `/metrics` (Prometheus text format) on `addr`. Call inside the
/// async runtime.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)?
        .install()?;
    tracing::info!(%addr, "metrics on /metrics");
    Ok(())
}

/// Keeps `<service>_db_pool_connections{state}` current until `shutdown`.
pub async fn watch_pool(
    service: &str,
    pool: PgPool,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let name = format!("{service}_db_pool_connections");
    let idle = metrics::gauge!(name.clone(), "state" => "idle");
    let in_use = metrics::gauge!(name.clone(), "state" => "in_use");
    loop {
        let state = pool.state();
        idle.set(f64::from(state.idle_connections));
        in_use.set(f64::from(state.connections - state.idle_connections));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Counts gRPC requests by method and status code, and times them:
/// `<service>_grpc_requests_total{method,code}` and
/// `<service>_grpc_request_duration_seconds{method}` (until the response
/// headers, which for a unary call is the whole call).
#[derive(Clone)]
pub struct GrpcMetrics {
    service: Arc<str>,
}

impl GrpcMetrics {
    /// Metrics named after `service`.
    pub fn new(service: &str) -> Self {
        GrpcMetrics {
            service: service.into(),
        }
    }
}

impl<S> Layer<S> for GrpcMetrics {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            service: self.service.clone(),
        }
    }
}

/// The service [`GrpcMetrics`] wraps.
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    service: Arc<str>,
}

impl<S, B, R> Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let method = request.uri().path().to_owned();
        let service = self.service.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                // Errors come as trailers-only responses, the status in the
                // headers; a success's status is in the trailers: OK.
                Ok(response) => response
                    .headers()
                    .get("grpc-status")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse::<i32>().ok())
                    .map(code_name)
                    .unwrap_or("OK"),
                Err(_) => "UNKNOWN",
            };
            metrics::counter!(format!("{service}_grpc_requests_total"), "method" => method.clone(), "code" => code)
                .increment(1);
            metrics::histogram!(format!("{service}_grpc_request_duration_seconds"), "method" => method)
                .record(started.elapsed().as_secs_f64());
            response
        })
    }
}

fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}
