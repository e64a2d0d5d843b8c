//! The executor: runs durable workers. Each worker is an actor task owning its wasmtime store
//! (pooled, fuel-metered, memory-limited); it runs one invocation at a time in arrival order,
//! records every non-deterministic host call in the oplog, and rebuilds its memory by replaying
//! the oplog whenever it starts afresh (first use, after suspension, after a failed invocation,
//! after a crash). Oplog appends of all workers go through one group committer.
//!
//! **Invariant:** an invocation's result is released only once its `ExportedFunctionCompleted`
//! entry, its result record and the usage it measured are durable, in one transaction.
//!
//! **Invariant:** the same idempotency key never runs twice on a worker: a repeated key gets the
//! stored outcome, or waits for the running invocation.
//!
//! **Boundary:** only this crate runs guest code.

mod admission;
mod archive;
mod calls;
mod commit;
mod config;
mod configuration;
mod context;
mod durability;
mod error;
mod files;
mod fsview;
pub mod grpc;
mod host;
mod hostapi;
mod http;
pub mod incoming;
mod leases;
mod lifecycle;
mod limits;
mod meter;
mod metrics;
mod placed;
mod placement;
mod problem;
mod promises;
mod queries;
mod queue;
mod records;
mod remote;
mod schedules;
mod serve;
mod settings;
mod snapshots;
mod support;
mod suspend;
mod tail;
mod timers;
mod types;
mod wasiconfig;
mod wire;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use invicta_component_registry::{ImportCheck, Registry};
use invicta_engine::Engine;
use invicta_model::{ComponentName, TenantId};
use invicta_store::Store;

pub use http::HttpConfig;
pub use invicta_model::retry::RetryPolicy;
pub use lifecycle::{UpdateMethod, VersionPlan};
pub use limits::Limits;
pub use placed::RevertTo;
pub use records::{InvocationRecord, PendingRecord, StoredOutcome, WorkerRecord};
pub use schedules::Schedule;
pub use settings::{ConfigEntry, SecretsKey};
pub use snapshots::Policy as SnapshotPolicy;
pub use suspend::{PROMISE_BYTES_MAX, PromiseRecord};

use crate::commit::Committer;
use crate::host::WorkerCtx;
pub(crate) use crate::support::{lock, now_ms};

pub use config::{Config, Placement};
pub use error::{Error, Result};
pub use files::{FileEntry, FileView};
pub use types::{
    Completed, HandlerRequest, HandlerResponse, InvocationState, LogLine, RequestBody,
    StreamedResponse, WorkerFilter, WorkerStatus, WorkerSummary,
};

/// How old the monthly fuel figure checked before each invocation may be, in milliseconds:
/// reading it for every invocation would cost a store read on the hot path.
pub const FUEL_USAGE_STALE_MS: u64 = 1_000;

/// How often the scheduler looks for due ticks, in milliseconds.
pub const SCHEDULER_TICK_MS: u64 = 100;

/// The longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    /// What the workers' actors share with the executor.
    pub ctx: Arc<context::Context>,
    /// The workers with an actor, by id.
    pub workers: Arc<worker::Directory>,
    /// Background invocations accepted and not yet settled, per tenant.
    pub background: Arc<Mutex<HashMap<TenantId, u64>>>,
    /// This month's fuel per tenant, as last read: (month, fuel, read at).
    pub fuel_used: Mutex<HashMap<TenantId, (String, u64, std::time::Instant)>>,
    pub instance_pres:
        Mutex<HashMap<(TenantId, ComponentName, u64), wasmtime::component::InstancePre<WorkerCtx>>>,
    /// The shards this executor owns, checked by every commit.
    pub fencing: Arc<placement::Fencing>,
    /// Where calls for workers of other executors' shards go, when there are others.
    pub router: std::sync::OnceLock<remote::Router>,
    /// Shards drained for a hand-off (every worker stopped), to be released to the scheduler.
    pub released: Mutex<std::collections::BTreeSet<u32>>,
    /// Told when a shard joins `released`.
    pub release_ready: tokio::sync::Notify,
    /// What ephemeral HTTP handlers may import, and the handlers prepared to serve.
    pub handler_linker: serve::HandlerLinkers,
    pub handlers: serve::Handlers,
    /// Components' retry policies as last read, and when (`configuration.rs`).
    pub retries: configuration::Retries,
}

