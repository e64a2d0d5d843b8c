//! One trace across gRPC: an executor that does not own a worker routes its invocation to the
//! owner over loopback gRPC, asking the scheduler where the worker runs; the trace context
//! travels in the requests' metadata, so the scheduler's and the owner's spans continue the
//! caller's trace.

mod common;
#[path = "common/spans.rs"]
mod spans;

use invicta_executor::{Config as ExecutorConfig, Executor, Limits, Placement};
use invicta_worker_scheduler::Scheduler;
use invicta_worker_scheduler::grpc::{SchedulerClient, SchedulerService};
use tracing::Instrument;

/// Serves `service` on a loopback port; its `http://` address.
async fn serve<S>(service: S) -> anyhow::Result<String>
where
    S: tonic::codegen::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
            Error = std::convert::Infallible,
        > + tonic::server::NamedService
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = format!("http://{}", listener.local_addr()?);
    let incoming = futures::stream::unfold(listener, |l| async move {
        let accepted = l.accept().await.map(|(s, _)| s);
        Some((accepted, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming),
    );
    Ok(address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routed_invocation_is_one_trace_across_grpc() -> anyhow::Result<()> {
    let traces = spans::Spans::install()?;

    let dir = tempfile::tempdir()?;
    let (store, registry, engine) = common::parts(dir.path()).await?;
    // The owner takes every shard; the router owns none.
    let owner = Executor::start(
        Default::default(),
        store.clone(),
        registry.clone(),
        engine.clone(),
    )
    .await?;
    let router = Executor::start(
        ExecutorConfig {
            placement: Placement::Scheduler,
            ..Default::default()
        },
        store.clone(),
        registry.clone(),
        engine,
    )
    .await?;
    let scheduler = Scheduler::new(store, std::time::Duration::from_secs(30));
    let scheduler_address = serve(SchedulerService::new(scheduler.clone())).await?;
    let owner_address = serve(invicta_executor::grpc::ExecutorService::new(owner.clone())).await?;
    scheduler.register(owner.id(), &owner_address).await?;
    router.route_through(SchedulerClient::new(&scheduler_address)?);

    let id = common::counter(&registry, "w").await?;
    let done = router
        .invoke(
            &id,
            "add",
            &[serde_json::json!(3)],
            None,
            &Limits::unlimited(),
        )
        .instrument(tracing::info_span!("request"))
        .await?;
    assert_eq!(done.result, serde_json::json!(3));

    // The server's spans may end after the caller's: every span the test reads is waited for.
    let spans = traces
        .finished(&[
            "request",
            "group commit",
            "scheduler locate",
            "executor invoke",
            "run invocation",
        ])
        .await?;
    let find = |name: &str| spans::find(&spans, name);
    let request = find("request")?;
    let locate = find("scheduler locate")?;
    let served = find("executor invoke")?;
    let run = find("run invocation")?;
    let trace = request.span_context.trace_id();
    for span in [locate, served, run] {
        assert_eq!(
            span.span_context.trace_id(),
            trace,
            "{} is in the trace",
            span.name
        );
    }
    assert_eq!(locate.parent_span_id, request.span_context.span_id());
    assert_eq!(served.parent_span_id, request.span_context.span_id());
    assert_eq!(run.parent_span_id, served.span_context.span_id());
    Ok(())
}
