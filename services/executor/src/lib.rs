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

mod commit;
mod host;
mod metrics;
mod records;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use invicta_component_registry::{Compiled, ImportCheck, Registry};
use invicta_engine::Engine;
use invicta_engine::values::{ValueError, json_to_value};
use invicta_model::oplog::{FailureKind, OplogEntry, OplogIndex};
use invicta_model::{ComponentName, TenantId, WorkerId, usage};
use invicta_store::Store;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

pub use records::{InvocationRecord, StoredOutcome, WorkerRecord};

use crate::commit::Committer;
use crate::host::WorkerCtx;
use crate::worker::{Command, Invocation, WorkerHandle};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("worker {0} not found")]
    WorkerNotFound(String),
    #[error("worker {0} already exists")]
    WorkerExists(String),
    #[error("component {component} has no exported function `{function}`; it exports: {available}")]
    UnknownFunction {
        component: String,
        function: String,
        available: String,
    },
    #[error("function `{function}` takes {expected} parameter(s), got {got}")]
    ParamCount {
        function: String,
        expected: usize,
        got: usize,
    },
    #[error(transparent)]
    InvalidParam(#[from] ValueError),
    #[error("invalid idempotency key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("the invocation failed ({}): {message}", kind.code())]
    InvocationFailed { kind: FailureKind, message: String },
    #[error("the worker's oplog cannot be replayed: {0}")]
    WorkerFailed(String),
    #[error("the worker's queue is full ({0} invocations waiting)")]
    QueueFull(usize),
    #[error("no instance slot is free on this executor: {0}")]
    PoolExhausted(String),
    #[error("component: {0}")]
    Component(#[from] invicta_component_registry::Error),
    #[error("store: {0}")]
    Store(#[from] invicta_store::Error),
    #[error("oplog of {worker} has no entry before index {index}, or already has that index")]
    OplogGap { worker: String, index: OplogIndex },
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("quota `{quota}` exceeded: the limit is {limit}, {used} used")]
    QuotaExceeded {
        quota: &'static str,
        limit: u64,
        used: u64,
    },
    #[error("wasmtime: {0}")]
    Engine(String),
    #[error("the executor is shutting down")]
    ShuttingDown,
    /// The worker's actor stopped as the invocation reached it; the caller sends it again.
    #[error("the worker was suspending; try again")]
    Retry,
}

impl Error {
    /// A copy for every waiter of a shared outcome.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::InvocationFailed { kind, message } => Error::InvocationFailed {
                kind: kind.clone(),
                message: message.clone(),
            },
            Error::WorkerFailed(m) => Error::WorkerFailed(m.clone()),
            Error::QueueFull(n) => Error::QueueFull(*n),
            Error::PoolExhausted(m) => Error::PoolExhausted(m.clone()),
            Error::QuotaExceeded { quota, limit, used } => Error::QuotaExceeded {
                quota,
                limit: *limit,
                used: *used,
            },
            Error::ShuttingDown => Error::ShuttingDown,
            Error::Retry => Error::Retry,
            Error::OplogGap { worker, index } => Error::OplogGap {
                worker: worker.clone(),
                index: *index,
            },
            other => Error::Engine(other.to_string()),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Fuel one invocation may consume (default 1,000,000,000, about a second of guest code);
    /// past it the invocation fails with `out_of_fuel` and leaves no trace in the worker's state.
    pub fuel_per_invocation: u64,
    /// Wall-clock limit of one invocation, in milliseconds (default 30,000).
    pub invocation_timeout_ms: u64,
    /// A worker idle this long is suspended: its instance is dropped and rebuilt by replay on
    /// its next invocation (default 60,000 ms).
    pub idle_suspend_ms: u64,
    /// An invocation still running after this long makes its start durable, so that a crash
    /// from then on resumes it rather than forgets it (default 5 ms). Shorter invocations
    /// commit their start with their completion, in one transaction.
    pub start_commit_delay_ms: u64,
    /// Invocations one worker may have waiting (default 1,024); more are refused with
    /// `queue_full`.
    pub queue_depth: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            fuel_per_invocation: 1_000_000_000,
            invocation_timeout_ms: 30_000,
            idle_suspend_ms: 60_000,
            start_commit_delay_ms: 5,
            queue_depth: 1_024,
        }
    }
}

