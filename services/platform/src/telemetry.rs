//! Structured logs and, when an OTLP endpoint is configured, traces; the
//! trace context a request continues.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

use broker::TraceContext;

use crate::config::LogFormat;

/// Keeps the trace pipeline alive; flushes it when dropped.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "trace export did not shut down cleanly");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG` filters (default `info`),
/// `format` chooses text or JSON, and with `otlp_endpoint` spans are also
/// exported over OTLP/gRPC as `service`. Call inside the async runtime. A
/// second call (tests) only logs nothing new.
pub fn init(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    service: &str,
) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer().boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
    };
    let provider = match otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        Resource::builder()
                            .with_service_name(service.to_owned())
                            .build(),
                    )
                    .build(),
            )
        }
        None => None,
    };
    let traces = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("dbps")));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .try_init();
    Ok(Telemetry { provider })
}

/// The trace context of a request: the current span's when traces are on
/// (it already continues the caller's), else the caller's `traceparent`
/// metadata continued, else a new trace.
pub fn trace_context<T>(request: &tonic::Request<T>) -> TraceContext {
    if let Some(current) = TraceContext::from_current_span() {
        return current;
    }
    TraceContext::continue_or_start(
        request
            .metadata()
            .get("traceparent")
            .and_then(|value| value.to_str().ok()),
    )
}
