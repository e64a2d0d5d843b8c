//! One trace across processes: a gateway, billing, a scheduler and an executor, each exporting
//! its spans over OTLP to a collector on loopback. An invocation through the gateway is one
//! trace: the gateway's `invoke` → the scheduler's `scheduler locate`, and the gateway's `invoke`
//! → the executor's `executor invoke` → `run invocation`; a request whose key the gateway has
//! not verified yet holds billing's `billing authenticate`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use invicta_tests::{Server, component};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use serde_json::json;

use crate::INVICTA;

/// A span as the collector received it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
}

/// An OTLP trace collector keeping every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self
            .spans
            .lock()
            .map_err(|_| tonic::Status::internal("lock"))?;
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        name: span.name,
                        trace: span.trace_id,
                        id: span.span_id,
                        parent: span.parent_span_id,
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invocation_is_one_trace_across_processes() -> anyhow::Result<()> {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let incoming = futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(incoming),
    );
    let otlp = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("INVICTA_LOG", "info"),
    ];

    let data = tempfile::tempdir()?;
    let dir = data.path().join("data");
    std::fs::create_dir_all(&dir)?;
    let start = |role: &str, config: &str| {
        Server::start_role_env(INVICTA.as_ref(), &dir, role, config, &otlp)
    };
    let scheduler = start(
        "scheduler",
        "[scheduler]\nlisten = \"127.0.0.1:0\"\nlease_ms = 1000\n",
    )?;
    let billing = start("billing", "[grpc]\nbilling_listen = \"127.0.0.1:0\"\n")?;
    let peers = format!(
        "[grpc]\nexecutor_listen = \"127.0.0.1:0\"\nscheduler = \"{}\"\nbilling = \"{}\"\n",
        scheduler.url, billing.url
    );
    let _executor = start("executor", &peers)?;
    let gateway = start("gateway", &peers)?;

    let api = gateway.operator().new_tenant("traced", "pro").await?;
    assert_eq!(
        api.upload("counter", component("counter")).await?.status,
        201
    );
    // The worker's first call: the gateway has yet to ask the scheduler where it runs. The
    // executor's shards are granted within a heartbeat; until then the call is retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = api
            .invoke("counter", "t", "add", json!([2]), Some("traced-1"))
            .await?;
        if reply.status == 200 {
            assert_eq!(reply.body["result"], 2);
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "never answered: {reply:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Find the trace of that call once every process has exported its part.
    let deadline = Instant::now() + Duration::from_secs(20);
    let trace = loop {
        let spans = collector
            .spans
            .lock()
            .map_err(|_| anyhow::anyhow!("lock"))?
            .clone();
        let by_id: HashMap<&[u8], &Received> = spans.iter().map(|s| (s.id.as_slice(), s)).collect();
        let parent_of = |s: &Received| by_id.get(s.parent.as_slice()).copied();
        let found = spans.iter().find_map(|run| {
            // run invocation ← executor invoke ← (gateway) invoke, with a scheduler locate
            // under the same gateway invoke.
            if run.name != "run invocation" || run.service != "invicta-executor" {
                return None;
            }
            let served = parent_of(run)?;
            let invoke = parent_of(served)?;
            let located = spans
                .iter()
                .find(|s| s.name == "scheduler locate" && s.trace == invoke.trace)?;
            (served.name == "executor invoke"
                && served.service == "invicta-executor"
                && invoke.name == "invoke"
                && invoke.service == "invicta-gateway"
                && located.service == "invicta-scheduler")
                .then(|| (invoke.clone(), located.clone(), served.clone(), run.clone()))
        });
        if let Some(found) = found {
            break found;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no trace crosses gateway → scheduler → executor; spans received: {:#?}",
            spans
                .iter()
                .map(|s| format!("{} {} {}", s.service, s.name, hex(&s.trace)))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let (invoke, located, served, run) = trace;
    for span in [&located, &served, &run] {
        assert_eq!(span.trace, invoke.trace, "{span:?}");
    }
    // The scheduler's span hangs under the gateway's call, through the client's context.
    let mut ancestor = located.parent.clone();
    let spans = collector
        .spans
        .lock()
        .map_err(|_| anyhow::anyhow!("lock"))?
        .clone();
    let mut hops = 0;
    while ancestor != invoke.id {
        let parent = spans
            .iter()
            .find(|s| s.id == ancestor)
            .ok_or_else(|| anyhow::anyhow!("the scheduler's span has no parent in the trace"))?;
        assert_eq!(parent.service, "invicta-gateway", "{parent:?}");
        ancestor = parent.parent.clone();
        hops += 1;
        anyhow::ensure!(hops < 10, "no path to the gateway's invoke");
    }
    // The gateway's first request with the tenant's key asked billing to verify it, inside
    // that request's trace.
    let verified = spans
        .iter()
        .filter(|s| s.service == "invicta-billing" && s.name == "billing authenticate")
        .find_map(|s| {
            let parent = spans.iter().find(|p| p.id == s.parent)?;
            (parent.service == "invicta-gateway" && parent.trace == s.trace).then_some(parent)
        });
    let verified =
        verified.ok_or_else(|| anyhow::anyhow!("no billing authenticate under a gateway span"))?;
    assert!(verified.name.starts_with("POST /v1/"), "{verified:?}");
    println!(
        "one trace {}: gateway invoke → scheduler locate, executor invoke → run invocation",
        hex(&invoke.trace)
    );
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
