//! What a worker's actor needs of its executor: the configuration, the store, the registry,
//! the engine and linker, the group committer, metrics and outgoing-HTTP settings. Shared by
//! the executor and every actor; it knows nothing of either.

use std::sync::Arc;

use invicta_component_registry::Registry;
use invicta_engine::Engine;
use invicta_store::Store;

use crate::commit::Committer;
use crate::config::Config;
use crate::host::WorkerCtx;
use crate::http::HttpConfig;

pub(crate) struct Context {
    pub config: Config,
    pub store: Store,
    pub registry: Registry,
    pub engine: Engine,
    pub linker: wasmtime::component::Linker<WorkerCtx>,
    /// The same for the on-demand engine (workers larger than a pool slot), if there is one.
    pub large_linker: Option<wasmtime::component::Linker<WorkerCtx>>,
    /// The same for the baseline tier's engine (versions whose optimized code is not ready).
    pub baseline_linker: Option<wasmtime::component::Linker<WorkerCtx>>,
    /// Instances of the baseline tier that may live at once (they are allocated on demand, so
    /// this is their pool): a quarter of the pool's.
    pub baseline_slots: Arc<tokio::sync::Semaphore>,
    pub committer: Committer,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub http_config: Arc<HttpConfig>,
    /// How outgoing HTTPS requests are made (the trusted authorities).
    pub http_tls: Arc<rustls::ClientConfig>,
    /// The key that seals configuration secrets.
    pub secrets: crate::settings::SecretsKey,
    /// Where the workers running here keep their files: this executor's own directory.
    pub files: crate::files::Claim,
}

impl Context {
    /// The linker of `component`'s engine: the pooled one's, the on-demand one's (components
    /// too large for a pool slot) or the baseline tier's (versions not optimized yet).
    pub(crate) fn linker_for(
        &self,
        component: &wasmtime::component::Component,
    ) -> &wasmtime::component::Linker<WorkerCtx> {
        let engine = component.engine();
        match (
            &self.large_linker,
            &self.engine.large,
            &self.baseline_linker,
            &self.engine.baseline,
        ) {
            (Some(linker), Some(large), _, _) if wasmtime::Engine::same(engine, large) => linker,
            (_, _, Some(linker), Some(b)) if wasmtime::Engine::same(engine, &b.engine) => linker,
            _ => &self.linker,
        }
    }
}
