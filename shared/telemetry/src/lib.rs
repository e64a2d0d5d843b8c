//! Telemetry setup for every Invicta process: `tracing` events to stderr (filtered by
//! `INVICTA_LOG`, default `info`), and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, every span
//! exported as an OpenTelemetry trace over OTLP (gRPC) in batches.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Keeps the trace pipeline alive; dropping it flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown()
        {
            eprintln!("flush traces: {e}");
        }
    }
}

fn filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_env("INVICTA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Installs the process's subscriber. `service` names the process in traces.
pub fn init(service: &'static str) -> Telemetry {
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let provider = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").and_then(|_| {
        match opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .build()
        {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(
                        opentelemetry_sdk::Resource::builder()
                            .with_service_name(service)
                            .build(),
                    )
                    .build(),
            ),
            Err(e) => {
                eprintln!("OTLP export is off: {e}");
                None
            }
        }
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    tracing_subscriber::registry()
        .with(filter())
        .with(fmt)
        .with(otel)
        .init();
    Telemetry { provider }
}

/// A tracer provider that hands finished spans to `exporter` at once: for tests that check
/// traces in process.
pub fn provider_with<E>(exporter: E) -> SdkTracerProvider
where
    E: opentelemetry_sdk::trace::SpanExporter + 'static,
{
    SdkTracerProvider::builder()
        .with_simple_exporter(exporter)
        .build()
}