/// What the caller's plan allows; the executor enforces it where the work happens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The invocation's fuel budget (at most the executor's own `fuel_per_invocation`).
    pub fuel_per_invocation: u64,
    /// Fuel the tenant may use this month, checked before an invocation starts.
    pub fuel_per_month: u64,
    /// Memory of one worker (at most the engine's `memory_bytes_max`).
    pub memory_per_worker_bytes: u64,
    /// Workers the tenant may have.
    pub workers_max: u64,
}

impl Limits {
    /// No limits beyond the executor's and engine's own.
    pub fn unlimited() -> Limits {
        Limits {
            fuel_per_invocation: u64::MAX,
            fuel_per_month: u64::MAX,
            memory_per_worker_bytes: u64::MAX,
            workers_max: u64::MAX,
        }
    }
}

/// How a worker looks from outside.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WorkerStatus {
    /// `active` (its instance is in memory), `suspended`, or `failed`.
    pub status: String,
    pub component_version: u64,
    pub oplog_length: u64,
    pub pending_invocations: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of a completed invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completed {
    pub result: serde_json::Value,
    pub fuel_consumed: u64,
}

pub(crate) type Outcome = std::result::Result<Completed, Error>;

/// How old the monthly fuel figure checked before each invocation may be, in milliseconds:
/// reading it for every invocation would cost a store read on the hot path.
pub const FUEL_USAGE_STALE_MS: u64 = 1_000;

/// The longest idempotency key accepted.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 256;