impl std::ops::Deref for Inner {
    type Target = context::Context;

    fn deref(&self) -> &context::Context {
        &self.ctx
    }
}

impl Executor {
    /// Builds the linker for `engine`; the registry uses its check to refuse components whose
    /// imports no executor provides.
    pub fn import_check(engine: &Engine) -> Result<ImportCheck> {
        let linker = host::linker(&engine.engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        // Components too large for a pool slot are loaded into the on-demand engine.
        let large = match &engine.large {
            Some(large) => Some((
                large.clone(),
                host::linker(large).map_err(|e| Error::Engine(format!("{e:#}")))?,
            )),
            None => None,
        };
        // And uploads compiled by the baseline tier into its engine.
        let baseline = match &engine.baseline {
            Some(b) => Some((
                b.engine.clone(),
                host::linker(&b.engine).map_err(|e| Error::Engine(format!("{e:#}")))?,
            )),
            None => None,
        };
        Ok(Arc::new(move |component| {
            let linker = match (&large, &baseline) {
                (Some((engine, linker)), _)
                    if wasmtime::Engine::same(component.engine(), engine) =>
                {
                    linker
                }
                (_, Some((engine, linker)))
                    if wasmtime::Engine::same(component.engine(), engine) =>
                {
                    linker
                }
                _ => &linker,
            };
            linker
                .instantiate_pre(component)
                .map(drop)
                .map_err(|e| format!("{e:#}"))
        }))
    }

    /// Starts the executor: its group committer, and the recovery of every worker that was
    /// cut off in the middle of an invocation.
    pub async fn start(
        config: Config,
        store: Store,
        registry: Registry,
        engine: Engine,
    ) -> Result<Executor> {
        let linker = host::linker(&engine.engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let large_linker = engine
            .large
            .as_ref()
            .map(host::linker)
            .transpose()
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let handler_linker =
            serve::HandlerLinkers::new(&engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        let baseline_linker = engine
            .baseline
            .as_ref()
            .map(|b| host::linker(&b.engine))
            .transpose()
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        let secrets = settings::load_key(config.secrets_key_file.as_deref())
            .map_err(|e| Error::Engine(format!("[executor] secrets_key_file: {e}")))?;
        let http_tls = http::tls_config(&config.http)
            .map_err(|e| Error::Engine(format!("[executor.http] {e}")))?;
        let files_root = config
            .worker_files_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("invicta-worker-files"));
        let baseline_slots = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(engine.config.pool_instances / 4)
                .unwrap_or(1)
                .max(1),
        ));
        let metrics = Arc::new(metrics::Metrics::new());
        let fencing = Arc::new(placement::Fencing::new(placement::new_id()));
        // This executor's own directory of worker files, named by its id; what executors that
        // crashed left beside it goes now.
        let (root, id) = (files_root.clone(), fencing.id.clone());
        let files = tokio::task::spawn_blocking(move || files::Claim::take(&root, &id))
            .await
            .map_err(|e| Error::Engine(format!("[executor] worker_files_dir: {e}")))?
            .map_err(|e| {
                Error::Engine(format!(
                    "[executor] worker_files_dir {}: {e}",
                    files_root.display()
                ))
            })?;
        if config.placement == Placement::All {
            let (owner, lease_ms) = (fencing.id.clone(), config.lease_ms);
            let granted = store
                .transact(move |tx| placement::take_all(tx, &owner, now_ms(), lease_ms))
                .await?;
            // What an earlier run left in the oplog's tail goes to its workers' keys before any
            // worker is read.
            let shards: HashMap<u32, u64> = granted.iter().copied().collect();
            commit::drain_tails_of(&store, &fencing.id, shards).await?;
            for (shard, epoch) in granted {
                fencing.set(shard, Some(epoch));
            }
        }
        let executor = Executor {
            inner: Arc::new(Inner {
                ctx: Arc::new(context::Context {
                    committer: Committer::start(
                        store.clone(),
                        metrics.clone(),
                        fencing.clone(),
                        std::time::Duration::from_micros(config.commit_poll_us),
                        config.placement == Placement::All,
                    )?,
                    metrics,
                    http_config: Arc::new(config.http.clone()),
                    http_tls,
                    secrets,
                    files,
                    config,
                    store,
                    registry,
                    engine,
                    baseline_slots,
                    linker,
                    large_linker,
                    baseline_linker,
                }),
                fencing,
                router: std::sync::OnceLock::new(),
                released: Mutex::new(std::collections::BTreeSet::new()),
                release_ready: tokio::sync::Notify::new(),
                workers: Arc::new(Mutex::new(HashMap::new())),
                fuel_used: Mutex::new(HashMap::new()),
                background: Arc::new(Mutex::new(HashMap::new())),
                instance_pres: Mutex::new(HashMap::new()),
                handler_linker,
                handlers: serve::Handlers::default(),
                retries: Default::default(),
            }),
        };
        executor.recover().await?;
        executor.recover_pending().await?;
        executor.spawn_scheduler();
        if executor.inner.config.placement == Placement::All {
            executor.spawn_lease_renewal();
        }
        Ok(executor)
    }
}

