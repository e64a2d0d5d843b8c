//! One trace per request, from the gateway's span through the worker's run to the group commit
//! that made it durable, checked with an in-process OpenTelemetry exporter over real HTTP.

use invicta_billing::{Billing, Scope};
use invicta_blob::BlobStore;
use invicta_component_registry::Registry;
use invicta_engine::Engine;
use invicta_executor::Executor;
use invicta_store::{Config, Store};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::InMemorySpanExporter;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_one_trace_from_gateway_to_commit() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = invicta_telemetry::provider_with(exporter.clone());
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::set_global_default(subscriber)?;

    let dir = tempfile::tempdir()?;
    let store = Store::open(&Config::embedded_in(dir.path()))?;
    let blobs = BlobStore::open(&invicta_blob::Config::local_in(dir.path())).await?;
    let engine = Engine::new(&invicta_engine::Config {
        pool_instances: 8,
        ..Default::default()
    })?;
    let registry = Registry::new(
        Default::default(),
        store.clone(),
        blobs.clone(),
        engine.clone(),
        Executor::import_check(&engine)?,
    );
    let executor =
        Executor::start(Default::default(), store.clone(), registry.clone(), engine).await?;
    let (billing, _) = Billing::start(Default::default(), store.clone(), dir.path(), None).await?;
    let tenant = billing.create_tenant("traced", Some("pro")).await?;
    let (_, key) = billing
        .create_key(&tenant.id, vec![Scope::Deploy, Scope::Invoke], "t".into())
        .await?;
    let config = invicta_gateway::Config {
        listen: "127.0.0.1:0".parse()?,
        ..Default::default()
    };
    let service = invicta_gateway::Service::bind(
        &config,
        invicta_gateway::Backends {
            store,
            blobs,
            registry,
            executor,
            billing,
        },
    )
    .await?;
    let url = format!("http://{}", service.local_addr()?);
    tokio::spawn(service.run(std::future::pending()));

    let http = reqwest::Client::new();
    let wasm = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/components/wasm/counter.wasm"),
    )?;
    let upload = http
        .post(format!("{url}/v1/components/counter"))
        .bearer_auth(&key)
        .body(wasm)
        .send()
        .await?;
    assert!(upload.status().is_success(), "{upload:?}");
    let reply = http
        .post(format!("{url}/v1/components/counter/workers/w/invoke"))
        .bearer_auth(&key)
        .json(&serde_json::json!({ "function": "add", "params": [3] }))
        .send()
        .await?;
    assert_eq!(reply.status(), 200);
    assert_eq!(reply.json::<serde_json::Value>().await?["result"], 3);

    // The commit's span ends on the committer thread just after the reply; a parent span ends
    // when its last child does.
    let mut spans = Vec::new();
    for _ in 0..200 {
        provider.force_flush()?;
        spans = exporter.get_finished_spans()?;
        if spans.iter().any(|s| s.name == "invoke") {
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
    let invoke = find("invoke")?;
    let run = find("run invocation")?;
    let commit = find("group commit")?;
    let trace = invoke.span_context.trace_id();
    assert_eq!(run.span_context.trace_id(), trace);
    assert_eq!(run.parent_span_id, invoke.span_context.span_id());
    assert_eq!(commit.span_context.trace_id(), trace);
    assert_eq!(commit.parent_span_id, run.span_context.span_id());
    let attribute = |key: &str| {
        invoke
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    };
    assert_eq!(attribute("function").as_deref(), Some("add"));
    assert_eq!(attribute("tenant_id"), Some(tenant.id));
    Ok(())
}