#[derive(Clone)]
pub struct Executor {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub config: Config,
    pub store: Store,
    pub registry: Registry,
    pub engine: Engine,
    pub linker: wasmtime::component::Linker<WorkerCtx>,
    pub committer: Committer,
    pub metrics: Arc<metrics::Metrics>,
    pub workers: Mutex<HashMap<WorkerId, WorkerHandle>>,
    /// This month's fuel per tenant, as last read: (month, fuel, read at).
    pub fuel_used: Mutex<HashMap<TenantId, (String, u64, std::time::Instant)>>,
    pub instance_pres:
        Mutex<HashMap<(TenantId, ComponentName, u64), wasmtime::component::InstancePre<WorkerCtx>>>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Executor {
    /// Builds the linker for `engine`; the registry uses its check to refuse components whose
    /// imports no executor provides.
    pub fn import_check(engine: &Engine) -> Result<ImportCheck> {
        let linker = host::linker(&engine.engine).map_err(|e| Error::Engine(format!("{e:#}")))?;
        Ok(Arc::new(move |component| {
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
        let metrics = Arc::new(metrics::Metrics::new());
        let executor = Executor {
            inner: Arc::new(Inner {
                committer: Committer::start(store.clone(), metrics.clone())?,
                metrics,
                config,
                store,
                registry,
                engine,
                linker,
                workers: Mutex::new(HashMap::new()),
                fuel_used: Mutex::new(HashMap::new()),
                instance_pres: Mutex::new(HashMap::new()),
            }),
        };
        executor.recover().await?;
        Ok(executor)
    }

    /// Resumes the workers whose last invocation started durably but never completed.
    async fn recover(&self) -> Result<()> {
        let prefix = records::running_prefix();
        let rows = self
            .inner
            .store
            .read(move |tx| tx.get_prefix(&prefix, Default::default()))
            .await?;
        for row in rows {
            let Some(id) = records::parse_running_key(&row.key) else {
                tracing::warn!("skipping an unreadable running-worker key");
                continue;
            };
            tracing::info!(worker = %id, "resuming a worker cut off mid-invocation");
            match self.handle(&id).await {
                Ok(handle) => {
                    let _ = handle.send(Command::Resume).await;
                }
                Err(e) => tracing::error!(worker = %id, error = %e, "cannot resume worker"),
            }
        }
        Ok(())
    }

    /// Creates a worker of the component's latest version.
    pub async fn create_worker(
        &self,
        id: &WorkerId,
        env: Vec<(String, String)>,
        args: Vec<String>,
        limits: &Limits,
    ) -> Result<WorkerRecord> {
        match self.create(id, env, args, limits.workers_max).await? {
            (record, true) => Ok(record),
            (_, false) => Err(Error::WorkerExists(id.to_string())),
        }
    }

    /// Creates the worker unless it exists; returns its record and whether it was created.
    async fn create(
        &self,
        id: &WorkerId,
        env: Vec<(String, String)>,
        args: Vec<String>,
        workers_max: u64,
    ) -> Result<(WorkerRecord, bool)> {
        let component = self
            .inner
            .registry
            .get(&id.tenant, &id.component, None)
            .await?;
        let record = WorkerRecord {
            component_version: component.version,
            env,
            args,
            created_at_ms: now_ms(),
        };
        let create = OplogEntry::Create {
            timestamp_ms: record.created_at_ms,
            component_version: record.component_version,
            env: record.env.clone(),
            args: record.args.clone(),
        };
        let (id_c, record_c) = (id.clone(), record.clone());
        self.inner
            .store
            .transact(move |tx| {
                if let Some(existing) = tx.get(&records::worker_key(&id_c))? {
                    return Ok((records::decode_json("worker record", &existing)?, false));
                }
                // Counted in the same transaction as the worker it counts: exact under races.
                let count_key = usage::count_key(id_c.tenant.as_str(), usage::WORKERS);
                let workers = u64::try_from(tx.get_i64(&count_key)?).unwrap_or(0);
                if workers >= workers_max {
                    return Err(Error::QuotaExceeded {
                        quota: "workers",
                        limit: workers_max,
                        used: workers,
                    });
                }
                tx.atomic_add(&count_key, 1)?;
                tx.set(
                    &records::worker_key(&id_c),
                    &records::encode_json(&record_c),
                )?;
                let writes = records::entry_writes(&id_c, 1, create.encode());
                let (stored_key, stored) = records::stored_add(&id_c, &writes);
                tx.atomic_add(&stored_key, stored)?;
                for (key, value) in writes {
                    tx.set(&key, &value)?;
                }
                Ok::<_, Error>((record_c.clone(), true))
            })
            .await
    }

    async fn worker_record(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        let key = records::worker_key(id);
        let bytes = self.inner.store.read(move |tx| tx.get(&key)).await?;
        bytes
            .map(|b| records::decode_json("worker record", &b))
            .transpose()
    }

    /// The actor of a worker, started if it is not running.
    async fn handle(&self, id: &WorkerId) -> Result<WorkerHandle> {
        if let Some(handle) = self.lock_workers().get(id) {
            return Ok(handle.clone());
        }
        let record = self
            .worker_record(id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(id.to_string()))?;
        let compiled = self
            .inner
            .registry
            .compiled(&id.tenant, &id.component, record.component_version)
            .await?;
        let pre = self.instance_pre(id, &compiled)?;
        let mut workers = self.lock_workers();
        if let Some(handle) = workers.get(id) {
            return Ok(handle.clone());
        }
        let handle = worker::spawn(self.inner.clone(), id.clone(), record, compiled, pre);
        workers.insert(id.clone(), handle.clone());
        Ok(handle)
    }

    fn instance_pre(
        &self,
        id: &WorkerId,
        compiled: &Compiled,
    ) -> Result<wasmtime::component::InstancePre<WorkerCtx>> {
        let key = (
            id.tenant.clone(),
            id.component.clone(),
            compiled.version.version,
        );
        let mut pres = self
            .inner
            .instance_pres
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(pre) = pres.get(&key) {
            return Ok(pre.clone());
        }
        let pre = self
            .inner
            .linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| Error::Engine(format!("{e:#}")))?;
        pres.insert(key, pre.clone());
        Ok(pre)
    }

    fn lock_workers(&self) -> std::sync::MutexGuard<'_, HashMap<WorkerId, WorkerHandle>> {
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Invokes `function` on the worker (created with defaults if it does not exist) and waits
    /// until its completion is durable. `idempotency_key`: the same key never runs twice.
    pub async fn invoke(
        &self,
        id: &WorkerId,
        function: &str,
        params: &[serde_json::Value],
        idempotency_key: Option<String>,
        limits: &Limits,
    ) -> Result<Completed> {
        let key = match idempotency_key {
            Some(key) => {
                if key.is_empty()
                    || key.len() > IDEMPOTENCY_KEY_BYTES_MAX
                    || key.chars().any(char::is_control)
                {
                    return Err(Error::InvalidIdempotencyKey(format!(
                        "it must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} bytes without control characters"
                    )));
                }
                Some(key)
            }
            None => None,
        };
        // A running worker knows its component; otherwise read (or create) its record.
        let running = self.lock_workers().get(id).map(|h| h.compiled.clone());
        let compiled = match running {
            Some(compiled) => compiled,
            None => {
                let record = match self.worker_record(id).await? {
                    Some(record) => record,
                    None => {
                        self.create(id, Vec::new(), Vec::new(), limits.workers_max)
                            .await?
                            .0
                    }
                };
                self.inner
                    .registry
                    .compiled(&id.tenant, &id.component, record.component_version)
                    .await?
            }
        };
        let export = compiled
            .function(function)
            .ok_or_else(|| Error::UnknownFunction {
                component: id.component.to_string(),
                function: function.to_string(),
                available: compiled
                    .exports
                    .iter()
                    .map(|f| f.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        if params.len() != export.params.len() {
            return Err(Error::ParamCount {
                function: export.name.clone(),
                expected: export.params.len(),
                got: params.len(),
            });
        }
        let values = params
            .iter()
            .zip(&export.params)
            .map(|(json, (name, ty))| json_to_value(name, json, ty))
            .collect::<Result<Vec<_>, _>>()?;
        let (generated, key) = match key {
            Some(key) => (false, key),
            None => (true, generated_key()),
        };
        let invocation = Invocation {
            function: export.name.clone(),
            params: values,
            idempotency_key: key,
            key_is_new: generated,
            fuel: limits
                .fuel_per_invocation
                .min(self.inner.config.fuel_per_invocation),
            span: tracing::Span::current(),
            memory_bytes: limits
                .memory_per_worker_bytes
                .min(self.inner.engine.config.memory_bytes_max),
        };
        if limits.fuel_per_month != u64::MAX {
            let used = self.fuel_this_month(&id.tenant).await?;
            if used >= limits.fuel_per_month {
                return Err(Error::QuotaExceeded {
                    quota: "fuel_per_month",
                    limit: limits.fuel_per_month,
                    used,
                });
            }
        }
        // The actor may have suspended itself between our lookup and our send: then start it
        // again. Bounded: a fresh actor does not suspend before taking its first message.
        for _ in 0..3 {
            let handle = self.handle(id).await?;
            let (reply, outcome) = oneshot::channel();
            match handle
                .send(Command::Invoke(invocation.clone(), reply))
                .await
            {
                Ok(()) => match outcome.await.unwrap_or(Err(Error::ShuttingDown)) {
                    Err(Error::Retry) => continue,
                    Ok(completed) => {
                        self.count_fuel(&id.tenant, completed.fuel_consumed);
                        return Ok(completed);
                    }
                    other => return other,
                },
                Err(worker::SendError::Full(n)) => return Err(Error::QueueFull(n)),
                Err(worker::SendError::Stopped) => {
                    self.lock_workers().remove(id);
                }
            }
        }
        Err(Error::ShuttingDown)
    }

    /// Fuel the tenant's invocations used this month (committed ones), as read at most
    /// [`FUEL_USAGE_STALE_MS`] ago: the monthly quota may be overrun by what runs meanwhile.
    pub async fn fuel_this_month(&self, tenant: &TenantId) -> Result<u64> {
        let month = records::month_of(now_ms());
        {
            let cache = self
                .inner
                .fuel_used
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some((m, used, at)) = cache.get(tenant)
                && *m == month
                && at.elapsed().as_millis() < u128::from(FUEL_USAGE_STALE_MS)
            {
                return Ok(*used);
            }
        }
        let key = usage::month_key(tenant.as_str(), usage::FUEL, &month);
        let used = self.inner.store.read(move |tx| tx.get_i64(&key)).await?;
        let used = u64::try_from(used).unwrap_or(0);
        self.inner
            .fuel_used
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(tenant.clone(), (month, used, std::time::Instant::now()));
        Ok(used)
    }

    /// Adds fuel this process's invocations used to the cached monthly figure (the store has
    /// it already: it was committed with the invocation).
    fn count_fuel(&self, tenant: &TenantId, fuel: u64) {
        let mut cache = self
            .inner
            .fuel_used
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some((_, used, _)) = cache.get_mut(tenant) {
            *used = used.saturating_add(fuel);
        }
    }

    /// A worker's status.
    pub async fn status(&self, id: &WorkerId) -> Result<WorkerStatus> {
        let record = self
            .worker_record(id)
            .await?
            .ok_or_else(|| Error::WorkerNotFound(id.to_string()))?;
        let id_c = id.clone();
        let oplog_length = self
            .inner
            .store
            .read(move |tx| records::last_index(tx, &id_c))
            .await?;
        let handle = self.lock_workers().get(id).cloned();
        let (status, pending, error) = match handle {
            Some(h) => {
                let (status, error) = h.state();
                (status, h.pending(), error)
            }
            None => ("suspended".to_string(), 0, None),
        };
        Ok(WorkerStatus {
            status,
            component_version: record.component_version,
            oplog_length,
            pending_invocations: pending,
            error,
        })
    }

    /// Up to `count` oplog entries from index `from` (1 is the first).
    pub async fn oplog(
        &self,
        id: &WorkerId,
        from: OplogIndex,
        count: usize,
    ) -> Result<Vec<(OplogIndex, OplogEntry)>> {
        if self.worker_record(id).await?.is_none() {
            return Err(Error::WorkerNotFound(id.to_string()));
        }
        let id = id.clone();
        self.inner
            .store
            .read(move |tx| records::read_entries(tx, &id, from, count))
            .await
    }

    /// The workers of a component, by name.
    pub async fn list_workers(
        &self,
        tenant: &TenantId,
        component: &ComponentName,
    ) -> Result<Vec<String>> {
        let prefix = records::workers_prefix(tenant.as_str(), component.as_str());
        let rows = self
            .inner
            .store
            .read(move |tx| tx.get_prefix(&prefix, Default::default()))
            .await?;
        Ok(rows
            .iter()
            .filter_map(|kv| {
                let (_, _, _, name): (String, String, String, String) =
                    invicta_store::keys::unpack(&kv.key).ok()?;
                Some(name)
            })
            .collect())
    }

    /// The executor's metrics in the OpenMetrics text format.
    pub async fn metrics(&self) -> String {
        let active = self
            .lock_workers()
            .values()
            .filter(|h| h.state().0 == "active")
            .count();
        let active = i64::try_from(active).unwrap_or(i64::MAX);
        // Every tenant's worker count, summed: bounded by the number of tenants.
        let all = self
            .inner
            .store
            .read(move |tx| {
                let rows = tx.get_prefix(&usage::counts_prefix(), Default::default())?;
                let mut workers = 0_i64;
                for row in rows {
                    if usage::count_kind(&row.key).as_deref() == Some(usage::WORKERS) {
                        workers = workers.saturating_add(invicta_store::decode_counter(&row.value));
                    }
                }
                Ok::<_, Error>(workers)
            })
            .await;
        let metrics = &self.inner.metrics;
        metrics.active_workers.set(active);
        match all {
            Ok(all) => {
                metrics
                    .suspended_workers
                    .set(all.saturating_sub(active).max(0));
            }
            Err(e) => tracing::warn!(error = %e, "count workers for metrics"),
        }
        metrics.encode()
    }
}

/// Suspends up to `count` of the longest-idle active workers; returns how many were asked.
pub(crate) async fn evict_idle(inner: &Inner, count: usize) -> usize {
    let mut idle: Vec<(u64, WorkerHandle)> = inner
        .workers
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter_map(|h| h.idle_since().map(|t| (t, h.clone())))
        .collect();
    idle.sort_by_key(|(t, _)| *t);
    let mut asked = 0;
    for (_, handle) in idle.into_iter().take(count) {
        if handle.send(Command::Suspend).await.is_ok() {
            asked += 1;
        }
    }
    asked
}

fn generated_key() -> String {
    let bytes: [u8; 16] = rand::random();
    let mut key = String::from("gen-");
    for b in bytes {
        key.push_str(&format!("{b:02x}"));
    }
    key
}
