//! One trace per invocation: the caller's span, the worker's run under it, and the group commit
//! that made it durable, checked with an in-process OpenTelemetry exporter.

mod common;
#[path = "common/spans.rs"]
mod spans;

use invicta_executor::{Executor, Limits};
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_is_one_trace_down_to_its_commit() -> anyhow::Result<()> {
    let traces = spans::Spans::install()?;

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
    let spans = traces
        .finished(&["request", "group commit", "run invocation"])
        .await?;
    let find = |name: &str| spans::find(&spans, name);
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