#[cfg(test)]
mod structure {
    //! The executor's modules import each other without circles: each may see those below it,
    //! none one that sees it back (the crate root counts as a module: its items are `crate::X`).

    use std::collections::{BTreeMap, BTreeSet};

    /// Every module's imports of other modules of this crate, from the sources.
    fn imports() -> BTreeMap<String, BTreeSet<String>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let files: Vec<_> = std::fs::read_dir(&dir)
            .expect("read src")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rs"))
            .collect();
        let module = |p: &std::path::Path| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        let modules: BTreeSet<String> = files.iter().map(|p| module(p)).collect();
        let mut graph = BTreeMap::new();
        for path in &files {
            let me = module(path);
            let text = std::fs::read_to_string(path).expect("read a module");
            let mut seen = BTreeSet::new();
            for line in text.lines() {
                let code = line.trim_start();
                if code.starts_with("//") {
                    continue;
                }
                // `crate::x…` and `use crate::{x, y::…}`.
                let mut rest = code;
                while let Some(at) = rest.find("crate::") {
                    rest = &rest[at + "crate::".len()..];
                    let names: Vec<&str> = match rest.strip_prefix('{') {
                        Some(list) => list
                            .split('}')
                            .next()
                            .unwrap_or_default()
                            .split(',')
                            .collect(),
                        None => vec![rest],
                    };
                    for name in names {
                        let name: String = name
                            .trim()
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if name.is_empty() {
                            continue;
                        }
                        let target = if modules.contains(&name) {
                            name
                        } else {
                            "lib".to_string()
                        };
                        if target != me {
                            seen.insert(target);
                        }
                    }
                }
            }
            graph.insert(me, seen);
        }
        graph
    }

    #[test]
    fn no_module_imports_one_that_imports_it_back() {
        let graph = imports();
        assert!(graph.contains_key("durability") && graph.contains_key("worker"));
        // Depth-first, looking for a path back to where it started.
        fn reaches(
            graph: &BTreeMap<String, BTreeSet<String>>,
            from: &str,
            to: &str,
            seen: &mut BTreeSet<String>,
        ) -> bool {
            let Some(next) = graph.get(from) else {
                return false;
            };
            next.iter()
                .any(|n| n == to || (seen.insert(n.clone()) && reaches(graph, n, to, seen)))
        }
        for module in graph.keys() {
            assert!(
                !reaches(&graph, module, module, &mut BTreeSet::new()),
                "module `{module}` imports one that imports it back: {graph:#?}"
            );
        }
        // The durability core sees nothing of the executor.
        assert!(graph["durability"].is_empty(), "{:?}", graph["durability"]);
    }

    #[test]
    fn only_placement_decides_where_a_worker_runs() {
        // Every operation on one worker goes through `Executor::at`: no other module looks at
        // the router to ask whether the worker is elsewhere.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("an entry").path();
            let name = path.file_stem().unwrap_or_default().to_string_lossy();
            if !matches!(name.as_ref(), "placed" | "leases" | "lib") {
                let text = std::fs::read_to_string(&path).expect("read a module");
                assert!(
                    !text.contains("router.get()") && !text.contains("fn elsewhere"),
                    "{name} decides where a worker runs"
                );
            }
        }
    }
}
