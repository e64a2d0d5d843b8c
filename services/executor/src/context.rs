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
    pub committer: Committer,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub http_config: Arc<HttpConfig>,
    /// How outgoing HTTPS requests are made (the trusted authorities).
    pub http_tls: Arc<rustls::ClientConfig>,
    /// The key that seals configuration secrets.
    pub secrets: crate::settings::SecretsKey,
    /// Where the workers running here keep their files.
    pub files_dir: std::path::PathBuf,
}
