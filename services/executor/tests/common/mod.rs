//! What the executor's tests share: a store, a registry and an engine over one directory, and
//! the counter component uploaded.

use invicta_blob::BlobStore;
use invicta_component_registry::{Quota, Registry};
use invicta_engine::Engine;
use invicta_executor::Executor;
use invicta_model::{ComponentName, TenantId, WorkerId, WorkerName};
use invicta_store::{Config, Store};

/// A store (opened afresh on the directory's file, as a separate process would), the registry
/// over it and an engine.
pub async fn parts(dir: &std::path::Path) -> anyhow::Result<(Store, Registry, Engine)> {
    let store = Store::open(&Config::embedded_in(dir))?;
    let blobs = BlobStore::open(&invicta_blob::Config::local_in(dir)).await?;
    let engine = Engine::new(&invicta_engine::Config {
        pool_instances: 8,
        ..Default::default()
    })?;
    let registry = Registry::new(
        Default::default(),
        store.clone(),
        blobs,
        engine.clone(),
        Executor::import_check(&engine)?,
    );
    Ok((store, registry, engine))
}

/// Polls `condition` until it yields a value, for at most `timeout`; its last error, or that
/// it never held, otherwise.
#[allow(dead_code)]
pub async fn eventually<T, F, Fut>(
    what: &str,
    timeout: std::time::Duration,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match condition().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => "not yet".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("{what}: still not so after {timeout:?} ({last})");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Uploads the counter component for tenant `t1`; the id of its worker `worker`.
pub async fn counter(registry: &Registry, worker: &str) -> anyhow::Result<WorkerId> {
    let tenant = TenantId::new("t1")?;
    let component = ComponentName::new("counter")?;
    let wasm = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/components/wasm/counter.wasm"),
    )?;
    registry
        .upload(&tenant, &component, wasm, Quota::unlimited())
        .await?;
    Ok(WorkerId {
        tenant,
        component,
        worker: WorkerName::new(worker)?,
    })
}
