//! One trace per invocation: the caller's span, the worker's run under it, and the group commit
//! that made it durable, checked with an in-process OpenTelemetry exporter.

mod common;

use invicta_executor::{Executor, Limits};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_is_one_trace_down_to_its_commit() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = invicta_telemetry::provider_with(exporter.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber)?;

    let dir = tempfile::tempdir()?;
    let (store, registry, engine) = common::parts(dir.path()).await?;
    let executor = Executor::start(Default::default(), store, registry.clone(), engine).await?;
    let id = common::counter(&registry, "w").await?;
    let limits = Limits::unlimited();
    let request = tracing::info_span!("request");
    let done = executor
        .invoke(&id, "add", &[serde_json::json!(3)], None, &limits)
        .instrument(request)
        .await?;
    assert_eq!(done.result, serde_json::json!(3));
    drop(executor);
    // The commit's span ends on the committer thread just after the reply; a parent span ends
    // when its last child does.
    let mut spans = Vec::new();
    for _ in 0..200 {
        provider.force_flush()?;
        spans = exporter.get_finished_spans()?;
        if spans.iter().any(|s| s.name == "request") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let find = |name: &str| {
        spans.iter().find(|s| s.name == name).ok_or_else(|| {
            anyhow::anyhow!(
                "no `{name}` span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let request = find("request")?;
    let run = find("run invocation")?;
    let commit = find("group commit")?;
    let trace = request.span_context.trace_id();
    assert_eq!(
        run.span_context.trace_id(),
        trace,
        "the worker's run is in the request's trace"
    );
    assert_eq!(run.parent_span_id, request.span_context.span_id());
    assert_eq!(
        commit.span_context.trace_id(),
        trace,
        "the commit is in the request's trace"
    );
    assert_eq!(commit.parent_span_id, run.span_context.span_id());
    Ok(())
}
