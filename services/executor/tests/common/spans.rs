//! Spans exported in process, for the trace tests.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

pub struct Spans {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
}

impl Spans {
    /// Installs an in-memory exporter behind the process's tracing subscriber.
    pub fn install() -> anyhow::Result<Spans> {
        let exporter = InMemorySpanExporter::default();
        let provider = invicta_telemetry::provider_with(exporter.clone());
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::set_global_default(subscriber)?;
        Ok(Spans { provider, exporter })
    }

    /// The finished spans, once every one of `names` is among them (waiting up to 2 s: a commit's
    /// span ends on the committer thread just after the reply, and a parent when its last
    /// child does).
    pub async fn finished(&self, names: &[&str]) -> anyhow::Result<Vec<SpanData>> {
        let mut spans = Vec::new();
        for _ in 0..200 {
            self.provider.force_flush()?;
            spans = self.exporter.get_finished_spans()?;
            if names.iter().all(|n| spans.iter().any(|s| s.name == *n)) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Ok(spans)
    }
}

/// The span named `name`.
pub fn find<'a>(spans: &'a [SpanData], name: &str) -> anyhow::Result<&'a SpanData> {
    spans.iter().find(|s| s.name == name).ok_or_else(|| {
        anyhow::anyhow!(
            "no `{name}` span among {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        )
    })
}
