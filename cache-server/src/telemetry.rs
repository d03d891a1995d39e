//! Logs to stderr (text or JSON, filtered by `NIXCACHE_LOG`), and, when an OTLP endpoint is
//! configured, the same spans exported as OpenTelemetry traces over OTLP/HTTP: a request's span
//! with, for a NAR miss, the download's and its steps' (`lock_wait`, `upstream_fetch`, `verify`,
//! `commit`) below it. Without an endpoint no exporter exists and nothing leaves the process.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;

/// What was set up; dropping it flushes the spans not yet exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(e) = provider.shutdown() {
                eprintln!("exporting the last spans failed: {e}");
            }
        }
    }
}

/// Installs the process's subscriber: logs as `format`, and span export to `otlp_traces`.
pub fn init(format: LogFormat, otlp_traces: Option<&url::Url>) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_env("NIXCACHE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = match otlp_traces {
        None => None,
        Some(url) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(url.as_str())
                .with_timeout(std::time::Duration::from_secs(10))
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("nixcache")
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
    };
    let traces = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("nixcache")));
    tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(traces)
        .init();
    Ok(Telemetry { provider })
}
